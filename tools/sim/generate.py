"""Generate simulated driving segments in the comma2k19 layout (readable by tools/lib/segment.Segment).

  python -m tools.sim.generate --out DIR --segments N --seed S [--duration 60] [--resolution 1164x874]
                               [--focal F] [--workers K] [--wander F] [--camera-shake DEG] [--lane-change-every S]
                               [--car OPENDBC_PLATFORM] [--format comma2k19|openpilot]

--format openpilot writes what a device records instead (tools/lib/route.py reads it):
  DIR/<dongle>|<date--time>--0/  rlog.zst (initData, carParams, per frame roadCameraState + roadEncodeIdx,
                                 carState, livePose, drivingDesire, groundTruth, roadCameraInfo; liveCalibration 4 Hz),
                                 qlog.zst (decimated like loggerd), fcamera.hevc

Each segment is its own seeded world (road, look, traffic) driven by the "human" driver
(tools/sim/driver.py) and written to  DIR/<dongle>|<date--time>/0/ :
  video.hevc                   raw HEVC Annex-B, 20 fps (PyAV / libx265)
  camera.json                  {"width", "height", "focal", "cx", "cy", "height_m"} of the rendered camera
  global_pose/frame_times, frame_positions (ECEF), frame_orientations (quaternion w,x,y,z:
              R_ecef_from_device), frame_velocities (ECEF m/s)
  processed_log/CAN/{speed, steering_angle}/{t, value}   100 Hz; speed m/s (N, 1), steering deg + left
  processed_log/IMU/{gyro, accelerometer}/{t, value}     100 Hz, device axes (x fwd, y right, z down)
  ground_truth/<field>         labels, see tools/sim/ground_truth.py
  rlog.zst                     cereal log (openpilot layout): initData, then per frame roadCameraState,
                               roadCameraInfo, carState, drivingDesire, groundTruth
The sim world is a local NED frame placed at a geodetic origin near I-280 (37.4 N, -122.2 E).
"""
import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.modelconstants import CAMERA_HEIGHT_M, EON_FOCAL, EON_ROAD_W, GRAVITY, MODEL_FREQ
from common.transformations.camera import CameraConfig
from common.transformations.coordinates import LocalCoord
from common.transformations.orientation import euler2rot, rot2quat
from selfdrive.controls.vehicle_model import DEFAULT_CAR, car_arg
from tools.sim.driver import HumanDriver, HumanDriverConfig
from tools.sim.ground_truth import compute_ground_truth, save_ground_truth, stack_frames
from tools.sim.messages import (
  GROUND_TRUTH_KEYS,
  camera_messages,
  car_state_message,
  driving_desire_message,
  ground_truth_message,
)
from tools.sim.render import Renderer
from tools.sim.road import RoadConfig
from tools.sim.vehicle import CAM_HEIGHT, SimVehicle, VehicleConfig
from tools.sim.world import TrafficConfig, World, WorldConfig

FORMATS = ("comma2k19", "openpilot")
ORIGIN_LLA = np.array([37.40, -122.20, 120.0])   # near I-280, Palo Alto
DT = 1.0 / MODEL_FREQ
CAN_HZ = 100


def segment_seed(seed: int, index: int) -> int:
  return int(np.random.default_rng([seed, index, 707]).integers(0, 2 ** 31 - 1))


def route_name(seed: int, index: int) -> str:
  rng = np.random.default_rng([seed, 808])
  dongle = "".join(f"{b:02x}" for b in rng.integers(0, 256, 8))
  day = 1 + index // (24 * 60) % 28
  minute = index % (24 * 60)
  return f"{dongle}|2026-01-{day:02d}--{minute // 60:02d}-{minute % 60:02d}-00"


