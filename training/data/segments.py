"""Segment discovery (comma2k19 and openpilot layouts), the deterministic train/validation split and per-segment
camera/calibration."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from common.calibration import estimate_calibration, velocities_in_device_frame
from common.transformations.camera import EON_ROAD_CAM, CameraConfig, sim_camera
from tools.lib.route import OpenpilotSegment, open_segment, route_of, scan_segments
from tools.lib.segment import Segment, SegmentError

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1


def route_split(route_name: str, val_fraction: float = VAL_FRACTION) -> str:
  """'train' or 'val' from a hash of the route name: every segment of a route lands in the same split, the same
  way on every machine and Python (md5, not hash())."""
  h = int.from_bytes(hashlib.md5(route_name.encode()).digest()[:8], "little") / 2 ** 64
  return "val" if h < val_fraction else "train"


def find_segments(root, split: str | None = None, val_fraction: float = VAL_FRACTION, require_video: bool = True,
                  progress: bool = False) -> list[Path]:
  """Usable segments under root, in comma2k19's layout or openpilot's (bad ones skipped with a warning naming
  them), optionally one split only. If every route falls in one split (tiny datasets), the split is made over the
  sorted route list instead so that both splits are non-empty whenever there are >= 2 routes."""
  if split not in (None, "train", "val"):
    raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
  good, bad = scan_segments(root, check_video=require_video, progress=progress)
  for p, reason in bad:
    log.warning("skipping segment %s: %s", p, reason)
  if require_video:
    good = [p for p in good if open_segment(p).video_path.exists()]
  if split is None:
    return good
  routes = sorted({route_of(p) for p in good})
  splits = {r: route_split(r, val_fraction) for r in routes}
  if len(routes) >= 2 and len(set(splits.values())) == 1:
    n_val = max(1, int(round(len(routes) * val_fraction)))
    ranked = sorted(routes, key=lambda r: hashlib.md5(r.encode()).hexdigest())
    splits = {r: ("val" if i < n_val else "train") for i, r in enumerate(ranked)}
  return [p for p in good if splits[route_of(p)] == split]


def camera_description(seg) -> dict | None:
  """{width, height, focal[, cx, cy, rpy_calib]} of a segment's road camera when its files say: the simulator's
  camera.json (comma2k19 layout) or the log's roadCameraInfo (openpilot layout); None for a real comma2k19 segment."""
  if isinstance(seg, OpenpilotSegment):
    return seg.camera_info
  f = seg.path / "camera.json"
  if not f.exists():
    return None
  try:
    d = json.loads(f.read_text())
    int(d["width"]), int(d["height"]), float(d["focal"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise SegmentError(f"{f}: invalid camera description ({type(e).__name__}: {e}); need width, height, focal") from e
  return d


def segment_camera(seg, width: int | None = None, height: int | None = None) -> CameraConfig:
  """The road camera of a segment (a Segment / OpenpilotSegment or its path): camera_description(), else the comma
  EON camera of comma2k19 (scaled to `width` x `height` when the video has another size). With width / height, a
  described camera must have that size."""
  if not isinstance(seg, (Segment, OpenpilotSegment)):
    seg = open_segment(seg)
  d = camera_description(seg)
  if d is None:
    return EON_ROAD_CAM if width is None else sim_camera(width, height)
  if width is not None and (int(d["width"]), int(d["height"])) != (width, height):
    raise SegmentError(f"{seg.path}: the camera is described as {d['width']}x{d['height']} but {seg.video_path} is "
                       f"{width}x{height}")
  return CameraConfig(int(d["width"]), int(d["height"]), float(d["focal"]), d.get("cx"), d.get("cy"))


def segment_calibration(seg) -> np.ndarray:
  """rpy_calib (device_from_calib) of a segment: the log's calibrated liveCalibration (openpilot layout), else the
  camera description's 'rpy_calib' or zero for simulator segments (a described camera), else estimated from the
  direction of travel as calibrationd does (zero if the estimate is not valid)."""
  logged = getattr(seg, "logged_calibration", None)
  if logged is not None:
    return logged
  d = camera_description(seg)
  if d is not None:
    rpy = np.asarray(d.get("rpy_calib", [0.0, 0.0, 0.0]), dtype=np.float64)
    if rpy.shape != (3,) or not np.all(np.isfinite(rpy)):
      raise SegmentError(f"{seg.path}: rpy_calib must be 3 finite numbers, got {rpy.tolist()}")
    return rpy
  res = estimate_calibration(velocities_in_device_frame(seg.velocities, seg.orientations))
  if not res.valid:
    log.warning("%s: calibration estimate not valid (%d samples); using zero calibration", seg.path, res.n_samples)
    return np.zeros(3)
  return res.rpy
