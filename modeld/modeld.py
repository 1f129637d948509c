"""modeld: the driving model as a daemon (openpilot's selfdrive/modeld/modeld.py).

  python -m modeld.modeld [--model-dir DIR] [--runtime onnxruntime|tinygrad] [--prefix P]

Per road-camera frame from VisionIPC ("camerad", VISION_STREAM_ROAD, newest frame only):
  1. warp it into the model frame with the current calibration (liveCalibration.rpyCalib; zero calibration
     and valid=false until a calibrated one arrives) and the camera's intrinsics (roadCameraInfo);
  2. push it and the frame's inputs into the 20 Hz input queues, from which the model takes the two frames
     0.2 s apart and the 5 Hz feature / speed / desire history (InputQueues, like openpilot's
     InputQueues(MODEL_CONTEXT_FREQ=5, MODEL_RUN_FREQ=20, N_FRAMES=2));
  3. run vision then policy and publish modelV2, then drivingModelData + modelV2Extra (modeld/fill_model_msg.py):
     modelV2 is filled and sent before the other two are filled, since controlsd waits for it.

Frame drops: a gap in frame ids is counted, filtered (first order, 10 s) into frameDropPerc, and the missed
frames' slots in the queues are filled with the last values, so every queue slot stays one 20 Hz frame
(history stays aligned in time). A frame older than the last one run is never queued.

Validity (Event.valid): false while the calibration is missing, carState is stale (no message for
CARSTATE_TIMEOUT), or the outputs are not finite; a frame that cannot be used (wrong size or format, torn
buffer) is answered with a header-only modelV2 with valid=false. Nothing non-finite is ever published.

Model swap: SIGHUP, or a change of the model files (checked every RELOAD_CHECK_S), loads the pair again. The
new pair is validated -- loads (model_runner.load_checked: metadata, names, shapes, hashes), fits the input
queues, a test inference is finite -- before it replaces the running one; a bad pair is refused with one log
line and the running model keeps publishing.
Device side: numpy + cv2 + onnxruntime / tinygrad.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import make_parser, tool_main
from common.modelconstants import DESIRE_LEN, DESIRES, EON_FOCAL, EON_ROAD_H, EON_ROAD_W, MODEL_FREQ, ModelOutputError
from common.stop_signal import StopFlag
from modeld.fill_model_msg import (
  FrameInfo,
  checked_outputs,
  fill_invalid_msg,
  fill_model_v2,
  fill_summaries,
  model_v2_bytes,
)
from modeld.model_runner import POLICY_FILE, RUNTIMES, VISION_FILE, DrivingModel, ModelLoadError, select_runtime
from modeld.parse_model_outputs import parse_outputs

cloudlog = logging.getLogger("modeld")

MODEL_RUN_FREQ = MODEL_FREQ       # Hz: camera frames the queues advance by
MODEL_CONTEXT_FREQ = 5            # Hz: the policy's history rate
N_FRAMES = 2                      # frames stacked for the vision model (0.2 s apart)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models"
VIPC_NAME = "camerad"
CARSTATE_TIMEOUT = 0.5            # s without carState: its speed is stale
FRAME_DROP_TAU = 10.0             # s, time constant of the dropped-frames filter
FRAME_DROP_WARMUP = 10            # first runs whose drops are ignored (start-up)
LATE_FRAME_WINDOW = MODEL_RUN_FREQ   # a frame id up to 1 s behind the last one is late; further back = camera restart
MAX_COUNTED_DROP = 10             # one gap counts at most this many frames into the filter
FRAME_META_WAIT = 0.05           # s modeld waits at most for the frame's messages (inputs_ready)
INPUT_SYNC_NS = 25_000_000       # carState / drivingDesire this much older than the frame's roadCameraState are stale
RELOAD_CHECK_S = 1.0              # how often the model files' stat() is compared
DESIRE_INPUTS = ("held", "pulse")


class FrameError(ValueError):
  """A camera frame modeld cannot use (size, format, torn buffer)."""


# ------------------------------------------------------------------------------------------ input queues

class InputQueues:
  """Per-frame (20 Hz) queues of model inputs and the model-rate (5 Hz) views the networks read.

  Each queue holds the newest values, one slot per camera frame. Three kinds:
    "frames": N_FRAMES samples spaced env_fps/model_fps slots apart, oldest first (the stacked images);
    "sample": `steps` samples spaced the same way, ending at the newest (feature / speed history);
    "pulse":  `steps` blocks of env_fps/model_fps slots, each the max over its block, so a pulse in any
              frame of a 5 Hz interval is seen by the step that covers it (the desire pulse).
  The first enqueue after reset() fills every slot with its values (no zero history at start-up).
  """

  def __init__(self, model_fps: int, env_fps: int, n_frames_input: int):
    if env_fps % model_fps or env_fps < model_fps:
      raise ValueError(f"InputQueues: env_fps {env_fps} must be a multiple of model_fps {model_fps}")
    self.model_fps, self.env_fps, self.n_frames_input = model_fps, env_fps, n_frames_input
    self.stride = env_fps // model_fps
    self.kinds: dict[str, tuple[str, int]] = {}
    self.q: dict[str, np.ndarray | None] = {}
    self.count: dict[str, int] = {}

  def add(self, name: str, kind: str, steps: int | None = None) -> None:
    if kind not in ("frames", "sample", "pulse"):
      raise ValueError(f"InputQueues.add({name!r}): kind must be frames, sample or pulse, got {kind!r}")
    steps = self.n_frames_input if kind == "frames" else steps
    if not steps or steps < 1:
      raise ValueError(f"InputQueues.add({name!r}): steps must be >= 1")
    self.kinds[name] = (kind, steps)
    self.q[name] = None

  def length(self, name: str) -> int:
    kind, steps = self.kinds[name]
    return steps * self.stride if kind == "pulse" else (steps - 1) * self.stride + 1

  def reset(self) -> None:
    for k in self.q:
      self.q[k] = None

  def enqueue(self, inputs: dict[str, np.ndarray], missed: int = 0) -> None:
    """Push one frame's inputs. `missed` frames were dropped before this one: their slots get the last
    values (pulses: zeros), so slot i is always i frames before the newest."""
    for k, v in inputs.items():
      v = np.asarray(v)
      n = self.length(k)
      q = self.q[k]
      if q is None or q.shape[1:] != v.shape or q.dtype != v.dtype:
        q = np.repeat(v[None], n, axis=0)
        if self.kinds[k][0] == "pulse":
          q[:-1] = 0
        self.q[k] = q
        continue
      fill = min(max(0, int(missed)), n - 1)
      last = q[-1].copy()
      q[:n - fill - 1] = q[fill + 1:]
      if fill:
        q[n - fill - 1:n - 1] = 0 if self.kinds[k][0] == "pulse" else last
      q[-1] = v

  def get(self, name: str) -> np.ndarray:
    """(steps, *shape) model-rate view of one queue, oldest first."""
    kind, steps = self.kinds[name]
    q = self.q[name]
    if q is None:
      raise KeyError(f"InputQueues.get({name!r}) before anything was enqueued")
    if kind == "pulse":
      return q.reshape(steps, self.stride, *q.shape[1:]).max(axis=1)
    return q[::self.stride]


class DesireInput:
  """The model's desire input from the driver's desire index. "pulse" (openpilot): the one-hot vector only on
  the frame the desire starts (its rising edge) and the "none" entry never set -- the model decides when the
  manoeuvre is over. "held": the one-hot vector of the current desire on every frame (what the training
  pipeline feeds; see training/policy/data.py)."""

  def __init__(self, mode: str = "held"):
    if mode not in DESIRE_INPUTS:
      raise ValueError(f"desire input mode {mode!r}: choose from {DESIRE_INPUTS}")
    self.mode = mode
    self.prev = np.zeros(DESIRE_LEN, dtype=np.float32)

  def reset(self) -> None:
    self.prev[:] = 0

  def __call__(self, desire: int) -> np.ndarray:
    onehot = np.zeros(DESIRE_LEN, dtype=np.float32)
    if 0 <= int(desire) < DESIRE_LEN:
      onehot[int(desire)] = 1.0
    if self.mode == "held":
      return onehot
    cur = onehot.copy()
    cur[0] = 0.0
    pulse = np.where(cur - self.prev > 0.99, cur, 0.0).astype(np.float32)
    self.prev = cur
    return pulse


class FrameDropFilter:
  """First-order filter of dropped frames per processed frame; frameDropPerc = 100 * f / (1 + f)."""

  def __init__(self, tau: float = FRAME_DROP_TAU, dt: float = 1.0 / MODEL_RUN_FREQ, warmup: int = FRAME_DROP_WARMUP):
    self.k = (dt / tau) / (dt / tau + 1.0)
    self.x = 0.0
    self.runs = 0
    self.warmup = warmup

  def update(self, dropped: int) -> float:
    self.x = (1.0 - self.k) * self.x + self.k * min(max(0, dropped), MAX_COUNTED_DROP)
    self.runs += 1
    if self.runs <= self.warmup:
      self.x = 0.0
    return self.perc

  @property
  def perc(self) -> float:
    return 100.0 * self.x / (1.0 + self.x)


# ------------------------------------------------------------------------------------------ the model

def model_hash(model_dir: Path) -> str:
  h = hashlib.sha256()
  for f in (VISION_FILE, POLICY_FILE):
    h.update((Path(model_dir) / f).read_bytes())
  return h.hexdigest()[:16]


def pick_runtime(model_dir: Path, requested: str | None) -> str:
  """The runtime to use: the requested one, else tinygrad when scons built its artifacts for this pair here, else
  onnxruntime (modeld.model_runner.select_runtime)."""
  return select_runtime(model_dir, requested or "auto")


class ModelState:
  """A loaded model pair with its input queues: frame (model frame RGB) + speed + desire -> parsed outputs."""

  def __init__(self, model_dir: Path, runtime: str | None = None, num_threads: int = 1):
    self.model_dir = Path(model_dir)
    self.runtime = pick_runtime(self.model_dir, runtime)
    self.model = DrivingModel(self.model_dir, runtime=self.runtime, num_threads=num_threads)
    m = self.model
    self.name = m.model_name
    self.hash = model_hash(self.model_dir)
    stride = MODEL_RUN_FREQ // MODEL_CONTEXT_FREQ
    if m.history_stride != stride or m.stack_gap != stride * (N_FRAMES - 1):
      raise ModelLoadError(f"{self.model_dir}: model wants history stride {m.history_stride} and frame gap {m.stack_gap} "
                           f"frames; modeld's queues give {stride} and {stride * (N_FRAMES - 1)}")
    desire_mode = str(m.policy_meta.get("desire_input", "held"))
    if desire_mode not in DESIRE_INPUTS:
      raise ModelLoadError(f"{self.model_dir / POLICY_FILE}: metadata desire_input {desire_mode!r} not in {DESIRE_INPUTS}")
    self.desire = DesireInput(desire_mode)
    self.queues = InputQueues(MODEL_CONTEXT_FREQ, MODEL_RUN_FREQ, N_FRAMES)
    self.queues.add("img", "frames")
    self.queues.add("features", "sample", m.history_steps)
    self.queues.add("v_ego", "sample", m.history_steps)
    self.queues.add("desire", "pulse" if desire_mode == "pulse" else "sample", m.history_steps)
    self.timings = {"vision": 0.0, "policy": 0.0}

  @property
  def frame_spec(self) -> dict:
    return self.model.frame_spec

  def reset(self) -> None:
    self.queues.reset()
    self.desire.reset()

  def run(self, frame_rgb: np.ndarray, v_ego: float, desire: int, missed: int = 0) -> dict:
    """One frame: (H, W, 3) uint8 model-frame image -> parse_outputs() dict (+ "hidden_state")."""
    m = self.model
    if frame_rgb.shape != (m.height, m.width, 3) or frame_rgb.dtype != np.uint8:
      raise FrameError(f"model frame must be uint8 ({m.height}, {m.width}, 3), got {frame_rgb.dtype} {frame_rgb.shape}")
    self.queues.enqueue({"img": np.ascontiguousarray(frame_rgb.transpose(2, 0, 1))}, missed)
    imgs = self.queues.get("img")                                        # (N_FRAMES, 3, H, W)
    t0 = time.perf_counter()
    hidden, _ = m.run_vision(imgs.reshape(1, -1, m.height, m.width))
    t1 = time.perf_counter()
    self.queues.enqueue({"features": np.asarray(hidden[0], dtype=np.float32),
                         "v_ego": np.float32(v_ego), "desire": self.desire(desire)}, missed)
    t1_policy = time.perf_counter()                                      # the queues' bookkeeping is neither network's
    out_vec = m.run_policy(self.queues.get("features")[None].astype(np.float32),
                           self.queues.get("v_ego")[None].astype(np.float32),
                           self.queues.get("desire")[None].astype(np.float32))
    t2 = time.perf_counter()
    self.timings = {"vision": t1 - t0, "policy": t2 - t1_policy}
    out = parse_outputs(np.asarray(out_vec)[0], m.policy_layout)
    out["hidden_state"] = np.asarray(hidden[0])
    return out

  def self_test(self) -> None:
    """A test inference on a grey frame; raises ModelLoadError if anything is not finite or malformed."""
    m = self.model
    try:
      out = self.run(np.full((m.height, m.width, 3), 128, np.uint8), 20.0, 0)
    except (ModelOutputError, ValueError, RuntimeError) as e:
      raise ModelLoadError(f"{self.model_dir}: test inference failed ({type(e).__name__}: {e})") from e
    finally:
      self.reset()
    bad = [k for k, v in out.items() if not isinstance(v, dict) and not np.all(np.isfinite(v))]
    bad += [f"action.{k}" for k, v in out.get("action", {}).items() if not np.isfinite(v)]
    if bad:
      raise ModelLoadError(f"{self.model_dir}: test inference gave non-finite {bad}")


def load_model(model_dir: Path, runtime: str | None = None) -> ModelState:
  """Load + validate a model pair (ModelLoadError with the reason if it must not be used)."""
  try:
    state = ModelState(model_dir, runtime)
  except ModelLoadError:
    raise
  except (OSError, ValueError, RuntimeError) as e:
    raise ModelLoadError(f"{model_dir}: {type(e).__name__}: {e}") from e
  state.self_test()
  return state


# ------------------------------------------------------------------------------------------ frames

def source_camera(width: int, height: int, intrinsics=None):
  """The road camera: from roadCameraInfo.intrinsics (3x3 row-major) when given, else the comma EON for
  its resolution, else a pinhole with the EON's field of view at this width."""
  from common.transformations.camera import CameraConfig, sim_camera
  if intrinsics is not None and len(intrinsics) == 9:
    K = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    if np.all(np.isfinite(K)) and K[0, 0] > 0 and abs(K[0, 0] - K[1, 1]) < 1e-3 * K[0, 0]:
      return CameraConfig(width, height, float(K[0, 0]), float(K[0, 2]), float(K[1, 2]))
  if (width, height) == (EON_ROAD_W, EON_ROAD_H):
    return CameraConfig(width, height, EON_FOCAL)
  return sim_camera(width, height)


