"""The world-model simulator behind the same interface: frames in the policy's model frame, the Plan Head's plan as
expert, the vehicle model moving the car, the rollout ending at the future anchor."""
import numpy as np
import pytest

from common.modelconstants import IDX_N, PLAN_WIDTH
from training.onpolicy.actor import RolloutWorker, WorkerSpec
from training.onpolicy.sim_worldmodel import WorldModelSimulator
from training.onpolicy.simulator import SIM_DT, Deviation

FRAME = 40


def test_interface_and_anchor_end(wm_run, logged, policy_cfg):
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu")
  assert sim.max_steps(logged, 8) == 0 and sim.max_steps(logged, FRAME) > 0
  o = sim.reset(logged, FRAME, Deviation(lateral=0.5))
  assert o.image.shape == (policy_cfg.frame_h, policy_cfg.frame_w, 3) and o.image.dtype == np.uint8
  assert o.expert_plan.shape == (IDX_N, PLAN_WIDTH) and np.isfinite(o.expert_plan).all()
  assert np.isfinite(o.expert_action).all() and o.lateral_offset == pytest.approx(0.5, abs=0.05)
  assert o.v_ego == pytest.approx(logged.v_ego[FRAME])
  assert sim.t_end is not None and 2.0 - 1e-6 <= sim.t_end - (sim.t_now - SIM_DT) <= 9.0 + 1e-6
  # the Plan Head was trained on anchors >= 2 s ahead: the rollout ends before the anchor comes closer than that
  assert sim.t_done == pytest.approx(sim.t_end - 2.0 + SIM_DT)
  sim.max_offset = np.inf                  # driven straight the car leaves the log; the offset end is tested below
  n = 0
  while not o.done:
    o = sim.step((0.0, 0.0))
    n += 1
    assert n < 50
  assert sim.t_end - 2.0 + SIM_DT - 1e-6 <= sim.t_now < sim.t_end - 2.0 + 2 * SIM_DT
  # the generated frame reacts to where the car is: same seed and window, another lateral offset
  a = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=5, device="cpu").reset(logged, FRAME)
  b = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=5, device="cpu").reset(logged, FRAME)
  c = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=5, device="cpu").reset(logged, FRAME,
                                                                                              Deviation(lateral=1.5))
  assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)


def test_plan_head_gets_the_anchor_relative_to_the_car_now(wm_run, logged, policy_cfg, monkeypatch):
  """The anchor poses are cached relative to the last context frame; the Plan Head, trained on poses relative to the
  frame it plans from, gets them re-expressed at the car's pose of every step."""
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu")
  sim.reset(logged, FRAME, Deviation(lateral=1.0))
  base, origin = sim.anchor_pose_c, sim.anchor_origin
  assert base is not None and base.shape[1] == 6
  np.testing.assert_allclose(sim._anchor_from(origin).pose[0].numpy(), base, atol=1e-5)   # still at frame c
  yaw = origin[2]
  right = origin + np.array([-np.sin(yaw), np.cos(yaw), 0.0])          # 1 m to the right, same heading
  moved = sim._anchor_from(right).pose[0].numpy()
  np.testing.assert_allclose(moved[:, 1], base[:, 1] - 1.0, atol=1e-5)   # the anchor is 1 m further left
  np.testing.assert_allclose(moved[:, [0, 2, 3, 4, 5]], base[:, [0, 2, 3, 4, 5]], atol=1e-5)
  turned = sim._anchor_from(origin + np.array([0.0, 0.0, 0.1])).pose[0].numpy()     # pointing 0.1 rad right
  np.testing.assert_allclose(turned[:, 5], base[:, 5] - 0.1, atol=1e-5)
  np.testing.assert_allclose(np.hypot(turned[:, 0], turned[:, 1]), np.hypot(base[:, 0], base[:, 1]), atol=1e-4)
  assert np.all(turned[:, 1] < base[:, 1])                              # an anchor ahead is now to the left
  seen = []
  plan = sim.model.plan
  monkeypatch.setattr(sim.model, "plan", lambda h, tr, anchor, t: seen.append(anchor) or plan(h, tr, anchor, t))
  sim.step((0.01, 0.0))
  np.testing.assert_allclose(seen[-1].pose[0].numpy(), sim._anchor_from(sim.car_pose()).pose[0].numpy())
  assert not np.allclose(seen[-1].pose[0].numpy(), base, atol=1e-3)


