"""Actors of on-policy training (paper §5.1, IMPALA-like): each holds the policy (the frozen FastViT extractor with
its information bottleneck, and a copy of the temporal model) and RolloutConfig.actor_batch simulators, rolls episodes
out with the newest weights it was given and returns finished trajectories to the learner.

Batched rollouts: an actor keeps actor_batch episodes in flight, one per simulator (slot), and steps them in
lock-step: each step one vision and one temporal forward over all of them, then simulator.step_batch (the world model:
one DiT pass per Euler step over their stacked KV caches and one VAE decode; sim_worldmodel.generate_frames). A call
returns the episodes that ended at that step and leaves the others in flight; their empty slots get new episodes at
the next call. Slot j's simulator has its own seed, and the world model's share the first one's networks.

An episode: a logged window (segment, frame) drawn uniformly from the actor's segments, a Deviation drawn from
RolloutConfig (initial lateral offset and heading, OU noise on the executed curvature, optionally a synthetic lane
change in the procedural world) and a DAgger mixing weight beta (the executed action is beta * expert action +
(1 - beta) * policy action, so early, poor policies still visit states near the ones they must learn),
then up to `episode_steps` simulator steps of 0.2 s (simulator.py) with the
policy in closed loop, exactly as modeld runs it at 5 Hz: the vision model sees [frame(t-0.2 s), frame(t)], the
temporal model the last `history` features (the first one repeated after a reset), the speed and the one-hot desire;
the action is the parsed `action` output (modeld.parse_model_outputs), the bottleneck noise is off.

Trajectory = per visited state: the extractor features, speed, desire, the policy's action, the expert's plan and
action for that state, the lateral offset from the expert's reference, and `version`, the learner step whose
weights produced it (the learner logs policy lag = its step - version).

RolloutWorker is a plain class (used in-process by LocalActorPool and by tests); RayActorPool runs N of them as
Ray actors (ray.remote with max_restarts=-1): a dead actor is restarted by Ray and its in-flight episodes are lost and
replaced by new ones; trajectories that reached the learner are kept by the learner.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.modelconstants import DESIRE_LEN, IDX_N, PLAN_WIDTH
from modeld.parse_model_outputs import parse_outputs
from training.onpolicy.mirror import mirror_image
from training.onpolicy.simulator import (
  RETURN_SPEED,
  RETURN_TIME,
  Deviation,
  LoggedSegment,
  check_return,
  check_speed_range,
  load_logged_segment,
  step_batch,
)
from training.policy.model import PolicyConfig, TemporalPolicy, VisionModel

log = logging.getLogger(__name__)

SIMULATORS = ("worldmodel", "reprojective", "procedural")


@dataclass
class RolloutConfig:
  episode_steps: int = 40           # 8 s of 0.2 s steps (the world model: up to its future anchor f_s)
  max_lateral: float = 1.2          # m, initial offset ~ U(-max, max)
  max_heading_deg: float = 3.0      # initial heading error ~ U(-max, max)
  curvature_noise: float = 1e-3     # 1/m, std of the OU noise on the executed curvature (tau 1 s)
  # share of the episodes that are a synthetic lane change, in the procedural world and in the log-bound simulators
  # (there the car starts one lane over from the logged lane: simulator.Simulator.lane_change_mode). A lane change's
  # desire lasts 1-2 s of an episode, so even at 0.5 few visited states have one; the log-bound share is off because
  # it costs the reprojective policy its lane keeping (docs/experiments.md, 2026-12-04, lane changes)
  lane_change_prob: float = 0.5
  log_lane_change_prob: float = 0.0
  # how the log-bound simulators make one (simulator.Simulator.lane_change_mode): "start", the car one lane over and
  # the logged lane the target, or "shift", the car in the logged lane and the logged path shifted one lane toward
  # the desire the target (in the world model the Plan Head plans to the anchor moved there)
  log_lane_change_mode: str = "start"
  min_steps: int = 10               # windows with fewer steps of log ahead are not used
  # consecutive episodes an actor starts in one segment, at start frames drawn anew: the procedural world builds a
  # segment's renderer (~0.7 s, longer than most episodes) once for them instead of once per episode. 1 = every
  # episode's start drawn over all segments (docs/experiments.md, 2026-12-04, lane changes)
  segment_episodes: int = 1
  expert_mix: float = 0.5           # DAgger's beta: each episode executes beta * expert + (1 - beta) * policy action,
                                    # beta ~ U(0, expert_mix) (0 = the policy alone)
  wm_predecessor: str = "generated" # world model only: what each frame is generated from besides its cache,
                                    # "generated" (its own previous frame) or "log" (sim_worldmodel.py: re-anchored)
  wm_expert: str = "plan_head"      # world model only: who labels its states, the Plan Head (the paper) or "log",
                                    # the geometric return to the logged path (a diagnostic: sim_worldmodel.py)
  wm_rolling_anchor: bool = False   # world model only: a new future anchor from the log when the current one comes
                                    # within 2 s, so that episodes are not cut at the first (sim_worldmodel.py)
  # world model only: the Plan Head's anchors drawn 2 s to this far ahead (None: to the training windows' 9 s); a
  # nearer anchor asks for a quicker return from the same offset (sim_worldmodel.py: nearer anchors)
  wm_anchor_max_s: float | None = None
  wm_euler_steps: int = 8           # world model only: Euler steps per frame, and the scale of each frame's starting
  wm_temperature: float = 0.8       # noise (sim_worldmodel.py: sampling)
  # world model only: a frame decoder folder (training.frame_decoder, distilled from the world model's codec) that makes
  # the policy's frames from the generated latents; None: the codec's decode, area-resized (sim_worldmodel.py: frames)
  wm_frame_decoder: str | None = None
  # procedural only: initial speed ~ U(low, high) m/s, the expert driving the logged speed profile shifted to it
  # (None: the logged speed). The generated logs hold 16-27 m/s (1st-99th percentile), the suites drive at 15 and
  # 30 m/s; at the logged speeds the ground-truth policy left its lane at 30 m/s (docs/experiments.md, 2026-12-04)
  speed_range: tuple[float, float] | None = (14.0, 32.0)
  # world model only: the same, the car following the log by position (sim_worldmodel.py: a speed of its own). Logged
  # segments can tie speed to place on the route, and world-model policies learnt the curvature from the speed; off:
  # without that tie they still drifted, with the labels' mean (docs/experiments.md, 2026-12-05)
  wm_speed_range: tuple[float, float] | None = None
  # reprojective only: a VAE folder (e.g. the world model's RUN/vae); each frame goes through its encode + decode, as
  # the world model's frames do (sim_reprojective.py). A diagnostic: what the codec alone costs the policy
  rep_codec: str | None = None
  # the geometric experts' return (procedural, reprojective; simulator.return_plan): a critically damped approach to
  # the reference path over return_time seconds of driving up to return_speed, longer in proportion to speed above it
  # (None: the same time at every speed)
  return_time: float = RETURN_TIME
  return_speed: float | None = RETURN_SPEED
  # the actors also send the features of each state's mirrored frames, and the learner draws half its windows
  # mirrored (training/onpolicy/mirror.py): the data hold every state and its mirror image, so no lateral bias
  mirror: bool = False
  # m/s^2 of lateral acceleration per metre of the car's mean offset from the expert's reference over the policy's
  # history window, added to the expert's curvature label where no desire is set (steady_offset_labels)
  steady_offset_gain: float = 0.0
  # episodes each actor runs at once, in lock-step, its networks batched over them (the policy's vision and temporal
  # models, the world model's DiT and VAE decode: sim_worldmodel.generate_frames); a finished one is replaced by a new
  # one at the actor's next call (RolloutWorker.rollouts)
  actor_batch: int = 1

  def __post_init__(self):
    if self.wm_euler_steps < 1 or not self.wm_temperature >= 0:
      raise ValueError(f"wm_euler_steps={self.wm_euler_steps}, wm_temperature={self.wm_temperature}: expected >= 1 "
                       f"step and a temperature >= 0")
    for rng in (self.speed_range, self.wm_speed_range):
      if rng is not None:
        check_speed_range(rng)
    check_return(self.return_time, self.return_speed)
    if self.actor_batch < 1:
      raise ValueError(f"actor_batch={self.actor_batch}: expected >= 1 episode per actor")
    if self.segment_episodes < 1:
      raise ValueError(f"segment_episodes={self.segment_episodes}: expected >= 1")
    if self.log_lane_change_mode not in ("start", "shift"):
      raise ValueError(f"log_lane_change_mode={self.log_lane_change_mode!r}: expected 'start' or 'shift'")
    for name in ("lane_change_prob", "log_lane_change_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name}={getattr(self, name)}: expected a probability in [0, 1]")


@dataclass
class Trajectory:
  features: np.ndarray        # (L, D) float32
  v_ego: np.ndarray           # (L,) float32
  desire: np.ndarray          # (L,) int64
  action: np.ndarray          # (L, 2) the policy's action (before the injected noise)
  expert_plan: np.ndarray     # (L, IDX_N, PLAN_WIDTH) float32
  expert_action: np.ndarray   # (L, 2) float32
  lateral_offset: np.ndarray  # (L,) m from the expert's reference
  version: int                # learner step of the weights that produced it
  actor: int = 0
  info: dict = field(default_factory=dict)
  # (L, D) float32: the features of the mirrored frames (RolloutConfig.mirror; training/onpolicy/mirror.py), or None
  features_mirror: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.v_ego)

  def check(self) -> Trajectory:
    L = len(self)
    shapes = {"features": (L, self.features.shape[1]), "desire": (L,), "action": (L, 2),
              "expert_plan": (L, IDX_N, PLAN_WIDTH), "expert_action": (L, 2), "lateral_offset": (L,)}
    if self.features_mirror is not None:
      shapes["features_mirror"] = shapes["features"]
    for k, shp in shapes.items():
      if getattr(self, k).shape != shp:
        raise ValueError(f"Trajectory.{k}: shape {getattr(self, k).shape}, expected {shp}")
    for k in ("features", "expert_plan", "expert_action", "v_ego") + (() if self.features_mirror is None
                                                                     else ("features_mirror",)):
      if not np.isfinite(getattr(self, k)).all():
        raise ValueError(f"Trajectory.{k}: non-finite values (actor {self.actor}, {self.info})")
    return self


def steady_offset_labels(expert_action: np.ndarray, offset: np.ndarray, desire: np.ndarray, v_ego: np.ndarray,
                         history: int, gain: float) -> np.ndarray:
  """The expert's (L, 2) action labels of one episode with a term against steady offsets: at each state whose
  history window (the state and the `history` - 1 before it, as the policy sees them) has no desire, the curvature
  gets gain * mean(offset over the window) / v^2 (+ = left: a car right of the reference is sent left).

  The geometric expert returns gently at speed (simulator.return_plan: over 1.6 s of driving at 30 m/s, 0.56e-3 1/m
  per metre of offset), so a policy that misreads a straight road's curvature by a few 1e-4 1/m settles that many
  metres per 0.56e-3 off the centre, and the expert, which knows the road, never asks for more. The window's mean is
  the offset the policy can see it has held: the term raises the loop's gain for steady offsets only (a moving
  average lags a return), and it is zero once the car is centred (docs/experiments.md, 2026-12-05, session after
  stop 39)."""
  out = np.array(expert_action, dtype=np.float32, copy=True)
  offset, desire, v_ego = np.asarray(offset, np.float64), np.asarray(desire), np.asarray(v_ego, np.float64)
  for k in range(len(out)):
    w = slice(max(0, k - history + 1), k + 1)
    if not np.any(desire[w] != 0):
      out[k, 0] += np.float32(gain * offset[w].mean() / max(float(v_ego[k]), 1.0) ** 2)
  return out


def make_simulator(name: str, frame_spec: dict, seed: int, wm_run: str | None = None,
                   wm_predecessor: str = "generated", return_time: float = RETURN_TIME,
                   return_speed: float | None = RETURN_SPEED, wm_expert: str = "plan_head",
                   wm_rolling_anchor: bool = False, rep_codec: str | None = None, wm_euler_steps: int = 8,
                   wm_temperature: float = 0.8, wm_anchor_max_s: float | None = None,
                   wm_frame_decoder: str | None = None, share=None):
  """The simulator `name` names. share: another simulator of the same kind whose costly state this one uses, for an
  actor's episode slots (the world model's networks, logged windows and latents; the procedural worlds and their
  renderers; the reprojective simulator keeps none)."""
  if name == "procedural":
    from training.onpolicy.sim_procedural import ProceduralSimulator
    return ProceduralSimulator(frame_spec, seed=seed, return_time=return_time, return_speed=return_speed, share=share)
  if name == "reprojective":
    from training.onpolicy.sim_reprojective import ReprojectiveSimulator
    return ReprojectiveSimulator(frame_spec, seed=seed, return_time=return_time, return_speed=return_speed,
                                 codec=rep_codec)
  if name == "worldmodel":
    from training.onpolicy.sim_worldmodel import WorldModelSimulator
    if wm_run is None:
      raise ValueError("--sim worldmodel needs --wm RUN (a training.worldmodel.train run with a Plan Head)")
    return WorldModelSimulator(frame_spec, wm_run, seed=seed, predecessor=wm_predecessor, expert=wm_expert,
                               return_time=return_time, return_speed=return_speed, rolling_anchor=wm_rolling_anchor,
                               steps=wm_euler_steps, temperature=wm_temperature, anchor_max_s=wm_anchor_max_s,
                               frame_decoder=wm_frame_decoder, share=share)
  raise ValueError(f"unknown simulator {name!r}; choose from {SIMULATORS}")


@dataclass
class WorkerSpec:
  sim: str
  policy: dict                     # PolicyConfig.to_dict()
  segments: list[str]
  cache_dir: str | None
  rollout: dict = field(default_factory=lambda: asdict(RolloutConfig()))
  wm_run: str | None = None
  seed: int = 0


@dataclass
class _Episode:
  """One episode in flight in an actor's slot: its simulator and draws, the newest observation and what it has
  recorded so far (per visited state)."""
  sim: object
  seg: LoggedSegment
  frame: int
  dev: Deviation
  n_steps: int
  beta: float
  version: int
  t0: float
  obs: object
  prev_img: np.ndarray
  k: int = 0
  feats: list = field(default_factory=list)
  feats_m: list = field(default_factory=list)
  speeds: list = field(default_factory=list)
  desires: list = field(default_factory=list)
  acts: list = field(default_factory=list)
  plans: list = field(default_factory=list)
  eacts: list = field(default_factory=list)
  offs: list = field(default_factory=list)


class RolloutWorker:
  """One actor: the policy + RolloutConfig.actor_batch simulators (slots), one episode in each. set_weights(...)
  then rollouts() -> the Trajectories of the episodes that finished."""

  def __init__(self, spec: WorkerSpec, vision_state: dict, actor_id: int = 0):
    torch.set_num_threads(1)
    # process-wide, yet here and not in a tool's main: as a Ray actor this worker is a process of its own, and its
    # constructor is the only set-up code that runs in it
    self.spec, self.actor_id = spec, actor_id
    self.cfg = PolicyConfig.from_dict(spec.policy)
    self.rc = RolloutConfig(**spec.rollout)
    self.vision = VisionModel(self.cfg)
    self.vision.load_state_dict(vision_state)
    self.vision.eval().requires_grad_(False).reparameterize()   # the inference form modeld runs (same features)
    self.temporal = TemporalPolicy(self.cfg).eval().requires_grad_(False)
    self.version = -1
    self.rng = np.random.default_rng([spec.seed, actor_id, int(time.time_ns() % 2**31)])
    cache = Path(spec.cache_dir) if spec.cache_dir else None
    self.segments: list[LoggedSegment] = [load_logged_segment(p, self.cfg, cache) for p in spec.segments]
    self.sims = []
    for j in range(self.rc.actor_batch):      # slot j's simulator: seeds apart, the first one's networks shared
      self.sims.append(make_simulator(
        spec.sim, self.cfg.frame_spec, seed=spec.seed * 1000 + actor_id + 1_000_003 * j, wm_run=spec.wm_run,
        wm_predecessor=self.rc.wm_predecessor, return_time=self.rc.return_time, return_speed=self.rc.return_speed,
        wm_expert=self.rc.wm_expert, wm_rolling_anchor=self.rc.wm_rolling_anchor, rep_codec=self.rc.rep_codec,
        wm_euler_steps=self.rc.wm_euler_steps, wm_temperature=self.rc.wm_temperature,
        wm_anchor_max_s=self.rc.wm_anchor_max_s, wm_frame_decoder=self.rc.wm_frame_decoder,
        share=self.sims[0] if self.sims else None))
      if spec.sim != "procedural" and self.rc.log_lane_change_prob > 0:
        self.sims[-1].set_lane_change_mode(self.rc.log_lane_change_mode)
    self.slots: list[_Episode | None] = [None] * self.rc.actor_batch
    self.starts = [(i, f) for i, s in enumerate(self.segments) for f in range(0, len(s), 2)
                   if self.sim.max_steps(s, f) >= self.rc.min_steps]
    self.starts_in = {}                  # segment -> its start frames
    for i, f in self.starts:
      self.starts_in.setdefault(i, []).append(f)
    self._segment, self._segment_left = None, 0
    if not self.starts:
      raise ValueError(f"actor {actor_id}: no segment of {spec.segments} has {self.rc.min_steps} steps of log ahead")

  @property
  def sim(self):
    """The first slot's simulator (the only one with actor_batch 1)."""
    return self.sims[0]

  def set_weights(self, temporal_state: dict, version: int) -> None:
    if version != self.version:
      self.temporal.load_state_dict(temporal_state)
      self.version = int(version)

  def ping(self) -> int:
    return self.actor_id

  def _begin(self, sim) -> _Episode:
    """A new episode in `sim`: its start (uniformly over all starts, then rc.segment_episodes in that segment), its
    Deviation and DAgger beta drawn, the simulator reset."""
    rc, rng = self.rc, self.rng
    if self._segment_left <= 0:
      self._segment = self.starts[int(rng.integers(len(self.starts)))][0]
      self._segment_left = rc.segment_episodes
    self._segment_left -= 1
    frames = self.starts_in[self._segment]
    si, frame = self._segment, frames[int(rng.integers(len(frames)))]
    seg = self.segments[si]
    procedural = self.spec.sim == "procedural"
    dev = Deviation.sample(rng, rc.max_lateral, rc.max_heading_deg, rc.curvature_noise,
                           rc.lane_change_prob if procedural else rc.log_lane_change_prob,
                           rc.speed_range if procedural else rc.wm_speed_range if self.spec.sim == "worldmodel"
                           else None)
    n_steps = min(rc.episode_steps, sim.max_steps(seg, frame))
    beta = float(rng.uniform(0.0, rc.expert_mix)) if rc.expert_mix > 0 else 0.0
    t0 = time.perf_counter()
    obs = sim.reset(seg, frame, dev)
    return _Episode(sim, seg, frame, dev, n_steps, beta, self.version, t0, obs, obs.image)

  def _act(self, eps: list[_Episode]) -> list[tuple[float, float]]:
    """The policy on every episode's newest observation at once (one vision and one temporal forward over the
    batch); each episode records the state's features and labels. Returns each one's action."""
    T, B = self.cfg.history, len(eps)
    img = np.stack([np.concatenate([ep.prev_img, ep.obs.image], axis=-1).transpose(2, 0, 1) for ep in eps])
    if self.rc.mirror:                                  # (2B, 6, H, W): the frames, then their mirror images
      img = np.concatenate([img, mirror_image(img, axis=-1)])
    z = self.vision(torch.from_numpy(np.ascontiguousarray(img)), noise=False)[0].numpy()
    eye = np.eye(DESIRE_LEN, dtype=np.float32)
    f, v, d = [], [], []
    for b, ep in enumerate(eps):
      if self.rc.mirror:
        ep.feats_m.append(z[B + b])
      o = ep.obs
      ep.feats.append(z[b]); ep.speeds.append(o.v_ego); ep.desires.append(o.desire)
      ep.plans.append(o.expert_plan); ep.eacts.append(o.expert_action); ep.offs.append(o.lateral_offset)
      idx = np.maximum(np.arange(len(ep.feats) - T, len(ep.feats)), 0)   # the first state repeated after a reset
      f.append(np.stack([ep.feats[i] for i in idx])); v.append([ep.speeds[i] for i in idx])
      d.append(eye[[ep.desires[i] for i in idx]])
    out = self.temporal(torch.from_numpy(np.stack(f)), torch.tensor(v, dtype=torch.float32),
                        torch.from_numpy(np.stack(d)))[:, -1].numpy()
    acts = []
    for b in range(B):
      a = parse_outputs(out[b], self.temporal.layout)["action"]
      acts.append((a["desiredCurvature"], a["desiredAcceleration"]))
    return acts

  def _trajectory(self, ep: _Episode) -> Trajectory:
    eacts = np.stack(ep.eacts).astype(np.float32)
    if self.rc.steady_offset_gain > 0:
      eacts = steady_offset_labels(eacts, np.array(ep.offs), np.array(ep.desires), np.array(ep.speeds),
                                   self.cfg.history, self.rc.steady_offset_gain)
    dev = ep.dev
    return Trajectory(np.stack(ep.feats).astype(np.float32), np.array(ep.speeds, np.float32),
                      np.array(ep.desires, np.int64), np.array(ep.acts, np.float32),
                      np.stack(ep.plans).astype(np.float32), eacts, np.array(ep.offs, np.float32), ep.version,
                      self.actor_id,
                      {"segment": str(ep.seg.path), "frame": ep.frame, "lateral": dev.lateral, "heading": dev.heading,
                       "lane_change": ep.sim.dev.lane_change, "speed": dev.speed, "expert_mix": ep.beta,
                       "seconds": time.perf_counter() - ep.t0, "frames": len(ep.feats),
                       "batch": len(self.slots)},
                      np.stack(ep.feats_m).astype(np.float32) if self.rc.mirror else None).check()

  @torch.no_grad()
  def rollouts(self, weights: tuple[dict, int] | None = None) -> list[Trajectory]:
    """Run the actor's episodes with the newest weights (given here or by set_weights) until at least one ends, and
    return the finished ones' Trajectories. Empty slots get a new episode first; the others go on where the last call
    left them (with the new weights from here on: a Trajectory's `version` is the oldest weights that acted in it,
    the one its episode started with). Each step: the policy on every episode at once (_act), then every simulator
    one step (simulator.step_batch). With actor_batch 1: one whole episode per call."""
    if weights is not None:
      self.set_weights(*weights)
    for j, ep in enumerate(self.slots):
      if ep is None:
        self.slots[j] = self._begin(self.sims[j])
    while True:
      eps = list(self.slots)
      acts = self._act(eps)
      going, done = [], []
      for j, (ep, act) in enumerate(zip(eps, acts)):
        ep.acts.append(act)
        (done if ep.k == ep.n_steps or ep.obs.done else going).append(j)
      if going:
        obs = step_batch([eps[j].sim for j in going],
                         [(1 - eps[j].beta) * np.asarray(acts[j]) + eps[j].beta * eps[j].obs.expert_action
                          for j in going])
        for j, o in zip(going, obs):
          ep = eps[j]
          ep.prev_img, ep.obs, ep.k = ep.obs.image, o, ep.k + 1
      if done:
        out = [self._trajectory(eps[j]) for j in done]
        for j in done:
          self.slots[j] = None
        return out


