"""Bridge between the simulated world and the deployed stack over cereal (openpilot's tools/sim bridge).

Every 50 ms of sim time it
  * renders the road camera and sends it through VisionIPC ("camerad", VISION_STREAM_ROAD, NV12),
  * publishes roadCameraState (+ roadCameraInfo: size, intrinsics), carState, groundTruth and drivingDesire,
  * applies the newest carControl (actuators.steeringAngleDeg at the wheel, actuators.accel) to the car; while nothing is
    engaged (no carControl yet, or latActive false) the built-in driver steers (`--idle`): the
    ground-truth lane keeper, or "straight" to hold the wheel.

  python -m tools.sim.bridge [--scenario NAME | --seed S] [--camera eon|WxH[@focal]|model:WxH@focal] [--duration 60]
                             [--lockstep] [--realtime] [--car TOYOTA_RAV4]

--lockstep waits (up to --step-timeout s) for a carControl after each frame, so a slow stack never
falls behind the world (deterministic closed loop on a loaded machine); --realtime paces the loop at
20 Hz wall-clock. Per-run socket prefix: env WORLDPILOT_PREFIX (see cereal/messaging).
"""
import argparse
import sys
import time

import numpy as np

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.modelconstants import EON_FOCAL, EON_ROAD_H, EON_ROAD_W, MODEL_FREQ
from common.transformations.camera import CameraConfig
from selfdrive.controls.vehicle_model import DEFAULT_CAR, car_arg
from tools.sim.env import DT, SimEnv
from tools.sim.messages import camera_messages, car_state_message, driving_desire_message, ground_truth_message
from tools.sim.policies import PerfectPolicy
from tools.sim.render import rgb_to_nv12
from tools.sim.scenarios import Scenario, lane_change_suite, lane_keep_suite
from tools.sim.vehicle import VehicleConfig
from tools.sim.world import WorldConfig

VIPC_NAME = "camerad"


class RandomDrive(Scenario):
  """A seeded random world (any road, traffic) as a bridge scenario."""

  def world_config(self) -> WorldConfig:
    cfg = WorldConfig()
    cfg.road.length = self.s0 + 35.0 * self.duration + 400.0
    return cfg

  def start_lane(self, road) -> int:
    return road.ego_lane

  def target_lane(self, road) -> int:
    return road.ego_lane


def parse_camera(s: str) -> CameraConfig:
  """--camera: 'eon' (the comma EON road camera), 'WxH[@focal]' (a pinhole with its principal point at the image
  centre), or 'model:WxH@focal' (the model frame of that size: common.transformations.camera.model_frame_camera,
  whose principal point is not at the centre; frames rendered with it need no warp in modeld)."""
  if s == "eon":
    return CameraConfig(EON_ROAD_W, EON_ROAD_H, EON_FOCAL)
  try:
    model = s.startswith("model:")
    size, _, focal = s.removeprefix("model:").partition("@")
    w, h = (int(x) for x in size.lower().split("x"))
    if model:
      from common.transformations.camera import model_frame_camera
      return model_frame_camera(w, h, float(focal))
    f = float(focal) if focal else EON_FOCAL * w / EON_ROAD_W
    return CameraConfig(w, h, f)
  except ValueError:
    raise argparse.ArgumentTypeError(f"--camera must be 'eon', WxH[@focal] or model:WxH@focal, got {s!r}") from None


def find_scenario(name: str) -> Scenario:
  for sc in lane_keep_suite() + lane_change_suite():
    if sc.name == name:
      return sc
  raise ValueError(f"unknown scenario {name!r}; see tools/sim/scenarios.py")


@tool_main
def main(argv=None) -> int:
  from cereal.messaging import PubMaster, SubMaster
  from cereal.visionipc import VisionIpcServer, VisionStreamType
  ap = make_parser("python -m tools.sim.bridge", __doc__)
  ap.add_argument("--scenario", default=None, help="a scenario name from tools/sim/scenarios.py")
  ap.add_argument("--speed", type=float, default=25.0)
  ap.add_argument("--camera", type=parse_camera, default=parse_camera("eon"))
  ap.add_argument("--duration", type=float, default=60.0)
  ap.add_argument("--lockstep", action="store_true")
  ap.add_argument("--step-timeout", type=float, default=1.0)
  ap.add_argument("--realtime", action="store_true")
  ap.add_argument("--idle", choices=("lanekeep", "straight"), default="lanekeep")
  ap.add_argument("--car", type=car_arg, default=DEFAULT_CAR, help=f"an opendbc platform (default {DEFAULT_CAR})")
  add_common_args(ap, seed=0, seed_help="random world seed (when no --scenario)")
  args = ap.parse_args(argv)
  if args.scenario:
    sc = find_scenario(args.scenario)
    sc = Scenario(**{**sc.__dict__, "duration": args.duration})
  else:
    sc = RandomDrive(f"random_{args.seed}", "drive", "random", args.speed, seed=args.seed, duration=args.duration)
  cam = args.camera
  env = SimEnv(camera=cam, vehicle=VehicleConfig(car=args.car))
  obs = env.reset(sc)
  idle = PerfectPolicy() if args.idle == "lanekeep" else None
  vipc = VisionIpcServer(VIPC_NAME)
  vipc.create_buffers(VisionStreamType.VISION_STREAM_ROAD, 4, cam.width, cam.height)
  vipc.start_listener()
  pm = PubMaster(["roadCameraState", "roadCameraInfo", "carState", "groundTruth", "drivingDesire"])
  sm = SubMaster(["carControl"])
  n = int(round(args.duration * MODEL_FREQ))
  t_start = time.monotonic()
  engaged_frames = 0
  try:
    for i in range(n):
      info = env.info
      ns = time.monotonic_ns()
      vipc.send(VisionStreamType.VISION_STREAM_ROAD, rgb_to_nv12(obs["image"]).reshape(-1), i, ns, ns + 20_000_000)
      cam_msg, info_msg = camera_messages(i, ns, ns + 20_000_000, cam.width, cam.height, cam.width, cam.intrinsics)
      pm.send("roadCameraState", cam_msg)
      pm.send("roadCameraInfo", info_msg)
      st = env.vehicle.state
      pm.send("carState", car_state_message(st.v, st.a, st.steer, st.yaw_rate, env.desire, v_cruise=sc.speed,
                                            cruise_enabled=True))
      pm.send("groundTruth", ground_truth_message(info, i))
      pm.send("drivingDesire", driving_desire_message(env.desire, "sim"))
      # --- wait for / take the stack's command ---
      deadline = time.monotonic() + (args.step_timeout if args.lockstep else 0.0)
      while True:
        sm.update(0 if not args.lockstep else 10)
        if sm.updated["carControl"] or time.monotonic() >= deadline:
          break
      cc = sm["carControl"] if sm.seen["carControl"] else None
      if cc is not None and cc.latActive:
        engaged_frames += 1
        act = cc.actuators
        obs, info = env.step_steering(np.radians(act.steeringAngleDeg), act.accel if cc.longActive else 0.0)
      elif idle is not None:
        obs, info = env.step(idle(obs, info))
      else:
        obs, info = env.step((0.0, 0.0))
      if args.realtime:
        time.sleep(max(0.0, t_start + (i + 1) * DT - time.monotonic()))
  finally:
    vipc.close()
  print(f"bridge: {n} frames, engaged {engaged_frames}, final lateral offset {env.info['lateral_offset']:+.3f} m")
  emit_result({"frames": n, "engaged_frames": engaged_frames, "final_lateral_offset_m": env.info["lateral_offset"]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
