"""The simulator interface: the same logged state gives the same observation / expert through the simulators that
can represent it, deviations are where they should be, and the expert brings the car back."""
from dataclasses import replace

import numpy as np
import pytest

from common.drive_helpers import curvature_from_plan
from common.modelconstants import IDX_N, PLAN_SLICES, PLAN_WIDTH, T_IDXS
from training.onpolicy.sim_procedural import ProceduralSimulator
from training.onpolicy.sim_reprojective import ReprojectiveSimulator, reproject
from training.onpolicy.simulator import SIM_DT, SUBSTEPS, Deviation, return_plan

FRAME = 40


def test_conventions():
  assert SIM_DT == pytest.approx(0.2) and SUBSTEPS == 4


def test_return_plan_goes_to_a_straight_reference_on_the_right():
  ref = np.stack([np.linspace(-10, 400, 200), np.full(200, 1.0)], 1)     # lane centre 1 m to the right
  plan = return_plan(ref, np.full(IDX_N, 20.0))
  assert plan.shape == (IDX_N, PLAN_WIDTH)
  assert abs(plan[0, 1]) < 1e-6 and abs(plan[-1, 1] - 1.0) < 0.01     # starts at the car, ends on the reference
  assert np.all(np.diff(plan[:, 0]) > 0) and abs(plan[-1, 0] - 200.0) < 1.0   # 10 s at 20 m/s
  assert curvature_from_plan(plan, 20.0) < -1e-4                        # steer right (curvature + left)


def test_return_plan_on_an_arc_commands_the_arc():
  k = 1 / 300.0                                                         # left arc, car on it
  s = np.linspace(-10, 400, 800)
  ref = np.stack([np.sin(k * s) / k, -(1 - np.cos(k * s)) / k], 1)     # y right: a left arc goes to negative y
  plan = return_plan(ref, np.full(IDX_N, 25.0))
  assert curvature_from_plan(plan, 25.0) == pytest.approx(k, rel=0.05)


def test_return_plan_starts_along_the_course_of_a_sliding_car():
  """A car cornering on the arc with sideslip b (its velocity b rad right of its heading) sees the arc turned by -b
  in its own frame. Along its course the expert commands the arc's curvature and keeps the car where it is; along its
  heading it would steer against the sideslip (the steady offset of the suites' 30 m/s curves)."""
  k, b, v = 1 / 300.0, np.radians(-0.19), 30.0                          # the default car's sideslip at 3 m/s^2
  s = np.linspace(-10, 400, 800)
  arc = np.stack([np.sin(k * s) / k, -(1 - np.cos(k * s)) / k], 1)     # the arc in the course frame
  in_car = arc @ np.array([[np.cos(b), np.sin(b)], [-np.sin(b), np.cos(b)]])   # rotated by the sideslip
  along = return_plan(in_car, np.full(IDX_N, v), course=b)
  assert curvature_from_plan(along, v) == pytest.approx(k, rel=0.02)
  def off_arc(plan):                                                    # over the first 5 s
    near = T_IDXS <= 5.0
    return np.abs(plan[near, 1] - np.interp(plan[near, 0], in_car[:, 0], in_car[:, 1])).max()
  assert off_arc(along) < 0.02                                          # stays on the arc
  heading = return_plan(in_car, np.full(IDX_N, v))
  assert abs(curvature_from_plan(heading, v) - k) > 0.04 * k and off_arc(heading) > 0.04   # 0.18 m/s^2 off
  # the plan's velocity is along the course, its heading the car's
  V, O = PLAN_SLICES["velocity"].start, PLAN_SLICES["orientation"].start + 2
  assert np.arctan2(along[0, V + 1], along[0, V]) == pytest.approx(b, abs=1e-3) and abs(along[0, O]) < 1e-3
  assert np.array_equal(return_plan(in_car, np.full(IDX_N, v), course=0.0), heading)


def _lateral_at(plan: np.ndarray, t: float) -> float:
  return float(np.interp(t, T_IDXS, plan[:, 1]))


