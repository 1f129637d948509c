"""Pose targets from a segment's global poses (the paper's 6-DOF pose and plan targets).

Inputs are comma2k19's global_pose arrays: per-frame ECEF positions (N, 3) and quaternions (N, 4)
(w, x, y, z) giving the orientation of the DEVICE frame (x fwd, y right, z down) in ECEF, i.e.
R_ecef_from_device = quat2rot(q) (checked on real data: tests/common/test_poses.py).

`calib` (roll, pitch, yaw of device_from_calib, see common/transformations/camera.py and
common/calibration.py) turns the device frame into the calibrated car frame:
R_ecef_from_car = R_ecef_from_device @ euler2rot(calib). calib=None uses the device frame as the car frame.

A 6-DOF pose is (x, y, z, roll, pitch, yaw): the position of a frame's origin and the Euler angles of
its rotation, both expressed in a reference car frame.
"""
import numpy as np

from common.modelconstants import PLAN_SLICES, PLAN_WIDTH, T_IDXS
from common.transformations.orientation import euler2rot, quat2rot, rot2euler, rot2rotvec, rotvec2rot


def _check(positions_ecef, quats) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(positions_ecef, dtype=np.float64)
  q = np.asarray(quats, dtype=np.float64)
  if p.ndim != 2 or p.shape[1] != 3:
    raise ValueError(f"positions_ecef: expected shape (N, 3), got {p.shape}")
  if q.shape != (p.shape[0], 4):
    raise ValueError(f"quats: expected shape ({p.shape[0]}, 4), got {q.shape}")
  if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
    raise ValueError("positions_ecef/quats contain NaN or inf")
  return p, q


def ecef_from_car(quats, calib=None) -> np.ndarray:
  """(N, 4) device quaternions -> (N, 3, 3) R_ecef_from_car."""
  R = quat2rot(quats)
  if calib is not None:
    R = R @ euler2rot(np.asarray(calib, dtype=np.float64))
  return R


def relative_poses(positions_ecef, quats_ecef_from_cam, ref_index: int, calib=None) -> np.ndarray:
  """(N, 6) pose of every frame in the car frame of frame `ref_index` (which gets all zeros)."""
  p, q = _check(positions_ecef, quats_ecef_from_cam)
  if not -len(p) <= ref_index < len(p):
    raise IndexError(f"relative_poses: ref_index {ref_index} out of range for {len(p)} frames")
  R = ecef_from_car(q, calib)                                  # (N, 3, 3)
  R_ref = R[ref_index]
  xyz = (p - p[ref_index]) @ R_ref                             # R_ref^T (p - p_ref), (N, 3)
  rpy = rot2euler(R_ref.T @ R)                                 # (N, 3)
  return np.concatenate([xyz, rpy], axis=-1)


def transitions(poses6) -> np.ndarray:
  """(N, 6) poses in one common frame -> (N, 6) relative transform from frame i-1 to frame i,
  expressed in frame i-1's car frame (row 0 is the identity = zeros). This is the world model's
  transition (action) signal."""
  P = np.asarray(poses6, dtype=np.float64)
  if P.ndim != 2 or P.shape[1] != 6:
    raise ValueError(f"transitions(poses6): expected shape (N, 6), got {P.shape}")
  R = euler2rot(P[:, 3:])
  out = np.zeros_like(P)
  if len(P) > 1:
    dp = P[1:, :3] - P[:-1, :3]
    out[1:, :3] = np.einsum("nji,nj->ni", R[:-1], dp)          # R_{i-1}^T (p_i - p_{i-1})
    out[1:, 3:] = rot2euler(np.swapaxes(R[:-1], -1, -2) @ R[1:])
  return out


def compose_transitions(trans6) -> np.ndarray:
  """Inverse of transitions(): chain (N, 6) relative transforms into poses in frame 0's frame."""
  T = np.asarray(trans6, dtype=np.float64)
  if T.ndim != 2 or T.shape[1] != 6:
    raise ValueError(f"compose_transitions(trans6): expected shape (N, 6), got {T.shape}")
  out = np.zeros_like(T)
  R, p = np.eye(3), np.zeros(3)
  dR = euler2rot(T[:, 3:])
  for i in range(1, len(T)):
    p = p + R @ T[i, :3]
    R = R @ dR[i]
    out[i, :3], out[i, 3:] = p, rot2euler(R)
  return out


def downsample_indices(frame_times, rate_hz: float) -> np.ndarray:
  """Indices of the frames nearest to a uniform grid at `rate_hz` starting at the first frame
  (e.g. every 4th frame for 20 Hz -> 5 Hz). Unique and increasing."""
  t = np.asarray(frame_times, dtype=np.float64)
  if t.ndim != 1 or len(t) == 0:
    raise ValueError(f"downsample_indices(frame_times): expected a non-empty 1-D array, got shape {t.shape}")
  if np.any(np.diff(t) <= 0):
    raise ValueError("downsample_indices(frame_times): frame_times must be strictly increasing")
  if not rate_hz > 0:
    raise ValueError(f"downsample_indices: rate_hz must be > 0, got {rate_hz}")
  n = int(np.floor((t[-1] - t[0]) * rate_hz + 1e-6)) + 1
  grid = t[0] + np.arange(n) / rate_hz
  idx = np.clip(np.searchsorted(t, grid), 1, len(t) - 1)
  idx = np.where(np.abs(t[idx - 1] - grid) <= np.abs(t[idx] - grid), idx - 1, idx)
  return np.unique(idx)