# ---------------------------------------------------------------- pools

class LocalActorPool:
  """Actors in this process, one episode at a time (no Ray): the same interface as RayActorPool."""

  def __init__(self, spec: WorkerSpec, vision_state: dict, n: int = 1):
    self.workers = [RolloutWorker(spec, vision_state, i) for i in range(max(1, n))]
    self.weights: tuple[dict, int] | None = None
    self._next = 0
    self.restarts = 0

  def publish(self, temporal_state: dict, version: int) -> None:
    self.weights = ({k: v.detach().clone() for k, v in temporal_state.items()}, int(version))

  def poll(self, block: bool = True) -> list[Trajectory]:
    """In-process: an episode is run only when the learner waits for one (block)."""
    if not block:
      return []
    w = self.workers[self._next % len(self.workers)]
    self._next += 1
    return w.rollouts(self.weights)

  def close(self) -> None:
    pass


def init_local_ray(num_cpus: int = 2) -> None:
  """ray.init on this machine for the actors: `num_cpus` CPUs, no dashboard, workers at normal priority importing THIS
  checkout (its root prepended to their PYTHONPATH, so they run the same code as the learner)."""
  import os

  import ray
  os.environ.setdefault("RAY_worker_niceness", "0")   # Ray's default (15) starves the actors next to the learner
  root = str(Path(__file__).resolve().parents[2])
  path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})