def mount_yaw(n: int, std_rad: float, tau_s: float, dt: float, rng: np.random.Generator) -> np.ndarray:
  """(n,) yaw of a camera on a mount that is not rigid, relative to the car (rad): a stationary Gauss-Markov
  (Ornstein-Uhlenbeck) process with standard deviation std_rad and correlation time tau_s, sampled every dt.
  With tau_s well under the world model's 0.2 s frame spacing, the view turns between frames by amounts that the
  previous frames do not predict and the logged pose does: data that teaches a world model pose control."""
  if std_rad < 0 or not tau_s > 0 or not dt > 0:
    raise ValueError(f"mount_yaw: need std_rad >= 0, tau_s > 0, dt > 0 (got {std_rad}, {tau_s}, {dt})")
  out = np.zeros(n)
  if n == 0 or std_rad == 0:
    return out
  rho = float(np.exp(-dt / tau_s))
  out[0] = rng.normal(0.0, std_rad)
  for i in range(1, n):
    out[i] = rho * out[i - 1] + np.sqrt(1.0 - rho * rho) * rng.normal(0.0, std_rad)
  return out


def write_hevc(path: Path, frames_rgb: list, fps: int = MODEL_FREQ, keyint: int = 20) -> None:
  """Encode RGB frames to a raw HEVC Annex-B stream (like comma2k19's video.hevc)."""
  h, w = frames_rgb[0].shape[:2]
  with av.open(str(path), mode="w", format="hevc") as c:
    st = c.add_stream("libx265", rate=fps)
    st.width, st.height, st.pix_fmt = w, h, "yuv420p"
    st.options = {"preset": "ultrafast", "crf": "24",
                  "x265-params": f"log-level=error:keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:"
                                 "pools=1:frame-threads=1"}
    for img in frames_rgb:
      for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in st.encode():
      c.mux(p)


def _save(path: Path, arr) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:
    np.save(f, np.asarray(arr))


def simulate(seed: int, duration: float, camera: CameraConfig | None, world_cfg: WorldConfig | None = None,
             progress: bool = False, driver_cfg: HumanDriverConfig | None = None, camera_shake_deg: float = 0.0,
             shake_tau_s: float = 0.1, car: str = DEFAULT_CAR) -> dict:
  """Drive one world with the human driver; returns frames, labels, the raw per-frame car states and the camera's
  yaw relative to the car ("cam_yaw", zero unless camera_shake_deg > 0: see mount_yaw)."""
  driver = HumanDriver(seed, driver_cfg)
  s0 = 30.0
  v0 = driver.v_cruise * 0.9
  # a lead car's speed is drawn around the ego car's own start speed, so a fast driver is not held to a slow lead
  world = World(seed, world_cfg, ego_s0=s0, ego_speed=v0)
  road = world.road
  veh = SimVehicle(VehicleConfig(car=car))
  p = road.frenet_to_world(s0, road.lane_center_d(road.ego_lane))
  veh.reset(float(p[0]), float(p[1]), float(road.psi_at(s0)), v0, float(road.kappa_at(s0)), DT)
  renderer = Renderer(road, world.appearance, camera, seed=seed) if camera is not None else None
  n = int(round(duration * MODEL_FREQ))
  cam_yaw = mount_yaw(n, np.radians(camera_shake_deg), shake_tau_s, DT, np.random.default_rng([seed, 311]))
  frames, gts, states = [], [], []
  s_guess = s0
  for i in tqdm(range(n), desc=f"seed {seed}", disable=not progress, leave=False):
    t = i * DT
    st = veh.state
    # the driver looks through the windscreen (car frame); the labels are the loose camera's
    car_view = compute_ground_truth(world, st, t, driver.desire, driver.target_lane, s_guess=s_guess)
    gt = car_view if cam_yaw[i] == 0 else compute_ground_truth(world, st, t, driver.desire, driver.target_lane,
                                                               s_guess=s_guess, cam_yaw=float(cam_yaw[i]))
    s_guess = gt["road_s"]
    if s_guess > road.s[-1] - 260:
      raise ValueError(f"simulate(seed={seed}): road too short for {duration} s (reached s={s_guess:.0f} m)")
    gts.append(gt)
    states.append((st.v, st.a, st.v_lat, st.yaw_rate, st.steer))
    if renderer is not None:
      frames.append(renderer.render(gt["pose_world"], world.car_boxes(s_guess - 10, s_guess + 400)))
    curv, accel = driver.step(car_view, road, world, t, DT, st.v, st.a)
    veh.step(veh.steer_for_curvature(curv), accel, DT)
    world.step(DT, ego=(s_guess, gt["_d"], veh.state.v))
  return {"frames": frames, "gt": stack_frames(gts), "states": np.array(states), "world": world, "cam_yaw": cam_yaw}