def test_re_anchored_simulator_generates_from_the_logged_frame_re_projected_to_the_car(wm_run, logged, policy_cfg):
  """predecessor "log": each frame is generated from the logged frame nearest to where the car was 0.2 s before,
  re-projected to where it is now. The untrained denoiser at temperature 0 returns its predecessor exactly, so the
  cached frame must equal that re-projection of the right logged frame; the frame used follows the car along the log."""
  import torch

  from training.data.frames import images_to_tensor
  from training.onpolicy.simulator import world_to_car
  with pytest.raises(ValueError, match="predecessor"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, device="cpu", predecessor="nearest")
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, temperature=0.0, device="cpu", predecessor="log")
  sim.reset(logged, FRAME, Deviation(lateral=0.8, heading=0.02))
  c = FRAME - 4                                          # the last context frame: where the car was 0.2 s before
  assert sim.log_frame == c

  def expected(j, pose):
    x, y, _, _, _, yaw = logged.pose_world[j]
    rel = world_to_car(pose[None, :2], np.array([x, y, yaw]))[0]
    tr = torch.tensor([[rel[0], rel[1], 0.0, 0.0, 0.0, pose[2] - yaw]], dtype=torch.float32)
    frames = sim._dataset(logged)[0]._seg(0).frames
    return sim.model.log_predecessor(sim.vae.encode(images_to_tensor(frames.frame(j))[None]), tr)

  assert torch.allclose(sim.cache.last_frame, expected(c, sim.car_pose()), atol=1e-4)
  used = [sim.log_frame]
  for _ in range(3):
    before = sim.car_pose()
    sim.step((0.0, 0.0))
    used.append(sim.log_frame)
    d = np.hypot(*(logged.pose_world[:, :2] - before[:2]).T)
    assert d[sim.log_frame] == d.min()                     # the logged frame nearest to where the car was
    assert torch.allclose(sim.cache.last_frame, expected(sim.log_frame, sim.car_pose()), atol=1e-4)
  assert used == sorted(used) and used[-1] > used[0]       # it follows the car along the log
  own = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, temperature=0.0, device="cpu")
  own.reset(logged, FRAME, Deviation(lateral=0.8, heading=0.02))
  for _ in range(3):
    own.step((0.0, 0.0))
  assert not torch.allclose(own.cache.last_frame, sim.cache.last_frame, atol=1e-2)


@pytest.mark.parametrize("predecessor", ["generated", "log"])
def test_actor_rolls_out_in_the_world_model(wm_run, policy_run, segment_dir, policy_cfg, tmp_path, predecessor):
  from training.checkpoint import load_latest
  ck = load_latest(policy_run)
  spec = WorkerSpec("worldmodel", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "cache"),
                    {"episode_steps": 4, "min_steps": 2, "wm_predecessor": predecessor,
                     "wm_speed_range": (30.0, 31.0) if predecessor == "log" else None,
                     "wm_euler_steps": 3, "wm_temperature": 0.0}, wm_run=str(wm_run))
  w = RolloutWorker(spec, ck["state"]["vision"])
  assert w.sim.predecessor == predecessor          # RolloutConfig.wm_predecessor (--wm-predecessor) reaches the sim
  assert w.sim.steps == 3 and w.sim.temperature == 0.0 and len(w.sim.taus) == 4    # and the sampling settings
  tr = w.rollouts((ck["state"]["temporal"], 3))[0]
  assert 1 <= len(tr) <= 5 and tr.version == 3 and tr.features.shape[1] == policy_cfg.feature_dim
  if predecessor == "log":                         # RolloutConfig.wm_speed_range: the episode's own speed
    assert 30.0 <= tr.info["speed"] <= 31.0 and tr.v_ego[0] == pytest.approx(tr.info["speed"])
  else:
    assert tr.info["speed"] is None