def frame_to_rgb(buf) -> np.ndarray:
  """A VisionBuf-like frame (data, width, height, stride, fmt) -> (H, W, 3) RGB copy; FrameError if its
  size or format is not a frame."""
  from cereal.visionipc import PixelFormat, nv12_to_rgb
  w, h = int(buf.width), int(buf.height)
  if w <= 0 or h <= 0 or w % 2 or h % 2:
    raise FrameError(f"frame {w}x{h}: width and height must be even and positive")
  data = np.asarray(buf.data).reshape(-1)
  if buf.fmt == PixelFormat.NV12:
    if data.size != w * h * 3 // 2:
      raise FrameError(f"NV12 frame {w}x{h} needs {w * h * 3 // 2} bytes, got {data.size}")
    return nv12_to_rgb(data, w, h)
  if buf.fmt == PixelFormat.RGB:
    if data.size != w * h * 3:
      raise FrameError(f"RGB frame {w}x{h} needs {w * h * 3} bytes, got {data.size}")
    return data.reshape(h, w, 3).copy()
  raise FrameError(f"unsupported pixel format {buf.fmt!r}")


@dataclass
class Inputs:
  """What modeld reads from cereal for one frame."""
  v_ego: float = 0.0
  desire: int = 0
  carstate_fresh: bool = False
  rpy_calib: tuple = (0.0, 0.0, 0.0)
  calibrated: bool = False
  intrinsics: list | None = None
  camera_size: tuple | None = None     # roadCameraInfo width, height (None if not seen)
  newest_frame_id: int = 0