def write_segment(out_dir: Path, seed: int, index: int, duration: float, camera: CameraConfig, progress: bool = False,
                  wander: float = 1.0, camera_shake_deg: float = 0.0, car: str = DEFAULT_CAR,
                  fmt: str = "comma2k19", lane_change_every: float = HumanDriverConfig.lane_change_every,
                  cruise: tuple[float, float] = HumanDriverConfig.cruise,
                  lead_prob: float = TrafficConfig.lead_prob) -> Path:
  """Simulate and write one segment; fmt "comma2k19" (poses, CAN, IMU, labels, video.hevc, rlog.zst) or
  "openpilot" (a device's layout: rlog.zst, qlog.zst, fcamera.hevc matched by roadEncodeIdx)."""
  if fmt not in FORMATS:
    raise ValueError(f"write_segment: format must be one of {FORMATS}, got {fmt!r}")
  sseed = segment_seed(seed, index)
  # enough road for the drive at up to 35 m/s plus the 240 m label horizon
  world_cfg = WorldConfig(road=RoadConfig(length=duration * 35.0 + 400.0), traffic=TrafficConfig(lead_prob=lead_prob))
  driver_cfg = HumanDriverConfig(lane_change_every=lane_change_every, cruise=tuple(cruise)).wandering(wander)
  sim = simulate(sseed, duration, camera, world_cfg, progress, driver_cfg=driver_cfg,
                 camera_shake_deg=camera_shake_deg, car=car)
  if fmt == "openpilot":
    return write_openpilot_segment(Path(out_dir), route_name(seed, index), sim, camera, car, sseed)
  seg = Path(out_dir) / route_name(seed, index) / "0"
  seg.mkdir(parents=True, exist_ok=True)
  (seg / "rlog.zst").unlink(missing_ok=True)    # regenerating replaces the log (LogWriter never writes over one)
  gt, states = sim["gt"], sim["states"]
  n = len(gt["frame_times"])
  rng = np.random.default_rng([sseed, 909])
  t0 = float(rng.uniform(1000.0, 60000.0))            # boot-clock start like comma2k19's frame_times
  frame_times = t0 + gt["frame_times"]
  gt = dict(gt, frame_times=frame_times)
  # --- global pose in ECEF ---
  local = LocalCoord.from_geodetic(ORIGIN_LLA + np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 0.0]))
  pose = gt["pose_world"]
  cam_yaw = sim["cam_yaw"]
  motion = device_motion(gt, states, cam_yaw)
  R_ned_dev, vel_dev = motion["R_ned_dev"], motion["velocity"]
  R_ecef_dev = local.ecef_from_ned_matrix @ R_ned_dev
  v, a, v_lat, yaw_rate, steer = states.T
  vel_ecef = np.einsum("ij,njk,nk->ni", local.ecef_from_ned_matrix, R_ned_dev, vel_dev)
  _save(seg / "global_pose" / "frame_times", frame_times)
  _save(seg / "global_pose" / "frame_positions", local.ned2ecef(pose[:, :3]))
  _save(seg / "global_pose" / "frame_orientations", rot2quat(R_ecef_dev))
  _save(seg / "global_pose" / "frame_velocities", vel_ecef)
  # --- CAN and IMU at 100 Hz (linear interpolation of the 20 Hz physics) ---
  tc = np.arange(frame_times[0], frame_times[-1], 1.0 / CAN_HZ) + 0.003
  tc = tc[tc <= frame_times[-1]]
  interp = lambda x: np.interp(tc, frame_times, x)
  _save(seg / "processed_log" / "CAN" / "speed" / "t", tc)
  _save(seg / "processed_log" / "CAN" / "speed" / "value", (interp(v) + rng.normal(0, 0.01, len(tc)))[:, None])
  _save(seg / "processed_log" / "CAN" / "steering_angle" / "t", tc)
  _save(seg / "processed_log" / "CAN" / "steering_angle" / "value", np.round(np.degrees(interp(steer)), 1))
  pitch = pose[:, 4]
  pitch_rate = np.gradient(pitch, frame_times)
  # the device turns with its mount: + the rate of the linearly interpolated mount yaw (cam_yaw is + right, NED yaw)
  k = np.clip(np.searchsorted(frame_times, tc, side="right") - 1, 0, n - 2)
  mount_rate = (cam_yaw[k + 1] - cam_yaw[k]) / (frame_times[k + 1] - frame_times[k])
  gyro = np.stack([np.zeros(len(tc)), interp(pitch_rate), mount_rate - interp(yaw_rate)], -1)   # x fwd, y right, z down
  g_dev = np.einsum("nji,j->ni", R_ned_dev, np.array([0.0, 0.0, GRAVITY]))            # gravity in the device frame
  acc_dev = motion["acceleration"] - g_dev                                            # specific force
  acc = np.stack([interp(acc_dev[:, k]) for k in range(3)], -1)
  _save(seg / "processed_log" / "IMU" / "gyro" / "t", tc)
  _save(seg / "processed_log" / "IMU" / "gyro" / "value", gyro + rng.normal(0, 0.002, gyro.shape))
  _save(seg / "processed_log" / "IMU" / "accelerometer" / "t", tc)
  _save(seg / "processed_log" / "IMU" / "accelerometer" / "value", acc + rng.normal(0, 0.05, acc.shape))
  # --- labels, camera, video, cereal log ---
  save_ground_truth(seg / "ground_truth", gt)
  K = camera.intrinsics
  (seg / "camera.json").write_text(json.dumps({"width": camera.width, "height": camera.height, "focal": camera.focal,
                                               "cx": float(K[0, 2]), "cy": float(K[1, 2]), "height_m": CAMERA_HEIGHT_M,
                                               "seed": sseed}, indent=1))
  write_hevc(seg / "video.hevc", sim["frames"])
  write_rlog(seg / "rlog.zst", gt, states, camera, route_name(seed, index))
  return seg


