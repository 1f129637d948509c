"""Video frame -> the world model's input frame: the calibrated model frame (common/transformations/camera.py)
rendered directly at the world model's resolution (H x W, focal MODEL_FRAME_FOCAL * W / MODEL_FRAME_W), RGB uint8."""
from __future__ import annotations

import numpy as np
import torch

from common.modelconstants import MODEL_FRAME_FOCAL, MODEL_FRAME_W
from common.transformations.camera import get_model_frame_warp
from tools.lib.route import open_segment
from tools.lib.segment import SegmentError
from training.data.segments import segment_calibration, segment_camera


def images_to_tensor(frames_uint8: np.ndarray) -> torch.Tensor:
  """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) float in [-1, 1] (the pixels the VAE and the world model see)."""
  x = torch.from_numpy(np.ascontiguousarray(frames_uint8)).float() / 127.5 - 1.0
  return x.movedim(-1, -3)


def model_frame_focal(frame_w: int) -> float:
  return MODEL_FRAME_FOCAL * frame_w / MODEL_FRAME_W


class SegmentFrames:
  """Random access to a segment's frames as calibrated model frames of size frame_hw = (H, W)."""

  def __init__(self, seg_path, frame_hw: tuple[int, int]):
    import cv2  # noqa: F401  (fail early if missing)
    self.seg = open_segment(seg_path)
    self.frame_hw = (int(frame_hw[0]), int(frame_hw[1]))
    self.camera = segment_camera(self.seg)
    self.rpy_calib = segment_calibration(self.seg)
    h, w = self.frame_hw
    self.warp = get_model_frame_warp(self.rpy_calib, self.camera, w, h, model_frame_focal(w))
    # big downscales (EON 1164x874 -> 128x64 is ~7x): area-resize the source first to 2x the output scale, so the
    # (bilinear) warp does not alias; the homography absorbs the resize
    scale = model_frame_focal(w) / self.camera.focal
    self.pre_scale = 2 * scale if scale < 0.5 else 1.0
    if self.pre_scale != 1.0:
      self.warp = self.warp @ np.diag([1 / self.pre_scale, 1 / self.pre_scale, 1.0])

  @property
  def num_frames(self) -> int:
    return self.seg.num_frames

  def _convert(self, img: np.ndarray, i: int) -> np.ndarray:
    import cv2
    if img.shape[:2] != (self.camera.height, self.camera.width):
      raise SegmentError(f"{self.seg.video_path}: frame {i} is {img.shape[1]}x{img.shape[0]} but the camera is "
                         f"{self.camera.width}x{self.camera.height} (camera.json wrong?)")
    h, w = self.frame_hw
    if self.pre_scale != 1.0:
      img = cv2.resize(img, (round(img.shape[1] * self.pre_scale), round(img.shape[0] * self.pre_scale)),
                       interpolation=cv2.INTER_AREA)
    return cv2.warpPerspective(img, self.warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

  def frame(self, i: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB model frame i."""
    if not 0 <= i < self.num_frames:
      raise IndexError(f"{self.seg.path}: frame {i} out of range (0..{self.num_frames - 1})")
    return self._convert(self.seg.video.frame(i), i)

  def frames(self, start: int = 0, stop: int | None = None):
    stop = self.num_frames if stop is None else stop
    for k, img in enumerate(self.seg.video.frames(start, stop)):
      yield self._convert(img, start + k)

  def close(self):
    if "video" in self.seg.__dict__:
      self.seg.video.close()
      del self.seg.__dict__["video"]
