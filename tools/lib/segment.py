"""Reader for one comma2k19-layout segment directory (also what our simulator writes).

Layout (every array is a .npy file WITHOUT extension):
  <root>/<dongle>|<date--time>/<segment number>/
    video.hevc                                        raw Annex-B HEVC, 20 fps, 1164x874
    preview.png                                       (optional) one frame
    global_pose/frame_times        (N,)   s           one row per video frame
    global_pose/frame_positions    (N, 3) ECEF m
    global_pose/frame_orientations (N, 4) quaternion (w, x, y, z): device frame (x fwd, y right,
                                          z down) in ECEF, i.e. R_ecef_from_device = quat2rot(q)
    global_pose/frame_velocities   (N, 3) ECEF m/s
    processed_log/CAN/<name>/{t, value}  e.g. speed (m/s), steering_angle (deg, + left)
    processed_log/IMU/<name>/{t, value}  gyro (rad/s, device axes), accelerometer (m/s^2)
    ground_truth/<name>                  (simulator only, see the shared contract)
"""
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import ToolError
from tools.lib.video import VideoError, VideoReader

POSE_FILES = ("frame_times", "frame_positions", "frame_orientations", "frame_velocities")
POSE_WIDTH = {"frame_times": None, "frame_positions": 3, "frame_orientations": 4, "frame_velocities": 3}


class SegmentError(ToolError):   # a tool reports it as one line, exit 1
  """A segment file is missing, truncated or inconsistent; the message names the file."""


def load_npy(path: Path) -> np.ndarray:
  """np.load of an extension-less .npy file (no pickles), with errors that name the file."""
  path = Path(path)
  try:
    with open(path, "rb") as f:
      return np.load(f, allow_pickle=False)
  except FileNotFoundError:
    raise SegmentError(f"{path}: missing file") from None
  except IsADirectoryError:
    raise SegmentError(f"{path}: expected a .npy file, found a directory") from None
  except (ValueError, EOFError, OSError) as e:
    raise SegmentError(f"{path}: not a readable .npy array (truncated or corrupt: {e})") from e


def _numeric(a: np.ndarray, path: Path) -> np.ndarray:
  """float64 copy of a real-valued numeric array; SegmentError naming the file for text, objects, complex."""
  if a.dtype.kind not in "biuf":
    raise SegmentError(f"{path}: expected numbers, got dtype {a.dtype}")
  return a.astype(np.float64, copy=False)


class FrameTimes:
  """num_frames and duration of a segment from its `frame_times` (both segment layouts)."""
  frame_times: np.ndarray

  @property
  def num_frames(self) -> int:
    return len(self.frame_times)

  @property
  def duration(self) -> float:
    t = self.frame_times
    return float(t[-1] - t[0])


