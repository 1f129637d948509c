"""From a plan to the action that executes it: the desired curvature and acceleration a controller commands so
that the car follows a planned trajectory (after openpilot's selfdrive/controls/lib/drive_helpers.py idea of
reading the plan at the actuator delay ahead). Device side (numpy only): controls and modeld use it to turn a
plan into a command; training uses the SAME functions to derive the action target from an expert plan.

Plans are (..., IDX_N, PLAN_WIDTH) on common.modelconstants.T_IDXS in the car frame (x forward, y right,
z down); curvature is positive LEFT (modelconstants conventions).

Curvature: the heading the plan reaches `action_t` seconds ahead, psi(action_t) (yaw about z-down, + right),
is reached by a curvature that changes linearly from the current one, k0 = -yaw_rate(0) / v, to k1 at
action_t:  psi = -v * action_t * (k0 + k1) / 2   =>   k1 = -2 psi / (v action_t) - k0.
Acceleration: the same linear ramp on the plan's forward speed:  a1 = 2 (v(action_t) - v0) / action_t - a0.
"""
from __future__ import annotations

import numpy as np

from common.modelconstants import PLAN_SLICES, T_IDXS

MIN_SPEED = 1.0            # m/s: below this curvature from headings is ill-conditioned
LAT_ACTION_T = 0.3         # s: a steering actuator delay of ~0.1 s plus 0.2 s of lag to look past
LONG_ACTION_T = 0.5        # s


def _at(plan: np.ndarray, col: int, t: float) -> np.ndarray:
  """Linear interpolation of plan[..., :, col] on T_IDXS at time t -> (...)."""
  x = np.asarray(plan, dtype=np.float64)[..., col]
  k = int(np.clip(np.searchsorted(T_IDXS, t, side="right") - 1, 0, len(T_IDXS) - 2))
  w = (t - T_IDXS[k]) / (T_IDXS[k + 1] - T_IDXS[k])
  return x[..., k] * (1 - w) + x[..., k + 1] * w


def curvature_from_heading(psi_target, yaw_rate0, v_ego, action_t: float) -> np.ndarray:
  """Curvature (1/m, + left) reached at action_t when the curvature ramps linearly from the current one so that the
  heading (car-frame yaw, + right) turns by psi_target; yaw_rate0 is the current yaw rate (+ right)."""
  v = np.maximum(np.asarray(v_ego, dtype=np.float64), MIN_SPEED)
  k0 = -np.asarray(yaw_rate0, dtype=np.float64) / v
  return -2.0 * np.asarray(psi_target, dtype=np.float64) / (v * action_t) - k0


def curvature_from_plan(plan: np.ndarray, v_ego, action_t: float = LAT_ACTION_T) -> np.ndarray:
  """Desired curvature (1/m, + left) that follows `plan` (..., IDX_N, PLAN_WIDTH) at speed v_ego (...)."""
  yaw_col = PLAN_SLICES["orientation"].start + 2
  rate_col = PLAN_SLICES["orientation_rate"].start + 2
  return curvature_from_heading(_at(plan, yaw_col, action_t), np.asarray(plan, dtype=np.float64)[..., 0, rate_col],
                                v_ego, action_t)


def accel_from_plan(plan: np.ndarray, action_t: float = LONG_ACTION_T) -> np.ndarray:
  """Desired forward acceleration (m/s^2) that follows the plan's speed profile."""
  vx = PLAN_SLICES["velocity"].start
  ax = PLAN_SLICES["acceleration"].start
  p = np.asarray(plan, dtype=np.float64)
  v0, a0 = p[..., 0, vx], p[..., 0, ax]
  return 2.0 * (_at(p, vx, action_t) - v0) / action_t - a0


def action_from_plan(plan: np.ndarray, v_ego) -> np.ndarray:
  """(..., 2) = (desired curvature, desired acceleration): what controls command to follow `plan`."""
  return np.stack([curvature_from_plan(plan, v_ego), accel_from_plan(plan)], axis=-1)
