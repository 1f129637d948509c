"""Segment discovery, the deterministic train/validation split and per-segment camera/calibration."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from common.calibration import estimate_calibration, velocities_in_device_frame
from common.transformations.camera import EON_ROAD_CAM, CameraConfig
from tools.lib.segment import Segment, SegmentError, scan_segments

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1


def route_split(route_name: str, val_fraction: float = VAL_FRACTION) -> str:
  """'train' or 'val' from a hash of the route name: every segment of a route lands in the same split, the same
  way on every machine and Python (md5, not hash())."""
  h = int.from_bytes(hashlib.md5(route_name.encode()).digest()[:8], "little") / 2 ** 64
  return "val" if h < val_fraction else "train"


def find_segments(root, split: str | None = None, val_fraction: float = VAL_FRACTION, require_video: bool = True,
                  progress: bool = False) -> list[Path]:
  """Usable segments under root (bad ones skipped with a warning naming them), optionally one split only.
  If every route falls in one split (tiny datasets), the split is made over the sorted route list instead so that
  both splits are non-empty whenever there are >= 2 routes."""
  if split not in (None, "train", "val"):
    raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
  good, bad = scan_segments(root, check_video=require_video, progress=progress)
  for p, reason in bad:
    log.warning("skipping segment %s: %s", p, reason)
  if require_video:
    good = [p for p in good if (p / "video.hevc").exists()]
  if split is None:
    return good
  routes = sorted({p.parent.name for p in good})
  splits = {r: route_split(r, val_fraction) for r in routes}
  if len(routes) >= 2 and len(set(splits.values())) == 1:
    n_val = max(1, int(round(len(routes) * val_fraction)))
    ranked = sorted(routes, key=lambda r: hashlib.md5(r.encode()).hexdigest())
    splits = {r: ("val" if i < n_val else "train") for i, r in enumerate(ranked)}
  return [p for p in good if splits[p.parent.name] == split]


def segment_camera(seg_path) -> CameraConfig:
  """The road camera of a segment: camera.json (written by our simulator: width, height, focal[, cx, cy]) or the
  comma EON camera of comma2k19."""
  f = Path(seg_path) / "camera.json"
  if not f.exists():
    return EON_ROAD_CAM
  try:
    d = json.loads(f.read_text())
    return CameraConfig(int(d["width"]), int(d["height"]), float(d["focal"]), d.get("cx"), d.get("cy"))
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise SegmentError(f"{f}: invalid camera description ({e!r}); need width, height, focal") from e


def segment_calibration(seg: Segment) -> np.ndarray:
  """rpy_calib (device_from_calib) of a segment: camera.json's 'rpy_calib' when given, zero for simulator segments
  (camera.json present), else estimated from the direction of travel (zero if the estimate is not valid)."""
  f = seg.path / "camera.json"
  if f.exists():
    d = json.loads(f.read_text())
    rpy = np.asarray(d.get("rpy_calib", [0.0, 0.0, 0.0]), dtype=np.float64)
    if rpy.shape != (3,):
      raise SegmentError(f"{f}: rpy_calib must have 3 numbers, got {rpy.shape}")
    return rpy
  res = estimate_calibration(velocities_in_device_frame(seg.velocities, seg.orientations))
  if not res.valid:
    log.warning("%s: calibration estimate not valid (%d samples); using zero calibration", seg.path, res.n_samples)
    return np.zeros(3)
  return res.rpy
