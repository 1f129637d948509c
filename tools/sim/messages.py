"""cereal messages the simulator publishes (bridge) and logs (generate), in openpilot's layout: both build
roadCameraState/roadCameraInfo, carState, drivingDesire and groundTruth here, so the live and the logged drive carry
the same fields.

The model's desire input indexes common.modelconstants.DESIRES; on the wire the desire is openpilot's
log.Desire enum (laneChangeLeft = 3, ...), so every message converts by name.
"""
from __future__ import annotations

import numpy as np

from common.modelconstants import DESIRES


def desire_to_log(index: int) -> str:
  """DESIRES index -> the log.Desire enumerant name (pycapnp assigns enums by name)."""
  if not 0 <= int(index) < len(DESIRES):
    raise ValueError(f"desire index {index} is not in DESIRES {DESIRES}")
  return DESIRES[int(index)]


def desire_from_log(value) -> int:
  """log.Desire (enum reader or name) -> DESIRES index; openpilot desires the model has no input for
  (turnLeft, keepLeft, ...) raise ValueError."""
  name = str(value)
  if name not in DESIRES:
    raise ValueError(f"log.Desire {name!r} has no model input (the model knows {DESIRES})")
  return DESIRES.index(name)


def camera_messages(frame_id: int, sof_ns: int, eof_ns: int, width: int, height: int, stride: int,
                    intrinsics: np.ndarray, sensor_name: str = "sim", log_mono_time: int | None = None):
  """(roadCameraState, roadCameraInfo) Events for one frame."""
  from cereal.messaging import new_message
  kw = {} if log_mono_time is None else {"logMonoTime": int(log_mono_time)}
  cam = new_message("roadCameraState", **kw)
  rc = cam.roadCameraState
  rc.frameId, rc.timestampSof, rc.timestampEof = int(frame_id), int(sof_ns), int(eof_ns)
  rc.sensor = "unknown"   # log.FrameData.ImageSensor has no value for a rendered camera
  info = new_message("roadCameraInfo", **kw)
  ci = info.roadCameraInfo
  ci.frameId, ci.width, ci.height, ci.stride = int(frame_id), int(width), int(height), int(stride)
  ci.intrinsics = np.asarray(intrinsics, dtype=np.float32).reshape(-1).tolist()
  ci.sensorName = sensor_name
  return cam, info


def car_state_message(v: float, a: float, steer_rad: float, yaw_rate: float, desire: int,
                      v_cruise: float = 0.0, cruise_enabled: bool = False, log_mono_time: int | None = None):
  """carState (opendbc's CarState) of the simulated car; blinkers follow a lane-change desire."""
  from cereal.messaging import new_message
  kw = {} if log_mono_time is None else {"logMonoTime": int(log_mono_time)}
  m = new_message("carState", **kw)
  c = m.carState
  c.vEgo, c.aEgo, c.vEgoRaw, c.vEgoCluster = float(v), float(a), float(v), float(v)
  c.steeringAngleDeg, c.yawRate = float(np.degrees(steer_rad)), float(yaw_rate)
  c.standstill = bool(v < 0.1)
  name = desire_to_log(desire)
  c.leftBlinker, c.rightBlinker = name == "laneChangeLeft", name == "laneChangeRight"
  c.cruiseState.enabled, c.cruiseState.available = bool(cruise_enabled), True
  c.cruiseState.speed, c.vCruise = float(v_cruise), float(v_cruise) * 3.6   # vCruise is in km/h in openpilot
  c.gearShifter = "drive"
  c.canValid = True
  return m


def driving_desire_message(desire: int, source: str = "sim", log_mono_time: int | None = None):
  from cereal.messaging import new_message
  kw = {} if log_mono_time is None else {"logMonoTime": int(log_mono_time)}
  m = new_message("drivingDesire", **kw)
  m.drivingDesire.desire, m.drivingDesire.source = desire_to_log(desire), source
  return m


GROUND_TRUTH_KEYS = ("pose_world", "road_s", "lateral_offset", "heading_error", "lane_width", "speed", "accel",
                     "curvature", "desire", "lead", "frame_times")


def ground_truth_message(frame: dict, frame_id: int, log_mono_time: int | None = None):
  """groundTruth (our custom slot) of one frame. frame: the simulator's labels of that frame, GROUND_TRUTH_KEYS
  (tools.sim.env's info; generate passes row i of its stacked labels); lead is (present prob, x, y, vRel, aRel)."""
  from cereal.messaging import new_message
  kw = {} if log_mono_time is None else {"logMonoTime": int(log_mono_time)}
  m = new_message("groundTruth", **kw)
  g = m.groundTruth
  g.frameId = int(frame_id)
  g.poseWorld = [float(x) for x in frame["pose_world"]]
  g.roadS, g.lateralOffset, g.headingError = (float(frame["road_s"]), float(frame["lateral_offset"]),
                                              float(frame["heading_error"]))
  g.laneWidth, g.speed, g.accel, g.curvature = (float(frame["lane_width"]), float(frame["speed"]),
                                                float(frame["accel"]), float(frame["curvature"]))
  g.desire = desire_to_log(int(frame["desire"]))
  lead = frame["lead"]
  g.leadPresent, g.leadX, g.leadY, g.leadVRel, g.leadARel = (bool(lead[0] > 0.5), float(lead[1]), float(lead[2]),
                                                             float(lead[3]), float(lead[4]))
  g.frameTime = float(frame["frame_times"])
  return m
