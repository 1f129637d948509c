import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from common.transformations.camera import EON_ROAD_CAM, warp_to_model_frame
from modeld.model_runner import DrivingModel, ModelLoadError
from tests.training.policy.test_fastvit import _randomize
from training.checkpoint import save_checkpoint
from training.export.__main__ import main as export_main
from training.export.export import POLICY_FILE, VISION_FILE, content_hash, export_policy
from training.policy.evaluate import TorchDrivingModel
from training.policy.model import TemporalPolicy, VisionModel, get_config, load_policy_run

torch.set_num_threads(1)
CFG = get_config("tiny")
PREVIEW = (Path(__file__).resolve().parents[3]
           / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40/preview.png")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  torch.manual_seed(0)
  vision, temporal = VisionModel(CFG).eval(), TemporalPolicy(CFG).eval()
  _randomize(vision)                       # non-trivial BN/layer scales: reparameterization must be exact
  out = tmp_path_factory.mktemp("export")
  export_policy(vision, temporal, out, commit="testcommit")
  ref_vision = VisionModel(CFG).eval()
  ref_vision.load_state_dict(vision.state_dict())
  return out, ref_vision, temporal           # ref_vision: NOT reparameterized (the training-time graph)


def _real_pair():
  bgr = cv2.imread(str(PREVIEW))
  assert bgr is not None, f"{PREVIEW} unreadable"
  rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
  frame = warp_to_model_frame(rgb, np.zeros(3), EON_ROAD_CAM, CFG.frame_w, CFG.frame_h, CFG.frame_focal)
  assert frame.std() > 10                   # a real picture, not black
  shifted = np.roll(frame, 2, axis=1)
  return frame, np.concatenate([shifted, frame], axis=-1).transpose(2, 0, 1)[None].copy()


@pytest.fixture(scope="module")
def runners(exported):
  out, _, _ = exported
  return {rt: DrivingModel(out, rt) for rt in ("onnxruntime", "tinygrad")}


def test_parity_torch_onnxruntime_tinygrad(exported, runners):
  _, vision, temporal = exported
  rng = np.random.default_rng(0)
  imgs = {"random": rng.integers(0, 256, (1, 6, CFG.frame_h, CFG.frame_w), dtype=np.uint8), "real": _real_pair()[1],
          "random2": rng.integers(0, 256, (1, 6, CFG.frame_h, CFG.frame_w), dtype=np.uint8)}  # 3rd call: tinygrad JIT replay
  feats = rng.normal(size=(1, CFG.history, CFG.feature_dim)).astype(np.float32)
  v = rng.uniform(0, 35, (1, CFG.history)).astype(np.float32)
  d = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (1, CFG.history))]
  with torch.no_grad():
    pol_ref = temporal(torch.from_numpy(feats), torch.from_numpy(v), torch.from_numpy(d))[:, -1].numpy()
  for kind, img in imgs.items():
    with torch.no_grad():
      z_ref, o_ref = vision(torch.from_numpy(img), noise=False)
    for rt, dm in runners.items():
      z, o = dm.run_vision(img)
      np.testing.assert_allclose(z, z_ref.numpy(), **TOL, err_msg=f"{rt} {kind} hidden_state")
      np.testing.assert_allclose(o, o_ref.numpy(), **TOL, err_msg=f"{rt} {kind} vision outputs")
  for rt, dm in runners.items():
    np.testing.assert_allclose(dm.run_policy(feats, v, d), pol_ref, **TOL, err_msg=f"{rt} policy")


def test_run_loop_matches_torch_wrapper(exported, runners):
  _, vision, temporal = exported
  frame, _ = _real_pair()
  ref = TorchDrivingModel(vision, temporal)
  dm = runners["onnxruntime"]
  dm.reset()
  for i in range(6):
    f = np.roll(frame, i, axis=1).copy()
    a, b = ref.run(f, 10.0 + i, i % 3), dm.run(f, 10.0 + i, i % 3)
    np.testing.assert_allclose(a["plan"], b["plan"], **TOL)
    assert a["action"]["desiredCurvature"] == pytest.approx(b["action"]["desiredCurvature"], rel=1e-4, abs=1e-6)
  assert b["plan"].shape == (33, 15) and b["hypotheses"].shape == (5, 33, 15) and b["lane_lines"].shape == (2, 33, 2)
  assert b["execution_time"] > 0 and dm.frame_spec == {"width": 128, "height": 64, "focal": CFG.frame_focal}


