"""openpilot's route layout: what a device records (and what `tools.sim.generate --format openpilot` writes).

  <root>/<route>--<n>/          route "YYYY-MM-DD--HH-MM-SS" (or a counter name such as "0000002a--3e6fa9b1c2"),
                                n the segment number; downloads prefix "<dongle id>|" (or "_") to the folder name
    rlog.zst | rlog.bz2 | rlog  every logged message           qlog.zst | qlog.bz2 | qlog  the decimated log
    fcamera.hevc                road camera, HEVC, 20 fps       ecamera.hevc  wide road camera
    dcamera.hevc                driver camera                    qcamera.ts    small H.264 preview of the road

Frames and messages are matched the way openpilot does: every encoded frame has an encode-index message
(roadEncodeIdx for fcamera, wideRoadEncodeIdx for ecamera, driverEncodeIdx for dcamera, qRoadEncodeIdx for
qcamera) whose segmentId is the frame's index in the segment's file and whose frameId is the camera
frame's id, the same as in roadCameraState / wideRoadCameraState / driverCameraState.

  seg = OpenpilotSegment(path)
  seg.frame_index("fcamera")   -> FrameIndex(frame_id, segment_id, timestamp_sof, timestamp_eof, log_mono_time)
  seg.camera_states("fcamera") -> [(video frame index or -1, roadCameraState event), ...]
  seg.frame(frame_id)          -> RGB uint8 (H, W, 3) of that camera frame, decoded from fcamera.hevc

`find_segments(root)` lists the segments under a root in either layout (openpilot's, comma2k19's) and
`open_segment(path)` opens one with the right reader.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tools.lib.logreader import LogCorruptError, LogReader
from tools.lib.segment import FrameTimes, Segment, SegmentError, is_segment_dir
from tools.lib.segment import scan_segments as scan_comma2k19_segments
from tools.lib.video import VideoReader

RLOG_NAMES = ("rlog.zst", "rlog.bz2", "rlog")
QLOG_NAMES = ("qlog.zst", "qlog.bz2", "qlog")
# camera -> (file, encode-index service, camera-state service)
CAMERAS = {
  "fcamera": ("fcamera.hevc", "roadEncodeIdx", "roadCameraState"),
  "ecamera": ("ecamera.hevc", "wideRoadEncodeIdx", "wideRoadCameraState"),
  "dcamera": ("dcamera.hevc", "driverEncodeIdx", "driverCameraState"),
  "qcamera": ("qcamera.ts", "qRoadEncodeIdx", "roadCameraState"),
}
SEGMENT_NAME = re.compile(r"^(?:(?P<dongle>[0-9a-f]{16})[|_])?(?P<route>.+?)--(?P<num>\d+)$")


def parse_segment_name(name: str) -> tuple[str, str, int] | None:
  """'<dongle>|<route>--<n>' or '<route>--<n>' -> (dongle or '', route, n); None if it is not a segment name."""
  m = SEGMENT_NAME.match(name)
  if m is None or "--" not in m.group("route") and not re.fullmatch(r"[0-9a-f]{8}", m.group("route")):
    return None
  return m.group("dongle") or "", m.group("route"), int(m.group("num"))


def is_openpilot_segment_dir(p: Path) -> bool:
  p = Path(p)
  return p.is_dir() and parse_segment_name(p.name) is not None and any((p / n).is_file() for n in RLOG_NAMES + QLOG_NAMES)


@dataclass(frozen=True)
class FrameIndex:
  """One camera's encoded frames, in file order (segment_id = 0, 1, 2, ...)."""
  frame_id: np.ndarray        # (N,) uint32, camera frame ids
  segment_id: np.ndarray      # (N,) index of the frame in the segment's video file
  timestamp_sof: np.ndarray   # (N,) uint64 ns
  timestamp_eof: np.ndarray   # (N,) uint64 ns
  log_mono_time: np.ndarray   # (N,) uint64 ns, when the encode-index message was logged

  def __len__(self) -> int:
    return len(self.frame_id)

  def __post_init__(self):
    perm = np.argsort(self.frame_id, kind="stable")
    object.__setattr__(self, "_perm", perm)
    object.__setattr__(self, "_sorted_ids", self.frame_id[perm])

  def file_index(self, frame_id: int) -> int:
    """Index in the video file of a camera frame id; KeyError if that frame was not encoded here."""
    i = int(np.searchsorted(self._sorted_ids, frame_id, side="left"))
    if i < len(self._sorted_ids) and self._sorted_ids[i] == frame_id:
      return int(self.segment_id[self._perm[i]])
    raise KeyError(f"camera frame {frame_id} is not in this segment's video")


