import numpy as np
import pytest

from selfdrive.controls.vehicle_model import (CAR_PARAMS, KINEMATIC_SPEED, CarParams, VehicleModel, calc_slip_factor,
                                              car_params_for_dongle, get_car_params)

CARS = sorted(CAR_PARAMS)


@pytest.mark.parametrize("name", CARS)
def test_presets_are_plausible(name):
  CP = get_car_params(name)
  assert 1100 < CP.mass < 2500 and 2.4 < CP.wheelbase < 3.0 and 12 < CP.steerRatio < 20
  assert 0.3 * CP.wheelbase < CP.centerToFront < 0.6 * CP.wheelbase
  assert calc_slip_factor(CP) < 0, "every preset car understeers"


def test_preset_lookup():
  assert get_car_params("TOYOTA_RAV4_2017").wheelbase == pytest.approx(2.65)
  assert car_params_for_dongle("b0c9d2329ad1606b").carFingerprint == "TOYOTA_RAV4_2017"
  assert car_params_for_dongle("99c94dc769b5d96e").carFingerprint == "HONDA_CIVIC_2016"
  with pytest.raises(KeyError, match="FORD"):
    get_car_params("FORD_T")
  with pytest.raises(ValueError, match="centerToFront"):
    CarParams("X", 1000, 2.5, 3.0, 2000, 1e5, 1e5, 15, 0.1)
  with pytest.raises(ValueError, match="mass"):
    CarParams("X", -1, 2.5, 1.0, 2000, 1e5, 1e5, 15, 0.1)


@pytest.mark.parametrize("name", CARS)
def test_inverse_is_exact(name):
  VM = VehicleModel(get_car_params(name))
  rng = np.random.default_rng(1)
  for _ in range(300):
    sa, u, roll = rng.uniform(-8, 8), rng.choice([0.0, 0.05, rng.uniform(0, 45)]), rng.uniform(-0.1, 0.1)
    curv = VM.calc_curvature(sa, u, roll)
    assert abs(VM.get_steer_from_curvature(curv, u, roll) - sa) < 1e-9
  # vectorised
  sa = rng.uniform(-1, 1, 100); u = rng.uniform(0, 40, 100)
  np.testing.assert_allclose(VM.get_steer_from_curvature(VM.calc_curvature(sa, u), u), sa, atol=1e-9)


def test_steady_state_matches_curvature_and_kinematics():
  VM = VehicleModel(get_car_params("TOYOTA_RAV4_2017"))
  for u in (2.0, 10.0, 30.0):
    for roll in (0.0, 0.05):
      v_lat, r = VM.steady_state_sol(0.3, u, roll)
      assert r / u == pytest.approx(VM.calc_curvature(0.3, u, roll), rel=1e-9)
  # left steer -> left (positive) yaw rate; understeer: curvature falls with speed
  assert VM.calc_curvature(0.5, 30.0) < VM.calc_curvature(0.5, 5.0) < VM.calc_curvature(0.5, 0.0)
  # kinematic limit: curvature = delta / L
  CP = VM.CP
  assert VM.calc_curvature(0.5, 0.0) == pytest.approx(0.5 / CP.steerRatio / CP.wheelbase)
  v_lat, r = VM.steady_state_sol(0.5, KINEMATIC_SPEED / 2)
  assert r == pytest.approx(KINEMATIC_SPEED / 2 * 0.5 / CP.steerRatio / CP.wheelbase)
  # roll: right side down pulls the car right (negative curvature) at zero steer
  assert VM.calc_curvature(0.0, 20.0, roll=0.05) < 0


def test_state_step_converges_and_matches_small_step_euler():
  VM = VehicleModel(get_car_params("HONDA_CIVIC_2016"))
  u, sa = 20.0, 0.2
  x = np.zeros(2)
  for _ in range(200):
    x = VM.state_step(x, sa, u, 0.0, dt=0.05)
  np.testing.assert_allclose(x, VM.steady_state_sol(sa, u), rtol=1e-6)
  # one 0.05 s exact step equals many tiny Euler steps
  A, B = VM.state_matrices(u)
  x0 = np.array([0.3, -0.05]); xe = x0.copy()
  for _ in range(50000):
    xe = xe + 1e-6 * (A @ xe + B @ np.array([sa, 0.02]))
  np.testing.assert_allclose(VM.state_step(x0, sa, u, 0.02, dt=0.05), xe, atol=1e-5)
  # low speed: kinematic fallback
  np.testing.assert_allclose(VM.state_step(x0, sa, 0.0, dt=0.05), VM.steady_state_sol(sa, 0.0))
  with pytest.raises(ValueError, match="state_step"):
    VM.state_step(np.zeros(3), sa, u)


def test_update_params():
  VM = VehicleModel(get_car_params("SIM_CAR"))
  c0 = VM.calc_curvature(0.5, 20.0)
  VM.update_params(1.0, VM.CP.steerRatio * 2)
  assert VM.calc_curvature(0.5, 20.0) == pytest.approx(c0 / 2)
  with pytest.raises(ValueError, match="steer_ratio"):
    VM.update_params(1.0, 0.0)