def device_motion(gt: dict, states: np.ndarray, cam_yaw: np.ndarray) -> dict:
  """The device's (camera's) motion per frame, as an IMU and a localizer see it: R_ned_dev (N, 3, 3), rpy (N, 3) in
  the sim's NED world, and in the device frame (x forward, y right, z down) velocity (N, 3) m/s, acceleration (N, 3)
  m/s^2 without gravity, angular velocity (N, 3) rad/s. The camera is yawed by cam_yaw relative to the car."""
  pose, t = gt["pose_world"], gt["frame_times"]
  n = len(pose)
  v, a, v_lat, yaw_rate, _ = states.T
  R_ned_dev = euler2rot(pose[:, 3:])                                                   # (N, 3, 3)
  car_rpy = pose[:, 3:] - np.stack([np.zeros(n), np.zeros(n), cam_yaw], -1)
  R_dev_car = np.swapaxes(R_ned_dev, -1, -2) @ euler2rot(car_rpy)                      # (N, 3, 3)
  velocity = np.einsum("nij,nj->ni", R_dev_car, np.stack([v, -v_lat, np.zeros(n)], -1))   # car frame has y right
  acceleration = np.einsum("nij,nj->ni", R_dev_car, np.stack([a, -v * yaw_rate, np.zeros(n)], -1))
  rates = np.stack([np.zeros(n), np.gradient(pose[:, 4], t), np.gradient(cam_yaw, t) - yaw_rate], -1)
  return {"R_ned_dev": R_ned_dev, "rpy": pose[:, 3:], "velocity": velocity, "acceleration": acceleration,
          "angular_velocity": rates}