class OpenpilotSegment(FrameTimes):
  """One segment folder of openpilot's route layout."""

  def __init__(self, path, prefer_qlog: bool = False):
    self.path = Path(path)
    if not self.path.is_dir():
      raise SegmentError(f"{self.path}: segment directory not found")
    parsed = parse_segment_name(self.path.name)
    if parsed is None:
      raise SegmentError(f"{self.path}: not an openpilot segment folder name ('<route>--<n>', e.g. "
                         "'2026-01-01--12-00-00--3' or 'a2a0ccea32023010|2026-01-01--12-00-00--3')")
    self.dongle_id, self.route_name, self.segment_num = parsed
    rlog = [self.path / n for n in RLOG_NAMES if (self.path / n).is_file()]
    qlog = [self.path / n for n in QLOG_NAMES if (self.path / n).is_file()]
    self.rlog_path = rlog[0] if rlog else None
    self.qlog_path = qlog[0] if qlog else None
    if self.rlog_path is None and self.qlog_path is None:
      raise SegmentError(f"{self.path}: no log file ({', '.join(RLOG_NAMES + QLOG_NAMES)})")
    self.log_path = self.qlog_path if (prefer_qlog and self.qlog_path) or self.rlog_path is None else self.rlog_path
    self._events: list | None = None

  def __repr__(self) -> str:
    return f"OpenpilotSegment({str(self.path)!r})"

  @property
  def canonical_name(self) -> str:
    return (f"{self.dongle_id}|{self.route_name}--{self.segment_num}" if self.dongle_id
            else f"{self.route_name}--{self.segment_num}")

  def events(self) -> list:
    """Every event of the segment's log (rlog unless only a qlog is there), read once."""
    if self._events is None:
      try:
        self._events = list(LogReader(self.log_path))
      except LogCorruptError as e:
        raise SegmentError(str(e)) from e
    return self._events

  def camera_path(self, camera: str = "fcamera") -> Path | None:
    if camera not in CAMERAS:
      raise KeyError(f"unknown camera {camera!r}; one of {sorted(CAMERAS)}")
    p = self.path / CAMERAS[camera][0]
    return p if p.is_file() else None

  def frame_index(self, camera: str = "fcamera") -> FrameIndex:
    """The camera's encode-index messages as arrays, in file order; checks they describe this segment."""
    _, idx_service, _ = CAMERAS[camera]
    rows = []
    for ev in self.events():
      if ev.which() == idx_service:
        e = getattr(ev, idx_service)
        rows.append((e.frameId, e.segmentId, e.timestampSof, e.timestampEof, ev.logMonoTime, e.segmentNum))
    if not rows:
      raise SegmentError(f"{self.log_path}: no {idx_service} messages, so {camera} frames cannot be matched to the log")
    rows.sort(key=lambda r: r[1])
    seg_ids = np.array([r[1] for r in rows], dtype=np.int64)
    if np.any(np.diff(seg_ids) == 0):
      raise SegmentError(f"{self.log_path}: {idx_service} lists a video frame twice "
                         f"(segmentId {int(seg_ids[np.diff(seg_ids) == 0][0])})")
    nums = {r[5] for r in rows}
    if len(nums) != 1 or (self.segment_num is not None and nums != {self.segment_num}):
      raise SegmentError(f"{self.log_path}: {idx_service}.segmentNum {sorted(nums)} does not match segment {self.segment_num}")
    return FrameIndex(frame_id=np.array([r[0] for r in rows], dtype=np.uint32), segment_id=seg_ids,
                      timestamp_sof=np.array([r[2] for r in rows], dtype=np.uint64),
                      timestamp_eof=np.array([r[3] for r in rows], dtype=np.uint64),
                      log_mono_time=np.array([r[4] for r in rows], dtype=np.uint64))

  def camera_states(self, camera: str = "fcamera") -> list[tuple[int, object]]:
    """Every camera-state event of the camera with the index of its picture in the video file (-1: not encoded)."""
    _, _, state_service = CAMERAS[camera]
    fi = self.frame_index(camera)
    out = []
    for ev in self.events():
      if ev.which() == state_service:
        try:
          out.append((fi.file_index(getattr(ev, state_service).frameId), ev))
        except KeyError:
          out.append((-1, ev))
    return out

  def camera_video(self, camera: str = "fcamera") -> VideoReader:
    p = self.camera_path(camera)
    if p is None:
      raise SegmentError(f"{self.path}: no {CAMERAS[camera][0]}")
    if camera == "qcamera":
      raise SegmentError(f"{p}: qcamera.ts (H.264 in MPEG-TS) is not decoded here; use fcamera")
    return VideoReader(p)

  def frame(self, frame_id: int, camera: str = "fcamera") -> np.ndarray:
    """RGB picture of a camera frame id (as in roadCameraState.frameId)."""
    fi = self.frame_index(camera)
    with self.camera_video(camera) as v:
      i = fi.file_index(frame_id)
      if i >= len(v):
        raise SegmentError(f"{v.path}: has {len(v)} frames, but {CAMERAS[camera][1]} puts frame {frame_id} at {i}")
      return v.frame(i)

  # ---- what training reads: the interface of tools.lib.segment.Segment ----
  # Poses come from locationd's livePose (orientation in NED, velocity in the device frame), integrated into a
  # local north-east-down frame whose origin is the first livePose: training uses only poses relative to each
  # other, so this frame serves where comma2k19 has ECEF.  Signals come from carState (CAN) and livePose (IMU).

  @cached_property
  def frame_times(self) -> np.ndarray:
    """(N,) s: start of exposure of each frame of fcamera.hevc, in file order (CLOCK_MONOTONIC, as logMonoTime)."""
    return self.frame_index("fcamera").timestamp_sof.astype(np.float64) * 1e-9

  @cached_property
  def _signals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(t s, value) per signal name, from carState and livePose (valid estimates only)."""
    rows: dict[str, list] = {k: [] for k in ("speed", "steering_angle", "rpy", "velocity", "acceleration", "gyro")}
    for ev in self.events():
      w, t = ev.which(), ev.logMonoTime * 1e-9
      if w == "carState":
        rows["speed"].append((t, ev.carState.vEgo))
        rows["steering_angle"].append((t, ev.carState.steeringAngleDeg))
      elif w == "livePose":
        lp = ev.livePose
        for name, xyz in (("rpy", lp.orientationNED), ("velocity", lp.velocityDevice),
                          ("acceleration", lp.accelerationDevice), ("gyro", lp.angularVelocityDevice)):
          if xyz.valid:
            rows[name].append((t, (xyz.x, xyz.y, xyz.z)))
    out = {}
    for name, r in rows.items():
      if len(r) < 2:
        continue
      t = np.array([x[0] for x in r], dtype=np.float64)
      v = np.array([x[1] for x in r], dtype=np.float64)
      order = np.argsort(t, kind="stable")
      t, v = t[order], v[order]
      if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
        raise SegmentError(f"{self.log_path}: {name} ({'carState' if name in ('speed', 'steering_angle') else 'livePose'}) "
                           "holds NaN or inf")
      out[name] = (t, v)
    return out

  @cached_property
  def _poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions (N, 3) m, quaternions (N, 4) R_ned_from_device, velocities (N, 3) m/s) at frame_times."""
    from common.transformations.orientation import euler2quat, euler2rot
    sig = self._signals
    if "rpy" not in sig or "velocity" not in sig:
      raise SegmentError(f"{self.log_path}: no valid livePose messages, so this segment has no poses to train on "
                         "(locationd publishes livePose on a device)")
    (t_r, rpy), (t_v, v_dev) = sig["rpy"], sig["velocity"]
    tf = self.frame_times
    for name, t in (("orientationNED", t_r), ("velocityDevice", t_v)):
      if t[0] > tf[0] + MAX_POSE_GAP_S or t[-1] < tf[-1] - MAX_POSE_GAP_S:
        raise SegmentError(f"{self.log_path}: livePose.{name} covers {t[0]:.2f}..{t[-1]:.2f} s but the frames span "
                           f"{tf[0]:.2f}..{tf[-1]:.2f} s")
      gaps = np.diff(t)
      if gaps.size and gaps.max() > MAX_POSE_GAP_S:
        k = int(np.argmax(gaps))
        raise SegmentError(f"{self.log_path}: livePose.{name} has a {gaps[k]:.2f} s gap at {t[k]:.2f} s "
                           f"(more than {MAX_POSE_GAP_S} s cannot be integrated)")
    rpy = rpy.copy()
    rpy[:, 2] = np.unwrap(rpy[:, 2])
    R_at_v = euler2rot(np.stack([np.interp(t_v, t_r, rpy[:, k]) for k in range(3)], -1))
    v_ned = np.einsum("nij,nj->ni", R_at_v, v_dev)
    # positions: trapezoidal integral of the NED velocity, then linear in time between (and just beyond) samples
    pos = np.concatenate([np.zeros((1, 3)), np.cumsum(0.5 * (v_ned[1:] + v_ned[:-1]) * np.diff(t_v)[:, None], 0)])
    positions = np.stack([interp_extrapolate(tf, t_v, pos[:, k]) for k in range(3)], -1)
    velocities = np.stack([np.interp(tf, t_v, v_ned[:, k]) for k in range(3)], -1)
    quats = euler2quat(np.stack([np.interp(tf, t_r, rpy[:, k]) for k in range(3)], -1))
    return positions, quats, velocities

  @property
  def positions(self) -> np.ndarray:
    return self._poses[0]

  @property
  def orientations(self) -> np.ndarray:
    return self._poses[1]

  @property
  def velocities(self) -> np.ndarray:
    return self._poses[2]

  def has_log(self, kind: str, name: str) -> bool:
    key = {("CAN", "speed"): "speed", ("CAN", "steering_angle"): "steering_angle", ("IMU", "gyro"): "gyro",
           ("IMU", "accelerometer"): "acceleration"}.get((kind, name))
    return key is not None and key in self._signals and (key != "acceleration" or "rpy" in self._signals)

  def can(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(t, value) of 'speed' (m/s, carState.vEgo) or 'steering_angle' (deg, + left, carState.steeringAngleDeg)."""
    if not self.has_log("CAN", name):
      raise SegmentError(f"{self.log_path}: no CAN signal {name!r} (this layout has speed and steering_angle "
                         "from carState)")
    return self._signals[name]

  def imu(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(t, value) in device axes: 'gyro' (rad/s) or 'accelerometer' (m/s^2, specific force as an IMU measures it:
    livePose's acceleration minus gravity)."""
    from common.modelconstants import GRAVITY
    from common.transformations.orientation import euler2rot
    if not self.has_log("IMU", name):
      raise SegmentError(f"{self.log_path}: no IMU signal {name!r} (from livePose: gyro, accelerometer)")
    if name == "gyro":
      return self._signals["gyro"]
    t, acc = self._signals["acceleration"]
    t_r, rpy = self._signals["rpy"]
    rpy = rpy.copy()
    rpy[:, 2] = np.unwrap(rpy[:, 2])
    R = euler2rot(np.stack([np.interp(t, t_r, rpy[:, k]) for k in range(3)], -1))
    return t, acc - np.einsum("nji,j->ni", R, np.array([0.0, 0.0, GRAVITY]))

  @property
  def video_path(self) -> Path:
    return self.path / CAMERAS["fcamera"][0]

  @cached_property
  def video(self) -> VideoReader:
    """The road camera's video (fcamera.hevc), frames in the order of frame_times."""
    return self.camera_video("fcamera")

  @cached_property
  def camera_info(self) -> dict | None:
    """{width, height, focal, cx, cy} of the road camera from the first roadCameraInfo (written by the simulator and
    the stack's camera), or None when the log has none."""
    for ev in self.events():
      if ev.which() == "roadCameraInfo":
        ci = ev.roadCameraInfo
        K = np.asarray(list(ci.intrinsics), dtype=np.float64)
        if K.size != 9 or not np.all(np.isfinite(K)) or K[0] <= 0:
          raise SegmentError(f"{self.log_path}: roadCameraInfo.intrinsics is not a 3x3 camera matrix: {K.tolist()}")
        return {"width": int(ci.width), "height": int(ci.height), "focal": float(K[0]), "cx": float(K[2]),
                "cy": float(K[5])}
    return None

  @cached_property
  def logged_calibration(self) -> np.ndarray | None:
    """rpyCalib of the last liveCalibration with calStatus calibrated (calibrationd's estimate), else None."""
    rpy = None
    for ev in self.events():
      if ev.which() == "liveCalibration" and str(ev.liveCalibration.calStatus) == "calibrated":
        rpy = np.asarray(list(ev.liveCalibration.rpyCalib), dtype=np.float64)
    if rpy is not None and (rpy.shape != (3,) or not np.all(np.isfinite(rpy))):
      raise SegmentError(f"{self.log_path}: liveCalibration.rpyCalib is not 3 finite angles: {rpy.tolist()}")
    return rpy

  @property
  def ground_truth(self) -> None:
    """A device records no labels; the simulator's groundTruth messages are for replay and evaluation."""
    return None

  def validate(self) -> None:
    """Read the log and check the road camera's file against its encode index; SegmentError names the fault."""
    self.events()
    p = self.camera_path("fcamera")
    if p is not None:
      fi = self.frame_index("fcamera")
      with self.camera_video("fcamera") as v:
        if len(v) != len(fi):
          raise SegmentError(f"{p}: {len(v)} frames in the file but {len(fi)} roadEncodeIdx messages in {self.log_path}")


MAX_POSE_GAP_S = 0.25   # s: livePose may start / end this much inside the frames, or pause this long, and still be used


def interp_extrapolate(x, xp, fp) -> np.ndarray:
  """np.interp that continues the first / last segment's slope beyond the samples (instead of holding the ends)."""
  y = np.interp(x, xp, fp)
  lo, hi = x < xp[0], x > xp[-1]
  y[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
  y[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
  return y


def open_segment(path):
  """A segment in either layout: OpenpilotSegment for '<route>--<n>' folders, Segment (comma2k19) otherwise."""
  p = Path(path)
  if parse_segment_name(p.name) is not None and any((p / n).is_file() for n in RLOG_NAMES + QLOG_NAMES):
    return OpenpilotSegment(p)
  return Segment(p)


def find_segments(root) -> list[Path]:
  """Every segment folder under root, in either layout, sorted by route then segment number."""
  root = Path(root)
  if not root.is_dir():
    raise SegmentError(f"{root}: directory not found")
  found = []
  for p in sorted(root.rglob("*")):
    if not p.is_dir():
      continue
    if is_openpilot_segment_dir(p):
      d, r, n = parse_segment_name(p.name)
      found.append(((d, r, n), p))
    elif is_segment_dir(p):
      found.append(((p.parent.name.split("|")[0], p.parent.name, int(p.name) if p.name.isdigit() else -1), p))
  return [p for _, p in sorted(found)]


def route_of(path) -> str:
  """The route a segment folder belongs to, in either layout: '<dongle>|<route>' for openpilot's '<route>--<n>'
  folders (the dongle part empty when the name has none), the parent folder's name for comma2k19's '<route>/<n>'."""
  p = Path(path)
  parsed = parse_segment_name(p.name)
  if parsed is not None and is_openpilot_segment_dir(p):
    return f"{parsed[0]}|{parsed[1]}"
  return p.parent.name


def scan_segments(root, check_video: bool = True, progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Every segment under root that training can read, in either layout: (good paths, [(bad path, reason), ...]).
  comma2k19 folders are checked by tools.lib.segment.scan_segments; openpilot folders must read (log, encode index,
  video length when check_video) and have poses (livePose)."""
  from tqdm import tqdm
  root = Path(root)
  if not root.is_dir():
    raise SegmentError(f"{root}: dataset root not found")
  good, bad = scan_comma2k19_segments(root, check_video=check_video, progress=progress)
  op = sorted(p for p in root.rglob("*") if is_openpilot_segment_dir(p))
  for p in tqdm(op, desc="scan openpilot segments", disable=not progress or not op, unit="seg"):
    try:
      seg = OpenpilotSegment(p)
      if check_video:
        seg.validate()
      seg.positions
      good.append(p)
    except SegmentError as e:
      bad.append((p, str(e)))
  return sorted(good), sorted(bad)
