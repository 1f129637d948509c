"""Dynamic bicycle model (lateral velocity + yaw rate), after openpilot's selfdrive/controls/lib/vehicle_model.py.

Conventions for THIS module (openpilot's car convention): steering angle, curvature, lateral velocity
and yaw rate are positive to the LEFT (counter-clockwise seen from above). `roll` is the road roll in
the car frame (x fwd, y right, z down): positive = right side down, so gravity pulls the car to the
right (negative lateral acceleration here). Steering angles are at the steering wheel, in radians;
the road-wheel angle is sa / steerRatio.

Model (linear tyres, small angles), state x = (v_lat [m/s], yaw_rate [rad/s]), input (delta, roll):
  m (v_lat' + u r)  = F_f + F_r - m g roll         F_f = cF * alpha_f,  alpha_f = delta - (v_lat + aF r)/u
  J r'              = aF F_f - aR F_r              F_r = cR * alpha_r,  alpha_r = chi delta - (v_lat - aR r)/u
Steady state: curvature = r / u = (1 - chi) / (1 - sf u^2) / L * delta + g roll / (1/sf - u^2), with the
slip factor sf = m (cF aF - cR aR) / (L^2 cF cR) (negative for an understeering car). Below
KINEMATIC_SPEED the model falls back to kinematic geometry (sf = 0, no tyre slip).

Cars come from opendbc: get_car_params("TOYOTA_RAV4") is what openpilot's card uses for that platform (mass,
wheelbase, steer ratio, centre of gravity, tyre stiffness via opendbc's scaling rules).  opendbc also ships a
VehicleModel with the same equations; the stack keeps this one only, because it also takes numpy arrays
(the simulator and the on-policy rollouts evaluate many speeds at once), integrates the dynamics exactly
(state_step, used by tools/sim) and has the kinematic fallback at standstill.  On opendbc's own test grid
(tests/selfdrive/test_vehicle_model.py) its outputs equal opendbc's to 1e-15: same formulas, same order of
floating-point operations.
"""
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

GRAVITY = 9.81           # m/s^2 (opendbc's ACCELERATION_DUE_TO_GRAVITY)
KINEMATIC_SPEED = 0.1    # m/s: below this the dynamic model is singular -> kinematic bicycle
STD_CARGO_KG = 136.0     # openpilot adds a driver + cargo to curb weights (opendbc.car.STD_CARGO_KG)
# The stack's default car (the simulator's ego car, tools that need one): openpilot's reference car, the one
# its tyre-stiffness and inertia scaling rules were derived for.
DEFAULT_CAR = "HONDA_CIVIC"
# comma2k19's two dongles drove these cars (2017 RAV4, 2016 Civic); opendbc's platform names.
DONGLE_CARS = {"b0c9d2329ad1606b": "TOYOTA_RAV4", "99c94dc769b5d96e": "HONDA_CIVIC"}


@dataclass(frozen=True)
class CarParams:
  """The vehicle-model subset of opendbc's CarParams (same field names), as plain floats."""
  carFingerprint: str
  mass: float                 # kg, including STD_CARGO_KG
  wheelbase: float            # m
  centerToFront: float        # m, CG to front axle
  rotationalInertia: float    # kg m^2 about the vertical axis
  tireStiffnessFront: float   # N/rad, cornering stiffness of the front axle
  tireStiffnessRear: float    # N/rad
  steerRatio: float           # steering-wheel angle / road-wheel angle
  steerActuatorDelay: float   # s
  steerRatioRear: float = 0.0  # rear-wheel steering ratio (chi); 0 = no rear steer
  dongleId: str = ""          # comma2k19 dongle that drove this car ("" otherwise)

  def __post_init__(self):
    for f in ("mass", "wheelbase", "rotationalInertia", "tireStiffnessFront", "tireStiffnessRear", "steerRatio"):
      if not getattr(self, f) > 0:
        raise ValueError(f"CarParams({self.carFingerprint}).{f} must be > 0, got {getattr(self, f)}")
    if not 0 < self.centerToFront < self.wheelbase:
      raise ValueError(f"CarParams({self.carFingerprint}).centerToFront must be in (0, wheelbase), got {self.centerToFront}")

  @property
  def centerToRear(self) -> float:
    return self.wheelbase - self.centerToFront


