"""The learner: replay buffer windows / FIFO / persistence, one learner step that reduces the loss, and the
behaviour-cloning demonstrations mixed into each update."""
import numpy as np
import pytest
import torch

from common.drive_helpers import action_from_plan
from common.modelconstants import IDX_N
from training.onpolicy.actor import Trajectory
from training.onpolicy.learner import Demonstrations, LearnerConfig, OnPolicyTask, ReplayBuffer, onpolicy_loss
from training.onpolicy.simulator import return_plan
from training.policy.model import TemporalPolicy, VisionModel, get_config

CFG = get_config("tiny")


def trajectory(rng, L=12, version=0, offset=None):
  """States whose feature 0 encodes the lateral offset and whose expert plan returns from it."""
  off = rng.uniform(-1, 1, L) if offset is None else np.full(L, offset)
  feats = rng.standard_normal((L, CFG.feature_dim)).astype(np.float32)
  feats[:, 0] = 3 * off
  v = np.full(L, 20.0, np.float32)
  ref = np.stack([np.linspace(-5, 300, 100), np.zeros(100)], 1)
  plans = np.stack([return_plan(ref - [0, o], np.full(IDX_N, 20.0)) for o in off]).astype(np.float32)
  acts = action_from_plan(plans, v).astype(np.float32)
  return Trajectory(feats, v, np.zeros(L, np.int64), np.zeros((L, 2), np.float32), plans, acts, off.astype(np.float32),
                    version).check()


def test_buffer_windows_fifo_and_persistence(tmp_path):
  rng = np.random.default_rng(0)
  buf = ReplayBuffer(capacity_steps=30)
  trs = [trajectory(rng, 12, version=i) for i in range(4)]
  for tr in trs:
    buf.add(tr)
  assert buf.steps <= 30 + 12 and len(buf.trajs) == 3 and buf.trajs[0] is trs[1]      # oldest dropped
  assert buf.received_trajectories == 4 and buf.received_steps == 48
  f, _, d, tgt, ver = buf.sample(16, CFG.history, rng)
  assert f.shape == (16, CFG.history, CFG.feature_dim) and d.shape == (16, CFG.history, 3)
  assert tgt["plan"].shape == (16 * CFG.history, IDX_N, 15) and set(ver) <= {1, 2, 3}
  # a window that starts before the reset repeats the first state (as modeld after a reset)
  one = ReplayBuffer(100)
  one.add(trs[0])
  f, *_ = one.sample(64, CFG.history, rng)
  first = torch.from_numpy(trs[0].features[0])
  assert any(torch.equal(w[0], first) and torch.equal(w[1], first) for w in f)
  buf.save(tmp_path / "replay.npz")
  back = ReplayBuffer(30)
  back.load(tmp_path / "replay.npz")
  assert [len(t) for t in back.trajs] == [len(t) for t in buf.trajs] and [t.version for t in back.trajs] == [1, 2, 3]
  assert np.array_equal(back.trajs[-1].expert_plan, trs[-1].expert_plan)


def test_buffer_draws_the_desire_share_of_windows_at_lane_changes():
  """LearnerConfig.desire_share: that share of the windows ends at a state with a desire (rare in the buffer);
  0 keeps uniform sampling, and a buffer without any desire samples uniformly whatever the share."""
  rng = np.random.default_rng(0)
  buf = ReplayBuffer(1000)
  for i in range(10):
    tr = trajectory(rng, 20)
    if i == 3:
      tr.desire[5:8] = 1                     # 3 of 200 states: a lane change under way
    buf.add(tr)
  def last_desire(share):                      # share of windows whose last state has a desire
    return float(buf.sample(400, CFG.history, rng, share)[2][:, -1, 1:].sum(-1).mean())
  assert last_desire(0.0) < 0.05
  assert abs(last_desire(0.3) - 0.3) < 0.08
  flat = ReplayBuffer(1000)
  flat.add(trajectory(rng, 20))
  assert flat.sample(32, CFG.history, rng, 0.5)[2][:, -1, 1:].sum() == 0
  with pytest.raises(ValueError, match="desire_share"):
    LearnerConfig(desire_share=1.5)


def fixed_batch(seed: int):
  """(features, v, desire, targets) of 16 windows drawn from 8 returning trajectories."""
  rng = np.random.default_rng(seed)
  buf = ReplayBuffer(1000)
  for _ in range(8):
    buf.add(trajectory(rng))
  return buf.sample(16, CFG.history, rng)[:4]