def test_metadata(exported):
  out, _, _ = exported
  for fname, kind in ((VISION_FILE, "vision"), (POLICY_FILE, "policy")):
    m = onnx.load(out / fname)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["model_kind"] == kind and meta["training_commit"] == "testcommit"
    assert meta["content_hash"] == content_hash(m)
    assert len(json.loads(meta["t_idxs"])) == 33 and json.loads(meta["frame_spec"])["width"] == CFG.frame_w
    assert "plan" in json.loads(meta["output_slices"])
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)   # reparameterized


def _rewrite(src: Path, dst: Path, mutate, rehash=True):
  dst.mkdir(exist_ok=True)
  for f in (VISION_FILE, POLICY_FILE):
    (dst / f).write_bytes((src / f).read_bytes())
  m = onnx.load(dst / VISION_FILE)
  mutate(m)
  if rehash:
    for p in m.metadata_props:
      if p.key == "content_hash":
        p.value = content_hash(m)
  (dst / VISION_FILE).write_bytes(m.SerializeToString())


def _set_meta(key, value):
  def f(m):
    for p in m.metadata_props:
      if p.key == key:
        p.value = value
  return f


def _rename_input(m):
  old = m.graph.input[0].name
  m.graph.input[0].name = "image"
  for n in m.graph.node:
    for i, x in enumerate(n.input):
      if x == old:
        n.input[i] = "image"


def _drop_meta(key):
  def f(m):
    keep = [p for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
  return f


@pytest.mark.parametrize("mutate,rehash,match", [
  (_rename_input, True, "input names"),
  (_set_meta("inputs", json.dumps([{"name": "img", "shape": [1, 6, 32, 128], "dtype": "uint8"}])), True, "in metadata"),
  (_drop_meta("output_slices"), True, "lacks"),
  (_set_meta("model_kind", "policy"), True, "model_kind"),
  (_set_meta("t_idxs", json.dumps(list(range(33)))), True, "t_idxs"),
  (_set_meta("frame_spec", json.dumps({"width": 64, "height": 64, "focal": 1.0, "stack_gap_frames": 4})), True, "disagree"),
  (lambda m: m.graph.initializer[0].raw_data.__len__() and m.graph.initializer[0].CopyFrom(
    onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(m.graph.initializer[0]) + 1, m.graph.initializer[0].name)),
   False, "content_hash"),
])
def test_bad_export_is_named(exported, tmp_path, mutate, rehash, match):
  out, _, _ = exported
  _rewrite(out, tmp_path / "m", mutate, rehash)
  with pytest.raises(ModelLoadError, match=match) as e:
    DrivingModel(tmp_path / "m")
  assert VISION_FILE in str(e.value) or "disagree" in str(e.value)


