"""DrivingModel: runs the exported vision + policy ONNX pair frame by frame (modeld's core), on onnxruntime or
tinygrad. Device side: numpy + onnxruntime / tinygrad only.

  dm = DrivingModel("models/", runtime="onnxruntime")
  spec = dm.frame_spec                        # {"width", "height", "focal"} of the model frame it wants
  out = dm.run(frame_rgb, v_ego=20.0, desire=0)
  out["plan"]            (IDX_N, PLAN_WIDTH)  most probable hypothesis' mean on T_IDXS (PLAN_SLICES)
  out["action"]          {"desiredCurvature": 1/m (+ = left), "desiredAcceleration": m/s^2}

State kept between calls (``reset()`` clears it; the first call after a reset fills it with that frame):
  * the last FRAME_STACK_GAP+1 frames, so the vision model sees [frame(t-0.2s), frame(t)] stacked;
  * the last (T-1)*stride+1 features / speeds / desires at 20 Hz, of which every `stride`-th (5 Hz, 2 s)
    goes to the policy.
Every load-time check raises ModelLoadError naming the file and what is wrong.
"""
from __future__ import annotations

import abc
import hashlib
import json
import time
from collections import deque
from pathlib import Path

import numpy as np

from common.modelconstants import (
  DESIRE_LEN,
  DESIRES,
  T_IDXS,
  ModelOutputError,
  layout_from_json,
  layout_size,
  policy_output_layout,
  vision_output_layout,
)
from modeld.parse_model_outputs import parse_outputs

VISION_FILE, POLICY_FILE = "driving_vision.onnx", "driving_policy.onnx"
FORMAT_VERSION = "1"
RUNTIMES = ("onnxruntime", "tinygrad")
REQUIRED_METADATA = ("format_version", "model_name", "model_kind", "inputs", "outputs", "output_slices", "t_idxs",
                     "frame_spec", "history", "feature_dim", "training_commit", "content_hash")
EXPECTED_INPUTS = {"vision": ("img",), "policy": ("features", "v_ego", "desire")}
_ONNX_DTYPES = {1: "float32", 2: "uint8", 7: "int64", 10: "float16"}


class ModelLoadError(ValueError):
  pass


def _content_hash(model) -> str:
  import onnx
  m = onnx.ModelProto()
  m.CopyFrom(model)
  del m.metadata_props[:]
  return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def load_checked(path: Path, kind: str) -> tuple[bytes, dict]:
  """Read one ONNX file; check it parses, carries all metadata, and that its graph matches the metadata.
  Returns (file bytes, metadata with JSON values decoded)."""
  import onnx
  from google.protobuf.message import DecodeError
  path = Path(path)
  if not path.is_file():
    raise ModelLoadError(f"{path}: missing ({kind} model)")
  data = path.read_bytes()
  if not data:
    raise ModelLoadError(f"{path}: empty file")
  try:
    model = onnx.load_from_string(data)
  except (DecodeError, ValueError, RuntimeError) as e:
    raise ModelLoadError(f"{path}: corrupt or truncated ONNX file ({type(e).__name__}: {e})") from e
  if not model.graph.node:
    raise ModelLoadError(f"{path}: corrupt or truncated ONNX file (graph has no nodes)")
  raw = {p.key: p.value for p in model.metadata_props}
  missing = [k for k in REQUIRED_METADATA if k not in raw]
  if missing:
    raise ModelLoadError(f"{path}: metadata_props lacks {missing} (truncated file or not a worldpilot export)")
  meta: dict = {}
  for k, v in raw.items():
    try:
      meta[k] = json.loads(v)
    except json.JSONDecodeError:
      meta[k] = v
  meta["format_version"] = str(meta["format_version"])
  if meta["format_version"] != FORMAT_VERSION:
    raise ModelLoadError(f"{path}: metadata format_version {meta['format_version']!r}, this modeld reads {FORMAT_VERSION!r}")
  if meta["model_kind"] != kind:
    raise ModelLoadError(f"{path}: metadata model_kind {meta['model_kind']!r}, expected {kind!r}")
  if _content_hash(model) != raw["content_hash"]:
    raise ModelLoadError(f"{path}: content_hash mismatch (weights or graph differ from what the metadata describes)")
  # graph inputs vs metadata vs what this runner feeds
  init = {i.name for i in model.graph.initializer}
  graph_inputs = []
  for i in model.graph.input:
    if i.name in init:
      continue
    t = i.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    graph_inputs.append({"name": i.name, "shape": shape, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type))})
  names = tuple(g["name"] for g in graph_inputs)
  if names != EXPECTED_INPUTS[kind]:
    raise ModelLoadError(f"{path}: input names {names}, expected {EXPECTED_INPUTS[kind]}")
  if not isinstance(meta["inputs"], list) or not all(isinstance(m, dict) for m in meta["inputs"]) or \
     [m.get("name") for m in meta["inputs"]] != list(names):
    raise ModelLoadError(f"{path}: metadata 'inputs' {meta['inputs']!r} does not list the graph inputs {names}")
  for g, m in zip(graph_inputs, meta["inputs"]):
    if m.get("shape") != g["shape"] or m.get("dtype") != g["dtype"]:
      raise ModelLoadError(f"{path}: input {g['name']!r} is {g['dtype']}{g['shape']} in the graph but "
                           f"{m.get('dtype')}{m.get('shape')} in metadata")
  try:
    meta["output_slices"] = layout_from_json(meta["output_slices"], f"{path}: metadata output_slices")
  except ModelOutputError as e:
    raise ModelLoadError(str(e)) from e
  want = vision_output_layout() if kind == "vision" else policy_output_layout()
  for name, (_, _, shape) in want.items():
    got = meta["output_slices"].get(name)
    if got is None or got[2] != shape:
      raise ModelLoadError(f"{path}: output_slices[{name!r}] is {got and got[2]}, this modeld expects shape {shape}")
  out_shape = [d.dim_value for d in model.graph.output[-1].type.tensor_type.shape.dim]
  if out_shape[-1:] != [layout_size(meta["output_slices"])]:
    raise ModelLoadError(f"{path}: graph output {model.graph.output[-1].name!r} shape {out_shape} does not hold "
                         f"output_slices (size {layout_size(meta['output_slices'])})")
  try:
    t = np.asarray(meta["t_idxs"], dtype=np.float64)
  except (TypeError, ValueError):
    t = np.zeros(0)
  if t.shape != T_IDXS.shape or not np.allclose(t, T_IDXS, atol=1e-6):
    raise ModelLoadError(f"{path}: metadata t_idxs differ from common.modelconstants.T_IDXS")
  return data, meta