class Segment(FrameTimes):
  def __init__(self, path):
    self.path = Path(path)
    if not self.path.is_dir():
      raise SegmentError(f"{self.path}: segment directory not found")
    self.route_name = self.path.parent.name          # "<dongle>|<date--time>" (contains '|')
    self.dongle_id = self.route_name.split("|")[0]
    self.segment_num = int(self.path.name) if self.path.name.isdigit() else None

  def __repr__(self) -> str:
    return f"Segment({str(self.path)!r})"

  # ---- global pose ----
  def _pose(self, name: str) -> np.ndarray:
    p = self.path / "global_pose" / name
    a = _numeric(load_npy(p), p)
    width = POSE_WIDTH[name]
    if width is None and a.ndim != 1:
      raise SegmentError(f"{p}: expected shape (N,), got {a.shape}")
    if width is not None and (a.ndim != 2 or a.shape[1] != width):
      raise SegmentError(f"{p}: expected shape (N, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
      raise SegmentError(f"{p}: contains NaN or inf")
    if name != "frame_times" and len(a) != len(self.frame_times):
      raise SegmentError(f"{p}: {len(a)} rows but global_pose/frame_times has {len(self.frame_times)}")
    return a

  @cached_property
  def frame_times(self) -> np.ndarray:
    t = self._pose("frame_times")
    if len(t) < 2 or np.any(np.diff(t) <= 0):
      raise SegmentError(f"{self.path / 'global_pose' / 'frame_times'}: need >= 2 strictly increasing times")
    return t

  @cached_property
  def positions(self) -> np.ndarray:
    return self._pose("frame_positions")

  @cached_property
  def orientations(self) -> np.ndarray:
    q = self._pose("frame_orientations")
    n = np.linalg.norm(q, axis=1)
    if np.any(np.abs(n - 1) > 1e-3):
      raise SegmentError(f"{self.path / 'global_pose' / 'frame_orientations'}: quaternions are not unit norm "
                         f"(norm range {n.min():.4f}..{n.max():.4f})")
    return q

  @cached_property
  def velocities(self) -> np.ndarray:
    return self._pose("frame_velocities")

  # ---- processed logs ----
  def _log(self, kind: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = self.path / "processed_log" / kind / name
    t, v = _numeric(load_npy(d / "t"), d / "t"), _numeric(load_npy(d / "value"), d / "value")
    if t.ndim != 1:
      raise SegmentError(f"{d / 't'}: expected shape (N,), got {t.shape}")
    if len(t) < 2:
      raise SegmentError(f"{d / 't'}: {len(t)} samples, need at least 2")
    if v.ndim not in (1, 2) or len(v) != len(t):
      raise SegmentError(f"{d / 'value'}: shape {v.shape}, expected {len(t)} rows (one per {d / 't'} sample)")
    for f, a in (("t", t), ("value", v)):
      if not np.all(np.isfinite(a)):
        raise SegmentError(f"{d / f}: contains NaN or inf")
    if np.any(np.diff(t) < 0):
      raise SegmentError(f"{d / 't'}: timestamps are not sorted")
    if v.ndim == 2 and v.shape[1] == 1:
      v = v[:, 0]
    return t, v

  def has_log(self, kind: str, name: str) -> bool:
    d = self.path / "processed_log" / kind / name
    return (d / "t").is_file() and (d / "value").is_file()

  def can(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(t, value) of a CAN signal, e.g. 'speed' (m/s), 'steering_angle' (deg, + left), 'wheel_speed'."""
    return self._log("CAN", name)

  def imu(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(t, value) of an IMU signal: 'gyro' (rad/s) or 'accelerometer' (m/s^2), device axes."""
    return self._log("IMU", name)

  # ---- video ----
  @property
  def video_path(self) -> Path:
    return self.path / "video.hevc"

  @cached_property
  def video(self) -> VideoReader:
    try:
      vr = VideoReader(self.video_path)
    except VideoError as e:
      raise SegmentError(str(e)) from e
    pose_times = self.path / "global_pose" / "frame_times"
    if pose_times.exists() and len(vr) != self.num_frames:
      vr.close()
      raise SegmentError(f"{self.video_path}: {len(vr)} frames but {pose_times} has {self.num_frames} "
                         f"(video truncated or poses from another segment)")
    return vr

  # ---- simulator ground truth ----
  @cached_property
  def ground_truth(self) -> dict[str, np.ndarray] | None:
    """The simulator's ground_truth/ arrays (one row per video frame), or None when absent.
    0-d arrays are allowed as per-segment scalars; every other array must have one row per frame."""
    d = self.path / "ground_truth"
    if not d.is_dir():
      return None
    gt = {p.name: load_npy(p) for p in sorted(d.iterdir()) if p.is_file()}
    if "frame_times" not in gt:
      raise SegmentError(f"{d / 'frame_times'}: missing file")
    n = len(gt["frame_times"])
    for k, v in gt.items():
      if v.ndim > 0 and len(v) != n:
        raise SegmentError(f"{d / k}: {v.shape} does not have one row per frame ({n})")
    pose_times = self.path / "global_pose" / "frame_times"
    if pose_times.exists() and n != self.num_frames:
      raise SegmentError(f"{d / 'frame_times'}: {n} rows but {pose_times} has {self.num_frames}")
    return gt

  # ---- whole-segment check ----
  def validate(self, check_video: bool = True) -> None:
    """Load every pose array (and index the video if present); raise SegmentError on the first problem."""
    for name in POSE_FILES:
      getattr(self, {"frame_times": "frame_times", "frame_positions": "positions",
                     "frame_orientations": "orientations", "frame_velocities": "velocities"}[name])
    if check_video and self.video_path.exists():
      self.video.close()
      del self.__dict__["video"]
    self.ground_truth


def is_segment_dir(p: Path) -> bool:
  return p.is_dir() and ((p / "global_pose").is_dir() or (p / "video.hevc").exists())


def scan_segments(root, check_video: bool = True, progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Find every segment directory under root and validate it. Bad ones are skipped and counted:
  returns (good paths, [(bad path, reason), ...]), both sorted."""
  root = Path(root)
  if not root.is_dir():
    raise SegmentError(f"{root}: dataset root not found")
  candidates = sorted({p.parent for p in root.rglob("global_pose")} | {p.parent for p in root.rglob("video.hevc")})
  good, bad = [], []
  for p in tqdm(candidates, desc="scan segments", disable=not progress, unit="seg"):
    try:
      Segment(p).validate(check_video=check_video)
      good.append(p)
    except SegmentError as e:
      bad.append((p, str(e)))
  return good, bad
