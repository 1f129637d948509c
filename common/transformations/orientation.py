"""Rotation representations, vectorised over any leading axes.

Conventions (openpilot's):
* quaternion q = (w, x, y, z), Hamilton product, unit norm; quat2rot(q) @ v rotates v by q.
  A quaternion describing the orientation of frame B in frame A maps B-coordinates to A-coordinates
  (R_A_from_B = quat2rot(q_A_B)).
* Euler angles are (roll, pitch, yaw) with R = Rz(yaw) @ Ry(pitch) @ Rx(roll)  (intrinsic z-y'-x'').
  For a frame with axes x forward, y right, z down (NED / device / car frame) this is the
  aerospace convention: yaw about z-down (positive = nose to the right), pitch positive = nose up,
  roll positive = right side down.
"""
import numpy as np


def _as_float(a, last: int, name: str) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.shape[-1:] != (last,):
    raise ValueError(f"{name}: expected shape (..., {last}), got {a.shape}")
  return a


def quat2rot(q) -> np.ndarray:
  """(..., 4) quaternions (w, x, y, z) -> (..., 3, 3) rotation matrices. Normalises q."""
  q = _as_float(q, 4, "quat2rot(q)")
  n = np.linalg.norm(q, axis=-1, keepdims=True)
  if np.any(n == 0):
    raise ValueError("quat2rot(q): zero-norm quaternion")
  w, x, y, z = np.moveaxis(q / n, -1, 0)
  R = np.empty(q.shape[:-1] + (3, 3))
  R[..., 0, 0] = 1 - 2 * (y * y + z * z)
  R[..., 0, 1] = 2 * (x * y - w * z)
  R[..., 0, 2] = 2 * (x * z + w * y)
  R[..., 1, 0] = 2 * (x * y + w * z)
  R[..., 1, 1] = 1 - 2 * (x * x + z * z)
  R[..., 1, 2] = 2 * (y * z - w * x)
  R[..., 2, 0] = 2 * (x * z - w * y)
  R[..., 2, 1] = 2 * (y * z + w * x)
  R[..., 2, 2] = 1 - 2 * (x * x + y * y)
  return R


def rot2quat(R) -> np.ndarray:
  """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

  Shepperd's method: pick the numerically largest of (w, x, y, z) to divide by."""
  R = np.asarray(R, dtype=np.float64)
  if R.shape[-2:] != (3, 3):
    raise ValueError(f"rot2quat(R): expected shape (..., 3, 3), got {R.shape}")
  m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
  tr = m00 + m11 + m22
  # candidates: 4w^2, 4x^2, 4y^2, 4z^2
  cand = np.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1)
  k = np.argmax(cand, axis=-1)
  s = 2.0 * np.sqrt(np.maximum(np.take_along_axis(cand, k[..., None], -1)[..., 0], 1e-300))  # = 4*|comp|
  d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
  s21, s02, s10 = R[..., 2, 1] + R[..., 1, 2], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 0] + R[..., 0, 1]
  q = np.empty(R.shape[:-2] + (4,))
  qs = [
    np.stack([s / 4, d21 / s, d02 / s, d10 / s], -1),
    np.stack([d21 / s, s / 4, s10 / s, s02 / s], -1),
    np.stack([d02 / s, s10 / s, s / 4, s21 / s], -1),
    np.stack([d10 / s, s02 / s, s21 / s, s / 4], -1),
  ]
  for i in range(4):
    sel = k == i
    q[sel] = qs[i][sel]
  q *= np.where(q[..., :1] < 0, -1.0, 1.0)
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def euler2rot(rpy) -> np.ndarray:
  """(..., 3) (roll, pitch, yaw) -> (..., 3, 3) R = Rz(yaw) Ry(pitch) Rx(roll)."""
  rpy = _as_float(rpy, 3, "euler2rot(rpy)")
  cr, sr = np.cos(rpy[..., 0]), np.sin(rpy[..., 0])
  cp, sp = np.cos(rpy[..., 1]), np.sin(rpy[..., 1])
  cy, sy = np.cos(rpy[..., 2]), np.sin(rpy[..., 2])
  R = np.empty(rpy.shape[:-1] + (3, 3))
  R[..., 0, 0] = cy * cp
  R[..., 0, 1] = cy * sp * sr - sy * cr
  R[..., 0, 2] = cy * sp * cr + sy * sr
  R[..., 1, 0] = sy * cp
  R[..., 1, 1] = sy * sp * sr + cy * cr
  R[..., 1, 2] = sy * sp * cr - cy * sr
  R[..., 2, 0] = -sp
  R[..., 2, 1] = cp * sr
  R[..., 2, 2] = cp * cr
  return R


