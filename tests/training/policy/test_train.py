import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.transformations.camera import model_frame_intrinsics
from tests.training.policy.synthetic import make_segment
from tools.lib.segment import SegmentError
from training.checkpoint import load_latest
from training.policy.data import load_segment, sample_picks, temporal_batch, window_indices
from training.policy.model import checkpoint_stage, get_config
from training.policy.train import PolicyTraining, eval_vision, main, run_config

torch.set_num_threads(1)
CFG = get_config("tiny")
REAL = Path(__file__).resolve().parents[3] / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


def _segs():
  train = [make_segment(CFG, 48, s, o, seed=i, name=f"syn/{i}") for i, (s, o) in enumerate([(5, 0), (15, 1), (25, -1)])]
  val = [make_segment(CFG, 48, 15, 1, seed=9, name="syn/val")]  # same drive as train[1], other noise
  return train, val


def test_extractor_then_temporal_learn_and_resume(tmp_path):
  train, val = _segs()
  rc = run_config(lr=2e-3, warmup=2, eval_every=15, ckpt_every=15, log_every=5)
  tr = PolicyTraining(CFG, rc, tmp_path, train, val, progress=False, batch_size=8, val_batches=2)
  before = eval_vision(tr.vision, val, np.random.default_rng(0), 8, 2)
  first = tr.run_extractor(15)
  assert first["ade"] < before["ade"]
  ext = tr.run_extractor(30)                                   # continues from step 15 (optimizer state restored)
  assert ext["loss"] < before["loss"] - 1.0                    # the aux heads learn
  assert 0 < ext["capacity_bits"] <= CFG.bottleneck_bits * 1.05
  ck = load_latest(tmp_path)
  assert ck["extra"]["task"] == {"stage": "extractor", "stage_step": 30} and set(ck["state"]) == {"vision"}
  assert checkpoint_stage(ck) == ("extractor", 30) and ck["step"] == 30

  tmp = tr.run_temporal(15)
  assert np.isfinite(tmp["ade"]) and "action" in tmp
  ck = load_latest(tmp_path)
  assert checkpoint_stage(ck) == ("temporal", 15) and set(ck["state"]) == {"vision", "temporal"}
  assert ck["step"] == 45                                      # numbered over both stages

  tr2 = PolicyTraining(CFG, rc, tmp_path, train, val, progress=False, batch_size=8, val_batches=2)
  assert tr2.resume() and (tr2.stage, tr2.step) == ("temporal", 15)
  for k, v in tr.temporal.state_dict().items():
    assert torch.equal(v, tr2.temporal.state_dict()[k])
  rows = [(r["split"], r["step"]) for r in tr2.metrics.read()]
  assert ("extractor_val", 30) in rows and ("temporal_val", 15) in rows and (tmp_path / "curves.png").exists()
  assert [s for s, _ in rows if s.endswith("_train")] == ["extractor_train"] * 6 + ["temporal_train"] * 3

  other = get_config("T8")
  with pytest.raises(ValueError, match="preset"):
    PolicyTraining(other, rc, tmp_path, train, val, progress=False).resume()


def test_checkpoint_stage_reads_old_and_new_layouts():
  assert checkpoint_stage({"step": 45, "extra": {"task": {"stage": "temporal", "stage_step": 15}}}) == ("temporal", 15)
  assert checkpoint_stage({"step": 31, "extra": {"stage": "extractor", "stage_step": 31}}) == ("extractor", 31)
  assert checkpoint_stage({"step": 7, "extra": {"task": {}}, "state": {"temporal": {}}}) == ("temporal", 7)