def test_lane_change_from_one_lane_over(wm_run, logged, policy_cfg):
  """A synthetic lane change in the world model (simulator.Simulator.lane_change_mode "start"): the car starts one lane
  over from the logged lane with the desire toward it; the desire ends once the car's centre is inside the logged lane."""
  from common.modelconstants import DESIRES
  from training.onpolicy.simulator import neighbour_lane_width
  side = next((s for s in (-1, 1) if neighbour_lane_width(logged, FRAME, -s) is not None), None)
  if side is None:
    pytest.skip("the logged road has no neighbour lane")
  width = float(logged.gt["lane_width"][FRAME])
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu")
  o = sim.reset(logged, FRAME, Deviation(lane_change=side))
  assert o.desire == DESIRES.index("laneChangeLeft" if side < 0 else "laneChangeRight")
  assert o.lateral_offset == pytest.approx(-side * width, abs=0.1)
  k = 0
  while o.desire and not o.done:            # the car driven straight into the logged lane: 0.3 m per step
    sim.vehicle.state.y += side * 0.3 * np.cos(sim.vehicle.state.psi)
    sim.vehicle.state.x -= side * 0.3 * np.sin(sim.vehicle.state.psi)
    o = sim.step((0.0, 0.0))
    k += 1
  assert not o.desire and abs(o.lateral_offset) < 0.5 * width and k >= 3


def test_shift_lane_change_moves_the_plan_heads_anchor_one_lane(wm_run, logged, policy_cfg):
  """"shift" lane changes in the world model: the car starts in the logged lane (the same frame as a lane-keep start
  from the same seed), the reference is the logged path one lane toward the desire, and the Plan Head gets the anchor
  moved there: its anchor poses are the lane-keep start's shifted one lane width to the desire's side."""
  from common.modelconstants import DESIRES
  from training.onpolicy.simulator import neighbour_lane_width
  side = next((s for s in (-1, 1) if neighbour_lane_width(logged, FRAME, s) is not None), None)
  if side is None:
    pytest.skip("the logged road has no neighbour lane")
  width = float(logged.gt["lane_width"][FRAME])
  base = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=5, device="cpu")
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=5, device="cpu")
  sim.set_lane_change_mode("shift")
  b, o = base.reset(logged, FRAME), sim.reset(logged, FRAME, Deviation(lane_change=side))
  assert o.desire == DESIRES.index("laneChangeLeft" if side < 0 else "laneChangeRight")
  assert np.array_equal(o.image, b.image)
  assert o.lateral_offset - b.lateral_offset == pytest.approx(-side * width, abs=0.1)
  pa = base._anchor_from(base.car_pose()).pose[0].numpy()
  ps = sim._anchor_from(sim.car_pose()).pose[0].numpy()
  # car frame, y right: the anchor one lane to the desire's side, nothing else moved
  np.testing.assert_allclose(ps[:, 1] - pa[:, 1], side * width * np.cos(pa[:, 5]), atol=0.05)
  np.testing.assert_allclose(ps[:, 0] - pa[:, 0], -side * width * np.sin(pa[:, 5]), atol=0.05)
  np.testing.assert_allclose(ps[:, 2:], pa[:, 2:], atol=1e-6)


