"""tools.release.build: the release holds the device side only (no training, no torch), ships exactly the tinygrad
artifacts the build registry vouches for, and runs modeld + controlsd from a fresh venv that has only the base
dependencies, on a segment replayed through cereal/VisionIPC."""
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from modeld import tinygrad_runtime as tr
from tools.release.build import (
  ReleaseError,
  base_requirements,
  build_release,
  forbidden_imports,
)

REPO = Path(__file__).resolve().parents[3]
SEGMENT = REPO / "selfdrive/test/process_replay/model_replay_data/segments/sim_lane_keep"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  out = tmp_path_factory.mktemp("rel") / "release"
  result = build_release(out)
  return out, result


def test_release_holds_the_device_side_only(release):
  out, _ = release
  for p in ("cereal/log.capnp", "cereal/messaging/__init__.py", "common/modelconstants.py", "selfdrive/manager.py",
            "modeld/model_runner.py", "modeld/tinygrad_runtime.py", "modeld/models/driving_vision.onnx",
            "modeld/models/driving_policy.onnx", "tools/lib/logreader.py", "tools/__init__.py", "launch.sh"):
    assert (out / p).is_file(), p
  for p in ("training", "tools/sim", "bench", "tests", "tools/release"):
    assert not (out / p).exists(), p
  assert not list(out.rglob("__pycache__"))
  assert os.access(out / "launch.sh", os.X_OK) and "selfdrive.manager" in (out / "launch.sh").read_text()
  reqs = (out / "requirements.txt").read_text().split()
  assert reqs == base_requirements() and not [r for r in reqs if r.startswith(("torch", "diffusers", "ray"))]
  for py in out.rglob("*.py"):
    assert forbidden_imports(py) == [], py
  manifest = json.loads((out / "RELEASE.json").read_text())
  assert set(manifest["files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"RELEASE.json"}
  assert manifest["files"]["modeld/models/driving_vision.onnx"] == tr.sha256_file(REPO / "modeld/models/driving_vision.onnx")
  with pytest.raises(ReleaseError, match="not empty"):
    build_release(out)


def test_a_training_import_fails_the_build(tmp_path, monkeypatch):
  bad = tmp_path / "x.py"
  bad.write_text("import numpy\nfrom training.policy import model\nimport torch.nn as nn\n")
  assert forbidden_imports(bad) == ["training.policy", "torch.nn"]


def test_release_ships_only_registered_current_artifacts(tmp_path):
  from tests.modeld.test_tinygrad_runtime import small_onnx
  models, reg = tmp_path / "models", tmp_path / "registry"
  models.mkdir()
  small_onnx(models / "driving_vision.onnx", 0)
  small_onnx(models / "driving_policy.onnx", 1)
  for name in ("driving_vision.onnx", "driving_policy.onnx"):
    r = subprocess.run([sys.executable, "-m", "modeld.tinygrad_runtime", "compile", str(models / name), "--registry",
                        str(reg), "--beam", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
  small_onnx(models / "driving_policy.onnx", 5)      # the policy changed after its artifact was built: stale
  out = tmp_path / "release"
  result = build_release(out, model_dir=models, registry=reg)
  assert result["tinygrad_artifacts"] == ["driving_vision_tinygrad.pkl"]
  assert len(result["artifacts_left_out"]) == 1 and "stale" in result["artifacts_left_out"][0]
  shipped = out / "modeld/models"
  assert not (shipped / "driving_policy_tinygrad.pkl").exists()
  # the release's own registry vouches for what it shipped, so its modeld loads it by default
  prog = tr.load_artifact(shipped / "driving_vision.onnx", registry=out / "build/tinygrad_registry")
  assert prog.header["source_sha256"] == tr.sha256_file(shipped / "driving_vision.onnx")
  with pytest.raises(ReleaseError, match="stale"):
    build_release(tmp_path / "release2", model_dir=models, registry=reg, require_artifacts=True)
  assert not (tmp_path / "release2").exists()


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
  """Installed distributions of the requirements and of everything they require (markers for this platform)."""
  from packaging.requirements import Requirement
  seen, todo, out = set(), [Requirement(r) for r in requirements], []
  while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
      continue
    seen.add(name)
    dist = metadata.distribution(req.name)
    out.append(dist)
    todo += [Requirement(r) for r in (dist.requires or [])]
  return out


def _base_only_venv(root: Path) -> Path:
  """A venv with no pip and no packages, plus a .pth onto a folder that links only the base dependencies' files."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
  deps = root / "deps"
  deps.mkdir()
  for dist in _closure(base_requirements()):
    tops = {Path(str(f)).parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
    for top in tops:
      src = Path(dist.locate_file(top))
      if src.exists() and not (deps / top).exists() and top not in ("bin", "__pycache__"):
        (deps / top).symlink_to(src)
  site = next((root / "venv/lib").glob("python3*/site-packages"))
  (site / "base_deps.pth").write_text(str(deps) + "\n")
  return root / "venv/bin/python"


@pytest.mark.timeout(300)
def test_release_runs_modeld_and_controlsd_from_a_fresh_venv(release, tmp_path):
  from cereal.messaging import cleanup_prefix, drain_sock, sub_sock
  out, _ = release
  py = _base_only_venv(tmp_path)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  r = subprocess.run([str(py), "-c", "import torch"], cwd=out, env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode != 0 and "torch" in r.stderr                 # the venv really has no torch
  r = subprocess.run([str(py), "-c", "import modeld.model_runner, selfdrive.manager, cereal.messaging, training"],
                     cwd=out, env=env, capture_output=True, text=True, timeout=120)
  assert "No module named 'training'" in r.stderr, r.stderr          # ... and the release no training
  if release[1]["tinygrad_artifacts"]:   # scons built the shipped model's artifacts here: the release's modeld uses them
    code = ("import numpy as np; from modeld.model_runner import DrivingModel; dm = DrivingModel('modeld/models', 'auto'); "
            "o = dm.run(np.zeros((dm.height, dm.width, 3), np.uint8), 20.0, 0); "
            "print(dm.runtime, dm._vision.artifact is not None, bool(np.isfinite(o['plan']).all()))")
    r = subprocess.run([str(py), "-c", code], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["tinygrad", "True", "True"], r.stdout + r.stderr
  if not (out / "modeld/modeld.py").is_file() or not (out / "selfdrive/controls/controlsd.py").is_file():
    pytest.skip("modeld.modeld / selfdrive.controls.controlsd are not in this checkout (branch issue18)")
  prefix = f"reltest_{uuid.uuid4().hex[:8]}"
  os.environ["WORLDPILOT_PREFIX"] = prefix
  stack = replay = None
  socks = []
  try:
    socks = [sub_sock("modelV2", timeout=10), sub_sock("carControl", timeout=10)]
    from selfdrive.controls.vehicle_model import DEFAULT_CAR
    stack = subprocess.Popen([str(out / "launch.sh"), "--only", "modeld,controlsd", "--prefix", prefix],
                             cwd=out, env={**env, "PYTHON": str(py), "WORLDPILOT_PREFIX": prefix,
                                           "WORLDPILOT_CAR": DEFAULT_CAR},   # an opendbc platform the release knows
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    replay = subprocess.Popen([sys.executable, "-m", "tools.replay.replay", str(SEGMENT), "--non-interactive",
                               "--prefix", prefix], cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    models, controls = [], []
    t_end = time.monotonic() + 200
    while time.monotonic() < t_end and (len(models) < 30 or len(controls) < 30):
      models += drain_sock(socks[0])
      controls += drain_sock(socks[1])
      assert stack.poll() is None, stack.stdout.read()
      time.sleep(0.05)
    valid = [m for m in models if m.valid and m.modelV2.frameId > 0]
    assert len(valid) >= 10, (len(models), len(valid))
    assert all(abs(m.modelV2.action.desiredCurvature) < 1.0 for m in valid)
    assert len(controls) >= 30 and all(math.isfinite(c.carControl.actuators.steeringAngleDeg) for c in controls)
  finally:
    for p in (replay, stack):
      if p is not None and p.poll() is None:
        os.killpg(p.pid, 15) if p is stack else p.terminate()
        try:
          p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
          os.killpg(p.pid, 9) if p is stack else p.kill()
          p.communicate()
    for s in socks:
      s.close()
    cleanup_prefix(prefix)
    os.environ.pop("WORLDPILOT_PREFIX", None)