def test_temporal_windows_match_runtime_history():
  assert window_indices(40, 10).tolist() == list(range(4, 41, 4))
  assert window_indices(5, 4).tolist() == [0, 0, 1, 5]            # clamped like DrivingModel after a reset
  train, _ = _segs()
  feats = [np.random.default_rng(0).normal(size=(len(s), CFG.feature_dim)).astype(np.float32) for s in train]
  picks = sample_picks(train, 6, np.random.default_rng(0))
  f, v, d, tgt = temporal_batch(train, feats, picks, CFG.history)
  assert f.shape == (6, CFG.history, CFG.feature_dim) and v.shape == (6, CFG.history) and d.shape[-1] == 3
  assert tgt["plan"].shape[0] == 6 * CFG.history
  s, i = picks[0]
  assert torch.allclose(f[0, -1], torch.from_numpy(feats[s][i]))


def test_real_segment_without_video_is_named(tmp_path):
  with pytest.raises(SegmentError, match="video.hevc"):
    load_segment(REAL, CFG, tmp_path)


def test_bad_ground_truth_shape_is_named(tmp_path):
  seg = tmp_path / "dongle|2020-01-01--00-00-00" / "0"
  shutil.copytree(REAL / "global_pose", seg / "global_pose")
  n = len(np.load(seg / "global_pose" / "frame_times"))
  (seg / "ground_truth").mkdir()
  for name, arr in (("frame_times", np.arange(n) * 0.05), ("lane_lines", np.zeros((n, 3, 33, 2)))):
    with open(seg / "ground_truth" / name, "wb") as f:
      np.save(f, arr)
  with pytest.raises(SegmentError, match="lane_lines"):
    load_segment(seg, CFG, tmp_path / "cache")


def test_cli_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
  assert "not a directory" in capsys.readouterr().err
  run = tmp_path / "run"
  run.mkdir()
  (run / "ckpt_00000001.json").write_text("{}")
  with pytest.raises(SystemExit):
    main(["--data", str(tmp_path), "--out", str(run)])
  assert "--resume" in capsys.readouterr().err
  (run / "ckpt_00000001.json").unlink()
  assert main(["--data", str(REAL.parent.parent), "--out", str(run), "--max-steps", "1"]) == 1
  assert "no segment with video" in capsys.readouterr().err.strip().splitlines()[-1]


def test_unlabelled_aux_targets_come_from_the_extractor():
  from common.modelconstants import layout_size, split_outputs, vision_output_layout
  layout = vision_output_layout()
  segs = [make_segment(CFG, 20, 10, 0, seed=1, labels=False), make_segment(CFG, 20, 10, 0, seed=2, labels=True)]
  rng = np.random.default_rng(0)
  feats = [rng.normal(size=(20, CFG.feature_dim)).astype(np.float32) for _ in segs]
  outs = [rng.normal(size=(20, layout_size(layout))).astype(np.float32) for _ in segs]
  picks = [(0, 12), (1, 12)]
  _, _, _, tgt = temporal_batch(segs, feats, picks, CFG.history, outs, layout)
  T = CFG.history
  assert tgt["has_lanes"].all() and tgt["has_lead_label"].all()
  frames0 = window_indices(12, T)
  pred = split_outputs(outs[0][frames0], layout)
  assert np.allclose(tgt["lane_lines"][:T].numpy(), pred["lane_lines"][..., 0])       # filled from the extractor
  assert np.allclose(tgt["lead"][:T, 0].numpy(), (pred["lead_prob"][:, 0] > 0))
  assert np.allclose(tgt["lane_lines"][T:].numpy(), segs[1].lane_lines[window_indices(12, T)])  # ground truth kept