def test_log_expert_labels_like_the_reprojective_simulator(wm_run, logged, policy_cfg):
  """expert="log" (the diagnostic of sim_worldmodel.py): the world model's frames, the reprojective simulator's label
  for the same car state (the smooth return to the logged path)."""
  from training.onpolicy.sim_reprojective import ReprojectiveSimulator
  dev = Deviation(lateral=0.8, heading=0.02)
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu", expert="log")
  rep = ReprojectiveSimulator(policy_cfg.frame_spec)
  o, r = sim.reset(logged, FRAME, dev), rep.reset(logged, FRAME, dev)
  head = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu").reset(logged, FRAME, dev)
  for _ in range(3):
    o, r = sim.step((0.0, 0.0)), rep.step((0.0, 0.0))
  assert o.lateral_offset == pytest.approx(r.lateral_offset, abs=0.02)
  assert np.abs(o.expert_plan[:, :2] - r.expert_plan[:, :2]).max() < 0.05
  assert o.expert_action[0] == pytest.approx(r.expert_action[0], abs=1e-4)
  assert o.expert_action[0] > 0                      # 0.8 m right of the log: the return turns left (+ = left)
  assert not np.allclose(head.expert_plan, WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu",
                                                               expert="log").reset(logged, FRAME, dev).expert_plan)
  # this label needs no anchor: the rollout goes on past the anchor's reach, generating without the anchors
  t_done, n = sim.t_done, 3
  while sim.t_now < t_done + 2 * SIM_DT and n < 60:
    o = sim.step(o.expert_action)                    # the expert drives: the episode is not cut by the offset
    n += 1
    assert not o.done and np.isfinite(o.image).all() and np.isfinite(o.expert_plan).all()
  assert sim.t_now >= t_done + 2 * SIM_DT and sim.cache.anchor is None
  with pytest.raises(ValueError, match="expert"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, device="cpu", expert="oracle")


def test_rolling_anchor_takes_a_new_anchor_from_the_log(wm_run, logged, policy_cfg):
  """rolling_anchor: when the anchor comes within 2 s the log gives a new one 2-9 s ahead, and the rollout goes on
  with the Plan Head planning to it; it ends when the log has no anchor 2 s ahead left."""
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu", rolling_anchor=True)
  o = sim.reset(logged, FRAME)
  first_end, ends, n = sim.t_end, {sim.t_end}, 0
  while not o.done and n < 200:
    o = sim.step(o.expert_action)
    n += 1
    ends.add(sim.t_end)
    assert np.isfinite(o.expert_plan).all() and sim.t_end - sim.t_now >= 2.0 - SIM_DT - 1e-6 or o.done
  assert len(ends) >= 2 and max(ends) > first_end
  # the anchor poses the Plan Head gets are those of the logged frames at the new anchor's time
  assert o.done and sim.t_end <= float(logged.duration) + 1e-6
  single = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu")
  o1, k = single.reset(logged, FRAME), 0
  while not o1.done:
    o1 = single.step(o1.expert_action)
    k += 1
  assert n > k


def test_rollout_ends_when_the_car_is_far_from_the_log(wm_run, logged, policy_cfg):
  """Like the other simulators, a world-model rollout ends when the car is 2.5 m farther from the log than at reset."""
  from training.onpolicy.simulator import MAX_OFFSET
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu", rolling_anchor=True)
  o, n = sim.reset(logged, FRAME, Deviation(lateral=0.5)), 0
  while not o.done:
    o = sim.step((0.02, 0.0))                # a hard left turn
    n += 1
    assert n < 40
  assert abs(o.lateral_offset) > 0.5 + MAX_OFFSET - 0.05 and sim.t_now < sim.t_done


