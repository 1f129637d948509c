"""Mirrored states (training/onpolicy/mirror.py): the image mirror is the model frame's own (a point and its mirror
point through the car's centre line land on mirrored columns; a re-projection to the right mirrors into one to the
left), labels change sign where they should, the actors send the mirrored features, and the learner draws the
mirrored windows and keeps them across a checkpoint."""
import numpy as np
import pytest
import torch

from common.drive_helpers import action_from_plan
from common.modelconstants import DESIRES, IDX_N, PLAN_SLICES, PLAN_WIDTH
from common.transformations.camera import model_frame_intrinsics, project
from training.onpolicy.actor import Trajectory
from training.onpolicy.learner import LearnerConfig, ReplayBuffer
from training.onpolicy.mirror import mirror_action, mirror_desire, mirror_image, mirror_plan
from training.onpolicy.sim_reprojective import reproject
from training.onpolicy.simulator import return_plan


def test_a_point_and_its_mirror_point_land_on_mirrored_columns(policy_cfg):
  W, H = policy_cfg.frame_w, policy_cfg.frame_h
  K = model_frame_intrinsics(W, H, policy_cfg.frame_focal)
  rng = np.random.default_rng(0)
  pts = np.stack([rng.uniform(5, 80, 50), rng.uniform(-6, 6, 50), rng.uniform(-1, 1.5, 50)], 1)  # device frame x fwd
  uv, uv_m = project(pts, K), project(pts * [1, -1, 1], K)
  assert np.allclose(uv_m[:, 0], W - uv[:, 0]) and np.allclose(uv_m[:, 1], uv[:, 1])
  # so an image with one bright column c shows it at column W - c in the mirror
  img = np.zeros((H, W, 3), np.uint8)
  img[:, 40] = 255
  m = mirror_image(img, axis=1)
  assert np.flatnonzero(m[0, :, 0]).tolist() == [W - 40]
  assert np.array_equal(mirror_image(m, axis=1)[:, 1:], img[:, 1:])          # twice is the identity (column 0 aside)
  chw = img.transpose(2, 0, 1)[None]
  assert np.array_equal(mirror_image(chw, axis=-1), m.transpose(2, 0, 1)[None])


def test_a_shift_to_the_right_mirrors_into_a_shift_to_the_left():
  """The re-projection of a frame 0.5 m to the right and turned 2 deg right, mirrored, is the mirrored frame
  re-projected 0.5 m to the left and turned 2 deg left: displacements change side in the mirror (the column
  convention itself is the test above's: these per-row shifts commute with a mirror about any column)."""
  rng = np.random.default_rng(1)
  u = np.arange(128)
  row = (127 + 60 * np.sin(u / 5.0) + 40 * np.sin(u / 2.3 + 1)).astype(np.float32)
  img = np.clip(row[None, :, None] + rng.normal(0, 20, (64, 1, 3)), 0, 255).astype(np.uint8).repeat(1, 0)
  img = np.ascontiguousarray(np.broadcast_to(img, (64, 128, 3)))
  a = mirror_image(reproject(img, 0.0, 0.5, np.radians(2)), axis=1)
  b = reproject(mirror_image(img, axis=1), 0.0, -0.5, -np.radians(2))
  inner = np.s_[:, 8:-8]
  assert np.abs(a[inner].astype(int) - b[inner]).mean() < 1.0
  # and not the same as the unmirrored one (the test can fail)
  c = reproject(mirror_image(img, axis=1), 0.0, 0.5, np.radians(2))
  assert np.abs(a[inner].astype(int) - c[inner]).mean() > 10


def test_labels_change_sign_where_a_mirror_turns_them():
  ref = np.stack([np.linspace(-5, 300, 100), np.zeros(100)], 1)
  plan = return_plan(ref - [0, 0.8], np.full(IDX_N, 20.0))        # the car 0.8 m left of the path: it returns right
  m = mirror_plan(plan)
  plan_back = return_plan(ref + [0, 0.8], np.full(IDX_N, 20.0))  # the same car 0.8 m right of it
  assert np.allclose(m, plan_back, atol=1e-5)
  y, x = PLAN_SLICES["position"].start + 1, PLAN_SLICES["position"].start
  assert np.allclose(m[:, x], plan[:, x]) and np.allclose(m[:, y], -plan[:, y])
  v = np.full(1, 20.0)
  assert np.allclose(action_from_plan(m[None], v), mirror_action(action_from_plan(plan[None], v)), atol=1e-7)
  assert [DESIRES[i] for i in mirror_desire(np.arange(len(DESIRES)))] == ["none", "laneChangeRight", "laneChangeLeft"]
  assert mirror_plan(np.zeros((2, PLAN_WIDTH))).shape == (2, PLAN_WIDTH)


def _trajectory(rng, cfg, L=10, mirrored=True):
  feats = rng.standard_normal((L, cfg.feature_dim)).astype(np.float32)
  ref = np.stack([np.linspace(-5, 300, 100), np.zeros(100)], 1)
  off = rng.uniform(-1, 1, L)
  v = np.full(L, 20.0, np.float32)
  plans = np.stack([return_plan(ref - [0, o], np.full(IDX_N, 20.0)) for o in off]).astype(np.float32)
  desire = np.zeros(L, np.int64)
  desire[3:6] = DESIRES.index("laneChangeLeft")
  return Trajectory(feats, v, desire, np.zeros((L, 2), np.float32), plans, action_from_plan(plans, v).astype(np.float32),
                    off.astype(np.float32), 0, features_mirror=-feats if mirrored else None).check()


