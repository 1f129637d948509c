"""controlsd: turns the model's plan into a steering command (openpilot's selfdrive/controls/controlsd.py).

  python -m selfdrive.controls.controlsd [--car NAME] [--curvature-source action|plan] [--prefix P]

Every 10 ms (100 Hz) with the newest modelV2 and carState:
  * desired curvature: modelV2.action.desiredCurvature (or, with --curvature-source plan, the plan's heading at
    the actuator delay through drive_helpers.get_curvature_from_plan);
  * limited like openpilot's clip_curvature (lateral jerk 5 m/s^3 -> a per-step rate of 5/v^2 * 10 ms, lateral
    acceleration 3 m/s^2 plus roll, |curvature| <= 0.2);
  * turned into a steering-wheel angle by the inverse vehicle model (VehicleModel.get_steer_from_curvature),
    then held within the car's angle and angle-rate limits;
  * published as carControl (latActive, actuators.steeringAngleDeg / curvature), controlsState (curvature,
    desiredCurvature, angle state), selfdriveState (state, alert) and controlsStateExtra.

Safety: lateral control is active only while the driver has engaged (carState.cruiseState.enabled), does not
override the wheel, and every input is sound. No modelV2 for MODEL_TIMEOUT, modelV2 valid=false,
frameDropPerc > MAX_FRAME_DROP_PERC, a stale carState, or any non-finite value turn lateral control off on
that 10 ms step, with a critical alert naming the cause. While lateral control is off the command follows the
measured steering angle, so it never jumps when control resumes; NaN/Inf never reach an actuator.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from common.cli import make_parser, tool_main
from common.modelconstants import T_IDXS
from common.stop_signal import StopFlag
from selfdrive.controls.lib.drive_helpers import DT_CTRL, clip_curvature, get_curvature_from_plan
from selfdrive.controls.vehicle_model import DEFAULT_CAR, VehicleModel, car_arg, get_car_params

cloudlog = logging.getLogger("controlsd")

MODEL_TIMEOUT = 0.15           # s without modelV2 (3 model frames): the model is not alive
CARSTATE_TIMEOUT = 0.2         # s without carState
MAX_FRAME_DROP_PERC = 20.0     # % of camera frames modeld dropped
MIN_LAT_SPEED = 0.3            # m/s: below this the steering command is held
SUBSCRIBED_SERVICES = ["carState", "modelV2"]


@dataclass(frozen=True)
class SteerLimits:
  """The car's steering actuator limits (steering-wheel angle)."""
  max_angle_deg: float = 500.0        # |angle| the command may ask for
  max_rate_deg_s: float = 400.0       # |d angle / dt| of the command


@dataclass
class ControlsOutput:
  enabled: bool
  lat_active: bool
  state: str                   # selfdriveState.OpenpilotState name
  steer_angle_deg: float       # command (always finite, within limits)
  desired_curvature: float     # 1/m after clip_curvature (command)
  model_curvature: float       # 1/m as the model asked (before limits; 0 if not finite)
  curvature: float             # 1/m measured (vehicle model from carState)
  saturated: bool
  alert: tuple[str, str, str]  # (text1, text2, status) -- status: normal | userPrompt | critical
  model_frame_id: int
  lateral_error: float