class ModelD:
  """modeld's per-frame logic without sockets: process(frame, inputs) -> (valid, modelV2, drivingModelData)."""

  def __init__(self, model_dir: Path, runtime: str | None = None):
    self.model_dir = Path(model_dir)
    self.runtime = runtime
    self.state = load_model(self.model_dir, runtime)
    self.drops = FrameDropFilter()
    self.last_frame_id: int | None = None
    self.files_sig = self._files_sig()
    self.refused_sig = None
    self.timings: dict[str, float] = {}
    self._camera: tuple = (None, None)   # (width, height, intrinsics) -> source_camera(), the last one asked for
    self._summary: tuple | None = None   # (outputs or None for a skipped frame, FrameInfo, valid) of the last frame
    self.model_bytes: bytes | None = None  # the last frame's modelV2 Event when process() was given no builder
    cloudlog.warning("modeld: running %s (%s) from %s on %s", self.state.name, self.state.hash, self.model_dir,
                     self.state.runtime)

  # ---- model swap
  def _files_sig(self):
    sig = []
    for f in (VISION_FILE, POLICY_FILE):
      try:
        st = (self.model_dir / f).stat()
        sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
      except OSError:
        sig.append(None)
    return tuple(sig)

  def files_changed(self) -> bool:
    sig = self._files_sig()
    return sig != self.files_sig and sig != self.refused_sig

  def reload(self) -> bool:
    """Load the model directory again; swap if the new pair passes validation. Returns True if swapped."""
    sig = self._files_sig()
    try:
      new = load_model(self.model_dir, self.runtime)
    except ModelLoadError as e:
      self.refused_sig = sig
      cloudlog.error("modeld: refused new model (%s); keeping %s (%s)", e, self.state.name, self.state.hash)
      return False
    self.state, self.files_sig, self.refused_sig = new, sig, None
    self.last_frame_id = None
    cloudlog.warning("modeld: swapped in %s (%s) from %s", new.name, new.hash, self.model_dir)
    return True

  # ---- one frame
  def camera(self, width: int, height: int, intrinsics) -> object:
    """source_camera(), computed again only when the frame size or roadCameraInfo's intrinsics change."""
    key = (width, height, None if intrinsics is None else tuple(intrinsics))
    if self._camera[0] != key:
      self._camera = (key, source_camera(width, height, intrinsics))
    return self._camera[1]

  def process(self, buf, inp: Inputs, model_msg=None, driving_msg=None, extra_msg=None) -> bool:
    """Run on one camera frame and fill the Event builders: modelV2, and drivingModelData / modelV2Extra when given
    (else fill_summaries() fills them afterwards, so that the daemon can send modelV2 first). Without a modelV2
    builder the modelV2 Event is left in self.model_bytes as it goes on the wire (fill_model_msg.model_v2_bytes).
    Returns the messages' valid flag; returns
    None (and fills nothing) for a frame that is not newer than the last one (never queued)."""
    t0 = time.perf_counter()
    self._summary = self.model_bytes = None
    fid = int(buf.frame_id)
    if self.last_frame_id is not None and self.last_frame_id - LATE_FRAME_WINDOW <= fid <= self.last_frame_id:
      return None   # the same or a late frame: never queued
    if self.last_frame_id is not None and fid < self.last_frame_id:
      cloudlog.warning("modeld: frame id went back %d -> %d (camera restarted); history reset", self.last_frame_id, fid)
      self.state.reset()
      self.last_frame_id = None
    missed = 0 if self.last_frame_id is None else fid - self.last_frame_id - 1
    perc = self.drops.update(missed)
    st = self.state
    info = FrameInfo(frame_id=fid, frame_id_extra=fid, newest_frame_id=max(inp.newest_frame_id, fid),
                     frame_drop_perc=perc, timestamp_eof=int(buf.timestamp_eof), model_execution_time=0.0,
                     model_name=st.name, model_hash=st.hash)
    try:
      if inp.camera_size is not None and tuple(inp.camera_size) != (int(buf.width), int(buf.height)):
        raise FrameError(f"frame is {buf.width}x{buf.height} but roadCameraState says {inp.camera_size[0]}x{inp.camera_size[1]}")
      rgb = frame_to_rgb(buf)
      if hasattr(buf, "still_valid") and not buf.still_valid():
        raise FrameError("buffer was overwritten while it was read (torn frame)")
      from common.transformations.camera import warp_to_model_frame
      spec = st.frame_spec
      cam = self.camera(int(buf.width), int(buf.height), inp.intrinsics)
      model_frame = warp_to_model_frame(rgb, np.asarray(inp.rpy_calib, dtype=np.float64), cam,
                                        int(spec["width"]), int(spec["height"]), float(spec["focal"]))
      t1 = time.perf_counter()
      out = st.run(model_frame, inp.v_ego if np.isfinite(inp.v_ego) else 0.0, int(inp.desire), missed)
    except FrameError as e:
      cloudlog.error("modeld: frame %d skipped: %s", fid, e)
      info.model_execution_time = time.perf_counter() - t0
      from cereal.messaging import new_message
      msg = new_message("modelV2") if model_msg is None else model_msg
      fill_invalid_msg(msg, None, None, info)
      if model_msg is None:
        self.model_bytes = msg.to_bytes()
      self._summary = (None, info, False)
      self.fill_summaries(driving_msg, extra_msg)
      return False
    self.last_frame_id = fid
    t2 = time.perf_counter()
    info.model_execution_time = t2 - t0
    info.vision_time, info.policy_time = st.timings["vision"], st.timings["policy"]
    out, valid = checked_outputs(out, inp.calibrated and inp.carstate_fresh)
    if model_msg is None:
      self.model_bytes = model_v2_bytes(out, info, valid)
    else:
      fill_model_v2(model_msg, out, info, valid)
    self.timings = {"warp": t1 - t0, **st.timings, "fill": time.perf_counter() - t2}
    self._summary = (out, info, valid)
    self.fill_summaries(driving_msg, extra_msg)
    return valid

  def fill_summaries(self, driving_msg, extra_msg) -> None:
    """Fill drivingModelData / modelV2Extra (either may be None) for the frame process() ran last."""
    if self._summary is None or (driving_msg is None and extra_msg is None):
      return
    out, info, valid = self._summary
    if out is None:
      fill_invalid_msg(None, driving_msg, extra_msg, info)
    else:
      fill_summaries(driving_msg, extra_msg, out, info, valid)