def test_buffer_draws_mirrored_windows_and_keeps_them(policy_cfg, tmp_path):
  rng = np.random.default_rng(0)
  buf = ReplayBuffer(1000)
  tr = _trajectory(rng, policy_cfg)
  buf.add(tr)
  T = policy_cfg.history
  f, _, d, tgt, _ = buf.sample(400, T, rng, mirror_share=0.5)
  # the fixture's mirrored features are the negated ones: tell each window's side by its last state
  last = f[:, -1].numpy()
  idx = [int(np.flatnonzero(np.all(np.abs(np.abs(tr.features) - np.abs(x)) < 1e-6, axis=1))[0]) for x in last]
  side = np.array([np.allclose(x, -tr.features[i]) for x, i in zip(last, idx)])
  assert 0.4 < side.mean() < 0.6
  plan = tgt["plan"].reshape(400, T, IDX_N, PLAN_WIDTH)[:, -1].numpy()
  act = tgt["action"].reshape(400, T, 2)[:, -1].numpy()
  for k in np.flatnonzero(side)[:20]:
    assert np.allclose(plan[k], mirror_plan(tr.expert_plan[idx[k]]))
    assert np.allclose(act[k], mirror_action(tr.expert_action[idx[k]]))
    assert d[k, -1].argmax() == mirror_desire(tr.desire[idx[k]])
  for k in np.flatnonzero(~side)[:20]:
    assert np.allclose(plan[k], tr.expert_plan[idx[k]]) and d[k, -1].argmax() == tr.desire[idx[k]]
  # none mirrored at share 0, and none from trajectories without mirrored features
  f0 = buf.sample(50, T, rng, mirror_share=0.0)[0][:, -1].numpy()
  assert all(np.any(np.all(np.abs(tr.features - x) < 1e-6, axis=1)) for x in f0)
  plain = ReplayBuffer(1000)
  plain.add(_trajectory(rng, policy_cfg, mirrored=False))
  f1 = plain.sample(50, T, rng, mirror_share=1.0)[0][:, -1].numpy()
  assert all(np.any(np.all(np.abs(plain.trajs[0].features - x) < 1e-6, axis=1)) for x in f1)
  # persistence
  buf.save(tmp_path / "replay.npz")
  back = ReplayBuffer(1000)
  back.load(tmp_path / "replay.npz")
  assert np.array_equal(back.trajs[0].features_mirror, tr.features_mirror)
  with pytest.raises(ValueError, match="mirror_share"):
    LearnerConfig(mirror_share=-0.1)
  with pytest.raises(ValueError, match="features_mirror"):
    Trajectory(tr.features, tr.v_ego, tr.desire, tr.action, tr.expert_plan, tr.expert_action, tr.lateral_offset, 0,
               features_mirror=tr.features[:-1]).check()


def test_actor_sends_the_features_of_the_mirrored_frames(policy_run, segment_dir, policy_cfg, tmp_path):
  from training.checkpoint import load_latest
  from training.onpolicy.actor import RolloutConfig, RolloutWorker, WorkerSpec
  assert RolloutConfig().mirror is False
  ck = load_latest(policy_run)
  rc = {"episode_steps": 3, "min_steps": 3, "expert_mix": 1.0, "mirror": True}
  w = RolloutWorker(WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"), rc),
                    ck["state"]["vision"])
  first = []
  reset = w.sim.reset
  def recording_reset(*a, **k):
    first.append(reset(*a, **k))
    return first[-1]
  w.sim.reset = recording_reset
  tr = w.rollouts((ck["state"]["temporal"], 1))[0]
  assert tr.features_mirror is not None and tr.features_mirror.shape == tr.features.shape
  # the first state's stack is [frame 0, frame 0]: its mirrored features are the vision model's on the mirrored frame
  obs = first[0]
  img = np.concatenate([obs.image, obs.image], axis=-1).transpose(2, 0, 1)[None]
  with torch.no_grad():
    z, _ = w.vision(torch.from_numpy(np.ascontiguousarray(mirror_image(img, axis=-1))), noise=False)
    z0, _ = w.vision(torch.from_numpy(np.ascontiguousarray(img)), noise=False)
  assert np.allclose(tr.features_mirror[0], z[0].numpy(), atol=1e-4)
  assert np.allclose(tr.features[0], z0[0].numpy(), atol=1e-4)
  assert np.abs(mirror_image(img, axis=-1).astype(int) - img).mean() > 5      # the frame is not symmetric
  assert not np.array_equal(tr.features_mirror[0], tr.features[0])
  plain = RolloutWorker(WorkerSpec("procedural", policy_cfg.to_dict(), [str(segment_dir)], str(tmp_path / "c"),
                                   {**rc, "mirror": False}), ck["state"]["vision"])
  assert plain.rollouts((ck["state"]["temporal"], 1))[0].features_mirror is None