def learner_steps(temporal, batch, steps: int, noise_std: float = 0.0, path_curvature_weight: float = 0.0) -> None:
  """`steps` AdamW updates of `temporal` on onpolicy_loss of one fixed batch."""
  opt = torch.optim.AdamW(temporal.parameters(), lr=3e-3)
  for _ in range(steps):
    loss, _ = onpolicy_loss(temporal, noise_std, *batch, path_curvature_weight=path_curvature_weight)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_learner_step_reduces_the_loss_on_a_fixed_batch():
  torch.manual_seed(0)
  batch = fixed_batch(1)
  f, v, d, tgt = batch
  temporal = TemporalPolicy(CFG)
  torch.manual_seed(1)
  first, info0 = onpolicy_loss(temporal, 0.0, f, v, d, tgt)
  learner_steps(temporal, batch, 15, VisionModel(CFG).bottleneck.noise_std)
  last, info1 = onpolicy_loss(temporal, 0.0, f, v, d, tgt)
  assert float(last.detach()) < float(first.detach()) - 0.5, (info0, info1)
  assert info1["action"] < info0["action"] and info1["plan_nll"] < info0["plan_nll"]


def test_path_curvature_weight_holds_kappa_to_the_expert_plans_curvature():
  """path_curvature_weight adds w x path_curvature_loss to the loss, and learner steps on it bring the split head's
  kappa to the expert plan's curvature far ahead (here a straight road: 0) while the action still learns its label;
  a negative weight, or a weight with the "direct" head, is refused."""
  from training.policy.losses import path_curvature_loss
  from training.policy.model import PolicyConfig
  torch.manual_seed(0)
  batch = fixed_batch(2)
  f, v, d, tgt = batch
  temporal = TemporalPolicy(CFG)
  with torch.no_grad():
    temporal.head.fc2.bias[temporal.layout["action"][0]] = 0.3     # kappa starts at 3e-3 1/m off the road's 0
  base, info_b = onpolicy_loss(temporal, 0.0, f, v, d, tgt)
  with_pc, info = onpolicy_loss(temporal, 0.0, f, v, d, tgt, path_curvature_weight=0.5)
  kappa = temporal.forward_parts(f, v, d)[1].reshape(-1)
  pc = float(path_curvature_loss(kappa, tgt["plan"], tgt["plan_valid"]))
  assert pc > 2.0 and abs(info["path_curvature"] - pc) < 1e-4
  assert abs(float(with_pc) - (float(base) + 0.5 * pc)) < 1e-3 and abs(info["loss"] - float(with_pc)) < 1e-6
  assert "path_curvature" not in info_b
  learner_steps(temporal, batch, 30, path_curvature_weight=0.5)
  _, after = onpolicy_loss(temporal, 0.0, f, v, d, tgt, path_curvature_weight=0.5)
  assert after["path_curvature"] < 0.3 * info["path_curvature"], (info, after)
  assert after["action"] < info["action"]
  direct = TemporalPolicy(PolicyConfig(**{**CFG.to_dict(), "curvature_param": "direct"}))
  with pytest.raises(ValueError, match="split"):
    onpolicy_loss(direct, 0.0, f, v, d, tgt, path_curvature_weight=0.5)
  with pytest.raises(ValueError, match="path_curvature_weight"):
    LearnerConfig(path_curvature_weight=-1.0)


class _NoActors:
  def poll(self, block):
    return []

  def publish(self, state, step):
    pass


def test_demonstrations_join_every_update(tmp_path, segment_dir):
  """demo_batch windows of the behaviour-cloning data (logged labels, aux heads included) join each on-policy batch;
  the loss is the mean over all windows of both; without the data set a demo_batch is refused."""
  from training.policy.data import load_segment
  from training.policy.train import compute_features
  torch.manual_seed(0)
  vision, temporal = VisionModel(CFG).eval(), TemporalPolicy(CFG)
  seg = load_segment(segment_dir, CFG, tmp_path / "cache")
  feats, outs = compute_features(vision, [seg], progress=False)
  demos = Demonstrations([seg], feats, outs, vision.layout)
  f, v, d, tgt = demos.sample(4, CFG.history, np.random.default_rng(0))
  assert f.shape == (4, CFG.history, CFG.feature_dim) and tgt["plan"].shape == (4 * CFG.history, IDX_N, 15)
  assert bool(tgt["has_lanes"].all()) and bool(tgt["action_valid"].any())     # aux labels: logged or the extractor's

  lc = LearnerConfig(batch_size=4, demo_batch=2, min_buffer_steps=1)
  task = OnPolicyTask(CFG, vision, temporal, _NoActors(), lc, tmp_path, {}, seed=0, demos=demos)
  rng = np.random.default_rng(1)
  for _ in range(3):
    task.buffer.add(trajectory(rng))
  loss, info = task.train_batch(1)
  assert np.isfinite(float(loss.detach())) and loss.requires_grad
  assert abs(info["loss"] - (4 * info["onpolicy_loss"] + 2 * info["demo_loss"]) / 6) < 1e-4
  assert info["demo_loss"] != info["onpolicy_loss"]
  with pytest.raises(ValueError, match="demonstrations"):
    OnPolicyTask(CFG, vision, temporal, _NoActors(), lc, tmp_path, {}, seed=0, demos=None)