# ------------------------------------------------------------------------------------------ daemon

def subscribed_services() -> list[str]:
  """What modeld subscribes to (roadCameraInfo and drivingDesire where the schema has them)."""
  from cereal.services import SERVICE_LIST
  return ["carState", "roadCameraState", "liveCalibration"] + \
    [s for s in ("roadCameraInfo", "drivingDesire") if s in SERVICE_LIST]


def inputs_ready(sm, frame_id: int) -> bool:
  """Whether the messages that belong to camera frame `frame_id` are in: its roadCameraState (not more than
  LATE_FRAME_WINDOW frames ahead of it: further ahead is the old camera's, before a restart), and carState /
  drivingDesire not older than that roadCameraState by more than INPUT_SYNC_NS (a stream without
  roadCameraState is never waited for)."""
  if not sm.seen["roadCameraState"]:
    return True
  cam_id = sm["roadCameraState"].frameId
  if cam_id < frame_id or cam_id > frame_id + LATE_FRAME_WINDOW:   # not in yet, or the camera restarted behind it
    return False
  t_cam = sm.logMonoTime["roadCameraState"]
  return all(sm.logMonoTime[s] >= t_cam - INPUT_SYNC_NS for s in ("carState", "drivingDesire") if s in sm.data and sm.seen[s])


