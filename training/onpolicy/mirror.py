"""Left-right mirrored states for the on-policy learner.

A state seen in a mirror is another valid state: the camera image flipped about the car's centre line, with every
lateral quantity of its labels negated and a lane change to the left turned into one to the right. Training on both
halves makes the learner's data symmetric, so a temporal model cannot learn a lateral bias that the frames do not
support: a mean curvature tied to the speed or to the route (docs/experiments.md, 2026-12-05, the speed shortcut),
or lane changes to one side only because its episodes happened to draw more of them.

The model frame's principal point is at cx = W / 2 (common/transformations/camera.py) with pixel i centred at u = i
(OpenCV's convention, which the renderer and cv2.warpPerspective follow), so the mirror of column i is column W - i:
np.flip followed by a shift of one column. Column 0 has no source (W - 0 is outside) and repeats its neighbour.
"""
from __future__ import annotations

import numpy as np

from common.modelconstants import DESIRES, PLAN_SLICES, PLAN_WIDTH

# per plan point (position, velocity, acceleration, orientation = roll/pitch/yaw, orientation rate): the car frame's
# y axis, and the rotations about x (roll) and z (yaw), change sign in a mirror through the x-z plane
PLAN_SIGN = np.ones(PLAN_WIDTH, np.float32)
for _name in ("position", "velocity", "acceleration"):
  PLAN_SIGN[PLAN_SLICES[_name].start + 1] = -1.0          # y
for _name in ("orientation", "orientation_rate"):
  PLAN_SIGN[PLAN_SLICES[_name].start + 0] = -1.0          # roll
  PLAN_SIGN[PLAN_SLICES[_name].start + 2] = -1.0          # yaw
ACTION_SIGN = np.array([-1.0, 1.0], np.float32)           # desiredCurvature (+ = left), desiredAcceleration


def _mirrored_desire(name: str) -> str:
  if "Left" in name:
    return name.replace("Left", "Right")
  if "Right" in name:
    return name.replace("Right", "Left")
  return name


# desire index -> the mirrored desire's index
DESIRE_MAP = np.array([DESIRES.index(_mirrored_desire(d)) for d in DESIRES], np.int64)


def mirror_image(img: np.ndarray, axis: int = -1) -> np.ndarray:
  """The model-frame image(s) seen in a mirror through the car's centre line: column i <- column W - i along `axis`
  (the image width), column 0 repeating column 1. Works on (H, W, C), (N, C, H, W) or any layout given its axis."""
  img = np.asarray(img)
  flipped = np.flip(img, axis=axis)
  out = np.empty_like(img)
  dst = [slice(None)] * img.ndim
  src = [slice(None)] * img.ndim
  dst[axis], src[axis] = slice(1, None), slice(0, -1)
  out[tuple(dst)] = flipped[tuple(src)]
  dst[axis], src[axis] = slice(0, 1), slice(1, 2)
  out[tuple(dst)] = out[tuple(src)]
  return out


def mirror_plan(plan: np.ndarray) -> np.ndarray:
  """(..., PLAN_WIDTH) plan points -> the mirrored ones."""
  return np.asarray(plan) * PLAN_SIGN


def mirror_action(action: np.ndarray) -> np.ndarray:
  """(..., 2) (desiredCurvature, desiredAcceleration) -> the mirrored action."""
  return np.asarray(action) * ACTION_SIGN


def mirror_desire(desire: np.ndarray) -> np.ndarray:
  """Desire indices -> the mirrored indices (laneChangeLeft <-> laneChangeRight)."""
  return DESIRE_MAP[np.asarray(desire)]