def live_pose_message(motion: dict, i: int, ns: int):
  """locationd's livePose for frame i of device_motion()."""
  from cereal.messaging import new_message
  m = new_message("livePose", logMonoTime=ns)
  lp = m.livePose
  for field, key in (("orientationNED", "rpy"), ("velocityDevice", "velocity"),
                     ("accelerationDevice", "acceleration"), ("angularVelocityDevice", "angular_velocity")):
    xyz = getattr(lp, field)
    xyz.x, xyz.y, xyz.z = (float(c) for c in motion[key][i])
    xyz.valid = True
  lp.inputsOK = lp.posenetOK = lp.sensorsOK = True
  lp.timestamp = ns
  return m


def rlog_events(gt: dict, states: np.ndarray, camera: CameraConfig, route: str, car: str | None = None,
                segment_num: int | None = None, motion: dict | None = None):
  """The segment's Events in time order.  With segment_num (openpilot layout) also carParams, a 4 Hz
  liveCalibration and per frame a roadEncodeIdx that places the frame in fcamera.hevc; with motion
  (device_motion()) a livePose per frame, as locationd publishes it."""
  from cereal.messaging import new_message
  K = camera.intrinsics
  m = new_message("initData")
  m.initData.dongleId, m.initData.deviceType = route.split("|")[0], "pc"
  params = m.initData.params.init("entries", 1)
  params[0].key, params[0].value = "RouteName", route.encode()
  t_first = int(round(gt["frame_times"][0] * 1e9))
  m.logMonoTime = t_first
  yield m
  if segment_num is not None:
    from opendbc.car.car_helpers import interfaces
    cp = new_message("carParams", logMonoTime=t_first)
    cp.carParams = interfaces[car].get_non_essential_params(car)
    yield cp
  for i in range(len(gt["frame_times"])):
    ns = int(round(gt["frame_times"][i] * 1e9))
    v, a, v_lat, yaw_rate, steer = states[i]
    cam, info = camera_messages(i, ns, ns + 20_000_000, camera.width, camera.height, camera.width, K,
                                log_mono_time=ns)
    if segment_num is not None:
      cam.roadCameraState.encodeId = i
    yield cam
    if segment_num is not None:
      idx = new_message("roadEncodeIdx", logMonoTime=ns + 25_000_000)
      e = idx.roadEncodeIdx
      e.frameId, e.type, e.encodeId, e.segmentNum = i, "fullHEVC", i, segment_num
      e.segmentId, e.segmentIdEncode, e.timestampSof, e.timestampEof = i, i, ns, ns + 20_000_000
      yield idx
      if i % 5 == 0:   # calibrationd publishes at 4 Hz; the simulated camera is mounted straight
        cal = new_message("liveCalibration", logMonoTime=ns)
        c = cal.liveCalibration
        c.calStatus, c.calPerc, c.validBlocks = "calibrated", 100, 20
        c.rpyCalib, c.rpyCalibSpread, c.height = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [CAM_HEIGHT]
        yield cal
    yield info
    if motion is not None:
      yield live_pose_message(motion, i, ns)
    yield car_state_message(v, a, steer, yaw_rate, int(gt["desire"][i]), log_mono_time=ns)
    yield driving_desire_message(int(gt["desire"][i]), "sim", log_mono_time=ns)
    yield ground_truth_message({k: gt[k][i] for k in GROUND_TRUTH_KEYS}, i, log_mono_time=ns)