def test_resume_refuses_when_every_checkpoint_is_damaged_and_keeps_metrics_unique(tmp_path):
  train, val = _segs()
  rc = run_config(lr=1e-3, warmup=1, eval_every=100, ckpt_every=2, log_every=1)
  PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4).run_extractor(4)
  # killed after step 3 was logged, before checkpoint 4: the resumed session trains steps 3-4 again
  for p in tmp_path.glob("ckpt_00000004.*"):
    p.unlink()
  tr = PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4)
  assert tr.resume() and tr.step == 2
  tr.run_extractor(4)
  steps = [r["step"] for r in tr.metrics.read() if r["split"] == "extractor_train"]
  assert steps == [1, 2, 3, 4]                                  # each step once
  # every checkpoint damaged: resume must refuse (not start from step 0 over the files)
  for st in tmp_path.glob("ckpt_*.safetensors"):
    st.write_bytes(st.read_bytes()[:40])
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  with pytest.raises(ValueError, match="none loads"):
    PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4).resume()
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_temporal_stage_resumes_mid_stage_after_the_extractor(tmp_path):
  """--stage extractor, then --stage temporal --resume, killed after temporal step 3 was logged but before its step-4
  checkpoint: the resumed session continues the temporal stage at its step 2 (checkpoint 6 = 4 extractor + 2 temporal
  steps), keeps every extractor row and logs each temporal step once."""
  train, _ = _segs()
  rc = run_config(lr=1e-3, warmup=1, eval_every=100, ckpt_every=2, log_every=1, keep_ckpts=5)
  PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4).run_extractor(4)
  tr = PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4)
  assert tr.resume() and (tr.stage, tr.step) == ("extractor", 4)
  tr.run_temporal(4)
  assert [p.name for p in tmp_path.glob("ckpt_*.json")] and load_latest(tmp_path)["step"] == 8
  for p in tmp_path.glob("ckpt_00000008.*"):
    p.unlink()
  tr = PolicyTraining(CFG, rc, tmp_path, train[:1], [], progress=False, batch_size=4)
  assert tr.resume() and (tr.stage, tr.step, tr.global_step) == ("temporal", 2, 6)
  tr.run_temporal(4)
  ck = load_latest(tmp_path)
  assert ck["step"] == 8 and checkpoint_stage(ck) == ("temporal", 4) and set(ck["state"]) == {"vision", "temporal"}
  rows = [(r["split"], r["step"]) for r in tr.metrics.read() if r["split"].endswith("_train")]
  assert rows == [("extractor_train", s) for s in (1, 2, 3, 4)] + [("temporal_train", s) for s in (1, 2, 3, 4)]


def test_photometric_augmentation_changes_light_not_geometry():
  from training.policy.data import photometric_augment
  frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 128), dtype=np.uint8))
  img = torch.cat([frame, frame], 1)                             # (B, 6, H, W): a stack of two identical frames
  a = photometric_augment(img, torch.Generator().manual_seed(3))
  assert a.dtype == torch.uint8 and a.shape == img.shape
  assert torch.equal(a, photometric_augment(img, torch.Generator().manual_seed(3)))      # reproducible per draw
  assert not torch.equal(a, photometric_augment(img, torch.Generator().manual_seed(4)))
  assert (a.float() - img.float()).abs().mean() > 5
  # one draw per sample for both frames: they differ only by their own sensor noise (std <= 8 levels)
  assert (a[:, :3].float() - a[:, 3:].float()).abs().mean() < 13
  # geometry kept: every augmented frame still correlates strongly, pixel by pixel, with its source
  for i in range(4):
    c = np.corrcoef(a[i, :3].flatten().float().numpy(), img[i, :3].flatten().float().numpy())[0, 1]
    assert c > 0.8