def rot2euler(R) -> np.ndarray:
  """(..., 3, 3) -> (..., 3) (roll, pitch, yaw); pitch in [-pi/2, pi/2], roll/yaw in (-pi, pi]."""
  R = np.asarray(R, dtype=np.float64)
  if R.shape[-2:] != (3, 3):
    raise ValueError(f"rot2euler(R): expected shape (..., 3, 3), got {R.shape}")
  roll = np.arctan2(R[..., 2, 1], R[..., 2, 2])
  pitch = np.arcsin(np.clip(-R[..., 2, 0], -1.0, 1.0))
  yaw = np.arctan2(R[..., 1, 0], R[..., 0, 0])
  return np.stack([roll, pitch, yaw], axis=-1)


def euler2quat(rpy) -> np.ndarray:
  """(..., 3) (roll, pitch, yaw) -> (..., 4) quaternion (w, x, y, z) with w >= 0."""
  rpy = _as_float(rpy, 3, "euler2quat(rpy)")
  cr, sr = np.cos(rpy[..., 0] / 2), np.sin(rpy[..., 0] / 2)
  cp, sp = np.cos(rpy[..., 1] / 2), np.sin(rpy[..., 1] / 2)
  cy, sy = np.cos(rpy[..., 2] / 2), np.sin(rpy[..., 2] / 2)
  q = np.stack([
    cr * cp * cy + sr * sp * sy,
    sr * cp * cy - cr * sp * sy,
    cr * sp * cy + sr * cp * sy,
    cr * cp * sy - sr * sp * cy,
  ], axis=-1)
  return q * np.where(q[..., :1] < 0, -1.0, 1.0)


def quat2euler(q) -> np.ndarray:
  """(..., 4) quaternion -> (..., 3) (roll, pitch, yaw)."""
  return rot2euler(quat2rot(q))


def quat_multiply(a, b) -> np.ndarray:
  """Hamilton product a * b over (..., 4); quat2rot(a*b) = quat2rot(a) @ quat2rot(b)."""
  a = _as_float(a, 4, "quat_multiply(a)")
  b = _as_float(b, 4, "quat_multiply(b)")
  aw, ax, ay, az = np.moveaxis(a, -1, 0)
  bw, bx, by, bz = np.moveaxis(b, -1, 0)
  return np.stack([
    aw * bw - ax * bx - ay * by - az * bz,
    aw * bx + ax * bw + ay * bz - az * by,
    aw * by - ax * bz + ay * bw + az * bx,
    aw * bz + ax * by - ay * bx + az * bw,
  ], axis=-1)


def quat_inverse(q) -> np.ndarray:
  """Conjugate over the norm squared: (..., 4)."""
  q = _as_float(q, 4, "quat_inverse(q)")
  return q * np.array([1.0, -1.0, -1.0, -1.0]) / np.sum(q * q, axis=-1, keepdims=True)


def rot2rotvec(R) -> np.ndarray:
  """(..., 3, 3) -> (..., 3) axis * angle (angle in [0, pi])."""
  q = rot2quat(R)
  v = q[..., 1:]
  s = np.linalg.norm(v, axis=-1, keepdims=True)
  angle = 2 * np.arctan2(s, q[..., :1])
  scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-300), 2.0)  # small-angle limit: 2*v
  return v * scale


def rotvec2rot(rv) -> np.ndarray:
  """(..., 3) axis * angle -> (..., 3, 3) (Rodrigues)."""
  rv = _as_float(rv, 3, "rotvec2rot(rv)")
  th = np.linalg.norm(rv, axis=-1, keepdims=True)
  half = th / 2
  sinc = np.where(th > 1e-12, np.sin(half) / np.maximum(th, 1e-300), 0.5)
  q = np.concatenate([np.cos(half), rv * sinc], axis=-1)
  return quat2rot(q)