def test_episode_at_its_own_speed_follows_the_log_by_position(wm_run, logged, policy_cfg):
  """Deviation.speed (RolloutConfig.wm_speed_range): the car starts at that speed and follows the log by position:
  the reference, the logged speeds and the anchors are read at the logged frame it has reached, the anchors are
  re-cached as far ahead of the car in time as the log has them ahead of that frame, and the labels drive the
  logged speed profile shifted to the episode's speed."""
  from common.modelconstants import PLAN_SLICES, T_IDXS
  V, P = PLAN_SLICES["velocity"].start, PLAN_SLICES["position"].start
  v_log = float(logged.v_ego[FRAME])
  dev = Deviation(lateral=0.6, speed=v_log + 8.0)
  # the geometric label: a return to the logged path, at the shifted speeds, from where the car is
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu", expert="log")
  o = sim.reset(logged, FRAME, dev)
  assert sim.by_position and o.v_ego == pytest.approx(v_log + 8.0)
  assert o.expert_plan[0, V] == pytest.approx(v_log + 8.0, abs=0.3)
  for _ in range(12):
    o = sim.step(o.expert_action)
  # 2.4 s at 8 m/s more than the log: the car is ~19 m (about a second of log) ahead of the logged frame of the time now
  ahead = sim.progress - (sim.frame0 + 4 * sim.k)
  assert 0.6 * 2.4 * 8.0 / v_log * 20 < ahead < 1.4 * 2.4 * 8.0 / v_log * 20, ahead
  assert sim.logged_index == sim.progress and sim.clock_shift == pytest.approx(ahead / 20, abs=0.06)
  assert abs(o.lateral_offset) < 0.3 and o.v_ego == pytest.approx(v_log + 8.0, abs=2.0)
  # the Plan Head: anchors re-cached at the logged time ahead of the car's progress, its path at the episode's speed
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu", rolling_anchor=True)
  o = sim.reset(logged, FRAME, dev)
  for _ in range(6):
    o = sim.step((0.0, 0.0) if o.done else o.expert_action)
    assert float(sim.cache.anchor.t[0, 0]) == pytest.approx(sim.t_end, abs=1e-5)
    d = sim._dataset(logged)[0]._seg(0)
    t_log_anchor = float(sim._anchor[2][0, 0])
    assert sim.t_end - sim.t_now == pytest.approx(t_log_anchor - (d.times[sim.progress] - d.t0), abs=SIM_DT / 4 + 1e-3)
  assert sim.clock_shift > 0.1
  plan = o.expert_plan
  assert plan[0, V] == pytest.approx(logged.v_ego[sim.progress] + 8.0, abs=0.5)
  head = sim.plan                                      # the Plan Head's own plan: the same path, other times
  dist = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(head[:, P:P + 2], axis=0).T))])
  near = (plan[:, P] > 5.0) & (plan[:, P] < 0.8 * head[-1, P])
  assert near.sum() > 5 and dist[-1] > 0
  assert np.abs(plan[near, P + 1] - np.interp(plan[near, P], head[:, P], head[:, P + 1])).max() < 0.3
  assert np.all(np.diff(plan[:, P]) >= -1e-6) and plan[-1, P] > (v_log + 4.0) * T_IDXS[-1]
  # without a speed of its own, the log is followed by time as before
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, device="cpu")
  sim.reset(logged, FRAME, Deviation(lateral=0.6))
  sim.step((0.0, 0.0))
  assert not sim.by_position and sim.logged_index == FRAME + 4


def test_logged_frames_are_encoded_once_per_segment(wm_run, logged, policy_cfg, monkeypatch):
  """A logged frame's latent (the VAE's posterior mean: it depends on the frame alone) is kept across resets in its
  segment: the same episode again encodes nothing, generates the same frames, and every kept latent equals the
  frame's own encoding."""
  import torch

  from training.data.frames import images_to_tensor
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, temperature=0.0, device="cpu", predecessor="log",
                            rolling_anchor=True)
  encode, encoded = sim.vae.encode, []
  monkeypatch.setattr(sim.vae, "encode", lambda x: encoded.append(len(x)) or encode(x))

  def episode():
    images = [sim.reset(logged, FRAME, Deviation(lateral=0.4)).image]
    images += [sim.step((0.001, 0.0)).image for _ in range(4)]
    return images

  first = episode()
  C, A = sim.cfg.context_frames, sim.cfg.anchor_frames
  assert sum(encoded) >= C + A + 4          # the context, the anchor and the logged frames the car passed
  kept = dict(sim._latent_memo[str(logged.path)])
  assert len(kept) == sum(encoded)          # none encoded twice
  encoded.clear()
  again = episode()
  assert encoded == [] and all(np.array_equal(a, b) for a, b in zip(first, again))
  frames = sim._dataset(logged)[0]._seg(0).frames
  for j, lat in kept.items():
    assert torch.allclose(lat, encode(images_to_tensor(frames.frame(j))[None])[0], atol=1e-4)