def scale_rot_inertia(mass: float, wheelbase: float) -> float:
  """Yaw inertia scaled from openpilot's reference car as mass * wheelbase^2 (opendbc's rule)."""
  from opendbc.car import scale_rot_inertia as _scale
  return float(_scale(mass, wheelbase))


def scale_tire_stiffness(mass: float, wheelbase: float, center_to_front: float, factor: float) -> tuple[float, float]:
  """Front/rear cornering stiffness scaled from openpilot's reference car by axle load (opendbc's rule)."""
  from opendbc.car import scale_tire_stiffness as _scale
  f, r = _scale(mass, wheelbase, center_to_front, factor)
  return float(f), float(r)


def car_names() -> list[str]:
  """Every car platform opendbc knows (the values --car accepts)."""
  from opendbc.car.values import PLATFORMS
  return sorted(n for n in PLATFORMS if n != "MOCK")   # MOCK: opendbc's stand-in for an unrecognised car


def from_opendbc(CP, dongle: str = "") -> CarParams:
  """CarParams from an opendbc CarParams struct (float32 fields, as openpilot's VehicleModel reads them)."""
  return CarParams(carFingerprint=str(CP.carFingerprint), mass=float(CP.mass), wheelbase=float(CP.wheelbase),
                   centerToFront=float(CP.centerToFront), rotationalInertia=float(CP.rotationalInertia),
                   tireStiffnessFront=float(CP.tireStiffnessFront), tireStiffnessRear=float(CP.tireStiffnessRear),
                   steerRatio=float(CP.steerRatio), steerActuatorDelay=float(CP.steerActuatorDelay),
                   steerRatioRear=float(CP.steerRatioRear), dongleId=dongle)


_CACHE: dict[str, CarParams] = {}


def get_car_params(name: str = DEFAULT_CAR) -> CarParams:
  """The parameters openpilot uses for an opendbc platform (e.g. "TOYOTA_RAV4", "HONDA_CIVIC"): the brand
  interface's get_non_essential_params (specs + brand tuning + STD_CARGO_KG + the scaling rules)."""
  cp = _CACHE.get(name)
  if cp is not None:
    return cp
  from opendbc.car.car_helpers import interfaces
  if name not in interfaces or name == "MOCK":
    close = [n for n in car_names() if name.split("_")[0].upper() in n][:8]
    raise KeyError(f"get_car_params: unknown car {name!r}; use an opendbc platform name"
                   f"{' such as ' + ', '.join(close) if close else ''} (list: selfdrive.controls.vehicle_model.car_names())")
  dongle = next((d for d, c in DONGLE_CARS.items() if c == name), "")
  cp = from_opendbc(interfaces[name].get_non_essential_params(name), dongle)
  _CACHE[name] = cp
  return cp


class _OpendbcCars(Mapping):
  """Every opendbc platform by name, built on first access (keeps `CAR_PARAMS[name]` / `name in CAR_PARAMS`)."""

  def __getitem__(self, name: str) -> CarParams:
    try:
      return get_car_params(name)
    except KeyError as e:
      raise KeyError(str(e)) from None

  def __iter__(self):
    return iter(car_names())

  def __len__(self) -> int:
    return len(car_names())

  def __contains__(self, name) -> bool:
    return name in set(car_names())


CAR_PARAMS: Mapping[str, CarParams] = _OpendbcCars()


def car_arg(name: str) -> str:
  """argparse type for --car: any opendbc platform name; a one-line error otherwise."""
  import argparse
  if name in CAR_PARAMS:
    return name
  close = [n for n in car_names() if name.split("_")[0].upper() in n][:6]
  raise argparse.ArgumentTypeError(f"unknown car {name!r}: give an opendbc platform name"
                                   f"{' such as ' + ', '.join(close) if close else ' (e.g. TOYOTA_RAV4, HONDA_CIVIC)'}")


