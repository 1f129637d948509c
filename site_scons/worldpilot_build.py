"""Build steps used by SConstruct (SCons puts site_scons/ on sys.path).

Each `build_*` is an SCons Python action: `(target, source, env) -> 0 | 1`; a failure prints one
clear `error: <file>: <reason>` line and returns 1, which fails the build.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys


def _err(path, msg: str) -> int:
  print(f"error: {path}: {msg}", file=sys.stderr)
  return 1


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=False)
    f.write("\n")
  os.replace(tmp, path)


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


# ---------------------------------------------------------------- cereal

def _type_name(t, field_schema=None) -> str:
  k = t.which()
  if k == "list":
    inner = t.list.elementType
    sub = field_schema.elementType if field_schema is not None and inner.which() in ("struct", "enum") else None
    return f"List({_type_name(inner, sub) if sub is None else sub.node.displayName.split(':')[-1]})"
  if k in ("struct", "enum") and field_schema is not None:
    return field_schema.node.displayName.split(":")[-1]
  return k


def schema_summary(log) -> dict:
  """Every struct reachable from Event: fields with ordinals and types, union members, enums."""
  structs: dict[str, dict] = {}
  enums: dict[str, list[str]] = {}

  def visit(schema) -> None:
    name = schema.node.displayName.split(":")[-1]
    if name in structs:
      return
    entry = {"id": hex(schema.node.id), "fields": [], "union": list(schema.union_fields)}
    structs[name] = entry
    for fname, field in schema.fields.items():
      p = field.proto
      if p.which() == "group":
        entry["fields"].append({"name": fname, "type": "group"})
        visit(field.schema)
        continue
      t = p.slot.type
      sub = None
      if t.which() in ("struct", "enum"):
        sub = field.schema
      elif t.which() == "list" and t.list.elementType.which() in ("struct", "enum"):
        sub = field.schema.elementType
      entry["fields"].append({"name": fname, "ordinal": p.ordinal.explicit if p.ordinal.which() == "explicit" else None,
                              "type": _type_name(t, field.schema if sub is not None else None)})
      if sub is not None:
        if t.which() == "enum" or (t.which() == "list" and t.list.elementType.which() == "enum"):
          enums[sub.node.displayName.split(":")[-1]] = list(sub.enumerants)
        else:
          visit(sub)

  visit(log.Event.schema)
  return {"file_id": hex(log.Event.schema.node.scopeId), "event_members": list(log.Event.schema.union_fields),
          "structs": structs, "enums": enums}


def build_cereal(target, source, env) -> int:
  """Compile cereal/log.capnp with pycapnp, check services.py against it, write the summaries."""
  root = env["REPO_ROOT"]
  if root not in sys.path:
    sys.path.insert(0, root)
  capnp_path = str(source[0])
  # pycapnp aborts the whole process (std::terminate) on a schema error, so compile in a child first
  import subprocess
  # log.capnp imports opendbc's car.capnp: the import path comes from cereal (cereal.CAPNP_IMPORTS)
  child = ("import sys; sys.path.insert(0, sys.argv[2]); import capnp; from cereal import CAPNP_IMPORTS; "
           "capnp.load(sys.argv[1], imports=CAPNP_IMPORTS)")
  r = subprocess.run([sys.executable, "-c", child, os.path.abspath(capnp_path), root],
                     capture_output=True, text=True, timeout=120)
  if r.returncode != 0:
    lines = [ln.strip() for ln in r.stderr.splitlines() if "failed:" in ln or ln.strip().startswith("what()")]
    return _err(capnp_path, "schema does not compile: " + (" | ".join(lines) or r.stderr.strip()[-500:]))
  try:
    import capnp
    capnp.remove_import_hook()
    from cereal import CAPNP_IMPORTS
    log = capnp.load(os.path.abspath(capnp_path), imports=CAPNP_IMPORTS)
    log.Event.schema   # noqa: B018  (forces the root struct to resolve)
  except Exception as e:   # pycapnp raises KjException / AttributeError / ValueError on parse errors
    return _err(capnp_path, f"schema does not compile: {e}")
  try:
    import importlib
    services = importlib.import_module("cereal.services")
    services = importlib.reload(services)
  except Exception as e:
    return _err("cereal/services.py", f"cannot import: {e}")
  members = set(log.Event.schema.union_fields)
  unknown = [s for s in services.SERVICE_LIST if s not in members]
  if unknown:
    return _err("cereal/services.py", f"services {unknown} are not members of the Event union in {capnp_path}")
  summary = schema_summary(log)
  _write_json(str(target[0]), summary)
  _write_json(str(target[1]), {name: {"should_log": s.should_log, "frequency": s.frequency, "decimation": s.decimation}
                               for name, s in services.SERVICE_LIST.items()})
  with open(str(target[2]), "w") as f:
    f.write(services.build_header())
  return 0


# ---------------------------------------------------------------- models

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def _value_info(vi) -> dict:
  tt = vi.type.tensor_type
  shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
  return {"name": vi.name, "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}


def build_model(target, source, env) -> int:
  """models/<name>.onnx -> build/models/<name>.ort (onnxruntime-optimized, ORT format) + <name>.json manifest."""
  src = str(source[0])
  ort_path, manifest_path = str(target[0]), str(target[1])
  import numpy as np
  import onnx
  import onnxruntime as ort
  try:
    model = onnx.load(src)
  except Exception as e:
    return _err(src, f"not a readable ONNX model ({type(e).__name__}: {e})")
  try:
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
  except Exception as e:
    return _err(src, f"ONNX checker / shape inference failed: {str(e).strip().splitlines()[0]}")
  os.makedirs(os.path.dirname(ort_path), exist_ok=True)
  so = ort.SessionOptions()
  so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
  so.optimized_model_filepath = ort_path
  so.add_session_config_entry("session.save_model_format", "ORT")
  try:
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
  except Exception as e:
    return _err(src, f"onnxruntime cannot build an optimized model: {e}")
  # the artifact must load and run on its own: one inference with zeros (dynamic dims = 1)
  try:
    sess = ort.InferenceSession(ort_path, providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
      shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
      dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
               "tensor(bool)": np.bool_}.get(i.type, np.float32)
      feeds[i.name] = np.zeros(shape, dtype=dtype)
    outs = sess.run(None, feeds)
  except Exception as e:
    return _err(ort_path, f"optimized model does not run: {e}")
  initializer_names = {t.name for t in inferred.graph.initializer}
  manifest = {
    "name": os.path.splitext(os.path.basename(src))[0],
    "source": os.path.relpath(src, env["REPO_ROOT"]) if os.path.isabs(src) else src,
    "source_sha256": sha256_file(src),
    "ort": os.path.basename(ort_path),
    "ort_sha256": sha256_file(ort_path),
    "ort_bytes": os.path.getsize(ort_path),
    "onnxruntime_version": ort.__version__,
    "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    "inputs": [_value_info(vi) for vi in inferred.graph.input if vi.name not in initializer_names],
    "outputs": [_value_info(vi) for vi in inferred.graph.output],
    "smoke_test_output_shapes": [list(o.shape) for o in outs],
    "metadata": {p.key: p.value for p in model.metadata_props},
  }
  _write_json(manifest_path, manifest)
  return 0


# ---------------------------------------------------------------- tinygrad

def build_tinygrad(target, source, env) -> int:
  """<dir>/<name>.onnx -> <dir>/<name>_tinygrad.pkl (modeld.tinygrad_runtime compile) + its registry entry.
  Runs in a child process: tinygrad reads BEAM and the thread count once, at import."""
  import subprocess
  src, out = str(source[0]), str(target[0])
  root = env["REPO_ROOT"]
  child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "OMP_NUM_THREADS": "1"}
  cmd = [sys.executable, "-m", "modeld.tinygrad_runtime", "compile", src, out,
         "--registry", env["TINYGRAD_REGISTRY"], "--beam", str(env["TINYGRAD_BEAM"])]
  r = subprocess.run(cmd, cwd=root, env=child_env, capture_output=True, text=True)
  if r.returncode != 0:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")] or r.stderr.strip().splitlines()[-1:]
    return _err(src, "tinygrad artifact failed: " + (lines[-1].removeprefix("error: ") if lines else f"exit {r.returncode}"))
  print(r.stdout.strip().splitlines()[-1])
  return 0


# ---------------------------------------------------------------- release

def build_release(target, source, env) -> int:
  """`scons release`: python -m tools.release.build --out <build-dir>/release --force (a child process)."""
  import subprocess
  root = env["REPO_ROOT"]
  child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
  r = subprocess.run([sys.executable, "-m", "tools.release.build", "--out", env["RELEASE_DIR"], "--force",
                      "--registry", env["TINYGRAD_REGISTRY"]], cwd=root, env=child_env, capture_output=True, text=True)
  if r.returncode != 0:
    return _err(env["RELEASE_DIR"], (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1].removeprefix("error: "))
  print(r.stdout.strip().splitlines()[-1])
  return 0
