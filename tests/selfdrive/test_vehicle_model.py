import math

import numpy as np
import pytest

from selfdrive.controls.vehicle_model import (
  CAR_PARAMS,
  DEFAULT_CAR,
  KINEMATIC_SPEED,
  STD_CARGO_KG,
  CarParams,
  VehicleModel,
  calc_slip_factor,
  car_names,
  car_params_for_dongle,
  get_car_params,
  scale_rot_inertia,
  scale_tire_stiffness,
)

# one platform per brand family the stack is tested on; every platform is checked in test_every_opendbc_platform
CARS = ["HONDA_CIVIC", "TOYOTA_RAV4", "TOYOTA_RAV4_TSS2", "HYUNDAI_SONATA", "VOLKSWAGEN_GOLF_MK7", "FORD_BRONCO_SPORT_MK1"]
DEG20 = math.radians(20)


def test_every_opendbc_platform():
  names = car_names()
  assert len(names) > 200 and set(CARS) <= set(names) and DEFAULT_CAR in names
  for name in names:
    CP = get_car_params(name)          # CarParams.__post_init__ checks positivity and the CG position
    assert CP.carFingerprint == name
    if not name.startswith("COMMA_"):    # the comma body is a 9 kg robot, not a car
      assert 700 < CP.mass < 5000 and 1.8 < CP.wheelbase < 4.5 and CP.steerRatio > 5
  assert "TOYOTA_RAV4" in CAR_PARAMS and CAR_PARAMS["TOYOTA_RAV4"] is get_car_params("TOYOTA_RAV4")


def test_params_are_opendbcs():
  from opendbc.car import STD_CARGO_KG as ODBC_CARGO
  from opendbc.car.car_helpers import interfaces
  from opendbc.car.values import PLATFORMS
  for name in CARS:
    ref = interfaces[name].get_non_essential_params(name)
    CP = get_car_params(name)
    for f in ("mass", "wheelbase", "centerToFront", "rotationalInertia", "tireStiffnessFront", "tireStiffnessRear",
              "steerRatio", "steerActuatorDelay", "steerRatioRear"):
      assert getattr(CP, f) == getattr(ref, f), (name, f)
  # specs (curb weight + cargo, wheelbase), the brand's CG (Toyota: 44 % of the wheelbase), opendbc's scaling
  specs = PLATFORMS["TOYOTA_RAV4"].config.specs
  CP, ref = get_car_params("TOYOTA_RAV4"), interfaces["TOYOTA_RAV4"].get_non_essential_params("TOYOTA_RAV4")
  assert CP.mass == pytest.approx(specs.mass + ODBC_CARGO, rel=1e-6) and STD_CARGO_KG == ODBC_CARGO
  assert CP.wheelbase == pytest.approx(specs.wheelbase, rel=1e-6)
  assert CP.centerToFront == pytest.approx(0.44 * CP.wheelbase, rel=1e-6)
  front, rear = scale_tire_stiffness(CP.mass, CP.wheelbase, CP.centerToFront, ref.tireStiffnessFactor)
  assert CP.tireStiffnessFront == pytest.approx(front, rel=1e-6) and CP.tireStiffnessRear == pytest.approx(rear, rel=1e-6)
  assert CP.rotationalInertia == pytest.approx(scale_rot_inertia(CP.mass, CP.wheelbase), rel=1e-6)


def test_car_lookup():
  assert get_car_params("TOYOTA_RAV4").wheelbase == pytest.approx(2.65)
  assert car_params_for_dongle("b0c9d2329ad1606b").carFingerprint == "TOYOTA_RAV4"
  assert car_params_for_dongle("99c94dc769b5d96e").carFingerprint == "HONDA_CIVIC"
  assert get_car_params().carFingerprint == DEFAULT_CAR
  with pytest.raises(KeyError, match="FORD"):
    get_car_params("FORD_T")
  with pytest.raises(KeyError, match="dongle"):
    car_params_for_dongle("0000000000000000")
  with pytest.raises(ValueError, match="centerToFront"):
    CarParams("X", 1000, 2.5, 3.0, 2000, 1e5, 1e5, 15, 0.1)
  with pytest.raises(ValueError, match="mass"):
    CarParams("X", -1, 2.5, 1.0, 2000, 1e5, 1e5, 15, 0.1)


@pytest.mark.parametrize("name", ["HONDA_CIVIC", "TOYOTA_RAV4"])
def test_matches_opendbc_vehicle_model_on_its_test_vectors(name):
  """opendbc's (= openpilot's) test grid: u in 1..30 m/s, roll and steer in +-20 deg; every output within 1e-15."""
  from opendbc.car.car_helpers import interfaces
  from opendbc.car.vehicle_model import VehicleModel as OdbcVM
  from opendbc.car.vehicle_model import calc_slip_factor as odbc_sf
  from opendbc.car.vehicle_model import create_dyn_state_matrices, dyn_ss_sol
  ref = OdbcVM(interfaces[name].get_non_essential_params(name))
  VM = VehicleModel(get_car_params(name))
  assert abs(calc_slip_factor(VM) - odbc_sf(ref)) <= 1e-15
  worst = 0.0
  for u in np.linspace(1, 30, num=10):
    A, B = VM.state_matrices(u)
    A2, B2 = create_dyn_state_matrices(u, ref)
    worst = max(worst, np.abs(A - A2).max() / np.abs(A2).max(), np.abs(B - B2).max() / np.abs(B2).max())
    assert abs(VM.curvature_factor(u) - ref.curvature_factor(u)) <= 1e-15
    for roll in np.linspace(-DEG20, DEG20, num=11):
      assert abs(VM.roll_compensation(roll, u) - ref.roll_compensation(roll, u)) <= 1e-15
      for sa in np.linspace(-DEG20, DEG20, num=11):
        yr = VM.yaw_rate(sa, u, roll)
        assert abs(yr - ref.yaw_rate(sa, u, roll)) <= 1e-15
        assert abs(VM.calc_curvature(sa, u, roll) - ref.calc_curvature(sa, u, roll)) <= 1e-15
        assert abs(VM.get_steer_from_yaw_rate(yr, u, roll) - ref.get_steer_from_yaw_rate(yr, u, roll)) <= 1e-15
        np.testing.assert_allclose(VM.steady_state_sol(sa, u, roll), dyn_ss_sol(sa, u, roll, ref)[:, 0], rtol=0, atol=1e-15)
        # openpilot's own round-trip check
        assert abs(VM.get_steer_from_yaw_rate(yr, u, roll) - sa) < 1e-10
  assert worst <= 1e-15
  # kinematic branch (below KINEMATIC_SPEED): opendbc's kin_ss_sol
  from opendbc.car.vehicle_model import kin_ss_sol
  np.testing.assert_allclose(VM.steady_state_sol(0.3, 0.05), kin_ss_sol(0.3, 0.05, ref)[:, 0], rtol=0, atol=1e-15)


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
  VM = VehicleModel(get_car_params("TOYOTA_RAV4"))
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
  VM = VehicleModel(get_car_params("HONDA_CIVIC"))
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
  VM = VehicleModel(get_car_params())
  c0 = VM.calc_curvature(0.5, 20.0)
  VM.update_params(1.0, VM.CP.steerRatio * 2)
  assert VM.calc_curvature(0.5, 20.0) == pytest.approx(c0 / 2)
  with pytest.raises(ValueError, match="steer_ratio"):
    VM.update_params(1.0, 0.0)