def car_params_for_dongle(dongle_id: str) -> CarParams:
  """The car a comma2k19 dongle drove (the part of the route name before '|')."""
  if dongle_id not in DONGLE_CARS:
    raise KeyError(f"car_params_for_dongle: no car known for dongle {dongle_id!r} (known: {sorted(DONGLE_CARS)})")
  return get_car_params(DONGLE_CARS[dongle_id])


def calc_slip_factor(CP) -> float:
  """sf = m (cF aF - cR aR) / (L^2 cF cR); negative = understeer. Units s^2/m^2.
  Takes a CarParams, or a VehicleModel (then with its online-updated stiffness)."""
  if isinstance(CP, VehicleModel):
    return CP.sf
  aF, aR, cF, cR = CP.centerToFront, CP.wheelbase - CP.centerToFront, CP.tireStiffnessFront, CP.tireStiffnessRear
  return CP.mass * (cF * aF - cR * aR) / (CP.wheelbase ** 2 * cF * cR)


class VehicleModel:
  def __init__(self, CP: CarParams):
    self.CP = CP
    self.m, self.j, self.l = CP.mass, CP.rotationalInertia, CP.wheelbase
    self.aF, self.aR = CP.centerToFront, CP.wheelbase - CP.centerToFront
    self.chi = CP.steerRatioRear
    self.cF_orig, self.cR_orig = CP.tireStiffnessFront, CP.tireStiffnessRear
    self.update_params(1.0, CP.steerRatio)

  def update_params(self, stiffness_factor: float, steer_ratio: float) -> None:
    """Online-estimated corrections (what openpilot's paramsd learns)."""
    if not stiffness_factor > 0 or not steer_ratio > 0:
      raise ValueError(f"VehicleModel.update_params: stiffness_factor and steer_ratio must be > 0, "
                       f"got {stiffness_factor}, {steer_ratio}")
    self.cF, self.cR, self.sR = stiffness_factor * self.cF_orig, stiffness_factor * self.cR_orig, steer_ratio
    self.sf = self.m * (self.cF * self.aF - self.cR * self.aR) / (self.l ** 2 * self.cF * self.cR)

  # ---- steady state ----
  def calc_slip_factor(self) -> float:
    return self.sf

  def curvature_factor(self, u):
    """d curvature / d road-wheel angle at speed u [1/m/rad]; kinematic 1/L below KINEMATIC_SPEED."""
    u = np.asarray(u, dtype=np.float64)
    sf = np.where(np.abs(u) < KINEMATIC_SPEED, 0.0, self.sf)
    denom = 1.0 - sf * u ** 2
    if np.any(np.abs(denom) < 1e-9):
      raise ValueError(f"VehicleModel.curvature_factor: speed {u} is at the critical speed of an oversteering car")
    out = (1.0 - self.chi) / denom / self.l
    return float(out) if out.ndim == 0 else out

  def roll_compensation(self, roll, u):
    """Curvature that a road roll alone produces at speed u (g roll / (1/sf - u^2))."""
    roll, u = np.asarray(roll, dtype=np.float64), np.asarray(u, dtype=np.float64)
    if abs(self.sf) < 1e-6:   # opendbc's threshold
      out = np.zeros(np.broadcast(roll, u).shape)
    else:
      out = GRAVITY * roll / (1.0 / self.sf - u ** 2)
    return float(out) if out.ndim == 0 else out

  def calc_curvature(self, sa_rad, u, roll=0.0):
    """Steering-wheel angle [rad, + left] at speed u [m/s] -> path curvature [1/m, + left]."""
    return self.curvature_factor(u) * np.asarray(sa_rad, dtype=np.float64) / self.sR + self.roll_compensation(roll, u)

  def get_steer_from_curvature(self, curv, u, roll=0.0):
    """Inverse of calc_curvature: desired curvature [1/m] at speed u -> steering-wheel angle [rad]."""
    return (np.asarray(curv, dtype=np.float64) - self.roll_compensation(roll, u)) * self.sR / self.curvature_factor(u)

  def yaw_rate(self, sa_rad, u, roll=0.0):
    return self.calc_curvature(sa_rad, u, roll) * u

  def get_steer_from_yaw_rate(self, yaw_rate, u, roll=0.0):
    """Inverse of yaw_rate: yaw rate [rad/s] at speed u [m/s] -> steering-wheel angle [rad]."""
    return self.get_steer_from_curvature(np.asarray(yaw_rate, dtype=np.float64) / u, u, roll)

  def state_matrices(self, u: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time x' = A x + B [sa_rad, roll] of the dynamic model at speed u (> KINEMATIC_SPEED)."""
    m, j, aF, aR, cF, cR, chi, sR = self.m, self.j, self.aF, self.aR, self.cF, self.cR, self.chi, self.sR
    A = np.array([
      [-(cF + cR) / (m * u), -(cF * aF - cR * aR) / (m * u) - u],
      [-(cF * aF - cR * aR) / (j * u), -(cF * aF ** 2 + cR * aR ** 2) / (j * u)],
    ])
    B = np.array([
      [(cF + chi * cR) / m / sR, -GRAVITY],
      [(cF * aF - chi * cR * aR) / j / sR, 0.0],
    ])
    return A, B

  def steady_state_sol(self, sa_rad: float, u: float, roll: float = 0.0) -> np.ndarray:
    """Steady-state (v_lat, yaw_rate) for a constant steering angle and speed."""
    if abs(u) > KINEMATIC_SPEED:
      A, B = self.state_matrices(u)
      return -np.linalg.solve(A, B) @ np.array([sa_rad, roll])   # opendbc's order of operations
    # kinematic bicycle: no slip, rear axle moves along its heading, CG sideslips by aR * r
    return np.array([self.aR / self.sR / self.l * u, 1.0 / self.sR / self.l * u]) * sa_rad * (1.0 - self.chi)

  def state_step(self, x, sa_rad: float, u: float, roll: float = 0.0, dt: float = 0.05) -> np.ndarray:
    """Advance x = (v_lat, yaw_rate) by dt under constant inputs (exact discretisation of the linear
    model via the 2x2 matrix exponential). Below KINEMATIC_SPEED: the kinematic steady state."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (2,):
      raise ValueError(f"VehicleModel.state_step(x): expected shape (2,) (v_lat, yaw_rate), got {x.shape}")
    if dt < 0:
      raise ValueError(f"VehicleModel.state_step: dt must be >= 0, got {dt}")
    if abs(u) <= KINEMATIC_SPEED:
      return self.steady_state_sol(sa_rad, u, roll)
    A, B = self.state_matrices(u)
    x_ss = -np.linalg.solve(A, B) @ np.array([sa_rad, roll])
    return x_ss + _expm2(A * dt) @ (x - x_ss)

  def with_params(self, **changes) -> "VehicleModel":
    return VehicleModel(replace(self.CP, **changes))


def _expm2(M: np.ndarray) -> np.ndarray:
  """Matrix exponential of a real 2x2 matrix in closed form (Cayley-Hamilton)."""
  tr2 = np.trace(M) / 2.0
  N = M - tr2 * np.eye(2)
  d2 = -np.linalg.det(N)               # N^2 = d2 * I
  if d2 > 1e-14:
    d = np.sqrt(d2); c, s = np.cosh(d), np.sinh(d) / d
  elif d2 < -1e-14:
    d = np.sqrt(-d2); c, s = np.cos(d), np.sin(d) / d
  else:
    c, s = 1.0 + d2 / 2.0, 1.0 + d2 / 6.0
  return np.exp(tr2) * (c * np.eye(2) + s * N)
