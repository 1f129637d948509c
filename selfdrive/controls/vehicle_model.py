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
"""
from dataclasses import dataclass, replace

import numpy as np

GRAVITY = 9.81           # m/s^2
KINEMATIC_SPEED = 0.1    # m/s: below this the dynamic model is singular -> kinematic bicycle
LB_TO_KG = 0.453592
STD_CARGO_KG = 136.0     # openpilot adds a driver + cargo to curb weights

# openpilot's reference car for scaling inertia and tyre stiffness (2016 Honda Civic, published
# values in openpilot selfdrive/car/interfaces.py): mass, wheelbase, CG, yaw inertia, cornering stiffness.
_REF_MASS = 2923.0 * LB_TO_KG + STD_CARGO_KG
_REF_WHEELBASE = 2.70
_REF_CENTER_TO_FRONT = _REF_WHEELBASE * 0.4
_REF_ROT_INERTIA = 2500.0            # kg m^2
_REF_TIRE_STIFFNESS_FRONT = 192150.0  # N/rad
_REF_TIRE_STIFFNESS_REAR = 202500.0   # N/rad


@dataclass(frozen=True)
class CarParams:
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
  dongleId: str = ""          # comma2k19 dongle that drove this car ("" for the simulator)

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
  """Yaw inertia scaled from the reference car as mass * wheelbase^2 (openpilot's rule)."""
  return _REF_ROT_INERTIA * mass * wheelbase ** 2 / (_REF_MASS * _REF_WHEELBASE ** 2)


def scale_tire_stiffness(mass: float, wheelbase: float, center_to_front: float, factor: float) -> tuple[float, float]:
  """Front/rear cornering stiffness scaled from the reference car by axle load (openpilot's rule)."""
  ctr, ref_ctr = wheelbase - center_to_front, _REF_WHEELBASE - _REF_CENTER_TO_FRONT
  front = _REF_TIRE_STIFFNESS_FRONT * factor * mass / _REF_MASS * (ctr / wheelbase) / (ref_ctr / _REF_WHEELBASE)
  rear = _REF_TIRE_STIFFNESS_REAR * factor * mass / _REF_MASS * (center_to_front / wheelbase) / (_REF_CENTER_TO_FRONT / _REF_WHEELBASE)
  return front, rear


def _make(name: str, mass: float, wheelbase: float, center_to_front_ratio: float, steer_ratio: float,
          tire_stiffness_factor: float, steer_actuator_delay: float, dongle: str = "") -> CarParams:
  ctf = wheelbase * center_to_front_ratio
  cf, cr = scale_tire_stiffness(mass, wheelbase, ctf, tire_stiffness_factor)
  return CarParams(carFingerprint=name, mass=mass, wheelbase=wheelbase, centerToFront=ctf,
                   rotationalInertia=scale_rot_inertia(mass, wheelbase), tireStiffnessFront=cf, tireStiffnessRear=cr,
                   steerRatio=steer_ratio, steerActuatorDelay=steer_actuator_delay, dongleId=dongle)


CAR_PARAMS = {
  # 2017 Toyota RAV4 (comma2k19 dongle b0c9d2329ad1606b). Curb weight 3650 lb and wheelbase 2.65 m
  # (Toyota spec sheet: 104.7 in); steer ratio 16.88, tyre-stiffness factor 0.5533, CG at 44 % of the
  # wheelbase and 0.12 s actuator delay are openpilot's published values for CAR.RAV4.
  "TOYOTA_RAV4_2017": _make("TOYOTA_RAV4_2017", 3650.0 * LB_TO_KG + STD_CARGO_KG, 2.65, 0.44, 16.88, 0.5533, 0.12,
                            dongle="b0c9d2329ad1606b"),
  # 2016 Honda Civic (comma2k19 dongle 99c94dc769b5d96e). Wheelbase 2.70 m (Honda spec: 106.3 in);
  # mass 2923 lb + cargo, steer ratio 15.38, CG at 40 %, tyre factor 1.0 and 0.1 s delay are
  # openpilot's published values for CAR.CIVIC (the reference car of the scaling rules above).
  "HONDA_CIVIC_2016": _make("HONDA_CIVIC_2016", 2923.0 * LB_TO_KG + STD_CARGO_KG, 2.70, 0.4, 15.38, 1.0, 0.1,
                            dongle="99c94dc769b5d96e"),
  # The simulator's car: a generic mid-size sedan with round figures between the two (our choice).
  "SIM_CAR": _make("SIM_CAR", 1500.0, 2.70, 0.42, 15.0, 1.0, 0.1),
}


def get_car_params(name: str) -> CarParams:
  try:
    return CAR_PARAMS[name]
  except KeyError:
    raise KeyError(f"get_car_params: unknown car {name!r}; known: {sorted(CAR_PARAMS)}") from None


def car_params_for_dongle(dongle_id: str) -> CarParams:
  """The preset for a comma2k19 dongle id (the part of the route name before '|')."""
  for cp in CAR_PARAMS.values():
    if cp.dongleId and cp.dongleId == dongle_id:
      return cp
  raise KeyError(f"car_params_for_dongle: no preset for dongle {dongle_id!r}")


def calc_slip_factor(CP) -> float:
  """sf = m (cF aF - cR aR) / (L^2 cF cR); negative = understeer. Units s^2/m^2.
  Takes a CarParams, or a VehicleModel (then with its online-updated stiffness)."""
  if isinstance(CP, VehicleModel):
    return CP.sf
  aF, aR, cF, cR = CP.centerToFront, CP.centerToRear, CP.tireStiffnessFront, CP.tireStiffnessRear
  return CP.mass * (cF * aF - cR * aR) / (CP.wheelbase ** 2 * cF * cR)


class VehicleModel:
  def __init__(self, CP: CarParams):
    self.CP = CP
    self.m, self.j, self.l = CP.mass, CP.rotationalInertia, CP.wheelbase
    self.aF, self.aR = CP.centerToFront, CP.centerToRear
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
    if abs(self.sf) < 1e-9:
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
      return -np.linalg.solve(A, B @ np.array([sa_rad, roll]))
    # kinematic bicycle: no slip, rear axle moves along its heading, CG sideslips by aR * r
    r = u * (1.0 - self.chi) * sa_rad / self.sR / self.l
    return np.array([self.aR * r, r])

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
    x_ss = -np.linalg.solve(A, B @ np.array([sa_rad, roll]))
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
