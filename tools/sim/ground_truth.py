"""Simulator ground truth: the per-frame labels written to every generated segment's `ground_truth/`
folder (NumPy .npy files without extension, like comma2k19's own arrays), one row per video frame (20 Hz).

FIELDS (name: shape, meaning; car frame = x forward, y right, z down at the camera, metres):
  frame_times     (N,)          s, same clock as global_pose/frame_times
  pose_world      (N, 6)        camera x, y, z (NED of the sim world, m) and roll, pitch, yaw (rad)
  road_s          (N,)          m, distance along the road's reference line
  lateral_offset  (N,)          m from the centre of the lane the car is in, positive = car RIGHT of centre
  heading_error   (N,)          rad, car yaw - road yaw, positive = pointing to the right of the road
  lane_width      (N,)          m
  lane_lines      (N, 2, 33, 2) left / right line of the ego lane: (y, z) at x = X_IDXS
  road_edges      (N, 2, 33, 2) left / right road edge: (y, z) at x = X_IDXS
  lead            (N, 5)        present (0/1), x (to the lead's rear), y, v_rel (v_lead - v_ego), a_rel
  path            (N, 33, 3)    centre line of the ego lane, or of the target lane during a lane change:
                                (x = X_IDXS, y, z)
  desire          (N,)          int index into common.modelconstants.DESIRES
  curvature       (N,)          1/m, executed by the car, positive = left
  accel           (N,)          m/s^2, forward
  speed           (N,)          m/s

`compute_ground_truth(world, vehicle_state, ...)` returns one frame's dict with these names (scalars for
the (N,) fields); `stack_frames(list_of_dicts)` builds the arrays; `save/load_ground_truth` write/read
the folder with shape checks.
"""
from pathlib import Path

import numpy as np

from common.modelconstants import DESIRE_LEN, IDX_N, NUM_LANE_LINES, NUM_ROAD_EDGES, X_IDXS
from common.transformations.orientation import euler2rot
from tools.sim.vehicle import CAM_HEIGHT, VehicleState

FIELDS = {
  "frame_times": (), "pose_world": (6,), "road_s": (), "lateral_offset": (), "heading_error": (), "lane_width": (),
  "lane_lines": (NUM_LANE_LINES, IDX_N, 2), "road_edges": (NUM_ROAD_EDGES, IDX_N, 2), "lead": (5,),
  "path": (IDX_N, 3), "desire": (), "curvature": (), "accel": (), "speed": (),
}
_AHEAD = np.linspace(-2.0, 240.0, 485)   # m along the road sampled for the car-frame polylines


def wrap_angle(a):
  return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def camera_pose(road, st: VehicleState, s: float, cam_height: float = CAM_HEIGHT, cam_yaw: float = 0.0) -> np.ndarray:
  """(6,) camera pose in the world: on the road surface under the car + cam_height, pitched with the grade, and
  yawed by cam_yaw (rad, + = right) relative to the car (a mount that is not rigid, see tools/sim/generate.py)."""
  pitch = float(np.arctan(road.grade_at(s) * np.cos(st.psi - road.psi_at(s))))
  return np.array([st.x, st.y, -road.height_at(s) - cam_height, 0.0, pitch, st.psi + cam_yaw])


def _car_frame_lines(road, pose6: np.ndarray, s0: float, ds: np.ndarray) -> np.ndarray:
  """Lines at constant d (K,) sampled ahead, in the car frame, interpolated at X_IDXS -> (K, 33, 2) (y, z)."""
  R = euler2rot(pose6[3:])
  s = s0 + _AHEAD
  w = road.frenet_to_world(s[None, :], np.asarray(ds, np.float64)[:, None])   # (K, S, 3)
  dev = (w - pose6[:3]) @ R                                                    # (K, S, 3) car frame
  out = np.empty((len(ds), IDX_N, 2))
  for k in range(len(ds)):
    x = dev[k, :, 0]
    order = np.argsort(x)
    out[k, :, 0] = np.interp(X_IDXS, x[order], dev[k, order, 1])
    out[k, :, 1] = np.interp(X_IDXS, x[order], dev[k, order, 2])
  return out