class Controls:
  """controlsd's logic without sockets: update(now, sm) -> ControlsOutput. `sm` is a SubMaster with
  carState and modelV2 (seen / recv_time / valid / data)."""

  def __init__(self, CP, limits: SteerLimits = SteerLimits(), curvature_source: str = "action",
               model_timeout: float = MODEL_TIMEOUT, carstate_timeout: float = CARSTATE_TIMEOUT):
    if curvature_source not in ("action", "plan"):
      raise ValueError(f"curvature_source must be 'action' or 'plan', got {curvature_source!r}")
    self.CP = CP
    self.VM = VehicleModel(CP)
    self.limits = limits
    self.curvature_source = curvature_source
    self.model_timeout = model_timeout
    self.carstate_timeout = carstate_timeout
    self.desired_curvature = 0.0
    self.steer_angle_deg = 0.0
    self.lat_active = False

  def _lat_faults(self, now: float, sm) -> list[str]:
    faults = []
    if not sm.seen["carState"] or now - sm.recv_time["carState"] > self.carstate_timeout:
      faults.append("Car state not received")
    elif not sm.valid["carState"]:
      faults.append("Car state invalid")
    if not sm.seen["modelV2"] or now - sm.recv_time["modelV2"] > self.model_timeout:
      faults.append("Driving model not responding")
    else:
      if not sm.valid["modelV2"]:
        faults.append("Driving model output invalid")
      perc = float(sm["modelV2"].frameDropPerc)
      if not perc <= MAX_FRAME_DROP_PERC:
        faults.append(f"Camera frames dropped ({perc:.0f} %)")
    return faults

  def _model_curvature(self, model, v_ego: float) -> float:
    if self.curvature_source == "plan":
      yaw, yaw_rate = list(model.orientation.z), list(model.orientationRate.z)
      if len(yaw) != len(T_IDXS) or len(yaw_rate) != len(T_IDXS):
        return float("nan")
      return get_curvature_from_plan(yaw, yaw_rate, T_IDXS, v_ego, self.CP.steerActuatorDelay + DT_CTRL * 5)
    return float(model.action.desiredCurvature)

  def update(self, now: float, sm) -> ControlsOutput:
    cs, model = sm["carState"], sm["modelV2"]
    v_ego = float(cs.vEgo)
    measured_deg = float(cs.steeringAngleDeg)
    roll = 0.0                                   # no road-roll estimator in this stack (openpilot: liveParameters)
    faults = self._lat_faults(now, sm)
    if not math.isfinite(v_ego) or not math.isfinite(measured_deg):
      faults.append("Car state not finite")
      v_ego = v_ego if math.isfinite(v_ego) else 0.0
      measured_deg = measured_deg if math.isfinite(measured_deg) else self.steer_angle_deg
    u = max(v_ego, 1.0)
    curvature = float(self.VM.calc_curvature(math.radians(measured_deg), u, roll))
    model_curv = self._model_curvature(model, v_ego) if sm.seen["modelV2"] else 0.0
    if not math.isfinite(model_curv):
      faults.append("Driving model output not finite")
      model_curv = 0.0

    enabled = bool(cs.cruiseState.enabled)
    overriding = bool(cs.steeringPressed)
    lat_active = enabled and not faults and not overriding and v_ego >= MIN_LAT_SPEED and not cs.standstill
    saturated = False
    lim = self.limits
    if lat_active:
      if not self.lat_active:                    # engaging: start from what the car does now
        self.desired_curvature, self.steer_angle_deg = curvature, measured_deg
      self.desired_curvature, saturated = clip_curvature(v_ego, self.desired_curvature, model_curv, roll)
      target = math.degrees(float(self.VM.get_steer_from_curvature(self.desired_curvature, u, roll)))
      step = lim.max_rate_deg_s * DT_CTRL
      angle = float(np.clip(target, self.steer_angle_deg - step, self.steer_angle_deg + step))
      angle = float(np.clip(angle, -lim.max_angle_deg, lim.max_angle_deg))
      saturated = saturated or abs(angle - target) > 1e-6
      if not math.isfinite(angle):               # cannot happen with finite inputs; never command it anyway
        lat_active, faults = False, faults + ["Steering command not finite"]
      else:
        self.steer_angle_deg = angle
    if not lat_active:
      self.desired_curvature = curvature if math.isfinite(curvature) else 0.0
      self.steer_angle_deg = float(np.clip(measured_deg, -lim.max_angle_deg, lim.max_angle_deg))
    self.lat_active = lat_active

    if faults and enabled:
      state, alert = "softDisabling", ("Lateral control off", faults[0], "critical")
    elif faults:
      state, alert = "disabled", ("", faults[0], "normal")
    elif enabled and overriding:
      state, alert = "overriding", ("", "Driver steering", "normal")
    elif enabled:
      state, alert = "enabled", ("", "", "normal")
    else:
      state, alert = "disabled", ("", "", "normal")
    lateral_error = 0.0
    if sm.seen["modelV2"] and len(model.position.y) > 0 and math.isfinite(model.position.y[0]):
      lateral_error = float(model.position.y[0])
    return ControlsOutput(enabled=enabled, lat_active=lat_active, state=state, steer_angle_deg=self.steer_angle_deg,
                          desired_curvature=self.desired_curvature, model_curvature=model_curv,
                          curvature=curvature if math.isfinite(curvature) else 0.0, saturated=saturated, alert=alert,
                          model_frame_id=int(model.frameId) if sm.seen["modelV2"] else 0, lateral_error=lateral_error)