def _lane_label_batch(b: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """b stacks whose two frames show the ego lane's lines (a left curve, road 1.22 m below the camera) drawn from
  their own labels, and the target dict that goes with them."""
  import cv2

  from common.modelconstants import IDX_N, X_IDXS
  from common.transformations.camera import project
  K = model_frame_intrinsics(CFG.frame_w, CFG.frame_h, CFG.frame_focal)
  lines = np.stack([np.stack([y0 - 4e-4 * X_IDXS ** 2, np.full(IDX_N, 1.22)], -1) for y0 in (-1.8, 1.8)])   # (2, IDX_N, 2)
  frame = np.zeros((CFG.frame_h, CFG.frame_w, 3), np.uint8)
  xs = np.linspace(5.0, 80.0, 400)
  for y0 in (-1.8, 1.8):
    uv = project(np.stack([xs, y0 - 4e-4 * xs ** 2, np.full_like(xs, 1.22)], -1), K)
    cv2.polylines(frame, [np.round(uv * 16).astype(np.int32)], False, (255, 255, 255), 2, cv2.LINE_AA, shift=4)
  img = torch.from_numpy(np.concatenate([frame, frame], -1).transpose(2, 0, 1).copy()).expand(b, -1, -1, -1).clone()
  tgt = {"lane_lines": torch.from_numpy(lines).float().expand(b, -1, -1, -1).clone(),
         "road_edges": torch.from_numpy(lines * [2.0, 1.0]).float().expand(b, -1, -1, -1).clone(),
         "lead": torch.tensor([[1.0, 40.0, 0.0, -2.0, 0.0]]).expand(b, -1).clone(),
         "plan": torch.zeros(b, IDX_N, 15), "plan_valid": torch.ones(b, IDX_N, dtype=torch.bool),
         "action": torch.zeros(b, 2), "action_valid": torch.ones(b, dtype=torch.bool)}
  return img, tgt


def test_yaw_augmentation_turns_frames_and_labels_together():
  from common.modelconstants import X_IDXS
  from common.transformations.camera import device_from_calib, get_model_frame_warp, model_frame_camera, project
  from training.policy.data import yaw_augment
  K = model_frame_intrinsics(CFG.frame_w, CFG.frame_h, CFG.frame_focal)
  turn = (0.0, 0.0, 0.03)                                  # a camera turned 0.03 rad right = that calibration
  # the homography is the rotation's, exactly, at every depth
  p = np.array([[6.0, -1.8, 1.22], [40.0, 3.0, 1.22], [150.0, 0.0, -5.0]])
  H = get_model_frame_warp(turn, model_frame_camera(CFG.frame_w, CFG.frame_h, CFG.frame_focal), CFG.frame_w,
                           CFG.frame_h, CFG.frame_focal)
  R = device_from_calib(turn).T
  uv = np.c_[project(p, K), np.ones(3)] @ H.T
  np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], project(p @ R.T, K), atol=1e-9)
  ahead = project(np.array([[50.0, 0.0, 0.0]]) @ R.T, K)
  assert ahead[0, 0] < CFG.frame_w / 2                    # turned right: the road ahead moves left

  img, tgt = _lane_label_batch(16)
  img0, tgt0 = img.clone(), {k: v.clone() for k, v in tgt.items()}
  a, t = yaw_augment(img, tgt, CFG, 0.035, 0.5, torch.Generator().manual_seed(1))
  assert torch.equal(img, img0) and all(torch.equal(tgt[k], tgt0[k]) for k in tgt)       # inputs untouched
  b, u = yaw_augment(img, tgt, CFG, 0.035, 0.5, torch.Generator().manual_seed(1))
  assert torch.equal(a, b) and all(torch.equal(t[k], u[k]) for k in t)                    # reproducible per draw
  turned = ~t["action_valid"]
  assert 3 <= int(turned.sum()) <= 13
  assert torch.equal(t["plan_valid"].any(1), ~turned)                                     # the driver's plan masked
  assert torch.equal(a[~turned], img[~turned]) and torch.equal(t["lane_lines"][~turned], tgt["lane_lines"][~turned])
  near = (X_IDXS >= 8) & (X_IDXS <= 60)
  shifts = []
  for i in torch.nonzero(turned).flatten().tolist():
    frame = a[i, 3:].float().mean(0).numpy()
    assert torch.equal(a[i, :3], a[i, 3:])                                                # both frames, one turn
    def brightness(lines):
      pts = [project(np.stack([X_IDXS[near], ln[near, 0], ln[near, 1]], -1), K) for ln in lines.numpy()]
      return np.mean([frame[int(round(v)), int(round(uu))] for q in pts for uu, v in q])
    assert brightness(t["lane_lines"][i]) > 150                                          # the turned labels on the turned lines
    # the lane's heading in the turned frame is the old one minus the turn
    def rise(lines):
      return lines[:, 13, 0] - lines[:, 7, 0]
    slope = rise(t["lane_lines"][i]) - rise(tgt["lane_lines"][i])
    yaw = -float(slope.mean()) / (X_IDXS[13] - X_IDXS[7])
    shifts.append(yaw)
    if abs(yaw) > 0.015:                                                                  # >= 3.4 px at the horizon
      assert brightness(tgt["lane_lines"][i]) < brightness(t["lane_lines"][i]) - 50       # the old labels are off them
    np.testing.assert_allclose(t["lead"][i, 1:3].numpy(), 40.0 * np.array([np.cos(yaw), -np.sin(yaw)]), rtol=0.02, atol=0.02)
  assert max(np.abs(shifts)) <= 0.036 and max(np.abs(shifts)) > 0.01 and min(shifts) < 0 < max(shifts)
  none, t_none = yaw_augment(img, tgt, CFG, 0.035, 0.0, torch.Generator().manual_seed(1))
  assert torch.equal(none, img) and t_none["action_valid"].all()


