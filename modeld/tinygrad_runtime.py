"""tinygrad runtime for modeld: an ONNX model compiled ahead of time into a jitted, kernel-searched program.

Build (scons does this for every driving_vision.onnx / driving_policy.onnx pair, see SConstruct):

  python -m modeld.tinygrad_runtime compile models/driving_vision.onnx models/driving_vision_tinygrad.pkl \
      --registry build/tinygrad_registry [--beam 2]

runs the ONNX graph under tinygrad's TinyJit (prune=True: work that depends only on weights runs once at capture),
with BEAM kernel search (one CPU thread) on the slowest kernels,
checks the program against onnxruntime (max |diff| <= 1e-3 on random
inputs), and writes the artifact: one line of magic, one line of JSON header (source ONNX sha256, tinygrad version,
beam, input/output specs, the measured diff), then the pickled jit. The build then records
``<registry>/<sha256 of the artifact>.json`` = {source_sha256, artifact}.

Trust: unpickling runs code, so an artifact is only ever unpickled when the registry (a build-local directory,
never inside a model directory) lists its exact sha256 for the sha256 of the ONNX file beside it. An artifact that
someone put into a model directory, one built from another ONNX, or a stale one after the ONNX changed is refused
(``ArtifactRefused``) and modeld falls back to compiling the ONNX in-process (slow start, same numbers) or to
onnxruntime.

Run: ``TinygradProgram`` replays the captured kernels directly (one ctypes call per kernel with its buffer
addresses fixed at load time); inputs are copied into persistent input buffers and outputs copied out, so a call
costs the kernels plus a few microseconds per kernel.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.cli import add_common_args, emit_result, make_parser, tool_main

MAGIC = b"worldpilot-tinygrad-artifact 1\n"
ARTIFACT_SUFFIX = "_tinygrad.pkl"
REGISTRY_ENV = "WORLDPILOT_TINYGRAD_REGISTRY"
DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "build" / "tinygrad_registry"
AGREE_TOL = 1e-3


class ArtifactRefused(RuntimeError):
  """The compiled artifact may not be loaded (missing, untrusted, stale, or for another tinygrad)."""


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def artifact_path(onnx_path) -> Path:
  """models/driving_vision.onnx -> models/driving_vision_tinygrad.pkl (openpilot's naming)."""
  p = Path(onnx_path)
  return p.with_name(p.stem + ARTIFACT_SUFFIX)


def registry_dir(explicit=None) -> Path:
  if explicit is not None:
    return Path(explicit)
  env = os.environ.get(REGISTRY_ENV)
  return Path(env) if env else DEFAULT_REGISTRY


def _prepare_tinygrad_env(beam: int | None = None) -> None:
  """Settings tinygrad reads once at import: CPU device, one thread (onnxruntime runs on one too; kernels compiled
  for N threads are split into N lanes that TinygradProgram replays one after another); BEAM only when compiling."""
  os.environ.setdefault("DEV", "CPU")
  os.environ.setdefault("NUM_CPU_THREADS", "1")
  if beam is not None:
    os.environ["NUM_CPU_THREADS"] = "1"
    os.environ["JITBEAM"] = "0"     # kernel search is chosen per kernel in capture()
    os.environ["BEAM"] = "0"


def _tinygrad_version() -> str:
  from importlib.metadata import version
  return version("tinygrad")


# ------------------------------------------------------------------ capture

def _random_inputs(specs: dict, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for name, s in specs.items():
    dt = np.dtype(s["dtype"])
    if dt == np.uint8:
      out[name] = rng.integers(0, 256, s["shape"], dtype=np.uint8)
    else:
      out[name] = rng.standard_normal(s["shape"]).astype(dt)
  return out


def capture(onnx_path, beam: int = 0, beam_share: float = 0.85, beam_max_kernels: int = 10):
  """OnnxRunner under TinyJit(prune=True), captured on random inputs.

  With beam > 0 the kernels are searched selectively: a first capture (tinygrad's default optimizations) is timed
  kernel by kernel, and a second capture runs BEAM search (width `beam`) on the slowest kernels that together take
  `beam_share` of the time (at most `beam_max_kernels`); searching every small kernel costs minutes per kernel on a
  loaded CPU and gains microseconds. Returns (jit, input specs {name: {shape, dtype}}, output names, search info)."""
  from tinygrad import Tensor, TinyJit
  from tinygrad.dtype import _to_np_dtype
  from tinygrad.nn.onnx import OnnxRunner
  runner = OnnxRunner(Path(onnx_path))
  specs = {}
  for name, t in runner.graph_inputs.items():
    shape = tuple(t.shape)
    if not all(isinstance(d, int) and d > 0 for d in shape):
      raise ValueError(f"{onnx_path}: input {name!r} has dynamic shape {shape}; the tinygrad artifact needs fixed shapes")
    specs[name] = {"shape": list(shape), "dtype": np.dtype(_to_np_dtype(t.dtype)).name}
  outputs = list(runner.graph_outputs)

  def run(**kw):
    out = runner(kw)
    outs = [out[n].contiguous() for n in outputs]
    Tensor.realize(*outs)   # one schedule for all outputs: realizing them one by one would recompute the shared trunk
    return outs

  def captured():
    jit = TinyJit(run, prune=True)
    for seed in range(3):   # 0: plain run, 1: capture, 2: first replay
      jit(**{k: Tensor(v).realize() for k, v in _random_inputs(specs, seed).items()})
    return jit
  jit = captured()
  info = {"beam": int(beam), "searched_kernels": 0}
  if beam <= 0:
    return jit, specs, outputs, info
  times = TinygradProgram(jit, specs, outputs, source=str(onnx_path)).kernel_times()
  order = np.argsort(times)[::-1]
  total, acc, chosen = float(np.sum(times)), 0.0, []
  for i in order[:beam_max_kernels]:
    if acc >= beam_share * total:
      break
    chosen.append(int(i))
    acc += float(times[i])
  info.update(searched_kernels=len(chosen), kernels=len(times), unsearched_us=round(total * 1e6, 1),
              searched_share=round(acc / total, 3))
  import tinygrad.engine.jit as tg_jit
  compile_linear = tg_jit.compile_linear

  def compile_with_selective_beam(linear, beam=None, **kw):
    import dataclasses

    from tinygrad.uop.ops import Ops
    srcs = list(linear.src)
    for i in chosen:
      call = srcs[i]
      sink = call.src[0]
      if call.op is Ops.CALL and sink.op is Ops.SINK:
        srcs[i] = call.replace(src=(sink.replace(arg=dataclasses.replace(sink.arg, beam=info["beam"])), *call.src[1:]))
    return compile_linear(linear.replace(src=tuple(srcs)), beam=0, **kw)
  tg_jit.compile_linear = compile_with_selective_beam
  try:
    jit = captured()
  finally:
    tg_jit.compile_linear = compile_linear
  return jit, specs, outputs, info


# ------------------------------------------------------------------ the program

class TinygradProgram:
  """A captured TinyJit replayed kernel by kernel with fixed buffer addresses."""

  def __init__(self, jit, input_specs: dict, output_names: list[str], source: str = "?"):
    import ctypes

    from tinygrad import Tensor
    from tinygrad.dtype import _to_np_dtype
    from tinygrad.engine.jit import _prepare_jit_inputs
    from tinygrad.engine.realize import get_runtime, resolve_params, unwrap_multi
    from tinygrad.uop.ops import Ops
    self.source, self.jit = source, jit
    self.input_specs = {k: {"shape": tuple(v["shape"]), "dtype": np.dtype(v["dtype"])} for k, v in input_specs.items()}
    self.output_names = list(output_names)
    cap = jit.captured
    if cap is None:
      raise ValueError(f"{source}: the jit was never captured")
    # persistent input buffers, passed in the order the jit captured them (sorted keyword names)
    self._inputs = {k: Tensor(np.zeros(s["shape"], s["dtype"]), device="CPU").realize() for k, s in self.input_specs.items()}
    in_uops, var_vals, names, info = _prepare_jit_inputs((), self._inputs)
    if cap.expected_names != names or cap.expected_input_info != info:
      raise ValueError(f"{source}: artifact inputs {cap.expected_names} do not match the model's {names}")
    self._in_uops, self._var_vals = in_uops, var_vals
    self._in_addr = {k: (t.uop.buffer._buf.va_addr, t.uop.buffer.nbytes) for k, t in self._inputs.items()}
    self._out = []
    for t in cap.ret:
      b = t.uop.buffer
      self._out.append((b, np.dtype(_to_np_dtype(b.dtype)), tuple(t.shape)))
    self._memmove = ctypes.memmove
    self._steps: list | None = []
    try:
      for call in cap.linear.src:
        ast = call.src[0]
        if ast.op is not Ops.PROGRAM:
          raise NotImplementedError(f"{ast.op} in the captured program")
        resolved = resolve_params(call, tuple(in_uops))
        lanes = list(unwrap_multi(call, [resolved[i] for i in ast.arg.globals]))
        if len(lanes) != 1:
          raise NotImplementedError("multi-device kernel")
        bufs, _ = lanes[0]
        dev = call.src[1].device if isinstance(call.src[1].device, str) else call.src[1].device[0]
        rt = get_runtime(dev, ast)
        if getattr(rt, "lvp", False) or not hasattr(rt, "fxn"):
          raise NotImplementedError(f"runtime {type(rt).__name__}")
        global_size, _ = ast.arg.launch_dims(var_vals)
        args = [b.ensure_allocated().get_buf(dev).va_addr for b in bufs] + list(ast.arg.vals(var_vals))
        core = rt.runtimevars.get("core_id")
        for tid in range(global_size[0]):   # CPUProgram runs the core_id lanes one after another the same way
          a = list(args)
          if core is not None:
            a[core] = tid
          self._steps.append((rt.fxn, tuple(ctypes.c_uint64(x) for x in a)))
    except NotImplementedError:
      self._steps = None   # anything unusual: replay through TinyJit itself (slower, same result)
    self.n_kernels = len(cap.linear.src)

  @property
  def direct(self) -> bool:
    return self._steps is not None

  def kernel_times(self, reps: int = 5) -> np.ndarray:
    """Best-of-`reps` seconds of each captured kernel (in the order of the captured program)."""
    if self._steps is None or len(self._steps) != self.n_kernels:
      raise RuntimeError(f"{self.source}: kernels cannot be timed one by one")
    out = np.zeros(len(self._steps))
    for i, (fxn, args) in enumerate(self._steps):
      best = float("inf")
      for _ in range(reps):
        t = time.perf_counter()
        fxn(*args)
        best = min(best, time.perf_counter() - t)
      out[i] = best
    return out

  def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    for name, spec in self.input_specs.items():
      a = inputs.get(name)
      if not isinstance(a, np.ndarray) or a.shape != spec["shape"] or a.dtype != spec["dtype"]:
        got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
        raise ValueError(f"{self.source}: input {name!r} must be {spec['dtype']}{spec['shape']}, got {got}")
      a = np.ascontiguousarray(a)
      addr, n = self._in_addr[name]
      self._memmove(addr, a.ctypes.data, n)
    if self._steps is not None:
      for fxn, args in self._steps:
        fxn(*args)
    else:
      from tinygrad import Device
      self.jit(**self._inputs)
      Device["CPU"].synchronize()
    return [np.frombuffer(b.as_memoryview(force_zero_copy=True), dtype=dt, count=int(np.prod(shape))).reshape(shape).copy()
            for b, dt, shape in self._out]


# ------------------------------------------------------------------ artifact files

def _read_artifact(path: Path) -> tuple[dict, bytes, bytes]:
  data = path.read_bytes()
  if not data.startswith(MAGIC):
    raise ArtifactRefused(f"{path}: not a worldpilot tinygrad artifact")
  nl = data.find(b"\n", len(MAGIC))
  try:
    header = json.loads(data[len(MAGIC):nl])
  except (ValueError, UnicodeDecodeError) as e:
    raise ArtifactRefused(f"{path}: artifact header unreadable ({e})") from e
  return header, data[nl + 1:], data


def register(artifact: Path, source_sha256: str, registry) -> Path:
  """Record that this build made `artifact` (by content hash) from the ONNX with `source_sha256`."""
  reg = registry_dir(registry)
  reg.mkdir(parents=True, exist_ok=True)
  entry = reg / f"{sha256_file(artifact)}.json"
  tmp = entry.with_suffix(".tmp")
  tmp.write_text(json.dumps({"source_sha256": source_sha256, "artifact": str(Path(artifact).resolve()),
                             "built_unix": time.time()}) + "\n")
  os.replace(tmp, entry)
  return entry


def check_trusted(onnx_path, artifact=None, registry=None) -> tuple[Path, dict, bytes]:
  """Raises ArtifactRefused unless `artifact` (default: beside the ONNX) was built here from exactly this ONNX.
  Returns (artifact path, header, pickle payload)."""
  onnx_path = Path(onnx_path)
  art = Path(artifact) if artifact is not None else artifact_path(onnx_path)
  if not art.is_file():
    raise ArtifactRefused(f"{art}: no compiled artifact (run scons)")
  header, payload, data = _read_artifact(art)
  reg = registry_dir(registry)
  entry = reg / f"{sha256_bytes(data)}.json"
  if not entry.is_file():
    raise ArtifactRefused(f"{art}: not built by scons on this machine (sha256 not in registry {reg}); not loading it")
  try:
    recorded = json.loads(entry.read_text())["source_sha256"]
  except (ValueError, KeyError, OSError) as e:
    raise ArtifactRefused(f"{entry}: registry entry unreadable ({e})") from e
  src_sha = sha256_file(onnx_path)
  if recorded != src_sha or header.get("source_sha256") != src_sha:
    raise ArtifactRefused(f"{art}: stale, built from another {onnx_path.name} (rebuild with scons)")
  if header.get("tinygrad_version") != _tinygrad_version():
    raise ArtifactRefused(f"{art}: built with tinygrad {header.get('tinygrad_version')}, this is {_tinygrad_version()}")
  return art, header, payload


def _unpickle_jit(payload: bytes):
  """pickle.loads, except that every buffer gets a fresh identity in this process.

  tinygrad interns UOps by value and a BUFFER's identity is its slot number, drawn from a per-process counter; two
  artifacts compiled in separate processes reuse the same slot numbers, so loading the second one would silently
  alias the first one's weight buffers. Each BUFFER slot seen in this payload is mapped to a new slot here."""
  import dataclasses

  from tinygrad.uop.ops import Ops, UOp
  fresh: dict[int, int] = {}

  def make_uop(op, dtype=None, src=(), arg=None, tag=None, metadata=None, _buffer=None):
    if op is Ops.BUFFER and getattr(arg, "slot", -1) >= 0:
      arg = dataclasses.replace(arg, slot=fresh.setdefault(arg.slot, next(UOp.unique_num)))
    return UOp(op, dtype, src, arg, tag, metadata, _buffer)

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      if module == "tinygrad.uop.ops" and name == "UOp":
        return make_uop
      return super().find_class(module, name)
  return Unpickler(io.BytesIO(payload)).load()


def load_artifact(onnx_path, artifact=None, registry=None) -> TinygradProgram:
  art, header, payload = check_trusted(onnx_path, artifact, registry)
  _prepare_tinygrad_env()
  jit = _unpickle_jit(payload)   # trusted: this exact file was built here from this exact ONNX (checked above)
  prog = TinygradProgram(jit, header["inputs"], header["outputs"], source=str(art))
  prog.header = header
  return prog


def compile_in_process(onnx_path) -> TinygradProgram:
  """No trusted artifact: capture the jit from the ONNX here (no kernel search)."""
  _prepare_tinygrad_env()
  jit, specs, outputs, _ = capture(onnx_path)
  prog = TinygradProgram(jit, specs, outputs, source=str(onnx_path))
  prog.header = {"inputs": specs, "outputs": outputs, "beam": 0, "in_process": True}
  return prog


def build_artifact(onnx_path, out_path, registry=None, beam: int = 2) -> dict:
  """Compile, check against onnxruntime, write the artifact atomically, register it. Returns the header.
  Call in a fresh process: BEAM and the thread count are read when tinygrad is imported."""
  _prepare_tinygrad_env(beam)
  import onnxruntime as ort
  onnx_path, out_path = Path(onnx_path), Path(out_path)
  src_sha = sha256_file(onnx_path)
  t0 = time.perf_counter()
  jit, specs, outputs, search = capture(onnx_path, beam)
  compile_s = time.perf_counter() - t0
  prog = TinygradProgram(jit, specs, outputs, source=str(onnx_path))
  so = ort.SessionOptions()
  so.intra_op_num_threads, so.log_severity_level = 1, 3
  sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
  max_diff = 0.0
  for seed in (10, 11):
    feeds = _random_inputs(specs, seed)
    want = sess.run(outputs, feeds)
    got = prog(feeds)
    for name, w, g in zip(outputs, want, got):
      if w.shape != g.shape or not np.all(np.isfinite(g)):
        raise ValueError(f"{onnx_path}: tinygrad output {name!r} shape {g.shape} / finite {np.isfinite(g).all()} "
                         f"vs onnxruntime {w.shape}")
      max_diff = max(max_diff, float(np.max(np.abs(w.astype(np.float64) - g))))
  if max_diff > AGREE_TOL:
    raise ValueError(f"{onnx_path}: tinygrad and onnxruntime outputs differ by {max_diff:.3g} > {AGREE_TOL}")
  header = {"source": onnx_path.name, "source_sha256": src_sha, "tinygrad_version": _tinygrad_version(),
            "beam": int(beam), "search": search, "inputs": specs, "outputs": outputs, "kernels": prog.n_kernels,
            "max_abs_diff_vs_onnxruntime": max_diff, "compile_s": round(compile_s, 2)}
  payload = pickle.dumps(jit)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", dir=out_path.parent)
  with os.fdopen(fd, "wb") as f:
    f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)
  os.chmod(tmp, 0o644)
  os.replace(tmp, out_path)
  register(out_path, src_sha, registry)
  return header


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m modeld.tinygrad_runtime", config=False,
                   description="Compile an ONNX model into a trusted tinygrad artifact.")
  sub = ap.add_subparsers(dest="cmd", required=True)
  c = sub.add_parser("compile", help="ONNX -> jitted, BEAM-searched tinygrad artifact + registry entry")
  c.add_argument("onnx")
  c.add_argument("out", nargs="?", help="default: <onnx stem>_tinygrad.pkl beside it")
  c.add_argument("--registry", default=None, help=f"registry dir (default ${REGISTRY_ENV} or {DEFAULT_REGISTRY})")
  c.add_argument("--beam", type=int, default=2, help="BEAM kernel-search width for the slowest kernels (0 = none)")
  add_common_args(c, config=True)
  args = ap.parse_args(argv)
  if not Path(args.onnx).is_file():
    print(f"error: {args.onnx}: no such ONNX file", file=sys.stderr)
    return 1
  out = Path(args.out) if args.out else artifact_path(args.onnx)
  try:
    header = build_artifact(args.onnx, out, args.registry, args.beam)
  except Exception as e:  # tinygrad / onnx raise assorted types; one line naming the file
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {args.onnx}: {msg if msg.startswith(str(args.onnx)) else f'{type(e).__name__}: {msg}'}", file=sys.stderr)
    return 1
  emit_result({"artifact": str(out), **{k: header[k] for k in ("source_sha256", "beam", "search", "kernels",
                                                                "max_abs_diff_vs_onnxruntime", "compile_s")}})
  return 0


if __name__ == "__main__":
  sys.exit(main())