def build_messages(out: ControlsOutput, cum_lag_ms: float = 0.0) -> dict:
  """carControl, controlsState, selfdriveState, controlsStateExtra Events for one step."""
  from cereal.messaging import new_message
  msgs = {}
  m = new_message("carControl")
  cc = m.carControl
  cc.enabled, cc.latActive, cc.longActive = out.enabled, out.lat_active, False
  cc.actuators.steeringAngleDeg = out.steer_angle_deg
  cc.actuators.curvature = out.desired_curvature
  cc.currentCurvature = out.curvature
  msgs["carControl"] = m
  m = new_message("controlsState")
  c = m.controlsState
  c.curvature, c.desiredCurvature = out.curvature, out.desired_curvature
  a = c.lateralControlState.init("angleState")
  a.active, a.steeringAngleDesiredDeg, a.output, a.saturated = (out.lat_active, out.steer_angle_deg, out.steer_angle_deg,
                                                                out.saturated)
  msgs["controlsState"] = m
  m = new_message("selfdriveState")
  s = m.selfdriveState
  s.state, s.enabled, s.active = out.state, out.enabled, out.lat_active
  s.alertText1, s.alertText2, s.alertStatus = out.alert
  s.alertSize = "mid" if out.alert[0] else ("small" if out.alert[1] else "none")
  s.alertType = out.alert[1]
  msgs["selfdriveState"] = m
  m = new_message("controlsStateExtra")
  e = m.controlsStateExtra
  e.lateralError, e.modelFrameId, e.cumLagMs, e.steeringAngleDesiredDeg = (out.lateral_error, out.model_frame_id, cum_lag_ms,
                                                                           out.steer_angle_deg)
  msgs["controlsStateExtra"] = m
  return msgs


@tool_main
def main(argv: list[str] | None = None) -> int:
  from cereal import messaging
  ap = make_parser("python -m selfdrive.controls.controlsd",
                   "Steer along the model's plan: modelV2 + carState -> carControl at 100 Hz.")
  ap.add_argument("--car", type=car_arg, default=os.environ.get("WORLDPILOT_CAR", DEFAULT_CAR),
                  help=f"opendbc platform of the car (vehicle model; default {DEFAULT_CAR}, the simulator's car)")
  ap.add_argument("--curvature-source", choices=("action", "plan"), default="action")
  ap.add_argument("--max-angle-deg", type=float, default=SteerLimits.max_angle_deg)
  ap.add_argument("--max-rate-deg-s", type=float, default=SteerLimits.max_rate_deg_s)
  ap.add_argument("--model-timeout", type=float, default=MODEL_TIMEOUT,
                  help="s without modelV2 before lateral control turns off (raise it only for a lockstep simulator, "
                       "whose time is not wall time)")
  ap.add_argument("--carstate-timeout", type=float, default=CARSTATE_TIMEOUT,
                  help="s without carState before lateral control turns off (likewise)")
  ap.add_argument("--lockstep", action="store_true",
                  help="one control step per carState received, not a 100 Hz clock: a lockstep simulator sends carState "
                       "5 times per camera frame, as a car's 100 Hz carState does (tools/sim/stack.py)")
  ap.add_argument("--prefix", default=None, help="messaging prefix (default $WORLDPILOT_PREFIX)")
  args = ap.parse_args(argv)
  if not (args.model_timeout > 0 and args.carstate_timeout > 0):
    ap.error("--model-timeout and --carstate-timeout must be > 0")
  try:
    CP = get_car_params(args.car)
  except KeyError as e:
    print(f"error: --car: {e.args[0]}", file=sys.stderr)
    return 1
  if args.prefix is not None:
    os.environ[messaging.PREFIX_ENV] = messaging.get_prefix(args.prefix)
  controls = Controls(CP, SteerLimits(args.max_angle_deg, args.max_rate_deg_s), args.curvature_source, args.model_timeout,
                      args.carstate_timeout)
  stop = StopFlag()
  sm = messaging.SubMaster(SUBSCRIBED_SERVICES)
  pm = messaging.PubMaster(["carControl", "controlsState", "selfdriveState", "controlsStateExtra"])
  next_t = time.monotonic()
  last_alert = None
  try:
    while not stop:
      if args.lockstep:
        sm.update(100)
        if not sm.updated["carState"]:
          continue
      else:
        sm.update(0)
      now = time.monotonic()
      out = controls.update(now, sm)
      if out.alert != last_alert:
        if out.alert[2] == "critical":
          cloudlog.warning("controlsd: lateral control off: %s", out.alert[1])
        last_alert = out.alert
      lag_ms = 0.0 if args.lockstep else max(0.0, (now - next_t) * 1000.0)
      for s, msg in build_messages(out, lag_ms).items():
        pm.send(s, msg)
      if args.lockstep:
        continue
      next_t += DT_CTRL
      delay = next_t - time.monotonic()
      if delay > 0:
        time.sleep(delay)
      elif delay < -0.1:                          # far behind (machine stalled): do not try to catch up
        next_t = time.monotonic()
  finally:
    sm.close()
    pm.close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
