"""Camera mounting calibration from the direction of travel (what openpilot's calibrationd does).

When the car drives straight ahead its velocity points along the car's x axis. Seen from the device
(x fwd, y right, z down) that direction is device_from_calib @ (1, 0, 0) = (cos p cos y, cos p sin y, -sin p)
for rpy_calib = (0, p, y). Averaging the unit velocity direction over samples faster than a threshold
gives the mounting pitch p and yaw y; roll is not observable this way and is set to 0.
Sign meaning (see common/transformations/camera.py): +pitch = camera tilted down, +yaw = camera turned
left of the direction of travel.
"""
from dataclasses import dataclass

import numpy as np

from common.transformations.orientation import euler2rot, quat2rot

MIN_SPEED = 5.0                     # m/s: below this the direction of travel is too noisy
# openpilot's acceptance limits for a valid calibration (selfdrive/locationd/calibrationd.py)
PITCH_LIMITS = (-0.09074112085129739, 0.17)
YAW_LIMITS = (-0.06912048084718224, 0.06912048084718224)
MIN_SAMPLES = 20 * 10               # 10 s of driving at 20 Hz


@dataclass
class CalibrationResult:
  rpy: np.ndarray          # (3,) roll (=0), pitch, yaw [rad] of device_from_calib
  n_samples: int           # samples above the speed threshold
  spread_deg: float        # angular std of the per-sample travel direction about the mean, degrees
  valid: bool              # enough samples and within openpilot's limits

  @property
  def pitch_deg(self) -> float:
    return float(np.degrees(self.rpy[1]))

  @property
  def yaw_deg(self) -> float:
    return float(np.degrees(self.rpy[2]))


def rpy_from_travel_direction(d_device) -> np.ndarray:
  """(3,) travel direction in the device frame -> (roll=0, pitch, yaw)."""
  d = np.asarray(d_device, dtype=np.float64)
  return np.array([0.0, np.arctan2(-d[2], np.hypot(d[0], d[1])), np.arctan2(d[1], d[0])])


def velocities_in_device_frame(velocities_ecef, quats) -> np.ndarray:
  """(N, 3) ECEF velocities and (N, 4) ecef_from_device quaternions -> (N, 3) device-frame velocities."""
  v = np.asarray(velocities_ecef, dtype=np.float64)
  q = np.asarray(quats, dtype=np.float64)
  if v.ndim != 2 or v.shape[1] != 3 or q.shape != (len(v), 4):
    raise ValueError(f"velocities_in_device_frame: expected (N, 3) velocities and (N, 4) quats, got {v.shape}, {q.shape}")
  return np.einsum("nji,nj->ni", quat2rot(q), v)


def estimate_calibration(v_device, min_speed: float = MIN_SPEED) -> CalibrationResult:
  """Calibration from (N, 3) device-frame velocities (e.g. velocities_in_device_frame(...))."""
  v = np.asarray(v_device, dtype=np.float64)
  if v.ndim != 2 or v.shape[1] != 3:
    raise ValueError(f"estimate_calibration(v_device): expected shape (N, 3), got {v.shape}")
  speed = np.linalg.norm(v, axis=1)
  keep = np.isfinite(speed) & (speed > min_speed)
  n = int(keep.sum())
  if n == 0:
    return CalibrationResult(np.zeros(3), 0, float("nan"), False)
  d = v[keep] / speed[keep, None]
  mean = d.mean(axis=0)
  mean /= np.linalg.norm(mean)
  spread = float(np.degrees(np.sqrt(np.mean(np.arccos(np.clip(d @ mean, -1, 1)) ** 2))))
  rpy = rpy_from_travel_direction(mean)
  valid = (n >= MIN_SAMPLES and PITCH_LIMITS[0] <= rpy[1] <= PITCH_LIMITS[1]
           and YAW_LIMITS[0] <= rpy[2] <= YAW_LIMITS[1])
  return CalibrationResult(rpy, n, spread, bool(valid))


def car_from_device(rpy_calib) -> np.ndarray:
  """3x3 rotation taking device-frame vectors to the calibrated car frame."""
  return euler2rot(np.asarray(rpy_calib, dtype=np.float64)).T


def to_car_frame(vectors_device, rpy_calib) -> np.ndarray:
  """(..., 3) device-frame vectors -> calibrated car frame."""
  return np.asarray(vectors_device, dtype=np.float64) @ car_from_device(rpy_calib).T


class Calibrator:
  """Streaming version for a running stack: feed device-frame velocities, read .result.

  Keeps a running sum of unit travel directions (like calibrationd's block averages)."""

  def __init__(self, min_speed: float = MIN_SPEED):
    self.min_speed = min_speed
    self.sum = np.zeros(3)
    self.n = 0

  def feed(self, v_device) -> None:
    v = np.asarray(v_device, dtype=np.float64)
    s = np.linalg.norm(v)
    if np.isfinite(s) and s > self.min_speed:
      self.sum += v / s
      self.n += 1

  @property
  def rpy(self) -> np.ndarray:
    return rpy_from_travel_direction(self.sum) if self.n else np.zeros(3)

  @property
  def valid(self) -> bool:
    rpy = self.rpy
    return (self.n >= MIN_SAMPLES and PITCH_LIMITS[0] <= rpy[1] <= PITCH_LIMITS[1]
            and YAW_LIMITS[0] <= rpy[2] <= YAW_LIMITS[1])
