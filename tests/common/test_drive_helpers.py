import numpy as np

from common.drive_helpers import accel_from_plan, action_from_plan, curvature_from_plan
from common.modelconstants import IDX_N, PLAN_SLICES, PLAN_WIDTH, T_IDXS


def arc_plan(v: float, curvature: float, accel: float = 0.0) -> np.ndarray:
  """Plan of a car driving an arc of constant curvature (+ left) from now, speed v + accel t."""
  plan = np.zeros((IDX_N, PLAN_WIDTH))
  speed = v + accel * T_IDXS
  s = v * T_IDXS + 0.5 * accel * T_IDXS ** 2
  yaw = -curvature * s                                       # yaw about z-down: a left turn is negative
  plan[:, PLAN_SLICES["velocity"].start] = speed
  plan[:, PLAN_SLICES["acceleration"].start] = accel
  plan[:, PLAN_SLICES["orientation"].start + 2] = yaw
  plan[:, PLAN_SLICES["orientation_rate"].start + 2] = -curvature * speed
  return plan


def test_constant_arc_gives_its_curvature_with_the_left_positive_sign():
  for k in (-0.01, -0.002, 0.0, 0.003, 0.02):
    assert abs(curvature_from_plan(arc_plan(20.0, k), 20.0) - k) < 1e-9


def test_curvature_ramps_towards_the_plan_heading():
  # the car turns right now (k0 = -0.002) but the plan's heading at action_t says left: command more than the mean
  plan = arc_plan(20.0, 0.004)
  plan[0, PLAN_SLICES["orientation_rate"].start + 2] = 0.002 * 20.0
  k = curvature_from_plan(plan, 20.0)
  assert k > 0.004 + 0.002 - 1e-6


def test_accel_and_batching():
  plans = np.stack([arc_plan(15.0, 0.0, a) for a in (-1.0, 0.0, 0.5)])
  assert np.allclose(accel_from_plan(plans), [-1.0, 0.0, 0.5], atol=1e-6)
  act = action_from_plan(plans, np.array([15.0, 15.0, 15.0]))
  assert act.shape == (3, 2) and np.allclose(act[:, 0], 0.0)


def test_low_speed_is_finite():
  assert np.isfinite(curvature_from_plan(arc_plan(0.0, 0.01), 0.0))