def test_nearer_anchors_are_drawn_within_anchor_max_s(wm_run, logged, policy_cfg):
  """anchor_max_s: the reset's anchor and every rolling one are drawn 2 s to anchor_max_s ahead instead of the training
  windows' 2-9 s; a value not above 2 s is refused."""
  with pytest.raises(ValueError, match="anchor_max_s"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, device="cpu", anchor_max_s=2.0)
  sim = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=1, device="cpu", rolling_anchor=True, anchor_max_s=3.0)
  ahead = []
  for start in (FRAME, FRAME + 8):
    o, n = sim.reset(logged, start), 0
    ahead.append(sim.t_end - (sim.t_now - SIM_DT))      # from the last context frame, as the dataset draws it
    last_end = sim.t_end
    while not o.done and n < 60:
      o = sim.step(o.expert_action)
      n += 1
      if sim.t_end != last_end:                          # a rolling anchor, drawn from the frame of the time now
        ahead.append(sim.t_end - sim.t_now)
        last_end = sim.t_end
  assert len(ahead) >= 4
  assert all(2.0 - SIM_DT - 1e-6 <= a <= 3.0 + 0.06 for a in ahead), ahead


def _alone_and_batched(wm_run, logged, policy_cfg, devs, **kw):
  """The same episodes in two sets of simulators, each set sharing one model and its logged windows (an actor's
  slots): one set to be stepped one by one, the other in one batch."""
  sets = []
  for _ in range(2):
    sims = [WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=10, device="cpu", **kw)]
    sims += [WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=10 + i, device="cpu", share=sims[0],
                                 **kw) for i in range(1, len(devs))]
    assert all(s.model is sims[0].model and s._latent_memo is sims[0]._latent_memo for s in sims)
    sets.append(sims)
  alone, batch = sets
  assert alone[0].model is not batch[0].model
  for sims in (alone, batch):
    for s, (frame, dev) in zip(sims, devs):
      s.reset(logged, frame, dev)
  return alone, batch


def _assert_same(alone, batch, obs_a, obs_b):
  import torch
  for sa, sb, oa, ob in zip(alone, batch, obs_a, obs_b):
    assert torch.allclose(sa.cache.last_frame, sb.cache.last_frame, atol=1e-5)
    assert np.abs(oa.image.astype(int) - ob.image).max() <= 1
    np.testing.assert_allclose(oa.expert_plan, ob.expert_plan, atol=1e-4)
    assert oa.done == ob.done and oa.lateral_offset == pytest.approx(ob.lateral_offset)


@pytest.mark.parametrize("predecessor", ["generated", "log"])
def test_batched_rollouts_make_the_frames_each_episode_makes_alone(wm_run, logged, policy_cfg, predecessor):
  """step_batch runs the DiT and the VAE once over an actor's episodes (sim_worldmodel.generate_frames): every
  episode gets the frames, plans and cache it gets stepped alone, whatever else is in its batch."""
  from training.onpolicy.simulator import step_batch
  devs = [(FRAME, Deviation(lateral=0.5)), (FRAME + 8, Deviation(lateral=-0.7, heading=0.02)),
          (FRAME, Deviation(lateral=0.1, curvature_noise=1e-3))]
  alone, batch = _alone_and_batched(wm_run, logged, policy_cfg, devs, predecessor=predecessor)
  actions = [(0.002, 0.1), (-0.003, 0.0), (0.0, -0.2)]
  for _ in range(3):
    _assert_same(alone, batch, [s.step(a) for s, a in zip(alone, actions)], step_batch(batch, actions))
  # an episode whose cache has another layout (here: its anchor dropped) is batched apart from the others
  for s in (alone[1], batch[1]):
    s.cache.set_anchors([None] * len(s.model.blocks), None)
  from training.onpolicy.sim_worldmodel import _grouped_prefixes
  assert sorted(len(idx) for idx, _ in _grouped_prefixes(batch)) == [1, 2]
  _assert_same(alone, batch, [s.step(a) for s, a in zip(alone, actions)], step_batch(batch, actions))
  # an episode that drops its anchor between the Euler steps and the caching pass (expert "log" past the anchor's
  # reach) is cached apart from the others
  for s in (alone[2], batch[2]):
    s.expert, s.t_done = "log", s.t_now
  seen = []                                                  # (batch, cached tokens) of every DiT pass
  frame_pass = batch[0].model.frame_pass
  batch[0].model.frame_pass = lambda x, *a: seen.append((x.shape[0], a[-1][0][0].shape[2])) or frame_pass(x, *a)
  _assert_same(alone, batch, [s.step(a) for s, a in zip(alone, actions)], step_batch(batch, actions))
  assert batch[2].cache.anchor is None and sorted(len(idx) for idx, _ in _grouped_prefixes(batch)) == [1, 2]
  no_anchor = batch[1].cache.prefix(0)[0].shape[2]         # the cached tokens of a cache without anchors
  assert seen[-2:] == [(1, batch[0].cache.prefix(0)[0].shape[2]), (2, no_anchor)] or \
    seen[-2:] == [(2, no_anchor), (1, batch[0].cache.prefix(0)[0].shape[2])]
  with pytest.raises(ValueError, match="share one model"):
    step_batch([alone[0], batch[1]], actions[:2])
  with pytest.raises(ValueError, match="2 actions for 3"):
    step_batch(batch, actions[:2])
  with pytest.raises(ValueError, match="not the world model"):
    WorldModelSimulator(policy_cfg.frame_spec, logged.path, share=batch[0])