class _OrtSession:
  def __init__(self, data: bytes, path: Path, num_threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
      self.sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
      raise ModelLoadError(f"{path}: onnxruntime cannot load it ({e})") from e
    self.outputs = [o.name for o in self.sess.get_outputs()]

  def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return self.sess.run(self.outputs, inputs)


class _TinygradSession:
  """The ONNX model as a tinygrad program: the scons-built artifact beside it when the build registry vouches for
  it (jitted, kernel-searched ahead of time), else captured here from the ONNX (no kernel search)."""

  def __init__(self, path: Path, registry=None, require_artifact: bool = False):
    from modeld import tinygrad_runtime as tr
    self.artifact: str | None = None
    self.refused: str | None = None
    try:
      self.program = tr.load_artifact(path, registry=registry)
      self.artifact = str(tr.artifact_path(path))
    except tr.ArtifactRefused as e:
      if require_artifact:
        raise ModelLoadError(str(e)) from e
      self.refused = str(e)
      import logging
      logging.getLogger("modeld").warning("tinygrad: %s; compiling %s here instead (no kernel search)", e, path.name)
      try:
        self.program = tr.compile_in_process(path)
      except Exception as e2:  # tinygrad's parser/compiler raise assorted types
        raise ModelLoadError(f"{path}: tinygrad cannot load it ({type(e2).__name__}: {e2})") from e2
    except Exception as e:  # a trusted artifact that does not unpickle/run on this tinygrad
      raise ModelLoadError(f"{tr.artifact_path(path)}: cannot load the compiled artifact ({type(e).__name__}: {e})") from e
    self.outputs = self.program.output_names

  def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return self.program(inputs)


def trusted_artifacts(model_dir, registry=None) -> bool:
  """True when both files of the pair have a scons-built tinygrad artifact this machine's registry vouches for."""
  from modeld import tinygrad_runtime as tr
  try:
    for f in (VISION_FILE, POLICY_FILE):
      tr.check_trusted(Path(model_dir) / f, registry=registry)
  except (tr.ArtifactRefused, OSError):
    return False
  return True


def select_runtime(model_dir, requested: str = "auto", registry=None) -> str:
  """`--runtime` resolution: an explicit runtime wins; "auto" picks tinygrad when scons built its artifacts for
  this pair here, else onnxruntime."""
  if requested not in RUNTIMES + ("auto",):
    raise ValueError(f"runtime {requested!r}: choose from {RUNTIMES + ('auto',)}")
  if requested != "auto":
    return requested
  return "tinygrad" if trusted_artifacts(model_dir, registry) else "onnxruntime"


def _check_finite(model: str, **arrays: np.ndarray) -> None:
  for name, a in arrays.items():
    a = np.asarray(a)
    if not np.isfinite(a).all():
      raise ModelOutputError(f"{model} model output {name!r} has {int(np.size(a) - np.isfinite(a).sum())} non-finite "
                             f"values of {np.size(a)}; frame rejected, history unchanged")


class FrameHistoryRunner(abc.ABC):
  """The per-frame loop shared by DrivingModel and training's in-process torch wrapper
  (training/policy/evaluate.py): frame stacking, feature/speed/desire history, output parsing.
  Subclasses set the attributes below, implement run_vision / run_policy and call reset()."""
  width: int
  height: int
  focal: float
  stack_gap: int          # frames between the two stacked frames
  history_steps: int      # T policy steps
  history_stride: int     # frames between policy steps
  vision_layout: dict
  policy_layout: dict

  @abc.abstractmethod
  def run_vision(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, 6, H, W) uint8 stacked frames -> (features, aux outputs) of the vision model."""

  @abc.abstractmethod
  def run_policy(self, features: np.ndarray, v_ego: np.ndarray, desire: np.ndarray) -> np.ndarray:
    """Feature/speed/desire history -> the policy's raw output vector."""

  @property
  def frame_spec(self) -> dict:
    return {"width": self.width, "height": self.height, "focal": self.focal}

  def reset(self) -> None:
    self._frames: deque = deque(maxlen=self.stack_gap + 1)
    n = (self.history_steps - 1) * self.history_stride + 1
    self._feats: deque = deque(maxlen=n)
    self._speeds: deque = deque(maxlen=n)
    self._desires: deque = deque(maxlen=n)

  def run(self, frame_rgb: np.ndarray, v_ego: float, desire: int = 0) -> dict:
    if not isinstance(frame_rgb, np.ndarray) or frame_rgb.dtype != np.uint8 or \
       frame_rgb.shape != (self.height, self.width, 3):
      got = (getattr(frame_rgb, "dtype", type(frame_rgb).__name__), getattr(frame_rgb, "shape", None))
      raise ValueError(f"frame_rgb must be uint8 ({self.height}, {self.width}, 3) model frame, got {got}")
    with np.errstate(over="ignore", invalid="ignore"):
      v32 = np.float32(v_ego)     # what the policy is fed: 1e39 is finite as float64 but inf here
    if not np.isfinite(v32):
      raise ValueError(f"v_ego must be finite as float32, got {v_ego}")
    if not (isinstance(desire, (int, np.integer)) and 0 <= int(desire) < DESIRE_LEN):
      raise ValueError(f"desire must be an int index into DESIRES {DESIRES}, got {desire!r}")
    t0 = time.perf_counter()
    # a rejected call (non-finite model output) leaves the history as it was: snapshot, restore on error
    saved = (self._frames.copy(), self._feats.copy(), self._speeds.copy(), self._desires.copy())
    try:
      return self._run(frame_rgb, v32, desire, t0)
    except ModelOutputError:
      self._frames, self._feats, self._speeds, self._desires = saved
      raise

  def _run(self, frame_rgb: np.ndarray, v32: np.float32, desire: int, t0: float) -> dict:
    chw = np.ascontiguousarray(frame_rgb.transpose(2, 0, 1))
    if not self._frames:
      self._frames.extend([chw] * self._frames.maxlen)
    else:
      self._frames.append(chw)
    img = np.concatenate([self._frames[0], self._frames[-1]], axis=0)[None]  # (1, 6, H, W)
    hidden, vis_out = self.run_vision(img)
    _check_finite("vision", hidden=hidden, outputs=vis_out)
    onehot = np.zeros(DESIRE_LEN, dtype=np.float32)
    onehot[int(desire)] = 1.0
    if not self._feats:
      n = self._feats.maxlen
      self._feats.extend([hidden[0]] * n)
      self._speeds.extend([float(v32)] * n)
      self._desires.extend([onehot] * n)
    else:
      self._feats.append(hidden[0])
      self._speeds.append(float(v32))
      self._desires.append(onehot)
    idx = range(0, self._feats.maxlen, self.history_stride)  # oldest ... newest (the current frame)
    feats = np.stack([self._feats[i] for i in idx])[None].astype(np.float32)
    speeds = np.array([[self._speeds[i] for i in idx]], dtype=np.float32)
    desires = np.stack([self._desires[i] for i in idx])[None].astype(np.float32)
    pol_out = self.run_policy(feats, speeds, desires)
    _check_finite("policy", outputs=pol_out)
    out = parse_outputs(pol_out[0], self.policy_layout)
    out["vision"] = parse_outputs(vis_out[0], self.vision_layout)
    out["hidden_state"] = hidden[0]
    out["execution_time"] = time.perf_counter() - t0
    return out


class DrivingModel(FrameHistoryRunner):
  """Exported ONNX pair on onnxruntime or tinygrad (see module docstring)."""

  def __init__(self, model_dir, runtime: str = "onnxruntime", num_threads: int = 1, registry=None):
    """runtime: "onnxruntime", "tinygrad" (the scons-built artifact when trusted, else compiled here) or "auto"
    (tinygrad when both artifacts are trusted, else onnxruntime). registry: the build's tinygrad artifact registry
    (default: $WORLDPILOT_TINYGRAD_REGISTRY or build/tinygrad_registry)."""
    if runtime not in RUNTIMES + ("auto",):
      raise ValueError(f"runtime {runtime!r}: choose from {RUNTIMES + ('auto',)}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
      raise ModelLoadError(f"{model_dir}: model directory does not exist")
    runtime = select_runtime(model_dir, runtime, registry)
    self.runtime = runtime
    vpath, ppath = model_dir / VISION_FILE, model_dir / POLICY_FILE
    vdata, self.vision_meta = load_checked(vpath, "vision")
    pdata, self.policy_meta = load_checked(ppath, "policy")
    for key in ("feature_dim", "model_name", "history", "frame_spec"):
      if self.vision_meta.get(key) != self.policy_meta.get(key):
        raise ModelLoadError(f"{model_dir}: {VISION_FILE} and {POLICY_FILE} disagree on {key!r} "
                             f"({self.vision_meta.get(key)!r} vs {self.policy_meta.get(key)!r}): not one export")
    fs, hist = self.vision_meta["frame_spec"], self.policy_meta["history"]
    try:
      self.width, self.height, self.focal = int(fs["width"]), int(fs["height"]), float(fs["focal"])
      self.stack_gap = int(fs["stack_gap_frames"])
      self.history_steps, self.history_stride = int(hist["steps"]), int(hist["stride_frames"])
      feature_dim = int(self.policy_meta["feature_dim"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
      raise ModelLoadError(f"{vpath}: metadata frame_spec/history/feature_dim malformed ({type(e).__name__}: {e})") from e
    if not (0 < self.width <= 8192 and 0 < self.height <= 8192 and np.isfinite(self.focal) and self.focal > 0
            and 0 <= self.stack_gap <= 1000 and 0 < self.history_steps <= 1000 and 0 < self.history_stride <= 1000):
      raise ModelLoadError(f"{vpath}: metadata frame_spec {fs!r} / history {hist!r} out of range")
    img_shape = self.vision_meta["inputs"][0]["shape"]
    if img_shape != [1, 6, self.height, self.width]:
      raise ModelLoadError(f"{vpath}: input img shape {img_shape} disagrees with frame_spec {self.height}x{self.width}")
    feat_shape = self.policy_meta["inputs"][0]["shape"]
    if feat_shape != [1, self.history_steps, feature_dim]:
      raise ModelLoadError(f"{ppath}: input features shape {feat_shape} disagrees with history/feature_dim metadata")
    self.vision_layout = self.vision_meta["output_slices"]
    self.policy_layout = self.policy_meta["output_slices"]
    if runtime == "onnxruntime":
      self._vision = _OrtSession(vdata, vpath, num_threads)
      self._policy = _OrtSession(pdata, ppath, num_threads)
    else:
      self._vision = _TinygradSession(vpath, registry)
      self._policy = _TinygradSession(ppath, registry)
    self.model_name = self.vision_meta["model_name"]
    self.reset()

  def run_vision(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """img (1, 6, H, W) uint8 -> (hidden_state (1, D), outputs (1, N_vision))."""
    hidden, out = self._vision({"img": img})
    return hidden, out

  def run_policy(self, features: np.ndarray, v_ego: np.ndarray, desire: np.ndarray) -> np.ndarray:
    """features (1,T,D), v_ego (1,T), desire (1,T,DESIRE_LEN) float32 -> outputs (1, N_policy)."""
    return self._policy({"features": features, "v_ego": v_ego, "desire": desire})[0]