def write_rlog(path: Path, gt: dict, states: np.ndarray, camera: CameraConfig, route: str) -> None:
  from cereal.logwriter import LogWriter
  with LogWriter(path) as lw:
    for ev in rlog_events(gt, states, camera, route):
      lw.write(ev)


def write_openpilot_segment(out_dir: Path, route: str, sim: dict, camera: CameraConfig, car: str, sseed: int) -> Path:
  """A simulated drive as a device records it: <dongle>|<route>--0/{rlog.zst, qlog.zst, fcamera.hevc}.
  Each simulated segment is its own world, so it is segment 0 of its own route."""
  from cereal.logwriter import LogWriter
  from cereal.services import SERVICE_LIST
  seg = Path(out_dir) / f"{route}--0"
  seg.mkdir(parents=True, exist_ok=True)
  gt, states = sim["gt"], sim["states"]
  t0 = float(np.random.default_rng([sseed, 909]).uniform(1000.0, 60000.0))   # boot-clock start, like a device
  gt = dict(gt, frame_times=t0 + gt["frame_times"])
  write_hevc(seg / "fcamera.hevc", sim["frames"])
  counts: dict[str, int] = {}
  with LogWriter(seg / "rlog.zst") as rlog, LogWriter(seg / "qlog.zst") as qlog:
    for ev in rlog_events(gt, states, camera, route, car=car, segment_num=0,
                          motion=device_motion(gt, states, sim["cam_yaw"])):
      w, dat = ev.which(), ev.to_bytes()
      rlog.write(dat)
      dec = 1 if w in ("initData", "carParams") else SERVICE_LIST[w].decimation
      k = counts.get(w, 0)
      counts[w] = k + 1
      if dec is not None and k % dec == 0:   # qlog: every decimation-th message of each service (loggerd's rule)
        qlog.write(dat)
  return seg

def _work(args):
  out, seed, index, duration, cam, progress, wander, shake, car, fmt, lane_change_every, cruise, lead_prob = args
  return str(write_segment(Path(out), seed, index, duration, cam, progress, wander, shake, car, fmt, lane_change_every,
                           cruise, lead_prob))


def parse_resolution(s: str) -> tuple[int, int]:
  try:
    w, h = (int(x) for x in s.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"--resolution must look like 1164x874, got {s!r}") from None
  if w <= 0 or h <= 0 or w % 2 or h % 2:
    raise argparse.ArgumentTypeError(f"--resolution {s!r}: width and height must be positive and even")
  if w < MIN_RESOLUTION[0] or h < MIN_RESOLUTION[1]:
    raise argparse.ArgumentTypeError(f"--resolution {s!r}: at least {MIN_RESOLUTION[0]}x{MIN_RESOLUTION[1]} "
                                     "(the renderer and libx265 need a real picture)")
  return w, h


MIN_RESOLUTION = (64, 32)