def test_actor_runs_a_batch_of_episodes(wm_run, policy_run, segment_dir, policy_cfg, tmp_path):
  """RolloutConfig.actor_batch: an actor keeps that many episodes in flight, returns the ones that finished at each
  call, starts new ones in their slots and goes on with the others under the newest weights."""
  from training.checkpoint import load_latest
  ck = load_latest(policy_run)
  spec = WorkerSpec("worldmodel", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "cache"),
                    {"episode_steps": 5, "min_steps": 2, "wm_euler_steps": 2, "actor_batch": 3},
                    wm_run=str(wm_run))
  w = RolloutWorker(spec, ck["state"]["vision"])
  assert len(w.sims) == 3 and all(s.model is w.sim.model for s in w.sims)
  assert len({s.generator.initial_seed() for s in w.sims}) == 3          # each slot draws its own noise
  first = w.rollouts((ck["state"]["temporal"], 3))
  assert 1 <= len(first) <= 3 and all(t.version == 3 and t.info["batch"] == 3 for t in first)
  in_flight = [ep for ep in w.slots if ep is not None]
  assert len(in_flight) == 3 - len(first) and all(ep.version == 3 and ep.k > 0 for ep in in_flight)
  later = []
  for _ in range(4):
    later += w.rollouts((ck["state"]["temporal"], 4))
  # the episodes begun under version 3 report it; the rest were begun under 4
  assert sum(t.version == 3 for t in later) >= len(in_flight) and {t.version for t in later} <= {3, 4}
  assert 4 in {t.version for t in later}
  for t in first + later:
    assert 1 <= len(t) <= 6 and t.info["frames"] == len(t) and np.isfinite(t.features).all()
  with pytest.raises(ValueError, match="actor_batch"):
    RolloutWorker(WorkerSpec("worldmodel", policy_cfg.to_dict(), [str(segment_dir)], None, {"actor_batch": 0},
                             wm_run=str(wm_run)), ck["state"]["vision"])


