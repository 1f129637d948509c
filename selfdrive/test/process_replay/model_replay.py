"""Model replay (openpilot's selfdrive/test/process_replay/model_replay.py): run modeld, as a process, on committed
recorded segments frame by frame and compare every field it publishes with committed reference logs.

  python -m selfdrive.test.process_replay.model_replay [--model-dir DIR] [--segments a,b]   # compare
  python -m selfdrive.test.process_replay.model_replay --update [--plot-dir DIR]             # new references
  python -m selfdrive.test.process_replay.model_replay --make-segments [--segments a,b]      # rebuild the inputs

Deterministic, no wall clock in the results: for each frame the harness publishes the segment's logged messages of
that frame (carState, liveCalibration, drivingDesire, roadCameraInfo, roadCameraState), sends the frame through
VisionIPC with its logged frame id and timestamps (INPUT_SETTLE_S after the messages; modeld also waits for the
frame's roadCameraState, sent last), and waits for that frame's modelV2 and drivingModelData before the next one.

Comparison: every numeric field of modelV2 and drivingModelData, |a - b| <= max(tol, tol * max(|a|, |b|)) with a
per-field tol (TOLERANCE, DEFAULT_TOL otherwise); timing fields (IGNORED) are not compared. A reference made with
another model (hash in the reference's .json) fails with a request to --update. mean/max modelExecutionTime are
printed and checked against a generous bound (MAX_MEAN_EXEC_S).

--update regenerates the references after an intended model change and prints, per field, how far the new outputs
moved from the old reference, and writes plots of the main fields (desired curvature, plan x/y, lane lines).

Committed inputs (DATA/segments/<name>/: rlog.zst + video.hevc, built by --make-segments):
  sim_lane_keep      5 s of the procedural world at the model's camera, the ground-truth driver keeping the lane
  sim_lane_change    5 s with a lane change to the left (exercises the desire input)
  comma2k19_example  5 s of the real comma2k19 example segment: its preview frame (1164x874 EON camera) with its
                     CAN speeds and the calibration estimated from its poses
Last line printed: JSON summary.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from common.cli import emit_result, make_parser, tool_main

REPO = Path(__file__).resolve().parents[3]
DATA = Path(__file__).resolve().parent / "model_replay_data"
SEGMENTS = ("sim_lane_keep", "sim_lane_change", "comma2k19_example")
COMMA2K19 = REPO.parent / "shared" / "data" / "comma2k19" / "Example_1" / "b0c9d2329ad1606b|2018-08-02--08-34-47" / "40"
INPUT_SERVICES = ("carState", "liveCalibration", "drivingDesire", "roadCameraInfo", "roadCameraState")   # sent in this order
OUTPUT_SERVICES = ("modelV2", "drivingModelData")
IGNORED = {"logMonoTime", "modelV2.modelExecutionTime", "drivingModelData.modelExecutionTime",
           "modelV2.gpuExecutionTimeDEPRECATED"}
DEFAULT_TOL = 1e-4
TOLERANCE = {                         # fields derived through interpolation/fits amplify float noise
  "modelV2.laneLines.t": 1e-3,
  "modelV2.roadEdges.t": 1e-3,
  "drivingModelData.path.xCoefficients": 1e-3,
  "drivingModelData.path.yCoefficients": 1e-3,
  "drivingModelData.path.zCoefficients": 1e-3,
}
MAX_MEAN_EXEC_S = 0.25                # generous bound on a loaded CI machine (tiny model: ~5 ms)
FRAME_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0              # modeld's start-up (imports, model load, test inference) on a loaded machine
INPUT_WAIT_S = 5.0                    # modeld --input-wait: a frame waits for all its messages, however loaded the machine
INPUT_SETTLE_S = 0.02                 # between a frame's messages and its image: modeld must have them all when it runs


# ------------------------------------------------------------------------------------------ running modeld

def start_modeld(model_dir: Path | None, prefix: str, log_file) -> subprocess.Popen:
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix, OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  cmd = [sys.executable, "-m", "modeld.modeld", "--input-wait", str(INPUT_WAIT_S)] + \
    (["--model-dir", str(model_dir)] if model_dir else [])
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def read_segment(seg_dir: Path):
  """(per-frame list of {service: event bytes}, frame ids, (sof, eof) per frame, RGB frames)."""
  from cereal.messaging import event_to_bytes
  from tools.lib.logreader import LogReader
  from tools.lib.video import VideoReader
  frames: dict[int, dict[str, bytes]] = {}
  stamps: dict[int, tuple[int, int]] = {}
  pending: dict[str, bytes] = {}
  for ev in LogReader(seg_dir / "rlog.zst"):
    w = ev.which()
    if w not in INPUT_SERVICES:
      continue
    pending[w] = event_to_bytes(ev)
    if w == "roadCameraState":
      fid = int(ev.roadCameraState.frameId)
      frames[fid] = dict(pending)
      stamps[fid] = (int(ev.roadCameraState.timestampSof), int(ev.roadCameraState.timestampEof))
  ids = sorted(frames)
  with VideoReader(seg_dir / "video.hevc") as vr:
    imgs = list(vr.frames(0, len(ids)))
  if len(imgs) != len(ids):
    raise ValueError(f"{seg_dir}: {len(ids)} frames in rlog.zst but {len(imgs)} in video.hevc")
  return [frames[i] for i in ids], ids, [stamps[i] for i in ids], imgs


def _tail(log_file, n: int = 2000) -> str:
  log_file.seek(0)
  return log_file.read()[-n:]


def wait_until_modeld_listens(proc, vipc, pm, socks: dict, log_file, name: str) -> None:
  """Block until modeld is registered for camera frames, subscribed to every input service, and every output socket
  here is connected to modeld's publishers, so that no message of the first frame is lost to a connection still
  being set up (modeld runs a frame once: a lost answer would never come again)."""
  from cereal.messaging import SUBSCRIPTION_SETTLE_S
  from cereal.visionipc import VisionStreamType
  deadline = time.monotonic() + START_TIMEOUT_S
  waiting = "modeld to register for camera frames"
  while vipc.num_clients(VisionStreamType.VISION_STREAM_ROAD) == 0:
    if proc.poll() is not None:
      raise RuntimeError(f"modeld exited with code {proc.returncode} while starting on {name}:\n{_tail(log_file)}")
    if time.monotonic() > deadline:
      break
    time.sleep(0.02)
  else:   # registered: its subscribers and publishers exist (modeld creates them before connecting to the camera)
    missing = pm.wait_for_subscribers(max(0.0, deadline - time.monotonic()))
    waiting = f"modeld to subscribe to {missing}"
    if not missing:
      missing = [s for s, sock in socks.items() if not sock.wait_connected(max(0.0, deadline - time.monotonic()))]
      waiting = f"connections to modeld's {missing}"
      if not missing:
        time.sleep(SUBSCRIPTION_SETTLE_S)
        return
  raise RuntimeError(f"modeld did not start on {name} within {START_TIMEOUT_S:.0f} s (waiting for {waiting}); "
                     f"its log:\n{_tail(log_file)}")


def replay_segment(seg_dir: Path, model_dir: Path | None, progress: bool = True) -> list[dict[str, bytes]]:
  """Run modeld on one segment; returns per frame {service: event bytes} of OUTPUT_SERVICES (+ modelV2Extra)."""
  from tqdm import tqdm

  from cereal import messaging
  from cereal.visionipc import VisionIpcServer, VisionStreamType, rgb_to_nv12
  msgs, ids, stamps, imgs = read_segment(seg_dir)
  prefix = f"mr{uuid.uuid4().hex[:8]}"
  old_prefix = os.environ.get(messaging.PREFIX_ENV)
  os.environ[messaging.PREFIX_ENV] = prefix
  h, w = imgs[0].shape[:2]
  vipc = VisionIpcServer("camerad")
  vipc.create_buffers(VisionStreamType.VISION_STREAM_ROAD, 4, w, h)
  vipc.start_listener()
  pm = messaging.PubMaster(INPUT_SERVICES, track_subscribers=True)
  socks = {s: messaging.sub_sock(s, timeout=100, track_connection=True) for s in OUTPUT_SERVICES + ("modelV2Extra",)}
  log_file = tempfile.TemporaryFile(mode="w+")
  proc = start_modeld(model_dir, prefix, log_file)
  out: list[dict[str, bytes]] = []
  try:
    wait_until_modeld_listens(proc, vipc, pm, socks, log_file, seg_dir.name)
    for k in tqdm(range(len(ids)), desc=seg_dir.name, disable=not progress):
      got: dict[str, bytes] = {}
      t_start = time.monotonic()
      for s in INPUT_SERVICES:
        if s in msgs[k]:
          pm.send(s, msgs[k][s])
      time.sleep(INPUT_SETTLE_S)
      vipc.send(VisionStreamType.VISION_STREAM_ROAD, rgb_to_nv12(imgs[k]), ids[k], *stamps[k])
      while len(got) < len(socks):
        for s, sock in socks.items():
          if s in got:
            continue
          dat = sock.receive(non_blocking=False)
          if dat is None:
            continue
          ev = sock.decode(dat)
          if ev is not None and getattr(ev, s).frameId == ids[k]:
            got[s] = dat
        if proc.poll() is not None:
          raise RuntimeError(f"modeld exited with code {proc.returncode} at frame {ids[k]} of {seg_dir.name}:\n"
                             f"{_tail(log_file)}")
        if time.monotonic() - t_start > FRAME_TIMEOUT_S:
          raise RuntimeError(f"modeld did not answer frame {ids[k]} of {seg_dir.name} within {FRAME_TIMEOUT_S:.0f} s; "
                             f"its log:\n{_tail(log_file)}")
      out.append(got)
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.communicate()
    log_file.close()
    vipc.close()
    pm.close()
    for s in socks.values():
      s.close()
    messaging.cleanup_prefix(prefix)
    if old_prefix is None:
      os.environ.pop(messaging.PREFIX_ENV, None)
    else:
      os.environ[messaging.PREFIX_ENV] = old_prefix
  return out


# ------------------------------------------------------------------------------------------ comparing

def flatten(obj, prefix: str, out: dict) -> dict:
  """Nested to_dict() of a message -> {dotted.path: float array | str}; lists of structs merge by field
  (modelV2.laneLines.y holds every line's y, one after the other)."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      flatten(v, f"{prefix}.{k}" if prefix else k, out)
  elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
    for item in obj:
      flatten(item, prefix, out)
  elif isinstance(obj, list):
    out[prefix] = np.concatenate([out[prefix], np.asarray(obj, dtype=np.float64)]) if prefix in out else \
      np.asarray(obj, dtype=np.float64)
  elif isinstance(obj, bool) or isinstance(obj, (int, float)):
    v = np.asarray([float(obj)])
    out[prefix] = np.concatenate([out[prefix], v]) if prefix in out else v
  else:
    out[prefix] = str(obj) if prefix not in out else out[prefix] + "|" + str(obj)
  return out


def event_fields(dat: bytes) -> dict:
  from cereal.messaging import log_from_bytes
  ev = log_from_bytes(dat)
  d = {"valid": ev.valid, ev.which(): getattr(ev, ev.which()).to_dict()}
  return {k: v for k, v in flatten(d, "", {}).items() if k not in IGNORED}


def compare_fields(ref: dict, new: dict) -> dict[str, float]:
  """{field: worst excess} of every field out of tolerance (missing/extra/shape/text differences -> inf)."""
  bad = {}
  for k in sorted(set(ref) | set(new)):
    if k not in ref or k not in new:
      bad[k] = math.inf
      continue
    a, b = ref[k], new[k]
    if isinstance(a, str) or isinstance(b, str):
      if a != b:
        bad[k] = math.inf
      continue
    if a.shape != b.shape:
      bad[k] = math.inf
      continue
    tol = TOLERANCE.get(k, DEFAULT_TOL)
    allowed = np.maximum(tol, tol * np.maximum(np.abs(a), np.abs(b)))
    excess = np.abs(a - b) - allowed
    if excess.size and np.max(excess) > 0:
      bad[k] = float(np.max(np.abs(a - b)))
  return bad


def field_diffs(ref: dict, new: dict) -> dict[str, float]:
  """max |a - b| of every numeric field present in both (for --update's summary)."""
  return {k: float(np.max(np.abs(ref[k] - new[k]))) if ref[k].size else 0.0 for k in ref
          if k in new and not isinstance(ref[k], str) and not isinstance(new[k], str) and ref[k].shape == new[k].shape}


REF_DIR = DATA / "refs"              # the committed references; --ref-dir keeps another model's elsewhere


def ref_paths(name: str, ref_dir: Path = REF_DIR) -> tuple[Path, Path]:
  return ref_dir / f"{name}.rlog.zst", ref_dir / f"{name}.json"


def write_ref(name: str, outputs: list[dict[str, bytes]], model_hash: str, model_name: str,
              ref_dir: Path = REF_DIR) -> None:
  from cereal.logwriter import LogWriter
  log_path, meta_path = ref_paths(name, ref_dir)
  log_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = log_path.with_suffix(".tmp.zst")
  tmp.unlink(missing_ok=True)          # left by an interrupted update (LogWriter never writes over a file)
  with LogWriter(tmp) as lw:
    for got in outputs:
      for s in OUTPUT_SERVICES:
        lw.write(got[s])
  os.replace(tmp, log_path)
  meta_path.write_text(json.dumps({"model_hash": model_hash, "model_name": model_name, "frames": len(outputs)}, indent=1) + "\n")


def read_ref(name: str, ref_dir: Path = REF_DIR) -> tuple[list[dict[str, bytes]], dict]:
  from cereal.messaging import event_to_bytes
  from tools.lib.logreader import LogReader
  log_path, meta_path = ref_paths(name, ref_dir)
  if not log_path.is_file() or not meta_path.is_file():
    raise FileNotFoundError(f"{log_path}: no reference for segment {name!r}; run with --update")
  frames: list[dict[str, bytes]] = []
  for ev in LogReader(log_path):
    w = ev.which()
    if w == OUTPUT_SERVICES[0]:
      frames.append({})
    frames[-1][w] = event_to_bytes(ev)
  return frames, json.loads(meta_path.read_text())


def model_identity(outputs: list[dict[str, bytes]]) -> tuple[str, str]:
  from cereal.messaging import log_from_bytes
  e = log_from_bytes(outputs[0]["modelV2Extra"]).modelV2Extra
  return str(e.modelHash), str(e.modelName)


def exec_times(outputs: list[dict[str, bytes]]) -> np.ndarray:
  from cereal.messaging import log_from_bytes
  return np.array([log_from_bytes(o["modelV2"]).modelV2.modelExecutionTime for o in outputs])


# ------------------------------------------------------------------------------------------ plots

def plot_fields(name: str, old: list[dict[str, bytes]] | None, new: list[dict[str, bytes]], out_dir: Path) -> Path:
  """Desired curvature over the segment, and plan + lane lines of the last frame, new vs old reference."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from cereal.messaging import log_from_bytes

  def series(outputs):
    mv = [log_from_bytes(o["modelV2"]).modelV2 for o in outputs]
    return mv, np.array([m.action.desiredCurvature for m in mv])

  new_mv, new_curv = series(new)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  axes[0].plot(new_curv, label="new")
  if old:
    old_mv, old_curv = series(old)
    axes[0].plot(old_curv, "--", label="reference")
  axes[0].set(title=f"{name}: modelV2.action.desiredCurvature", xlabel="frame", ylabel="1/m")
  axes[0].legend()
  for mv, style, lab in [(new_mv[-1], "-", "new")] + ([(old_mv[-1], "--", "reference")] if old else []):
    axes[1].plot(mv.position.y, mv.position.x, style, color="C0", label=f"plan ({lab})")
    for j, line in enumerate(mv.laneLines):
      axes[1].plot(line.y, line.x, style, color="C2" if j in (1, 2) else "C7", lw=0.8,
                   label=f"lane lines ({lab})" if j == 1 else None)
  axes[1].set(title="last frame: plan x/y and lane lines (car frame)", xlabel="y (m, right)", ylabel="x (m)")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"model_replay_{name}.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ------------------------------------------------------------------------------------------ building the inputs

def _write_segment(out: Path, imgs: list, events: list) -> None:
  """Write the segment beside `out` and then put it in its place, so a rebuild replaces the old segment whole (the log
  writer never writes over a log) and a failed one leaves it untouched."""
  import shutil

  from cereal.logwriter import LogWriter
  from tools.lib.video import write_hevc
  tmp = out.with_name(out.name + ".new")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  write_hevc(tmp / "video.hevc", imgs, crf=28, keyint=20)
  with LogWriter(tmp / "rlog.zst") as lw:
    for ev in events:
      lw.write(ev)
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)


def _frame_events(i: int, v: float, a: float, steer_rad: float, yaw_rate: float, desire: int, rpy, cam,
                  t0_ns: int = 1_000_000_000) -> list:
  """The logged inputs of frame i, in INPUT_SERVICES order (the simulator's message builders)."""
  from cereal.messaging import new_message
  from tools.sim.messages import camera_messages, car_state_message, driving_desire_message
  ns = t0_ns + i * 50_000_000
  m = new_message("liveCalibration", logMonoTime=ns)
  m.liveCalibration.rpyCalib, m.liveCalibration.calStatus = [float(x) for x in rpy], "calibrated"
  cam_msg, info_msg = camera_messages(i, ns, ns + 20_000_000, cam.width, cam.height, cam.width, cam.intrinsics,
                                      log_mono_time=ns)
  return [car_state_message(v, a, steer_rad, yaw_rate, desire, v_cruise=v, cruise_enabled=True, log_mono_time=ns), m,
          driving_desire_message(desire, "replay", log_mono_time=ns), info_msg, cam_msg]


def make_sim_segment(out: Path, scenario_name: str, cam, duration: float = 5.0) -> None:
  from tools.sim.bridge import find_scenario
  from tools.sim.env import SimEnv
  from tools.sim.policies import PerfectPolicy
  from tools.sim.scenarios import Scenario
  sc = find_scenario(scenario_name)
  sc = Scenario(**{**sc.__dict__, "duration": duration})
  env = SimEnv(camera=cam)
  obs = env.reset(sc)
  info = env.info
  drv = PerfectPolicy()
  imgs, events = [], []
  for i in range(int(round(duration * 20))):
    st = env.vehicle.state
    imgs.append(obs["image"])
    events += _frame_events(i, st.v, st.a, st.steer, st.yaw_rate, int(env.desire), (0.0, 0.0, 0.0), cam)
    obs, info = env.step(drv(obs, info))
  _write_segment(out, imgs, events)


def make_comma2k19_segment(out: Path, src: Path = COMMA2K19, duration: float = 5.0) -> None:
  """The real example segment: its one stored frame (preview.png, the EON road camera) held for `duration` s,
  with the CAN speed and steering angle of the first seconds and the calibration estimated from its poses."""
  import cv2

  from common.calibration import estimate_calibration, velocities_in_device_frame
  from common.transformations.camera import EON_ROAD_CAM
  from tools.lib.segment import Segment
  seg = Segment(src)
  img = cv2.cvtColor(cv2.imread(str(src / "preview.png")), cv2.COLOR_BGR2RGB)
  if img.shape[:2] != (EON_ROAD_CAM.height, EON_ROAD_CAM.width):
    img = cv2.resize(img, (EON_ROAD_CAM.width, EON_ROAD_CAM.height), interpolation=cv2.INTER_AREA)
  cal = estimate_calibration(velocities_in_device_frame(seg.velocities, seg.orientations))
  ts, speed = seg.can("speed")
  ta, angle = seg.can("steering_angle")
  t = ts[0] + np.arange(int(round(duration * 20))) / 20.0
  v = np.interp(t, ts, np.asarray(speed).reshape(-1))
  sa = np.radians(np.interp(t, ta, np.asarray(angle).reshape(-1)))
  events = []
  for i in range(len(t)):
    a = (v[min(i + 1, len(v) - 1)] - v[max(i - 1, 0)]) / 0.1
    events += _frame_events(i, v[i], a, sa[i], 0.0, 0, cal.rpy, EON_ROAD_CAM)
  _write_segment(out, [img] * len(t), events)


def make_segments(model_dir: Path | None, names=SEGMENTS) -> list[Path]:
  """Rebuild the named input segments (libx265 may encode the same frames to other bytes on another CPU, so rebuild
  only the ones whose inputs changed)."""
  from common.transformations.camera import model_frame_camera
  from modeld.model_runner import DrivingModel
  from modeld.modeld import DEFAULT_MODEL_DIR
  spec = DrivingModel(model_dir or DEFAULT_MODEL_DIR).frame_spec
  cam = model_frame_camera(int(spec["width"]), int(spec["height"]), float(spec["focal"]))
  root = DATA / "segments"
  if "sim_lane_keep" in names:
    make_sim_segment(root / "sim_lane_keep", "keep_curve_off+0.5_hd+0_v15", cam)
  if "sim_lane_change" in names:
    make_sim_segment(root / "sim_lane_change", "change_left_straight_v15_off+0.0_hd+0", cam)
  if "comma2k19_example" in names:
    make_comma2k19_segment(root / "comma2k19_example")
  return [root / s for s in names]


# ------------------------------------------------------------------------------------------ main

@tool_main
def main(argv: list[str] | None = None) -> int:
  ap = make_parser("python -m selfdrive.test.process_replay.model_replay", __doc__)
  ap.add_argument("--model-dir", type=Path, default=None, help="model pair (default: modeld's shipped model)")
  ap.add_argument("--segments", default=",".join(SEGMENTS), help="comma-separated segment names")
  ap.add_argument("--update", action="store_true", help="write new references (after an intended model change)")
  ap.add_argument("--plot-dir", type=Path, default=Path("model_replay_plots"), help="where --update puts its plots")
  ap.add_argument("--make-segments", action="store_true", help="rebuild the committed input segments")
  ap.add_argument("--ref-dir", type=Path, default=REF_DIR,
                  help="where the references live (default: the committed ones for the shipped model)")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  names = [s.strip() for s in args.segments.split(",") if s.strip()]
  unknown = [s for s in names if s not in SEGMENTS]
  if unknown:
    ap.error(f"--segments: unknown {unknown}; known: {list(SEGMENTS)}")
  if args.make_segments:
    made = make_segments(args.model_dir, names)
    emit_result({"segments": [str(p) for p in made]})
    return 0
  summary: dict = {"segments": {}, "passed": True}
  all_times = []
  for name in names:
    seg_dir = DATA / "segments" / name
    if not (seg_dir / "rlog.zst").is_file():
      print(f"error: {seg_dir}: missing segment (run --make-segments)", file=sys.stderr)
      return 1
    try:
      outputs = replay_segment(seg_dir, args.model_dir, progress=not args.no_progress)
    except (RuntimeError, ValueError) as e:
      print(f"error: {name}: {e}", file=sys.stderr)
      return 1
    times = exec_times(outputs)
    all_times.append(times)
    model_hash, model_name = model_identity(outputs)
    entry: dict = {"frames": len(outputs), "exec_mean_ms": round(1000 * float(times.mean()), 2),
                   "exec_max_ms": round(1000 * float(times.max()), 2)}
    try:
      ref, meta = read_ref(name, args.ref_dir)
    except FileNotFoundError as e:
      if not args.update:
        print(f"error: {e}", file=sys.stderr)
        return 1
      ref, meta = None, {}
    if args.update:
      if ref is not None:
        diffs: dict[str, float] = {}
        for r, o in zip(ref, outputs):
          for s in OUTPUT_SERVICES:
            for k, d in field_diffs(event_fields(r[s]), event_fields(o[s])).items():
              diffs[k] = max(diffs.get(k, 0.0), d)
        top = sorted(diffs.items(), key=lambda kv: -kv[1])[:12]
        print(f"{name}: largest changes vs the old reference (max |new - old| over {len(outputs)} frames):")
        for k, d in top:
          print(f"  {k:60s} {d:.6g}")
        entry["changed_fields"] = sum(d > DEFAULT_TOL for d in diffs.values())
      write_ref(name, outputs, model_hash, model_name, args.ref_dir)
      entry["plot"] = str(plot_fields(name, ref, outputs, args.plot_dir))
      entry["updated"] = True
    else:
      if meta.get("model_hash") != model_hash:
        entry["error"] = (f"reference made with model {meta.get('model_name')} ({meta.get('model_hash')}), running "
                          f"{model_name} ({model_hash}): run with --update after an intended model change")
        summary["passed"] = False
      elif len(ref) != len(outputs):
        entry["error"] = f"reference has {len(ref)} frames, replay produced {len(outputs)}"
        summary["passed"] = False
      else:
        bad: dict[str, tuple[int, float]] = {}
        for i, (r, o) in enumerate(zip(ref, outputs)):
          for s in OUTPUT_SERVICES:
            for k, d in compare_fields(event_fields(r[s]), event_fields(o[s])).items():
              if k not in bad:
                bad[k] = (i, d)
        entry["mismatched_fields"] = len(bad)
        if bad:
          summary["passed"] = False
          print(f"{name}: {len(bad)} fields out of tolerance (first frame, max |diff| there):")
          for k, (i, d) in list(bad.items())[:20]:
            print(f"  {k:60s} frame {i:4d}  {d:.6g}")
    summary["segments"][name] = entry
  t = np.concatenate(all_times) if all_times else np.zeros(1)
  summary["exec_mean_ms"], summary["exec_max_ms"] = round(1000 * float(t.mean()), 2), round(1000 * float(t.max()), 2)
  print(f"modelExecutionTime: mean {summary['exec_mean_ms']:.2f} ms, max {summary['exec_max_ms']:.2f} ms")
  if not args.update and t.mean() > MAX_MEAN_EXEC_S:
    summary["passed"] = False
    summary["error"] = f"mean modelExecutionTime {t.mean():.3f} s > {MAX_MEAN_EXEC_S} s"
  emit_result(summary)
  return 0 if summary["passed"] or args.update else 1


if __name__ == "__main__":
  sys.exit(main())
