"""Lateral limits and plan-to-curvature helpers shared by controlsd and modeld (openpilot's
selfdrive/controls/lib/drive_helpers.py, in this project's sign conventions).

Sign conventions (common/modelconstants.py): curvature is positive to the LEFT; the plan's orientation and
orientation rate are in the car frame (z down), so a positive plan yaw turns RIGHT: curvature = -yaw_rate / v.

Limits (openpilot's, from the EU lateral-control guidelines): lateral jerk MAX_LATERAL_JERK, lateral
acceleration MAX_LATERAL_ACCEL_NO_ROLL (shifted by the road roll), |curvature| <= MAX_CURVATURE.
"""
from __future__ import annotations

import numpy as np

from common.drive_helpers import curvature_from_heading
from common.modelconstants import GRAVITY

DT_CTRL = 0.01                   # s, controlsd period (100 Hz)
MIN_SPEED = 1.0                  # m/s, speeds below are treated as this one in the limits
MAX_CURVATURE = 0.2              # 1/m, tighter than most cars can turn
MAX_LATERAL_JERK = 5.0           # m/s^3
MAX_LATERAL_ACCEL_NO_ROLL = 3.0  # m/s^2


def clamp(val: float, lo: float, hi: float) -> tuple[float, bool]:
  out = float(np.clip(val, lo, hi))
  return out, out != val


def clip_curvature(v_ego: float, prev_curvature: float, new_curvature: float, roll: float,
                   dt: float = DT_CTRL) -> tuple[float, bool]:
  """The curvature to command this step: new_curvature limited in rate (lateral jerk), in lateral
  acceleration (with roll compensation: `roll` rad, positive = right side down, which lets the car hold
  more curvature to the right) and in magnitude. Returns (curvature, whether the acceleration or
  magnitude limit was hit)."""
  v = max(float(v_ego), MIN_SPEED)
  max_rate = MAX_LATERAL_JERK / v ** 2                    # 1/m per s (openpilot's approximation)
  new = float(np.clip(new_curvature, prev_curvature - max_rate * dt, prev_curvature + max_rate * dt))
  roll_accel = -float(roll) * GRAVITY                      # gravity along +left of a car on a right-down roll
  new, limited_accel = clamp(new, (-MAX_LATERAL_ACCEL_NO_ROLL + roll_accel) / v ** 2,
                             (MAX_LATERAL_ACCEL_NO_ROLL + roll_accel) / v ** 2)
  new, limited_curv = clamp(new, -MAX_CURVATURE, MAX_CURVATURE)
  return new, limited_accel or limited_curv


def get_curvature_from_plan(yaws, yaw_rates, t_idxs, v_ego: float, action_t: float) -> float:
  """Desired curvature (+ left) at the actuator delay action_t from a plan's yaw and yaw rate on t_idxs."""
  psi_target = float(np.interp(action_t, t_idxs, yaws))
  return float(curvature_from_heading(psi_target, float(yaw_rates[0]), v_ego, action_t))