def read_inputs(sm, last_v_ego: float, now: float) -> Inputs:
  inp = Inputs(v_ego=last_v_ego)
  if sm.seen["carState"]:
    v = float(sm["carState"].vEgo)
    if np.isfinite(v):
      inp.v_ego = v
    inp.carstate_fresh = (now - sm.recv_time["carState"]) < CARSTATE_TIMEOUT and sm.valid["carState"] and np.isfinite(v)
  if "drivingDesire" in sm.data and sm.seen["drivingDesire"]:
    name = str(sm["drivingDesire"].desire)         # log.Desire enumerant; the model knows DESIRES only
    inp.desire = DESIRES.index(name) if name in DESIRES else 0
  if sm.seen["liveCalibration"]:
    cal = sm["liveCalibration"]
    rpy = list(cal.rpyCalib)
    if len(rpy) == 3 and np.all(np.isfinite(rpy)):
      inp.rpy_calib = tuple(rpy)
      inp.calibrated = str(cal.calStatus) == "calibrated"
  if sm.seen["roadCameraState"]:
    inp.newest_frame_id = int(sm["roadCameraState"].frameId)
  if "roadCameraInfo" in sm.data and sm.seen["roadCameraInfo"]:
    ci = sm["roadCameraInfo"]
    if len(ci.intrinsics) == 9:
      inp.intrinsics = list(ci.intrinsics)
    if ci.width > 0 and ci.height > 0:
      inp.camera_size = (int(ci.width), int(ci.height))
  return inp