class RayActorPool:
  """N RolloutWorkers as Ray actors, one rollouts() call in flight per actor. Weights go through the object store
  (ray.put once per publish; every actor's next call gets the newest reference).

  Fault tolerance: the actors are created with max_restarts=-1, so Ray restarts a dead one (re-running __init__
  with the same arguments, kept alive here). The episodes it was running are lost and new ones run instead; everything
  it finished earlier already reached the learner. While an actor restarts its calls fail fast
  (ActorUnavailableError); it is then retried every RETRY_S seconds."""
  RETRY_S = 1.0

  def __init__(self, spec: WorkerSpec, vision_state: dict, n: int, num_cpus_per_actor: float = 1.0):
    import ray
    self.ray = ray
    self.remote_cls = ray.remote(num_cpus=num_cpus_per_actor, max_restarts=-1, max_task_retries=0)(RolloutWorker)
    self.vision_ref = ray.put(vision_state)
    self.actors = [self.remote_cls.remote(spec, self.vision_ref, i) for i in range(n)]
    self.weights_ref = None
    self.inflight: dict = {}          # ObjectRef -> actor index
    self.retry_at = [0.0] * n         # monotonic time before which actor i gets no new episode
    self.healthy = [True] * n
    self.restarts = 0                 # actor failures seen (a healthy actor's call failed)
    self.unavailable = 0              # calls refused while an actor was restarting

  def publish(self, temporal_state: dict, version: int) -> None:
    self.weights_ref = self.ray.put(({k: v.detach().cpu() for k, v in temporal_state.items()}, int(version)))

  def _submit_idle(self) -> None:
    busy = set(self.inflight.values())
    now = time.monotonic()
    for i, a in enumerate(self.actors):
      if i not in busy and now >= self.retry_at[i]:
        self.inflight[a.rollouts.remote(self.weights_ref)] = i

  def poll(self, block: bool = True) -> list[Trajectory]:
    """Finished trajectories (at least one when block); every idle actor gets a new episode."""
    ray = self.ray
    out: list[Trajectory] = []
    while True:
      self._submit_idle()
      if self.inflight:
        timeout = None if block and all(t <= time.monotonic() for t in self.retry_at) else (self.RETRY_S if block else 0)
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        if ready:
          ready += ray.wait([r for r in self.inflight if r not in ready], num_returns=len(self.inflight) - len(ready),
                            timeout=0)[0]
      else:
        ready = []
        if block:
          time.sleep(max(0.0, min(self.retry_at) - time.monotonic()))
      for ref in ready:
        i = self.inflight.pop(ref)
        try:
          out.extend(ray.get(ref))
          self.healthy[i] = True
        except ray.exceptions.RayActorError as e:   # died, or unavailable while Ray restarts it
          self.retry_at[i] = time.monotonic() + self.RETRY_S
          if self.healthy[i]:
            self.restarts += 1
            log.warning("actor %d failed (%s); Ray restarts it and its episode is run again", i, type(e).__name__)
          else:
            self.unavailable += 1
          self.healthy[i] = False
      if out or not block:
        return out

  def kill_actor(self, i: int) -> None:
    """Kill actor i as a crash would (Ray restarts it); for fault-tolerance tests."""
    self.ray.kill(self.actors[i], no_restart=False)

  def close(self) -> None:
    for a in self.actors:
      self.ray.kill(a, no_restart=True)
    self.inflight.clear()
