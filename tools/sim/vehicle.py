"""The simulated ego car: the project's dynamic bicycle (selfdrive/controls/vehicle_model.py) with any opendbc
car's parameters (default DEFAULT_CAR, openpilot's reference Honda Civic)
driven by a steering-wheel angle through a pure delay (CarParams.steerActuatorDelay) and a first-order
lag, and by an acceleration command through a first-order lag.

Pose: the car's reference point is the camera (device) position projected onto the road surface; the
camera sits `cam_height` above it with zero calibration (device frame = car frame). World = NED, yaw
about z-down (positive = right); the vehicle model's yaw rate / curvature are positive LEFT.
"""
from collections import deque
from dataclasses import dataclass

import numpy as np

from common.modelconstants import CAMERA_HEIGHT_M as CAM_HEIGHT
from selfdrive.controls.vehicle_model import DEFAULT_CAR, VehicleModel, get_car_params


@dataclass
class VehicleConfig:
  car: str = DEFAULT_CAR             # an opendbc platform name
  steer_lag_tau: float = 0.15        # s, first-order lag of the steering actuator
  accel_lag_tau: float = 0.3         # s, first-order lag of the longitudinal actuator
  max_steer_deg: float = 500.0       # steering-wheel angle limit
  max_steer_rate_deg: float = 400.0  # deg/s
  accel_limits: tuple = (-4.0, 2.5)  # m/s^2
  cam_height: float = CAM_HEIGHT


@dataclass
class VehicleState:
  x: float          # m, NED north of the reference point
  y: float          # m, NED east
  psi: float        # rad, NED yaw (+ right)
  v: float          # m/s forward speed
  a: float = 0.0    # m/s^2 forward acceleration (executed)
  v_lat: float = 0.0      # m/s, + left
  yaw_rate: float = 0.0   # rad/s, + left
  steer: float = 0.0      # rad, steering-wheel angle executed (+ left)
  steer_cmd: float = 0.0  # rad, last command (before delay)

  @property
  def course(self) -> float:
    """rad, the direction the car moves in from its heading, + right (its sideslip: + left lateral velocity)."""
    return float(np.arctan2(-self.v_lat, max(self.v, 0.1)))


class SimVehicle:
  def __init__(self, cfg: VehicleConfig | None = None):
    self.cfg = cfg or VehicleConfig()
    self.CP = get_car_params(self.cfg.car)
    self.VM = VehicleModel(self.CP)
    self.state: VehicleState | None = None
    self._queue: deque = deque()

  def reset(self, x: float, y: float, psi: float, v: float, curvature: float = 0.0, dt: float = 0.05) -> VehicleState:
    """Start at a pose with speed v in steady state on the given curvature (+ left)."""
    sa = float(self.VM.get_steer_from_curvature(curvature, max(v, 1.0)))
    vl, r = self.VM.steady_state_sol(sa, v) if v > 0.1 else (0.0, 0.0)
    self.state = VehicleState(x=x, y=y, psi=psi, v=v, v_lat=float(vl), yaw_rate=float(r), steer=sa, steer_cmd=sa)
    n_delay = int(round(self.CP.steerActuatorDelay / dt))
    self._queue = deque([sa] * n_delay)
    return self.state

  def steer_for_curvature(self, curvature: float) -> float:
    """Inverse vehicle model: desired curvature (+ left, 1/m) -> steering-wheel angle (rad)."""
    return float(self.VM.get_steer_from_curvature(curvature, max(self.state.v, 1.0)))

  @property
  def curvature(self) -> float:
    """Executed path curvature (+ left)."""
    return self.state.yaw_rate / max(self.state.v, 0.1)

  def step(self, steer_cmd_rad: float, accel_cmd: float, dt: float = 0.05) -> VehicleState:
    if not (np.isfinite(steer_cmd_rad) and np.isfinite(accel_cmd)):
      raise ValueError(f"SimVehicle.step: non-finite command steer={steer_cmd_rad} accel={accel_cmd}")
    c, st = self.cfg, self.state
    lim = np.radians(c.max_steer_deg)
    st.steer_cmd = float(np.clip(steer_cmd_rad, -lim, lim))
    self._queue.append(st.steer_cmd)
    delayed = self._queue.popleft() if len(self._queue) > 0 else st.steer_cmd
    # first-order lag + rate limit on the steering-wheel angle
    d_steer = (delayed - st.steer) * (1 - np.exp(-dt / c.steer_lag_tau))
    max_d = np.radians(c.max_steer_rate_deg) * dt
    st.steer += float(np.clip(d_steer, -max_d, max_d))
    # longitudinal
    a_cmd = float(np.clip(accel_cmd, *c.accel_limits))
    st.a += (a_cmd - st.a) * (1 - np.exp(-dt / c.accel_lag_tau))
    v0 = st.v
    st.v = max(0.0, st.v + st.a * dt)
    if st.v == 0.0:
      st.a = max(st.a, 0.0)
    u = 0.5 * (v0 + st.v)
    # lateral dynamics (dynamic bicycle, exact discretisation)
    st.v_lat, st.yaw_rate = (float(z) for z in self.VM.state_step(np.array([st.v_lat, st.yaw_rate]), st.steer, u, 0.0, dt))
    # pose: yaw (NED) decreases for a left yaw rate; integrate at the mid-step heading
    psi_mid = st.psi - st.yaw_rate * dt / 2
    fwd = np.array([np.cos(psi_mid), np.sin(psi_mid)])
    left = np.array([np.sin(psi_mid), -np.cos(psi_mid)])
    dxy = (fwd * u + left * st.v_lat) * dt
    st.x += float(dxy[0]); st.y += float(dxy[1])
    st.psi -= st.yaw_rate * dt
    return st