def test_return_plan_takes_longer_at_speed():
  """From 1 m off: the same return time (0.8 s) up to return_speed (15 m/s), in proportion to speed above it."""
  ref = np.stack([np.linspace(-10, 600, 400), np.full(400, 1.0)], 1)
  at = {v: return_plan(ref, np.full(IDX_N, v)) for v in (15.0, 30.0)}
  fixed = return_plan(ref, np.full(IDX_N, 30.0), return_speed=None)
  # the lateral error left is the critically damped (1 + t/T) exp(-t/T) of the start: T = 0.8 s at 15 m/s, and at
  # 30 m/s without the speed scaling
  assert _lateral_at(at[15.0], 1.6) == pytest.approx(1 - 3 * np.exp(-2), abs=0.02)
  assert _lateral_at(fixed, 1.6) == pytest.approx(_lateral_at(at[15.0], 1.6), abs=0.02)
  # at 30 m/s T = 1.6 s: at 1.6 s it has come as far as the 0.8 s return at 0.8 s
  assert _lateral_at(at[30.0], 1.6) == pytest.approx(1 - 2 * np.exp(-1), abs=0.02)
  assert _lateral_at(at[30.0], 3.2) == pytest.approx(_lateral_at(at[15.0], 1.6), abs=0.02)
  assert abs(at[30.0][-1, 1] - 1.0) < 0.02                              # and still ends on the reference
  for bad in ({"return_time": 0.0}, {"return_speed": -1.0}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      ReprojectiveSimulator({"width": 128, "height": 64, "focal": 227.5}, **bad)


def test_logged_state_is_the_same_in_both_geometric_simulators(logged, policy_cfg):
  proc, rep = ProceduralSimulator(policy_cfg.frame_spec), ReprojectiveSimulator(policy_cfg.frame_spec)
  op, orp = proc.reset(logged, FRAME), rep.reset(logged, FRAME)
  # observation: the reprojective one IS the logged frame; the procedural world renders the same view
  assert np.array_equal(orp.image, logged.frames[FRAME])
  assert op.image.shape == orp.image.shape == (policy_cfg.frame_h, policy_cfg.frame_w, 3)
  assert np.abs(op.image.astype(float) - logged.frames[FRAME]).mean() < 12.0
  assert op.v_ego == orp.v_ego == pytest.approx(logged.v_ego[FRAME])
  # expert: procedural = lane centre (the logged lateral offset), reprojective = the logged future itself
  assert op.lateral_offset == pytest.approx(logged.gt["lateral_offset"][FRAME], abs=0.02)
  assert orp.lateral_offset == pytest.approx(0.0, abs=0.02)
  near = T_IDXS <= 3.0
  assert np.abs(orp.expert_plan[near, :2] - logged.plan[FRAME][near, :2]).max() < 0.1
  # both experts command (about) what the logged car executed there: the human drives near the lane centre
  k_log = logged.gt["curvature"][FRAME]
  assert abs(orp.expert_action[0] - k_log) < 1.5e-3 and abs(op.expert_action[0] - k_log) < 2e-3


def test_deviation_moves_the_car_and_the_view(logged, policy_cfg):
  for Sim in (ProceduralSimulator, ReprojectiveSimulator):
    sim = Sim(policy_cfg.frame_spec)
    o0 = sim.reset(logged, FRAME)
    o1 = sim.reset(logged, FRAME, Deviation(lateral=1.0))
    assert o1.lateral_offset - o0.lateral_offset == pytest.approx(1.0, abs=0.05)
    assert o1.expert_action[0] > o0.expert_action[0] + 1e-4        # right of the path: steer left (+)
    assert np.abs(o1.image.astype(float) - o0.image).mean() > 2.0


def test_expert_actions_bring_the_car_back(logged, policy_cfg):
  for Sim in (ProceduralSimulator, ReprojectiveSimulator):
    sim = Sim(policy_cfg.frame_spec)
    o = sim.reset(logged, 0, Deviation(lateral=-1.0, heading=np.radians(1.0)))
    n = 20
    assert sim.max_steps(logged, 0) >= n
    offs = [o.lateral_offset]
    for _ in range(n):
      o = sim.step(o.expert_action)
      offs.append(o.lateral_offset)
    assert abs(offs[-1]) < 0.35 and max(abs(x) for x in offs) < 1.3, (Sim.name, np.round(offs, 2))


def test_procedural_runs_to_the_end_of_the_log(logged, policy_cfg):
  """The ground-truth world renders any pose and holds the logged speed after the log ends, so it starts episodes
  (and keeps stepping) where the log-bound simulators, which need 10 s of log ahead, cannot."""
  proc, rep = ProceduralSimulator(policy_cfg.frame_spec), ReprojectiveSimulator(policy_cfg.frame_spec)
  late = len(logged) - 1 - 4 * SUBSTEPS                     # 0.8 s before the log ends
  assert rep.max_steps(logged, late) == 0 and proc.max_steps(logged, late) == 4
  o = proc.reset(logged, late, Deviation(lateral=0.5))
  for _ in range(proc.max_steps(logged, late)):
    o = proc.step(o.expert_action)
    assert np.isfinite(o.expert_plan).all() and np.isfinite(o.expert_action).all()
    assert o.v_ego == pytest.approx(logged.v_ego[-1], abs=2.5)   # driven by the expert's acceleration
  assert abs(o.lateral_offset) < 0.5                        # the expert is still bringing the car back


def test_reproject_identity_and_shift():
  u = np.arange(128)
  img = np.repeat(np.repeat((127 + 100 * np.sin(u / 6.0)).astype(np.uint8)[None, :, None], 64, 0), 3, 2)
  assert np.array_equal(reproject(img, 0.0, 0.0, 0.0), img)
  turned = reproject(img, 0.0, 0.0, np.radians(5))        # camera turned right: the scene moves left in the image
  shift = round(227.5 * np.tan(np.radians(5)))
  assert np.abs(turned[:, 54:74].astype(int) - img[:, 54 + shift:74 + shift]).mean() < 6
  assert np.abs(turned[:, 54:74].astype(int) - img[:, 54:74]).mean() > 30


def test_bad_inputs(logged, policy_cfg):
  sim = ProceduralSimulator(policy_cfg.frame_spec)
  with pytest.raises(ValueError, match="reset frame"):
    sim.reset(logged, len(logged) + 5)
  sim.reset(logged, 0)
  with pytest.raises(ValueError, match="non-finite"):
    sim.step((float("nan"), 0.0))


def test_procedural_lane_change_desire_ends_in_the_target_lane(logged, policy_cfg):
  """A synthetic lane change: the desire is given until the car's centre enters the target lane (the suites' rule),
  and the expert goes on to the target lane's centre with desire none."""
  sim = ProceduralSimulator(policy_cfg.frame_spec)
  for side in (-1, 1):
    o = sim.reset(logged, 0, Deviation(lane_change=side))
    if o.desire:
      break
  else:
    pytest.skip("the logged road has no neighbour lane")
  half = 0.5 * sim.world.road.lane_width
  assert abs(o.lateral_offset) >= half               # lateral_offset: from the target lane's centre
  steps = [(o.desire, o.lateral_offset)]
  while len(steps) < min(40, sim.max_steps(logged, 0)):
    o = sim.step(o.expert_action)
    steps.append((o.desire, o.lateral_offset))
  desire, off = np.array([d for d, _ in steps]), np.abs([x for _, x in steps])
  k = int(np.argmin(desire != 0))
  assert k > 0 and not desire[k:].any(), desire
  assert off[k] < half <= off[k - 1] and off[k] > 0.5
  assert off[-1] < 0.3, np.round(off, 2)


def test_procedural_episode_at_its_own_speed(logged, policy_cfg):
  """Deviation.speed: the ground-truth car starts at that speed, the expert drives the logged profile shifted to it
  (same accelerations) and still brings the car back; the log-bound simulators refuse it."""
  proc = ProceduralSimulator(policy_cfg.frame_spec)
  v_log = float(logged.v_ego[FRAME])
  base = proc.reset(logged, FRAME, Deviation(lateral=0.8))
  o = proc.reset(logged, FRAME, Deviation(lateral=0.8, speed=v_log + 8.0))
  assert o.v_ego == pytest.approx(v_log + 8.0)
  V = PLAN_SLICES["velocity"].start
  assert o.expert_plan[0, V] == pytest.approx(base.expert_plan[0, V] + 8.0, abs=0.05)       # plan speed, m/s
  assert o.expert_action[1] == pytest.approx(base.expert_action[1], abs=0.05)               # same acceleration
  assert o.lateral_offset == pytest.approx(base.lateral_offset, abs=1e-6)
  # a faster return in time is a gentler one in curvature: the same lateral error over a longer distance
  assert 0 < o.expert_action[0] < base.expert_action[0]
  for _ in range(20):
    o = proc.step(o.expert_action)
  assert abs(o.lateral_offset) < 0.35 and o.v_ego == pytest.approx(v_log + 8.0, abs=2.5)
  with pytest.raises(ValueError, match="logged speed"):
    ReprojectiveSimulator(policy_cfg.frame_spec).reset(logged, FRAME, Deviation(speed=v_log + 8.0))
  rng = np.random.default_rng(0)
  devs = [Deviation.sample(rng, speed_range=(14.0, 32.0)) for _ in range(200)]
  speeds = np.array([d.speed for d in devs])
  assert speeds.min() >= 14.0 and speeds.max() <= 32.0 and np.ptp(speeds) > 15.0
  assert Deviation.sample(np.random.default_rng(0)).speed is None
  with pytest.raises(ValueError, match="speed_range"):
    Deviation.sample(rng, speed_range=(20.0, 10.0))


def test_actor_draws_the_procedural_episodes_speed(policy_run, segment_dir, policy_cfg, logged, tmp_path):
  """RolloutConfig.speed_range (--set speed_range=LOW,HIGH) reaches the ground-truth episodes; the log-bound
  simulators keep the logged speed."""
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutWorker, WorkerSpec
  ck = load_latest(policy_run)
  rc = {"episode_steps": 3, "min_steps": 2, "speed_range": (40.0, 40.0), "expert_mix": 1.0, "max_lateral": 0.0}
  assert logged.v_ego.max() < 38.0                  # the generated driver's cruise speeds stay below 40 m/s
  proc = RolloutWorker(WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                       ck["state"]["vision"])
  tr = proc.rollouts((ck["state"]["temporal"], 1))[0]
  assert tr.v_ego[0] == pytest.approx(40.0, abs=1e-4) and tr.info["speed"] == 40.0
  rep = RolloutWorker(WorkerSpec("reprojective", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                      ck["state"]["vision"])
  tr = rep.rollouts((ck["state"]["temporal"], 1))[0]
  assert tr.v_ego[0] == pytest.approx(logged.v_ego[tr.info["frame"]], abs=1e-3) and tr.info["speed"] is None
  assert (proc.sim.return_time, proc.sim.return_speed) == (0.8, 15.0)  # the defaults reach both geometric experts
  rc = {**rc, "return_time": 1.2, "return_speed": None}
  rep = RolloutWorker(WorkerSpec("reprojective", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                      ck["state"]["vision"])
  assert (rep.sim.return_time, rep.sim.return_speed) == (1.2, None)


def test_batched_geometric_actors_share_their_worlds_and_label_like_one_at_a_time(policy_run, segment_dir,
                                                                                  policy_cfg, logged, tmp_path):
  """actor_batch with the geometric simulators: the procedural slots share the worlds (and renderers) the first one
  builds, step_batch gives each simulator the observation it gets stepped alone, and the actor returns every
  episode's trajectory."""
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutWorker, WorkerSpec
  from training.onpolicy.sim_procedural import ProceduralSimulator
  from training.onpolicy.simulator import step_batch
  ck = load_latest(policy_run)
  rc = {"episode_steps": 3, "min_steps": 2, "actor_batch": 3, "lane_change_prob": 0.0}
  w = RolloutWorker(WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                    ck["state"]["vision"])
  assert len(w.sims) == 3 and all(s._worlds is w.sim._worlds for s in w.sims)
  got = []
  while len(got) < 4:
    got += w.rollouts((ck["state"]["temporal"], 1))
  assert len(w.sim._worlds) == 1                       # one segment, one world built for all three slots
  assert all(1 <= len(t) <= 4 and t.info["batch"] == 3 and np.isfinite(t.expert_action).all() for t in got)
  with pytest.raises(ValueError, match="frame"):
    ProceduralSimulator({**policy_cfg.frame_spec, "width": 64}, share=w.sim)
  # two pairs of slots sharing their worlds (the renderer's sensor noise is one stream per world), one pair stepped
  # one by one, the other together
  alone, batch = [], []
  for sims in (alone, batch):
    sims.append(ProceduralSimulator(policy_cfg.frame_spec, seed=0))
    sims.append(ProceduralSimulator(policy_cfg.frame_spec, seed=1, share=sims[0]))
  devs = [Deviation(lateral=0.6, curvature_noise=1e-3), Deviation(lateral=-0.4, heading=0.01)]
  for sims in (alone, batch):
    for s, dev in zip(sims, devs):
      s.reset(logged, 20, dev)
  acts = [(0.001, 0.0), (-0.002, 0.3)]
  for _ in range(2):
    for a, b in zip([s.step(x) for s, x in zip(alone, acts)], step_batch(batch, acts)):
      assert np.array_equal(a.image, b.image) and np.allclose(a.expert_plan, b.expert_plan)
      assert a.lateral_offset == b.lateral_offset


def _log_lane_changes(sim, logged, lane_side):
  """Synthetic lane changes of a log-bound simulator from frame 0, one per side whose lane (`lane_side(side)`: -1
  left, +1 right of the logged lane) the ground truth shows: the desire is set, the car is a lane width from its
  reference and the expert steers toward it; driven by the expert, the desire ends as the car's centre enters the
  target lane and the car is most of the way there after the 4.8 s of log. A side without that lane gets a lane-keep
  episode. -> (the lane-keep start, {side: its lane change's first observation})."""
  from common.modelconstants import DESIRES
  from training.onpolicy.simulator import neighbour_lane_width
  sides = [s for s in (-1, 1) if neighbour_lane_width(logged, 0, lane_side(s)) is not None]
  if not sides:
    pytest.skip("the logged road has no neighbour lane")
  width = float(logged.gt["lane_width"][0])
  base, first = sim.reset(logged, 0), {}
  for side in (-1, 1):
    o = first[side] = sim.reset(logged, 0, Deviation(lane_change=side))
    if side not in sides:                               # the road edge is there: a lane-keep episode
      assert o.desire == 0 and sim.dev.lane_change == 0
      assert o.lateral_offset == pytest.approx(base.lateral_offset, abs=1e-6)
      continue
    assert o.desire == DESIRES.index("laneChangeLeft" if side < 0 else "laneChangeRight")
    # desire left: the car is a lane to the right of its reference (+ offset), and the other way round
    assert o.lateral_offset - base.lateral_offset == pytest.approx(-side * width, abs=0.1)
    assert np.sign(o.expert_action[0] - base.expert_action[0]) == -side      # steer toward it (+ left)
    steps = [(o.desire, abs(o.lateral_offset))]
    while len(steps) < min(40, sim.max_steps(logged, 0)):
      o = sim.step(o.expert_action)
      steps.append((o.desire, abs(o.lateral_offset)))
    desire, off = np.array([d for d, _ in steps]), np.array([x for _, x in steps])
    k = int(np.argmin(desire != 0))
    assert k > 0 and not desire[k:].any(), desire
    assert off[k] < 0.5 * width <= off[k - 1]
    assert off[-1] < 0.2 * width and np.all(np.diff(off) < 0.02), np.round(off, 2)
  return base, {s: o for s, o in first.items() if s in sides}


def test_reprojective_lane_change_starts_one_lane_over(logged, policy_cfg):
  """"start" lane changes in a log-bound simulator: the car starts one lane over from the logged lane (on the side
  opposite to the desire), the desire asks for the logged lane and the expert returns there (_log_lane_changes)."""
  from common.modelconstants import DESIRES
  from training.onpolicy.simulator import neighbour_lane_width
  _, first = _log_lane_changes(ReprojectiveSimulator(policy_cfg.frame_spec), logged, lambda side: -side)
  # a window with a logged lane change ahead gets none of its own
  side = next(iter(first))
  busy = logged.desire.copy()
  busy[30] = DESIRES.index("laneChangeLeft")
  assert neighbour_lane_width(replace(logged, desire=busy), 0, -side) is None
  assert neighbour_lane_width(replace(logged, gt={}), 0, -side) is None


def test_reprojective_lane_change_shifts_the_reference_one_lane(logged, policy_cfg):
  """"shift" lane changes (RolloutConfig.log_lane_change_mode): the car starts in the logged lane, so its first frame
  is a lane-keep start's, and only the desire and the reference differ: the logged path one lane toward the desire
  (_log_lane_changes). The other simulators refuse the mode."""
  from training.onpolicy.actor import RolloutConfig
  sim = ReprojectiveSimulator(policy_cfg.frame_spec)
  sim.set_lane_change_mode("shift")
  base, first = _log_lane_changes(sim, logged, lambda side: side)
  for o in first.values():
    np.testing.assert_array_equal(o.image, base.image)
  with pytest.raises(ValueError, match="lane change mode"):
    ProceduralSimulator(policy_cfg.frame_spec).set_lane_change_mode("shift")
  with pytest.raises(ValueError, match="log_lane_change_mode"):
    RolloutConfig(log_lane_change_mode="target")


def test_actor_lane_change_probabilities(policy_run, segment_dir, policy_cfg, tmp_path):
  """RolloutConfig.lane_change_prob draws the procedural world's lane changes, log_lane_change_prob those of the
  log-bound simulators (off by default); the trajectory records the lane change the episode had."""
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutConfig, RolloutWorker, WorkerSpec
  assert RolloutConfig().log_lane_change_prob == 0.0
  with pytest.raises(ValueError, match="log_lane_change_prob"):
    RolloutConfig(log_lane_change_prob=2.0)
  ck = load_latest(policy_run)
  rc = {"episode_steps": 2, "min_steps": 2, "expert_mix": 1.0, "max_lateral": 0.0}
  def lane_changes(sim, **probs):
    w = RolloutWorker(WorkerSpec(sim, policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), {**rc, **probs}),
                      ck["state"]["vision"])
    trs = [w.rollouts((ck["state"]["temporal"], 1))[0] for _ in range(16)]   # one side has a lane: 2^-16 to miss
    return [(tr.info["lane_change"], int(tr.desire[0])) for tr in trs]
  assert all(lc == 0 for lc, _ in lane_changes("reprojective", lane_change_prob=1.0))
  drawn = lane_changes("reprojective", log_lane_change_prob=1.0)
  assert any(lc != 0 for lc, _ in drawn), drawn
  assert all((lc != 0) == (d != 0) for lc, d in drawn), drawn        # a lane change starts with its desire



def test_actor_keeps_a_segment_for_segment_episodes(policy_run, segment_dir, policy_cfg, tmp_path):
  """RolloutConfig.segment_episodes: an actor starts that many consecutive episodes in one segment (the procedural
  world's renderer is built once for them), each at a start frame drawn anew."""
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutConfig, RolloutWorker, WorkerSpec
  with pytest.raises(ValueError, match="segment_episodes"):
    RolloutConfig(segment_episodes=0)
  ck = load_latest(policy_run)
  rc = {"episode_steps": 1, "min_steps": 1, "expert_mix": 1.0, "segment_episodes": 3}
  w = RolloutWorker(WorkerSpec("reprojective", policy_cfg.to_dict(), [str(segment_dir)] * 4, str(tmp_path / "c"), rc),
                    ck["state"]["vision"])
  segs, frames = [], []
  for _ in range(12):
    frames.append(w.rollouts((ck["state"]["temporal"], 1))[0].info["frame"])
    segs.append(w._segment)
  assert all(len(set(segs[k:k + 3])) == 1 for k in range(0, 12, 3)), segs
  assert len(set(frames)) > 4, frames


def test_reprojective_frames_through_a_codec(logged, policy_cfg, wm_run, policy_run, segment_dir, tmp_path):
  """codec (RolloutConfig.rep_codec, a diagnostic): the re-projected frame goes through the VAE's encode + decode at
  the VAE's resolution and back to the policy's frame, as a world model's latents do; the car, its offset and the
  label are the plain simulator's."""
  import cv2
  import torch

  from training.data.frames import images_to_tensor
  from training.onpolicy.actor import RolloutWorker, WorkerSpec
  from training.vae import load_vae
  vae_dir = wm_run.parent / "vae"
  dev = Deviation(lateral=0.7, heading=0.01)
  plain, coded = ReprojectiveSimulator(policy_cfg.frame_spec), ReprojectiveSimulator(policy_cfg.frame_spec, codec=vae_dir)
  a, b = plain.reset(logged, FRAME, dev), coded.reset(logged, FRAME, dev)
  for _ in range(3):
    a, b = plain.step((0.001, 0.0)), coded.step((0.001, 0.0))
  assert b.image.shape == a.image.shape and b.image.dtype == np.uint8 and not np.array_equal(a.image, b.image)
  assert b.lateral_offset == a.lateral_offset and np.array_equal(a.expert_plan, b.expert_plan)
  vae = load_vae(vae_dir)
  H, W = a.image.shape[:2]
  big = cv2.resize(a.image, (vae.frame_hw[1], vae.frame_hw[0]), interpolation=cv2.INTER_LINEAR)
  with torch.no_grad():
    x = vae.decode(vae.encode(images_to_tensor(big)[None])).clamp(-1, 1)
  want = cv2.resize(((x[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy(), (W, H), interpolation=cv2.INTER_AREA)
  assert np.abs(want.astype(int) - b.image.astype(int)).max() <= 1
  # the rollout option reaches the simulator of a reprojective actor
  from training.checkpoint import load_latest
  ck = load_latest(policy_run)
  spec = WorkerSpec("reprojective", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "cache"),
                    {"episode_steps": 2, "min_steps": 2, "rep_codec": str(vae_dir)})
  assert RolloutWorker(spec, ck["state"]["vision"]).sim.codec is not None
  with pytest.raises(FileNotFoundError, match="VAE config"):
    ReprojectiveSimulator(policy_cfg.frame_spec, codec=tmp_path)


def test_steady_offset_labels_push_back_from_a_held_offset():
  """steady_offset_labels: a state whose history window holds the car right of the reference gets a curvature to the
  left of gain * mean offset / v^2 added to the expert's label; windows with a desire, and the acceleration, keep
  the expert's; gain 0 changes nothing."""
  from training.onpolicy.actor import RolloutConfig, steady_offset_labels
  assert RolloutConfig().steady_offset_gain == 0.0
  L, T = 12, 4
  act = np.tile(np.array([[1e-3, 0.5]], np.float32), (L, 1))
  off = np.full(L, 0.4)
  off[:3] = 0.0                              # centred first, then 0.4 m right
  v = np.full(L, 30.0)
  desire = np.zeros(L, np.int64)
  desire[9] = 1                              # a lane change's desire at state 9: windows 9..11 (T = 4) contain it
  out = steady_offset_labels(act, off, desire, v, T, gain=1.0)
  assert np.array_equal(out[:, 1], act[:, 1]) and out[0, 0] == act[0, 0]
  assert out[3, 0] == pytest.approx(1e-3 + 1.0 * np.mean([0, 0, 0, 0.4]) / 900, rel=1e-5)   # the window's mean
  assert out[8, 0] == pytest.approx(1e-3 + 0.4 / 900, rel=1e-5)                             # a held offset: left
  assert np.array_equal(out[9:, 0], act[9:, 0])
  assert np.allclose(steady_offset_labels(act, -off, desire, v, T, 1.0)[8], [1e-3 - 0.4 / 900, 0.5], rtol=1e-5, atol=0)
  assert np.array_equal(steady_offset_labels(act, off, desire, v, T, 0.0), act)
  assert np.all(act[:, 0] == np.float32(1e-3))                                               # not modified in place


def test_actor_labels_with_the_steady_offset_term(policy_run, segment_dir, policy_cfg, tmp_path):
  """RolloutConfig.steady_offset_gain: the trajectory's expert actions are the simulator's with steady_offset_labels
  applied over the policy's history window; the executed actions and the plans are the simulator's."""
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutWorker, WorkerSpec, steady_offset_labels
  ck = load_latest(policy_run)
  rc = {"episode_steps": 6, "min_steps": 6, "expert_mix": 1.0, "max_lateral": 1.0, "steady_offset_gain": 2.0,
        "lane_change_prob": 0.0}
  w = RolloutWorker(WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                    ck["state"]["vision"])
  seen = []
  make_obs = w.sim._make_obs                 # every observation, the reset's and each step's
  w.sim._make_obs = lambda: seen.append(make_obs()) or seen[-1]
  tr = w.rollouts((ck["state"]["temporal"], 1))[0]
  seen = seen[:len(tr)]
  raw = np.stack([o.expert_action for o in seen]).astype(np.float32)
  want = steady_offset_labels(raw, np.array([o.lateral_offset for o in seen]), np.array([o.desire for o in seen]),
                              np.array([o.v_ego for o in seen]), policy_cfg.history, 2.0)
  assert np.allclose(tr.expert_action, want, rtol=1e-6, atol=1e-9)
  assert not np.allclose(tr.expert_action[:, 0], raw[:, 0], rtol=0, atol=1e-7)    # the episode starts off-centre
  assert np.allclose(tr.expert_plan, np.stack([o.expert_plan for o in seen]))