def cruise_range_arg(s: str) -> tuple[float, float]:
  """--cruise LOW,HIGH in m/s: 0 < LOW <= HIGH <= 35 (each road is made long enough for 35 m/s)."""
  try:
    low, high = (float(x) for x in s.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{s!r}: expected LOW,HIGH in m/s, e.g. 14,33") from None
  if not 0 < low <= high <= 35:
    raise argparse.ArgumentTypeError(f"{s!r}: expected 0 < LOW <= HIGH <= 35 m/s")
  return low, high


def _writable_dir_error(path: Path) -> str | None:
  """Why `path` cannot be (or become) an output directory, or None: it or an ancestor is a file."""
  for p in [path, *path.parents]:
    if p.exists():
      if not p.is_dir():
        return f"{p} is a file, not a directory"
      return None
  return None


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.sim.generate", __doc__)
  ap.add_argument("--out", type=Path, required=True)
  ap.add_argument("--segments", type=int, default=1)
  ap.add_argument("--duration", type=float, default=60.0, help="seconds per segment (comma2k19: 60)")
  ap.add_argument("--resolution", type=parse_resolution, default=(1164, 874), help="WxH (default EON 1164x874)")
  ap.add_argument("--focal", type=float, default=None, help="px (default: the EON's 910 scaled with the width)")
  ap.add_argument("--workers", type=int, default=1)
  ap.add_argument("--wander", type=float, default=1.0,
                  help="scale of the driver's lateral imperfections (weave, drift, steering noise); > 1 gives the "
                       "varied ego motion a world model needs to learn how steering moves the view")
  ap.add_argument("--camera-shake", type=float, default=0.0, metavar="DEG",
                  help="std (degrees) of a loose camera mount's yaw relative to the car (0.1 s correlation time); "
                       "logged in the poses, IMU and labels. Gives view turns that only the pose explains")
  ap.add_argument("--lane-change-every", type=float, default=HumanDriverConfig.lane_change_every, metavar="S",
                  help="mean seconds between the driver's lane changes on multi-lane roads (default %(default)s); the "
                       "first comes after min(5 s, S) plus an exponential wait. Smaller gives more lane-change desire "
                       "in the data")
  ap.add_argument("--cruise", type=cruise_range_arg, default=HumanDriverConfig.cruise, metavar="LOW,HIGH",
                  help="m/s, the range the driver draws its cruise speeds from (default %(default)s); the logged "
                       "speeds are what a model trained on the data knows")
  ap.add_argument("--lead-prob", type=float, default=TrafficConfig.lead_prob, metavar="P",
                  help="chance of a lead car in the ego lane (default %(default)s); a lead holds the car below its "
                       "cruise speed")
  ap.add_argument("--car", type=car_arg, default=DEFAULT_CAR, help=f"an opendbc platform (default {DEFAULT_CAR})")
  ap.add_argument("--format", choices=FORMATS, default="comma2k19",
                  help="comma2k19 (poses, CAN, IMU, labels, video.hevc) or openpilot (a device's route layout: "
                       "<dongle>|<route>--<n>/ with rlog.zst, qlog.zst, fcamera.hevc)")
  add_common_args(ap, seed=0, seed_help="every segment's world is drawn from (seed, its index)")
  args = ap.parse_args(argv)
  if args.segments < 1 or not 1.0 <= args.duration < 1e5 or args.workers < 1 or not 0 < args.wander < 1e3:
    ap.error("--segments and --workers must be >= 1, --duration finite and >= 1 s, --wander finite and > 0")
  if args.focal is not None and not 0 < args.focal < 1e6:
    ap.error(f"--focal must be a positive number of pixels, got {args.focal}")
  if (why := _writable_dir_error(args.out)) is not None:
    ap.error(f"--out {args.out}: {why}")
  if not 1.0 <= args.lane_change_every < 1e6:
    ap.error(f"--lane-change-every must be a finite number of seconds >= 1, got {args.lane_change_every}")
  if not 0.0 <= args.lead_prob <= 1.0:
    ap.error(f"--lead-prob must be in [0, 1], got {args.lead_prob}")
  if not 0.0 <= args.camera_shake <= 10.0:
    ap.error(f"--camera-shake must be in [0, 10] degrees, got {args.camera_shake}")
  w, h = args.resolution
  cam = CameraConfig(w, h, args.focal if args.focal else EON_FOCAL * w / EON_ROAD_W)
  jobs = [(str(args.out), args.seed, i, args.duration, cam, args.workers == 1, args.wander, args.camera_shake,
           args.car, args.format, args.lane_change_every, args.cruise, args.lead_prob) for i in range(args.segments)]
  if args.workers == 1:
    paths = [_work(j) for j in tqdm(jobs, desc="segments")]
  else:
    with mp.get_context("spawn").Pool(args.workers) as pool:
      paths = list(tqdm(pool.imap(_work, jobs), total=len(jobs), desc="segments"))
  for p in paths:
    print(p)
  emit_result({"out": str(args.out), "segments": [str(p) for p in paths]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
