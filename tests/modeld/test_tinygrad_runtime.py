"""tinygrad artifacts: scons builds them beside the ONNX pair and registers them; modeld only unpickles an artifact
the build registry vouches for; outputs agree with onnxruntime to 1e-3."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from modeld import tinygrad_runtime as tr
from modeld.model_runner import (
  POLICY_FILE,
  VISION_FILE,
  DrivingModel,
  ModelLoadError,
  _TinygradSession,
  select_runtime,
)

ROOT = Path(__file__).resolve().parents[2]
SCONS = str(Path(sys.executable).parent / "scons")


def small_onnx(path: Path, seed: int) -> None:
  """y = relu(x @ W + b), x: (1, 4) float32: a pair of these stands in for the driving pair in build/trust tests."""
  rng = np.random.default_rng(seed)
  w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], rng.standard_normal(12).astype(np.float32).tolist())
  b = helper.make_tensor("b", TensorProto.FLOAT, [3], rng.standard_normal(3).astype(np.float32).tolist())
  nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
           helper.make_node("Relu", ["h2"], ["y"])]
  graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, b])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  onnx.save(model, str(path))


def scons(models: Path, build: Path, *extra: str):
  return subprocess.run([SCONS, "-C", str(ROOT), "-j2", f"--models-dir={models}", f"--build-dir={build}",
                         "--tinygrad-beam=0", *extra], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
  root = tmp_path_factory.mktemp("tg_small")
  models, build = root / "models", root / "build"
  models.mkdir()
  small_onnx(models / VISION_FILE, 0)
  small_onnx(models / POLICY_FILE, 1)
  r = scons(models, build)
  assert r.returncode == 0, r.stdout + r.stderr
  return models, build / "tinygrad_registry", r


def test_scons_builds_registered_artifacts_beside_the_pair(small_pair):
  models, registry, _ = small_pair
  for f in (VISION_FILE, POLICY_FILE):
    art = tr.artifact_path(models / f)
    assert art.name == f.replace(".onnx", "_tinygrad.pkl") and art.is_file()
    header = json.loads(art.read_bytes().split(b"\n")[1])
    assert header["source_sha256"] == tr.sha256_file(models / f)
    assert header["max_abs_diff_vs_onnxruntime"] <= 1e-3
    entry = json.loads((registry / f"{tr.sha256_file(art)}.json").read_text())
    assert entry["source_sha256"] == header["source_sha256"]
    prog = tr.load_artifact(models / f, registry=registry)
    sess = ort.InferenceSession(str(models / f), providers=["CPUExecutionProvider"])
    outs = []
    for x in np.random.default_rng(3).standard_normal((8, 1, 4)).astype(np.float32):
      outs.append(prog({"x": x})[0])
      np.testing.assert_allclose(outs[-1], sess.run(None, {"x": x})[0], atol=1e-5)
    assert np.count_nonzero(outs) >= 3
    with pytest.raises(ValueError, match="input 'x' must be float32"):
      prog({"x": x.astype(np.float64)})
  assert tr.sha256_file(models / VISION_FILE) != tr.sha256_file(models / POLICY_FILE)
  assert select_runtime(models, "auto", registry) == "tinygrad"
  assert select_runtime(models, "onnxruntime", registry) == "onnxruntime"     # --runtime overrides
  # nothing changed: nothing rebuilds
  r2 = scons(models, registry.parent)
  assert r2.returncode == 0 and "TINYGRAD" not in r2.stdout, r2.stdout


def test_foreign_artifact_is_never_unpickled(small_pair, tmp_path):
  """A model directory someone hands over with a *_tinygrad.pkl: its pickle must not run."""
  models, registry, _ = small_pair
  handed = tmp_path / "handed"
  handed.mkdir()
  for f in (VISION_FILE, POLICY_FILE):
    shutil.copy(models / f, handed / f)
  sentinel = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (Path.touch, (sentinel,))
  header = {"source_sha256": tr.sha256_file(handed / POLICY_FILE), "tinygrad_version": tr._tinygrad_version(),
            "inputs": {"x": {"shape": [1, 4], "dtype": "float32"}}, "outputs": ["y"]}
  import pickle
  tr.artifact_path(handed / POLICY_FILE).write_bytes(tr.MAGIC + json.dumps(header).encode() + b"\n" + pickle.dumps(Evil()))
  # and a genuine artifact copied in from the trusted build is trusted only because its exact bytes were built here
  shutil.copy(tr.artifact_path(models / VISION_FILE), tr.artifact_path(handed / VISION_FILE))
  with pytest.raises(tr.ArtifactRefused, match="not built by scons on this machine"):
    tr.load_artifact(handed / POLICY_FILE, registry=registry)
  with pytest.raises(ModelLoadError, match="not built by scons on this machine"):
    _TinygradSession(handed / POLICY_FILE, registry, require_artifact=True)
  assert not sentinel.exists()
  assert select_runtime(handed, "auto", registry) == "onnxruntime"
  tr.load_artifact(handed / VISION_FILE, registry=registry)       # same bytes scons built from the same ONNX
  with pytest.raises(tr.ArtifactRefused, match="not built by scons"):  # another machine's registry knows nothing
    tr.load_artifact(handed / VISION_FILE, registry=tmp_path / "empty_registry")


def test_stale_artifact_refused_then_rebuilt(small_pair, tmp_path):
  models, _, _ = small_pair
  work, build = tmp_path / "models", tmp_path / "build"
  shutil.copytree(models, work)
  r = scons(work, build)                         # its own build dir: registry entries for `work`
  assert r.returncode == 0, r.stderr
  reg = build / "tinygrad_registry"
  tr.load_artifact(work / POLICY_FILE, registry=reg)
  small_onnx(work / POLICY_FILE, 7)              # a new policy: the old artifact is stale
  with pytest.raises(tr.ArtifactRefused, match="stale"):
    tr.load_artifact(work / POLICY_FILE, registry=reg)
  assert select_runtime(work, "auto", reg) == "onnxruntime"
  r = scons(work, build)
  assert r.returncode == 0, r.stderr
  assert "TINYGRAD" in r.stdout and POLICY_FILE in r.stdout and VISION_FILE not in r.stdout, r.stdout
  prog = tr.load_artifact(work / POLICY_FILE, registry=reg)
  assert prog.header["source_sha256"] == tr.sha256_file(work / POLICY_FILE)


def test_bad_onnx_fails_the_tinygrad_build_with_one_line(tmp_path):
  models = tmp_path / "models"
  models.mkdir()
  small_onnx(models / VISION_FILE, 0)
  small_onnx(models / POLICY_FILE, 1)
  data = (models / POLICY_FILE).read_bytes()
  (models / POLICY_FILE).write_bytes(data[: len(data) // 2])
  r = subprocess.run([sys.executable, "-m", "modeld.tinygrad_runtime", "compile", str(models / POLICY_FILE),
                      "--registry", str(tmp_path / "reg"), "--beam", "0"], capture_output=True, text=True, timeout=300,
                     cwd=ROOT)
  assert r.returncode == 1
  assert r.stderr.strip().startswith(f"error: {models / POLICY_FILE}:") and len(r.stderr.strip().splitlines()) == 1
  assert not tr.artifact_path(models / POLICY_FILE).exists() and not (tmp_path / "reg").exists()


def test_driving_model_tinygrad_artifacts_agree_with_onnxruntime(tmp_path):
  """The real exported tiny pair, scons-built: DrivingModel picks tinygrad by itself; every output agrees to 1e-3."""
  torch = pytest.importorskip("torch")
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  cfg = get_config("tiny")
  torch.manual_seed(0)
  export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), tmp_path / "models", commit="test")
  r = scons(tmp_path / "models", tmp_path / "build")
  assert r.returncode == 0, r.stdout + r.stderr
  reg = tmp_path / "build" / "tinygrad_registry"
  tg = DrivingModel(tmp_path / "models", runtime="auto", registry=reg)
  assert tg.runtime == "tinygrad" and tg._vision.artifact and tg._policy.artifact and tg._vision.program.direct
  ort = DrivingModel(tmp_path / "models", runtime="onnxruntime")
  rng = np.random.default_rng(0)
  for i in range(6):
    frame = rng.integers(0, 256, (tg.height, tg.width, 3), dtype=np.uint8)
    a, b = tg.run(frame, 15.0 + i, desire=i % 3), ort.run(frame, 15.0 + i, desire=i % 3)
    compared = 0
    for got, want in ((a, b), (a["vision"], b["vision"])):
      for key, v in want.items():
        if isinstance(v, np.ndarray):
          np.testing.assert_allclose(got[key], v, atol=1e-3, rtol=1e-3, err_msg=key)
          compared += 1
    for k, v in b["action"].items():
      assert abs(a["action"][k] - v) <= 1e-3, k
    assert compared >= 8


def test_kernel_search_runs_on_the_slowest_kernels(tmp_path):
  """--beam N: the captured program is timed and BEAM searches its slowest kernels (here: the only one)."""
  small_onnx(tmp_path / "m.onnx", 3)
  env = {**os.environ, "IGNORE_BEAM_CACHE": "1"}       # really search, not replay a cached result
  r = subprocess.run([sys.executable, "-m", "modeld.tinygrad_runtime", "compile", str(tmp_path / "m.onnx"),
                      "--registry", str(tmp_path / "reg"), "--beam", "1"], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert res["search"]["searched_kernels"] == 1 and res["search"]["kernels"] == 1 and res["beam"] == 1
  prog = tr.load_artifact(tmp_path / "m.onnx", registry=tmp_path / "reg")
  x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
  want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
  np.testing.assert_allclose(prog({"x": x})[0], want, atol=1e-5)
