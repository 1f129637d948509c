"""SConstruct: cereal schema artifacts and ORT model artifacts; a corrupt ONNX file fails the build."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cereal import log

ROOT = Path(__file__).resolve().parents[2]
SCONS = str(Path(sys.executable).parent / "scons")


def tiny_onnx(path: Path) -> None:
  """y = relu(x @ W + b), x: (1, 4) float32 -> y: (1, 3)."""
  rng = np.random.default_rng(0)
  w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], rng.standard_normal(12).astype(np.float32).tolist())
  b = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3])
  nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
           helper.make_node("Relu", ["h2"], ["y"])]
  graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, b])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  helper.set_model_props(model, {"model_name": "tiny-test"})
  onnx.save(model, str(path))


def scons(tmp_path: Path, models: Path):
  return subprocess.run([SCONS, "-C", str(ROOT), "-j2", f"--models-dir={models}", f"--build-dir={tmp_path / 'build'}"],
                        capture_output=True, text=True, timeout=300)


def test_scons_builds_cereal_and_model_artifacts(tmp_path):
  models = tmp_path / "models"
  models.mkdir()
  tiny_onnx(models / "tiny.onnx")
  r = scons(tmp_path, models)
  assert r.returncode == 0, r.stdout + r.stderr
  out = tmp_path / "build"
  schema = json.loads((out / "cereal" / "schema.json").read_text())
  assert schema["event_members"] == list(log.Event.schema.union_fields)
  assert schema["file_id"] == "0xd4a7c3e8b91f5a26"
  car_state = {f["name"]: f.get("ordinal") for f in schema["structs"]["CarState"]["fields"]}
  assert car_state["vEgo"] == 1 and car_state["aEgo"] == 16 and car_state["vEgoRaw"] == 17   # opendbc's ordinals
  assert "XYZTData" in schema["structs"]
  assert schema["enums"]["Desire"] == ["none", "turnLeft", "turnRight", "laneChangeLeft", "laneChangeRight",
                                       "keepLeft", "keepRight"]
  services = json.loads((out / "cereal" / "services.json").read_text())
  assert services["carState"]["frequency"] == 20 and services["carState"]["should_log"]
  assert '"modelV2"' in (out / "cereal" / "services.h").read_text()

  manifest = json.loads((out / "models" / "tiny.json").read_text())
  ort_file = out / "models" / "tiny.ort"
  assert manifest["source_sha256"] == hashlib.sha256((models / "tiny.onnx").read_bytes()).hexdigest()
  assert manifest["ort_sha256"] == hashlib.sha256(ort_file.read_bytes()).hexdigest()
  assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 4]}]
  assert manifest["outputs"] == [{"name": "y", "dtype": "float32", "shape": [1, 3]}]
  assert manifest["metadata"] == {"model_name": "tiny-test"}
  x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
  ref = ort.InferenceSession(str(models / "tiny.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
  got = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  assert ort_file.read_bytes()[4:8] == b"ORTM"           # really the ORT flatbuffer format

  # nothing changed: nothing rebuilds
  r = scons(tmp_path, models)
  assert r.returncode == 0 and "MODEL" not in r.stdout and "CEREAL" not in r.stdout, r.stdout


@pytest.mark.parametrize("kind", ["garbage", "checker"])
def test_corrupt_onnx_fails_the_build_with_a_clear_message(tmp_path, kind):
  models = tmp_path / "models"
  models.mkdir()
  if kind == "garbage":
    tiny_onnx(models / "bad.onnx")
    data = (models / "bad.onnx").read_bytes()
    (models / "bad.onnx").write_bytes(b"\x12\xff\xff\xff" + data[len(data) // 2:])
    expect = "not a readable ONNX model"
  else:   # parses, but a node reads a tensor that nothing produces
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(models / "bad.onnx"))
    expect = "ONNX checker / shape inference failed"
  r = scons(tmp_path, models)
  assert r.returncode != 0
  assert f"error: {models / 'bad.onnx'}: {expect}" in r.stderr, r.stderr


def test_broken_schema_fails_the_cereal_step(tmp_path, capsys):
  sys.path.insert(0, str(ROOT / "site_scons"))
  try:
    import worldpilot_build as wb
  finally:
    sys.path.remove(str(ROOT / "site_scons"))
  bad = tmp_path / "log.capnp"
  bad.write_text("@0xd4a7c3e8b91f5a27;\nstruct Event {\n  logMonoTime @0 :UInt64\n}\n")   # missing ';'
  targets = [tmp_path / n for n in ("schema.json", "services.json", "services.h")]
  assert wb.build_cereal(targets, [bad], {"REPO_ROOT": str(ROOT)}) == 1
  assert "log.capnp:3: failed: Parse error" in capsys.readouterr().err
  assert not targets[0].exists()