def compute_ground_truth(world, st: VehicleState, t: float, desire: int = 0, target_lane: int | None = None,
                         s_guess: float | None = None, cam_height: float = CAM_HEIGHT, cam_yaw: float = 0.0) -> dict:
  """One frame of labels for the car state `st` at time t (see module docstring for the fields). cam_yaw turns the
  camera (and so pose_world and every device-frame label) relative to the car; heading_error stays the car's."""
  if not 0 <= int(desire) < DESIRE_LEN:
    raise ValueError(f"compute_ground_truth: desire {desire} outside 0..{DESIRE_LEN - 1}")
  road = world.road
  s_arr, d_arr = road.world_to_frenet(np.array([[st.x, st.y]]), s_guess)
  s, d = float(s_arr[0]), float(d_arr[0])
  lane = int(road.lane_of(d))
  tgt = lane if target_lane is None else int(target_lane)
  pose6 = camera_pose(road, st, s, cam_height, cam_yaw)
  lines = _car_frame_lines(road, pose6, s, np.array([road.line_d(lane), road.line_d(lane + 1), *road.edge_d,
                                                     road.lane_center_d(tgt)]))
  path = np.concatenate([X_IDXS[:, None], lines[4]], axis=1)
  lead = np.zeros(5)
  ahead = [c for c in world.cars if c.lane == lane and c.s - c.length / 2 > s]
  if ahead:
    c = min(ahead, key=lambda c: c.s)
    rear = road.frenet_to_world(c.s - c.length / 2, road.lane_center_d(c.lane))
    dev = (rear - pose6[:3]) @ euler2rot(pose6[3:])
    rel_yaw = road.psi_at(c.s) - st.psi
    lead = np.array([1.0, dev[0], dev[1], c.v * np.cos(rel_yaw) - st.v, c.a - st.a])
  return {
    "frame_times": float(t), "pose_world": pose6, "road_s": s,
    "lateral_offset": d - float(road.lane_center_d(lane)),
    "heading_error": float(wrap_angle(st.psi - road.psi_at(s))), "lane_width": float(road.lane_width),
    "lane_lines": lines[:2], "road_edges": lines[2:4], "lead": lead, "path": path, "desire": int(desire),
    "curvature": st.yaw_rate / max(st.v, 0.1), "accel": float(st.a), "speed": float(st.v),
    # not saved (helpers for controllers and scenarios): Frenet d of the car, lane indices
    "_d": d, "_lane": lane, "_target_lane": tgt,
    "_target_offset": d - float(road.lane_center_d(tgt)),
    "_course": st.course,   # rad, the car's velocity from its heading, + right
  }


def stack_frames(frames: list[dict]) -> dict:
  out = {}
  for name, shape in FIELDS.items():
    dtype = np.int64 if name == "desire" else np.float64
    out[name] = np.array([f[name] for f in frames], dtype=dtype).reshape((len(frames),) + shape)
  return out


def save_ground_truth(folder: Path, gt: dict) -> None:
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  n = len(gt["frame_times"])
  for name, shape in FIELDS.items():
    a = np.asarray(gt[name])
    if a.shape != (n,) + shape:
      raise ValueError(f"save_ground_truth: field {name} has shape {a.shape}, expected {(n,) + shape}")
    with open(folder / name, "wb") as fh:
      np.save(fh, a)


def load_ground_truth(folder: Path) -> dict:
  """Read a ground_truth/ folder; raises ValueError naming the file on a missing or malformed field."""
  folder = Path(folder)
  out, n = {}, None
  for name, shape in FIELDS.items():
    p = folder / name
    if not p.exists():
      raise ValueError(f"load_ground_truth: missing {p}")
    try:
      a = np.load(p, allow_pickle=False)
    except Exception as e:
      raise ValueError(f"load_ground_truth: cannot read {p}: {e}") from e
    n = len(a) if n is None else n
    if a.shape != (n,) + shape:
      raise ValueError(f"load_ground_truth: {p} has shape {a.shape}, expected {(n,) + shape}")
    out[name] = a
  return out