def test_truncated_or_corrupt_files(exported, tmp_path):
  out, _, _ = exported
  data = (out / VISION_FILE).read_bytes()
  for name, blob in (("trunc", data[: len(data) // 2]), ("garbage", b"\x08\x07not an onnx file" * 10), ("empty", b"")):
    d = tmp_path / name
    d.mkdir()
    (d / VISION_FILE).write_bytes(blob)
    (d / POLICY_FILE).write_bytes((out / POLICY_FILE).read_bytes())
    with pytest.raises(ModelLoadError, match=VISION_FILE):
      DrivingModel(d)
  with pytest.raises(ModelLoadError, match="does not exist"):
    DrivingModel(tmp_path / "missing")
  with pytest.raises(ValueError, match="runtime"):
    DrivingModel(out, "tensorrt")


def test_run_rejects_bad_input(runners):
  dm = runners["onnxruntime"]
  with pytest.raises(ValueError, match="frame_rgb"):
    dm.run(np.zeros((CFG.frame_h, CFG.frame_w + 1, 3), np.uint8), 10.0)
  with pytest.raises(ValueError, match="frame_rgb"):
    dm.run(np.zeros((CFG.frame_h, CFG.frame_w, 3), np.float32), 10.0)
  with pytest.raises(ValueError, match="desire"):
    dm.run(np.zeros((CFG.frame_h, CFG.frame_w, 3), np.uint8), 10.0, 7)
  with pytest.raises(ValueError, match="v_ego"):
    dm.run(np.zeros((CFG.frame_h, CFG.frame_w, 3), np.uint8), float("nan"))


def test_export_cli(exported, tmp_path, capsys):
  _, vision, temporal = exported
  run = tmp_path / "run"
  cfgd = {"policy": CFG.to_dict()}
  save_checkpoint(run, 1, {"vision": vision.state_dict()}, None, cfgd, {"stage": "extractor", "stage_step": 1})
  assert export_main(["--run", str(run), "--out", str(tmp_path / "x")]) == 1   # a runtime error: the run's content
  assert "no temporal model" in capsys.readouterr().err
  # the extractor alone (training.onpolicy.fidelity's Pose Net) loads from the same run
  v, t, ck = load_policy_run(run, need_temporal=False)
  assert t is None and ck["step"] == 1 and not v.training
  assert all(torch.equal(x, y) for x, y in zip(v.state_dict().values(), vision.state_dict().values()))
  save_checkpoint(run, 2, {"vision": vision.state_dict(), "temporal": temporal.state_dict()}, None, cfgd,
                  {"stage": "temporal", "stage_step": 1})
  assert export_main(["--run", str(run), "--out", str(tmp_path / "x")]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["ort_vs_torch_max_abs"] < 1e-4 and res["model_name"] == "worldpilot-fastvit-tiny"
  assert DrivingModel(tmp_path / "x").model_name == "worldpilot-fastvit-tiny"
  assert export_main(["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "y")]) == 1


def test_export_cli_fails_on_nan_weights(exported, tmp_path, capsys):
  _, vision, temporal = exported
  run = tmp_path / "run"
  cfgd = {"policy": CFG.to_dict()}
  for name, module in (("vision", vision), ("temporal", temporal)):
    state = {"vision": {k: v.clone() for k, v in vision.state_dict().items()},
             "temporal": {k: v.clone() for k, v in temporal.state_dict().items()}}
    w = next(k for k, v in state[name].items() if v.is_floating_point() and v.ndim >= 2)
    state[name][w].view(-1)[0] = float("nan")
    save_checkpoint(run / name, 1, state, None, cfgd, {"stage": "temporal", "stage_step": 1})
    assert export_main(["--run", str(run / name), "--out", str(tmp_path / f"x{name}")]) == 1
    captured = capsys.readouterr()
    assert "non-finite" in captured.err.strip().splitlines()[-1] and captured.out == ""


def test_run_rejects_inf_after_cast_and_nan_outputs_without_poisoning_history(exported):
  out, _, _ = exported
  from common.modelconstants import ModelOutputError
  rng = np.random.default_rng(3)
  frames = [rng.integers(0, 256, (CFG.frame_h, CFG.frame_w, 3), dtype=np.uint8) for _ in range(12)]
  ref, dm = DrivingModel(out), DrivingModel(out)
  with pytest.raises(ValueError, match="v_ego"):
    dm.run(frames[0], 1e39)                          # finite as float64, inf as the policy's float32
  real_vision = dm._vision
  calls = {"n": 0}

  def flaky(inputs):                                 # the 4th vision call returns NaN (e.g. a bad accelerator op)
    calls["n"] += 1
    hidden, o = real_vision(inputs)
    return (np.full_like(hidden, np.nan), o) if calls["n"] == 4 else (hidden, o)
  dm._vision = flaky
  for i, f in enumerate(frames):
    if i == 3:
      with pytest.raises(ModelOutputError, match="non-finite"):
        dm.run(f, 10.0)
      continue
    a, b = ref.run(f, 10.0), dm.run(f, 10.0)
    assert np.isfinite(b["plan"]).all()
    assert np.allclose(a["plan"], b["plan"], atol=1e-5), i


def test_metadata_with_wrong_types_is_a_load_error(exported, tmp_path):
  out, _, _ = exported
  for i, (key, value) in enumerate((("inputs", json.dumps([1, 2])), ("inputs", json.dumps({"name": "img"})),
                                    ("t_idxs", json.dumps("abc")), ("t_idxs", json.dumps({"a": 1})),
                                    ("feature_dim", json.dumps({"x": 1})), ("history", json.dumps([1])),
                                    ("frame_spec", json.dumps("wide")), ("output_slices", json.dumps([1])))):
    d = tmp_path / f"m{i}"
    _rewrite(out, d, _set_meta(key, value))
    if key in ("feature_dim", "history"):            # these are read from the policy file too: change both
      m = onnx.load(d / POLICY_FILE)
      _set_meta(key, value)(m)
      for p in m.metadata_props:
        if p.key == "content_hash":
          p.value = content_hash(m)
      (d / POLICY_FILE).write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError):
      DrivingModel(d)


def test_export_never_unpickles_the_optimizer_state(exported, tmp_path, capsys):
  from tests.training.test_checkpoint import _plant_pickle
  _, vision, temporal = exported
  run = tmp_path / "run"
  save_checkpoint(run, 1, {"vision": vision.state_dict(), "temporal": temporal.state_dict()}, {"lr": 0.1},
                  {"policy": CFG.to_dict()}, {"stage": "temporal", "stage_step": 1})
  marker = tmp_path / "pwned"
  _plant_pickle(run, marker)                    # a run directory someone handed over, with code in its .optim.pt
  assert export_main(["--run", str(run), "--out", str(tmp_path / "x")]) == 0
  assert not marker.exists()
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1