def angular_velocity(frame_times, R) -> np.ndarray:
  """(N,) times, (N, 3, 3) rotations -> (N, 3) body angular velocity [rad/s] in each frame's own axes
  (interval rates R_k^T R_{k+1} / dt, averaged onto the frames)."""
  t = np.asarray(frame_times, dtype=np.float64)
  if len(t) < 2:
    return np.zeros((len(t), 3))
  w_int = rot2rotvec(np.swapaxes(R[:-1], -1, -2) @ R[1:]) / np.diff(t)[:, None]   # (N-1, 3)
  w = np.empty((len(t), 3))
  w[0], w[-1] = w_int[0], w_int[-1]
  w[1:-1] = 0.5 * (w_int[:-1] + w_int[1:])
  return w


def plan_targets(frame_times, positions_ecef, quats, t_idxs=T_IDXS, calib=None, velocities_ecef=None):
  """Future trajectory of the car in its CURRENT car frame on the time grid t_idxs.

  Returns (plan (N, len(t_idxs), PLAN_WIDTH), valid (N, len(t_idxs)) bool) where for frame i and
  future time tau = frame_times[i] + t_idxs[j], all in frame i's car frame (PLAN_SLICES):
    position        R_i^T (p(tau) - p_i)                         m
    velocity        R_i^T v(tau)                                 m/s   (velocities_ecef, else d p/dt)
    acceleration    R_i^T a(tau)                                 m/s^2 (d v/dt, gravity not included)
    orientation     rot2euler(R_i^T R(tau))                      rad
    orientation_rate R_i^T R(tau) w_body(tau)                    rad/s (angular velocity, frame-i axes)
  Positions/velocities are interpolated linearly, rotations by slerp. valid is False where tau lies
  beyond the last frame (those rows hold the last frame's values and must not be trained on).
  """
  t = np.asarray(frame_times, dtype=np.float64)
  p, q = _check(positions_ecef, quats)
  if t.shape != (len(p),):
    raise ValueError(f"frame_times: expected shape ({len(p)},), got {t.shape}")
  if len(t) < 2 or np.any(np.diff(t) <= 0):
    raise ValueError("frame_times: need >= 2 strictly increasing times")
  t_idxs = np.asarray(t_idxs, dtype=np.float64)
  R = ecef_from_car(q, calib)                                           # (N, 3, 3)
  if velocities_ecef is None:
    v = np.gradient(p, t, axis=0)
  else:
    v = np.asarray(velocities_ecef, dtype=np.float64)
    if v.shape != p.shape:
      raise ValueError(f"velocities_ecef: expected shape {p.shape}, got {v.shape}")
  a = np.gradient(v, t, axis=0)
  w = angular_velocity(t, R)                                           # (N, 3) body rates

  tau = t[:, None] + t_idxs[None, :]                                   # (N, T)
  valid = tau <= t[-1] + 1e-6
  tau_c = np.minimum(tau, t[-1])
  k = np.clip(np.searchsorted(t, tau_c, side="right") - 1, 0, len(t) - 2)   # interval index (N, T)
  s = ((tau_c - t[k]) / (t[k + 1] - t[k]))[..., None]                  # (N, T, 1) in [0, 1]

  def lerp(x):
    return x[k] * (1 - s) + x[k + 1] * s

  p_tau, v_tau, a_tau, w_tau = lerp(p), lerp(v), lerp(a), lerp(w)      # (N, T, 3)
  rv = rot2rotvec(np.swapaxes(R[:-1], -1, -2) @ R[1:])                 # (N-1, 3) interval rotations
  R_tau = R[k] @ rotvec2rot(rv[k] * s)                                 # (N, T, 3, 3) slerp
  RiT = np.swapaxes(R, -1, -2)[:, None]                                # (N, 1, 3, 3)

  plan = np.empty(tau.shape + (PLAN_WIDTH,))
  plan[..., PLAN_SLICES["position"]] = (RiT @ (p_tau - p[:, None])[..., None])[..., 0]
  plan[..., PLAN_SLICES["velocity"]] = (RiT @ v_tau[..., None])[..., 0]
  plan[..., PLAN_SLICES["acceleration"]] = (RiT @ a_tau[..., None])[..., 0]
  R_rel = RiT @ R_tau                                                  # (N, T, 3, 3)
  plan[..., PLAN_SLICES["orientation"]] = rot2euler(R_rel)
  plan[..., PLAN_SLICES["orientation_rate"]] = (R_rel @ w_tau[..., None])[..., 0]
  return plan, valid


def curvature_from_poses(frame_times, velocities_ecef, quats, calib=None, min_speed: float = 1.0):
  """Executed path curvature [1/m, + left] per frame = -yaw_rate_z / speed (modelconstants convention),
  with yaw_rate_z the car-frame angular rate about z-down. NaN below min_speed."""
  R = ecef_from_car(np.asarray(quats, dtype=np.float64), calib)
  w = angular_velocity(frame_times, R)
  speed = np.linalg.norm(np.asarray(velocities_ecef, dtype=np.float64), axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(speed >= min_speed, -w[:, 2] / speed, np.nan)