def test_logged_latents_come_from_the_world_models_latent_cache(wm_run, logged, policy_cfg, tmp_path, monkeypatch):
  """Where the world-model run's latent cache holds a segment, the simulator reads the logged frames' latents from it
  (the float16 values the DiT was trained on) instead of encoding the frames; elsewhere it encodes them."""
  import json
  import shutil

  import torch

  from training.data.latent_cache import build_latent_cache, store_root
  from training.vae import load_vae
  plain = WorldModelSimulator(policy_cfg.frame_spec, wm_run, steps=2, seed=3, device="cpu")
  plain.reset(logged, FRAME)
  encoded = plain._latents([FRAME - 4, FRAME + 6])
  run = tmp_path / "run"
  shutil.copytree(wm_run, run)
  vae = load_vae(plain.run_cfg["vae"])
  root = store_root(tmp_path / "cache", vae.identity, plain.cfg.frame_hw)
  build_latent_cache(None, vae, tmp_path / "cache", frame_hw=plain.cfg.frame_hw, segments=[logged.path], progress=False)
  for cfg_file in run.glob("ckpt_*.json"):
    ck = json.loads(cfg_file.read_text())
    ck.setdefault("config", {})["latent_root"] = str(root)
    cfg_file.write_text(json.dumps(ck))
  sim = WorldModelSimulator(policy_cfg.frame_spec, run, steps=2, seed=3, device="cpu")
  assert sim.run_cfg.get("latent_root") == str(root)
  monkeypatch.setattr(sim.vae, "encode", lambda x: pytest.fail("encoded a frame the latent cache holds"))
  sim.reset(logged, FRAME)
  cached = sim._latents([FRAME - 4, FRAME + 6])
  assert cached.dtype == torch.float32 and torch.allclose(cached, encoded, atol=2e-2 * encoded.abs().max())
  assert not torch.equal(cached, encoded)                       # float16 in the cache
  assert sim._latent_stores[str(logged.path)] is not None and not sim._latent_memo
  sim.step((0.0, 0.0))


def test_frame_decoder_makes_the_policys_frames_from_the_generated_latents(wm_run, logged, policy_cfg, tmp_path):
  """RolloutConfig.wm_frame_decoder: the frames the policy sees come from the frame decoder's pass over each generated
  latent, alone and batched; the generation itself is unchanged. A decoder of another codec or size is refused."""
  import torch

  from training.frame_decoder import FrameDecoder, FrameDecoderConfig, save_frame_decoder
  from training.onpolicy.simulator import step_batch
  from training.vae import load_vae
  vae = load_vae(wm_run.parent / "vae")
  hw = (policy_cfg.frame_h, policy_cfg.frame_w)
  torch.manual_seed(0)
  fd = FrameDecoder(FrameDecoderConfig.for_upsample(8)).eval()      # the fixture's 8x16 latents -> 64x128 frames
  save_frame_decoder(fd, tmp_path / "fd", vae, hw)
  kw = dict(steps=2, device="cpu")
  sims = [WorldModelSimulator(policy_cfg.frame_spec, wm_run, seed=10, frame_decoder=tmp_path / "fd", **kw)]
  sims.append(WorldModelSimulator(policy_cfg.frame_spec, wm_run, seed=11, frame_decoder=tmp_path / "fd",
                                  share=sims[0], **kw))
  plain = WorldModelSimulator(policy_cfg.frame_spec, wm_run, seed=10, **kw)
  obs = [s.reset(logged, FRAME + 4 * i, Deviation(lateral=0.5)) for i, s in enumerate(sims)]
  o_plain = plain.reset(logged, FRAME, Deviation(lateral=0.5))
  assert torch.equal(sims[0].cache.last_frame, plain.cache.last_frame)          # the same latent ...
  assert not np.array_equal(obs[0].image, o_plain.image)                         # ... shown through another decoder
  for _ in range(2):
    for s, o in zip(sims, obs):
      assert o.image.shape == (*hw, 3) and np.array_equal(o.image, fd.images(s.cache.last_frame)[0])
    obs = step_batch(sims, [(0.001, 0.0), (-0.001, 0.0)])
  torch.manual_seed(1)
  save_frame_decoder(FrameDecoder(FrameDecoderConfig.for_upsample(4)), tmp_path / "half", vae, (32, 64))
  with pytest.raises(ValueError, match="the policy sees 64x128"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, frame_decoder=tmp_path / "half", **kw)
  with pytest.raises(ValueError, match="frame decoder"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, share=sims[0], **kw)
  vae.ae.decoder.conv_out.bias.data += 0.1                                       # another codec's decoder
  save_frame_decoder(fd, tmp_path / "other", vae, hw)
  with pytest.raises(ValueError, match="distilled from the codec"):
    WorldModelSimulator(policy_cfg.frame_spec, wm_run, frame_decoder=tmp_path / "other", **kw)