def test_extractor_trains_with_yaw_augmentation(tmp_path):
  train, val = _segs()
  rc = run_config(lr=2e-3, warmup=2, eval_every=5, ckpt_every=5, log_every=1)
  tr = PolicyTraining(CFG, rc, tmp_path, train, val, progress=False, batch_size=8, val_batches=1, augment=True,
                      yaw_augment=0.035)
  res = tr.run_extractor(5)
  assert np.isfinite(res["loss"]) and np.isfinite(res["ade"])
  for bad in (["--yaw-augment", "0.05"], ["--augment", "--yaw-augment", "0.5"]):
    with pytest.raises(SystemExit):
      main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), *bad])


def test_training_pools_several_data_roots(tmp_path, monkeypatch):
  from training.policy import train as pt
  roots = [tmp_path / "a", tmp_path / "b"]
  segs = {roots[0]: [roots[0] / f"r|{i}/0" for i in range(3)], roots[1]: [roots[1] / f"r|{i}/0" for i in range(7)]}
  for p in sum(segs.values(), []):
    p.mkdir(parents=True)
    (p / "video.hevc").write_bytes(b"x")
  monkeypatch.setattr("tools.lib.route.scan_segments", lambda root, **kw: (segs[Path(root)], []))
  train, val = pt.split_segments(roots, tmp_path / "run", 0.2, seed=0)
  assert sorted(train + val) == sorted(sum(segs.values(), [])) and len(val) == 2
  assert pt.split_segments(roots[::-1], tmp_path / "run", 0.2, seed=5) == (train, val)   # frozen in split.json


def test_resume_refuses_a_run_of_another_config_and_names_the_fields(tmp_path):
  """A run saved before curvature_param existed (its config lacks the field: the direct head) is not resumed with
  today's preset (the split head): the error names the field, saved and now."""
  from tests.training.policy.synthetic import make_segment
  from training.checkpoint import save_checkpoint
  from training.policy import train as PT
  from training.policy.model import VisionModel, get_config
  cfg = get_config("tiny")
  old = {k: v for k, v in cfg.to_dict().items() if k != "curvature_param"}
  save_checkpoint(tmp_path, 1, {"vision": VisionModel(cfg).state_dict()}, None, {"policy": old},
                  {"task": {"stage": "extractor", "stage_step": 1}})
  segs = [make_segment(cfg, 48, 15, 0, seed=0, name="syn/0")]
  run = PT.PolicyTraining(cfg, PT.run_config(max_steps=2), tmp_path, segs, segs, progress=False, batch_size=2,
                          val_batches=1)
  with pytest.raises(ValueError, match=r"curvature_param.*\('direct', 'split'\)"):
    run.resume()
