"""The learner of on-policy training (paper §5.1): it keeps the trajectories the actors send in a replay buffer (the
states the policy itself visited, each labelled by the expert: DAgger's aggregated data set, bounded to the most
recent `buffer_steps` states so that old policies' states fade out) and updates the temporal model on

  loss = MHP plan loss (training.mhp, 5 hypotheses, Laplace) against the expert plan
       + Laplace NLL of the action against the expert action (common.drive_helpers.action_from_plan of that plan,
         the conversion controls use)

over every causal position of 2 s windows (as the temporal stage of training.policy.train), with the information
bottleneck's channel noise added to the features. The other heads (lane lines, road edges, lead) get no target
here: the simulators do not label them, and they do not drive the car. The extractor stays frozen (paper).

With `demo_batch` > 0 each update also takes that many windows of the demonstrations, the behaviour-cloning data
the policy was trained on (logged frames, the logged driver's plan and action, the aux heads' labels: the temporal
stage's batch, training.policy.data.temporal_batch). That is DAgger's aggregate in full (the expert's own data set
D0 with every D_i the policy visited): the temporal model keeps its mapping from real frames while it learns the
returns from simulated ones. The loss is the mean over all windows of the two batches.

OnPolicyTask is a training.trainer.TrainTask: the shared loop does the optimizer step, schedule, clipping,
metrics, checkpoints and resume; this module pulls trajectories, publishes weights to the actors every
`publish_every` steps, and reports rollout statistics (mean |lateral offset| reached, expert-vs-policy action error,
policy lag, simulated frames/s) as the "rollout" split of metrics.csv.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from common.modelconstants import DESIRE_LEN, IDX_N, NUM_LANE_LINES, NUM_ROAD_EDGES
from training.onpolicy.actor import Trajectory
from training.onpolicy.mirror import mirror_action, mirror_desire, mirror_plan
from training.policy.losses import output_losses, path_curvature_loss
from training.policy.model import PolicyConfig, TemporalPolicy, VisionModel

log = logging.getLogger(__name__)


@dataclass
class LearnerConfig:
  batch_size: int = 32
  buffer_steps: int = 20000         # states kept (FIFO over trajectories)
  min_buffer_steps: int = 200       # states needed before the first update
  max_replay_ratio: float = 8.0     # at most this many sampled states per state received (then wait for actors)
  publish_every: int = 5            # learner steps between weight publications
  demo_batch: int = 0               # windows of the behaviour-cloning data per update (0 = on-policy states only)
  # share of the windows that end at a state with a desire (a lane change under way), when the buffer holds any:
  # lane changes are a few percent of the visited states (0 = every state alike)
  desire_share: float = 0.0
  # share of the windows drawn mirrored, of trajectories whose actors sent mirrored features (RolloutConfig.mirror):
  # a half makes the data left-right symmetric
  mirror_share: float = 0.5
  # weight of the loss that holds the "split" curvature head's own part (kappa) to the expert plan's curvature far
  # ahead, the road's (training.policy.losses.path_curvature_loss): returns and lane changes are then learnt by the
  # lateral-acceleration part, which scales with speed. 0 = off (kappa and that part free to share them)
  path_curvature_weight: float = 0.0

  def __post_init__(self):
    if self.demo_batch < 0:
      raise ValueError(f"demo_batch={self.demo_batch}: expected >= 0")
    if not self.path_curvature_weight >= 0:
      raise ValueError(f"path_curvature_weight={self.path_curvature_weight}: expected >= 0")
    for name in ("desire_share", "mirror_share"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name}={getattr(self, name)}: expected a share in [0, 1]")


class ReplayBuffer:
  """Trajectories, FIFO by number of states. Windows are sampled uniformly over the stored states."""

  def __init__(self, capacity_steps: int):
    self.capacity = capacity_steps
    self.trajs: deque[Trajectory] = deque()
    self.steps = 0
    self.received_steps = 0
    self.received_trajectories = 0

  def add(self, tr: Trajectory) -> None:
    self.trajs.append(tr)
    self.steps += len(tr)
    self.received_steps += len(tr)
    self.received_trajectories += 1
    while self.steps - len(self.trajs[0]) >= self.capacity and len(self.trajs) > 1:
      self.steps -= len(self.trajs.popleft())

  def sample(self, batch: int, history: int, rng: np.random.Generator, desire_share: float = 0.0,
             mirror_share: float = 0.0):
    """features (B,T,D), v (B,T), desire one-hot (B,T,DESIRE_LEN), targets flattened (B*T), versions (B,).
    Windows end at states drawn uniformly, except that about `desire_share` of them end at a state with a desire
    (a lane change under way) when the buffer holds any (LearnerConfig.desire_share). A window of a trajectory that
    carries mirrored features is mirrored with probability `mirror_share`: those features, the desire, plan and
    action mirrored (training/onpolicy/mirror.py)."""
    sizes = np.array([len(t) for t in self.trajs])
    flat = rng.integers(0, sizes.sum(), batch)
    if desire_share > 0:
      on = np.flatnonzero(np.concatenate([t.desire for t in self.trajs]) != 0)
      pick = rng.random(batch) < desire_share
      if len(on) and pick.any():
        flat[pick] = on[rng.integers(0, len(on), int(pick.sum()))]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ti = np.searchsorted(starts, flat, side="right") - 1
    f, v, d, plan, act, ver = [], [], [], [], [], []
    eye = np.eye(DESIRE_LEN, dtype=np.float32)
    mirrored = mirror_share > 0 and any(t.features_mirror is not None for t in self.trajs)
    flip = rng.random(batch) < mirror_share if mirrored else np.zeros(batch, bool)   # no draw: the same stream as before
    for t, pos, m in zip(ti, flat - starts[ti], flip):
      tr = self.trajs[t]
      w = np.maximum(np.arange(pos - history + 1, pos + 1), 0)      # clamped at the reset like modeld
      if m and tr.features_mirror is not None:
        f.append(tr.features_mirror[w]); d.append(eye[mirror_desire(tr.desire[w])])
        plan.append(mirror_plan(tr.expert_plan[w])); act.append(mirror_action(tr.expert_action[w]))
      else:
        f.append(tr.features[w]); d.append(eye[tr.desire[w]])
        plan.append(tr.expert_plan[w]); act.append(tr.expert_action[w])
      v.append(tr.v_ego[w]); ver.append(tr.version)
    B, T = batch, history
    n = B * T
    tgt = {
      "plan": torch.from_numpy(np.stack(plan).reshape(n, IDX_N, -1)), "plan_valid": torch.ones(n, IDX_N, dtype=torch.bool),
      "action": torch.from_numpy(np.stack(act).reshape(n, 2)), "action_valid": torch.ones(n, dtype=torch.bool),
      "lane_lines": torch.zeros(n, NUM_LANE_LINES, IDX_N, 2), "has_lanes": torch.zeros(n, dtype=torch.bool),
      "road_edges": torch.zeros(n, NUM_ROAD_EDGES, IDX_N, 2), "has_edges": torch.zeros(n, dtype=torch.bool),
      "lead": torch.zeros(n, 5), "has_lead_label": torch.zeros(n, dtype=torch.bool),
    }
    return (torch.from_numpy(np.stack(f)), torch.from_numpy(np.stack(v)), torch.from_numpy(np.stack(d)), tgt,
            np.array(ver))

  # persistence (the run directory's replay.npz, written with each checkpoint)
  def save(self, path: Path) -> None:
    if not self.trajs:
      return
    keys = ("features", "v_ego", "desire", "action", "expert_plan", "expert_action", "lateral_offset")
    if all(t.features_mirror is not None for t in self.trajs):
      keys += ("features_mirror",)
    arrays = {k: np.concatenate([getattr(t, k) for t in self.trajs]) for k in keys}
    arrays["lengths"] = np.array([len(t) for t in self.trajs])
    arrays["versions"] = np.array([t.version for t in self.trajs])
    arrays["actors"] = np.array([t.actor for t in self.trajs])
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)

  def load(self, path: Path) -> None:
    z = np.load(path)
    ends = np.cumsum(z["lengths"])
    keys = ("features", "v_ego", "desire", "action", "expert_plan", "expert_action", "lateral_offset")
    mirrored = "features_mirror" in z.files
    for j, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
      self.trajs.append(Trajectory(*(z[k][a:b] for k in keys), version=int(z["versions"][j]), actor=int(z["actors"][j]),
                                   features_mirror=z["features_mirror"][a:b] if mirrored else None))
      self.steps += int(b - a)


class Demonstrations:
  """The behaviour-cloning data set (DAgger's D0): segments with their frozen-extractor features, sampled as the
  temporal stage of training.policy.train samples them."""

  def __init__(self, segs: list, feats: list[np.ndarray], outs: list[np.ndarray], layout: dict):
    if not segs:
      raise ValueError("no demonstration segments")
    self.segs, self.feats, self.outs, self.layout = segs, feats, outs, layout

  def sample(self, batch: int, history: int, rng: np.random.Generator):
    """features (B,T,D), v (B,T), desire one-hot (B,T,DESIRE_LEN), targets flattened (B*T)."""
    from training.policy.data import sample_picks, temporal_batch
    return temporal_batch(self.segs, self.feats, sample_picks(self.segs, batch, rng), history, self.outs, self.layout)


def onpolicy_loss(temporal: TemporalPolicy, noise_std: float, f, v, d, tgt,
                  path_curvature_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
  """The learner's loss on one batch (see module docstring)."""
  f = f + noise_std * torch.randn_like(f)                    # the bottleneck's channel noise
  out, kappa = temporal.forward_parts(f, v, d)               # (B, T, N): every causal position
  loss, info = output_losses(out.reshape(-1, out.shape[-1]), temporal.layout, tgt)
  info = {k: info[k] for k in ("loss", "plan_nll", "plan_ce", "action")}
  if path_curvature_weight > 0:
    if kappa is None:
      raise ValueError("path_curvature_weight needs the policy's \"split\" curvature head (PolicyConfig.curvature_param)")
    pc = path_curvature_loss(kappa.reshape(-1), tgt["plan"], tgt["plan_valid"])
    loss = loss + path_curvature_weight * pc
    info.update(loss=float(loss.detach()), path_curvature=float(pc.detach()))
  return loss, info


class OnPolicyTask:
  """training.trainer.TrainTask of the on-policy learner (see module docstring)."""

  def __init__(self, cfg: PolicyConfig, vision: VisionModel, temporal: TemporalPolicy, pool, lc: LearnerConfig,
               run_dir: Path, config: dict, seed: int = 0, demos: Demonstrations | None = None):
    if lc.demo_batch > 0 and demos is None:
      raise ValueError(f"demo_batch={lc.demo_batch} needs the demonstrations (the policy run's training segments)")
    self.cfg, self.vision, self.trainable, self.pool, self.lc = cfg, vision, temporal, pool, lc
    self.demos = demos
    self.run_dir, self.config = Path(run_dir), config
    self.buffer = ReplayBuffer(lc.buffer_steps)
    self.rng = np.random.default_rng([seed, 4242])
    self.noise_std = vision.bottleneck.noise_std
    self.sampled_states = 0
    self.step = 0
    self._window = []                  # trajectories received since the last evaluation
    self._lags: list[float] = []
    self._t_window = time.monotonic()
    self.published = -1

  # ---- TrainTask
  def state_dicts(self) -> dict:
    return {"vision": self.vision.state_dict(), "temporal": self.trainable.state_dict()}

  def load_state_dicts(self, state: dict) -> None:
    self.vision.load_state_dict(state["vision"])
    self.trainable.load_state_dict(state["temporal"])

  def config_dict(self) -> dict:
    return self.config

  def extra_state(self) -> dict:
    self.buffer.save(self.run_dir / "replay.npz")
    return {"received_trajectories": self.buffer.received_trajectories, "received_steps": self.buffer.received_steps,
            "sampled_states": self.sampled_states, "restarts": self.pool.restarts if self.pool else 0}

  def load_extra_state(self, extra: dict) -> None:
    p = self.run_dir / "replay.npz"
    if p.exists():
      try:
        self.buffer.load(p)
      except (OSError, ValueError, KeyError) as e:
        log.warning("%s: replay buffer unreadable (%s); starting with an empty one", p, e)
    self.buffer.received_trajectories = int(extra.get("received_trajectories", 0))
    self.buffer.received_steps = int(extra.get("received_steps", 0))
    self.sampled_states = int(extra.get("sampled_states", 0))

  def _receive(self, block: bool) -> None:
    for tr in self.pool.poll(block=block):
      self.buffer.add(tr)
      self._window.append(tr)
      self._lags.append(self.step - tr.version)

  def train_batch(self, step: int):
    self.step = step
    if self.published < 0:
      self.publish(step)
    # keep the actors busy; wait for them while the buffer is too small or the replay ratio too high
    if self.buffer.steps >= self.lc.min_buffer_steps:
      self._receive(block=False)
    while (self.buffer.steps < self.lc.min_buffer_steps or
           self.sampled_states > self.lc.max_replay_ratio * self.buffer.received_steps):
      self._receive(block=True)
    f, v, d, tgt, ver = self.buffer.sample(self.lc.batch_size, self.cfg.history, self.rng, self.lc.desire_share,
                                           self.lc.mirror_share)
    self.sampled_states += self.lc.batch_size
    loss, info = onpolicy_loss(self.trainable, self.noise_std, f, v, d, tgt, self.lc.path_curvature_weight)
    if self.lc.demo_batch > 0:
      demo_loss, demo_info = onpolicy_loss(self.trainable, self.noise_std, *self.demos.sample(
        self.lc.demo_batch, self.cfg.history, self.rng), path_curvature_weight=self.lc.path_curvature_weight)
      n_on, n_demo = self.lc.batch_size, self.lc.demo_batch
      loss = (n_on * loss + n_demo * demo_loss) / (n_on + n_demo)
      info = {**info, "loss": float(loss.detach()), "onpolicy_loss": info["loss"], "demo_loss": demo_info["loss"]}
    info["batch_lag"] = float(np.mean(step - ver))
    info["buffer_steps"] = float(self.buffer.steps)
    return loss, info

  def publish(self, step: int) -> None:
    self.pool.publish(self.trainable.state_dict(), step)
    self.published = step

  def after_step(self, step: int) -> None:
    self.step = step
    if step % self.lc.publish_every == 0:
      self.publish(step)

  def evaluate(self, step: int) -> dict:
    """Rollout statistics of the trajectories received since the last call."""
    w, self._window = self._window, []
    lags, self._lags = self._lags, []
    dt, self._t_window = time.monotonic() - self._t_window, time.monotonic()
    if not w:
      return {}
    off = np.concatenate([np.abs(t.lateral_offset) for t in w])
    err = np.concatenate([np.abs(t.action[:, 0] - t.expert_action[:, 0]) for t in w])
    frames = sum(len(t) for t in w)
    return {"rollout": {"mean_abs_offset": float(off.mean()),
                        "final_abs_offset": float(np.mean([abs(t.lateral_offset[-1]) for t in w])),
                        "curvature_err": float(err.mean()),
                        "accel_err": float(np.concatenate([np.abs(t.action[:, 1] - t.expert_action[:, 1]) for t in w]).mean()),
                        "policy_lag": float(np.mean(lags)), "trajectories": float(len(w)), "frames_per_s": frames / max(dt, 1e-6),
                        "received_trajectories": float(self.buffer.received_trajectories),
                        "actor_restarts": float(self.pool.restarts)}}


def learner_config_dict(lc: LearnerConfig) -> dict:
  return asdict(lc)