@tool_main
def main(argv: list[str] | None = None) -> int:
  from cereal import messaging
  from cereal.visionipc import VisionIpcClient, VisionIpcError, VisionStreamType
  ap = make_parser("python -m modeld.modeld", "Run the driving model on road-camera frames and publish modelV2.")
  ap.add_argument("--model-dir", type=Path, default=None, help=f"model pair directory (default {DEFAULT_MODEL_DIR})")
  ap.add_argument("--runtime", choices=RUNTIMES, default=None,
                  help="default: tinygrad when scons built its artifacts for this pair here, else onnxruntime")
  ap.add_argument("--input-wait", type=float, default=FRAME_META_WAIT,
                  help="s a frame may wait for its messages (inputs_ready); replay harnesses raise it for determinism")
  ap.add_argument("--prefix", default=None, help="messaging prefix (default $WORLDPILOT_PREFIX)")
  args = ap.parse_args(argv)
  if not args.input_wait >= 0:
    ap.error("--input-wait must be >= 0")
  if args.prefix is not None:
    os.environ[messaging.PREFIX_ENV] = messaging.get_prefix(args.prefix)
  model_dir = args.model_dir or Path(os.environ.get("WORLDPILOT_MODEL_DIR", DEFAULT_MODEL_DIR))
  try:
    md = ModelD(model_dir, args.runtime)
  except ModelLoadError as e:
    print(f"error: modeld cannot start: {e}", file=sys.stderr)
    return 1

  stop = StopFlag()
  reload_requested = False

  def on_hup(signum, frame):
    nonlocal reload_requested
    reload_requested = True

  signal.signal(signal.SIGHUP, on_hup)

  sm = messaging.SubMaster(subscribed_services())
  pm = messaging.PubMaster(["modelV2", "drivingModelData", "modelV2Extra"])
  client = VisionIpcClient(VIPC_NAME, VisionStreamType.VISION_STREAM_ROAD, conflate=True)
  last_v_ego, last_check = 0.0, time.monotonic()
  try:
    while not stop:
      now = time.monotonic()
      if reload_requested or now - last_check > RELOAD_CHECK_S:
        if reload_requested or md.files_changed():
          md.reload()
        reload_requested, last_check = False, now
      if not client.is_connected:
        if not client.connect(blocking=False):
          time.sleep(0.05)
          continue
      try:
        buf = client.recv(100)
      except (VisionIpcError, OSError, ValueError) as e:   # the camera went away mid-read: connect again
        cloudlog.error("modeld: VisionIPC: %s; reconnecting", e)
        client.close()
        continue
      if buf is None:
        continue
      sm.update(0)
      deadline = time.monotonic() + args.input_wait
      while not inputs_ready(sm, buf.frame_id) and time.monotonic() < deadline:
        sm.update(5)
      inp = read_inputs(sm, last_v_ego, time.monotonic())
      last_v_ego = inp.v_ego
      if md.process(buf, inp) is None:
        continue
      pm.send("modelV2", md.model_bytes)    # first: controlsd waits for it; the summaries follow
      driving_msg, extra_msg = messaging.new_message("drivingModelData"), messaging.new_message("modelV2Extra")
      md.fill_summaries(driving_msg, extra_msg)
      pm.send("drivingModelData", driving_msg)
      pm.send("modelV2Extra", extra_msg)
  finally:
    client.close()
    pm.close()
    sm.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
