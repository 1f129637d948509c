"""Camera models, the device <-> view frame change, projection and the model-frame warp.

Frames (openpilot's):
* device frame: x forward, y right, z down (rigidly attached to the camera housing).
* view frame:   x right, y down, z forward (the pinhole camera's optical frame).
* calibrated car frame ("calib"): device axes rotated by the mounting calibration so that x points
  along the car's direction of travel. ``rpy_calib`` = (roll, pitch, yaw) Euler angles of
  device_from_calib = euler2rot(rpy_calib), i.e. v_device = euler2rot(rpy_calib) @ v_calib.
  With roll = 0 the car's forward axis seen from the device is
  (cos p cos y, cos p sin y, -sin p): positive yaw = camera turned LEFT of the direction of travel
  (travel appears to the right), positive pitch = camera tilted DOWN (travel appears above centre,
  i.e. the horizon moves up in the image).

The *model frame* is a virtual pinhole camera aligned with the calibrated car frame
(out_w x out_h at out_focal px, principal point at (out_w/2, MODEL_FRAME_CY_FRAC*out_h), like
openpilot's 512x256 "medmodel" frame whose horizon row is 47.6). A point straight ahead at infinity
(the vanishing point of the travel direction) lands on (out_w/2, cy); the horizon of a level
road is the row cy.
"""
import functools
from dataclasses import dataclass

import numpy as np

from common.modelconstants import (
  EON_FOCAL,
  EON_ROAD_H,
  EON_ROAD_W,
  MODEL_FRAME_FOCAL,
  MODEL_FRAME_H,
  MODEL_FRAME_W,
  WM_FRAME_H,
  WM_FRAME_W,
)
from common.transformations.orientation import euler2rot

# view frame (x right, y down, z fwd) -> device frame (x fwd, y right, z down)
device_frame_from_view_frame = np.array([
  [0.0, 0.0, 1.0],
  [1.0, 0.0, 0.0],
  [0.0, 1.0, 0.0],
])
view_frame_from_device_frame = device_frame_from_view_frame.T

# openpilot's medmodel frame puts the horizon at row 47.6 of 256: mostly road, a strip of sky.
MODEL_FRAME_CY_FRAC = 47.6 / 256.0


@dataclass(frozen=True)
class CameraConfig:
  """Ideal pinhole camera (no distortion), principal point at the image centre unless given."""
  width: int
  height: int
  focal: float
  cx: float | None = None
  cy: float | None = None

  def __post_init__(self):
    if self.width <= 0 or self.height <= 0 or self.focal <= 0:
      raise ValueError(f"CameraConfig: width/height/focal must be > 0, got {self.width}x{self.height} f={self.focal}")

  @property
  def size(self) -> tuple[int, int]:
    return (self.width, self.height)

  @property
  def intrinsics(self) -> np.ndarray:
    cx = self.width / 2.0 if self.cx is None else self.cx
    cy = self.height / 2.0 if self.cy is None else self.cy
    return np.array([[self.focal, 0.0, cx], [0.0, self.focal, cy], [0.0, 0.0, 1.0]])

  def scaled(self, factor: float) -> "CameraConfig":
    """The same camera with the image resized by `factor` (e.g. 0.5 for a half-size render)."""
    K = self.intrinsics
    return CameraConfig(round(self.width * factor), round(self.height * factor), self.focal * factor,
                        K[0, 2] * factor, K[1, 2] * factor)


# comma EON road camera of comma2k19: 1164x874 px, focal 910 px.
EON_ROAD_CAM = CameraConfig(EON_ROAD_W, EON_ROAD_H, EON_FOCAL)


def sim_camera(width: int = EON_ROAD_W, height: int = EON_ROAD_H, fov_x_deg: float | None = None,
               focal: float | None = None) -> CameraConfig:
  """A parametrised pinhole camera for the simulator: give either the focal length in px or the
  horizontal field of view in degrees (defaults to the EON's focal scaled to the width)."""
  if focal is not None and fov_x_deg is not None:
    raise ValueError("sim_camera: give focal or fov_x_deg, not both")
  if fov_x_deg is not None:
    if not 0 < fov_x_deg < 180:
      raise ValueError(f"sim_camera: fov_x_deg must be in (0, 180), got {fov_x_deg}")
    focal = (width / 2.0) / np.tan(np.radians(fov_x_deg) / 2.0)
  elif focal is None:
    focal = EON_FOCAL * width / EON_ROAD_W
  return CameraConfig(width, height, float(focal))


def model_frame_intrinsics(out_w: int = MODEL_FRAME_W, out_h: int = MODEL_FRAME_H,
                           out_focal: float = MODEL_FRAME_FOCAL) -> np.ndarray:
  """3x3 intrinsics of the model frame (see module docstring for the principal point)."""
  return np.array([[out_focal, 0.0, out_w / 2.0], [0.0, out_focal, MODEL_FRAME_CY_FRAC * out_h], [0.0, 0.0, 1.0]])


def model_frame_camera(out_w: int = MODEL_FRAME_W, out_h: int = MODEL_FRAME_H,
                       out_focal: float = MODEL_FRAME_FOCAL) -> CameraConfig:
  K = model_frame_intrinsics(out_w, out_h, out_focal)
  return CameraConfig(out_w, out_h, out_focal, K[0, 2], K[1, 2])


def scaled_model_frame(out_w: int, out_h: int) -> tuple[int, int, float]:
  """(out_w, out_h, out_focal) of the 512x256 @ 910 px model frame downscaled to out_w x out_h
  (same field of view), e.g. the world model's 256x128 frame at focal 455."""
  if out_w * MODEL_FRAME_H != out_h * MODEL_FRAME_W:
    raise ValueError(f"scaled_model_frame: {out_w}x{out_h} is not a 2:1 downscale of {MODEL_FRAME_W}x{MODEL_FRAME_H}")
  return out_w, out_h, MODEL_FRAME_FOCAL * out_w / MODEL_FRAME_W


# the world model's input: the model frame downscaled to 256x128 RGB
WM_FRAME = scaled_model_frame(WM_FRAME_W, WM_FRAME_H)


def project(points_device, intrinsics) -> np.ndarray:
  """(N, 3) points in the device (or calibrated) frame -> (N, 2) pixel coordinates (u, v).

  Points at or behind the camera (x <= 0) come back as NaN."""
  p = np.asarray(points_device, dtype=np.float64)
  if p.shape[-1:] != (3,):
    raise ValueError(f"project(points_device): expected shape (..., 3), got {p.shape}")
  K = np.asarray(intrinsics, dtype=np.float64)
  view = p @ view_frame_from_device_frame.T          # (..., 3) x right, y down, z fwd
  img = view @ K.T
  with np.errstate(divide="ignore", invalid="ignore"):
    uv = img[..., :2] / img[..., 2:3]
  uv[view[..., 2] <= 0] = np.nan
  return uv


def unproject(uv, intrinsics) -> np.ndarray:
  """(N, 2) pixels -> (N, 3) unit rays in the device frame."""
  uv = np.asarray(uv, dtype=np.float64)
  ones = np.ones(uv.shape[:-1] + (1,))
  rays_view = np.concatenate([uv, ones], -1) @ np.linalg.inv(np.asarray(intrinsics, dtype=np.float64)).T
  rays = rays_view @ device_frame_from_view_frame.T
  return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def device_from_calib(rpy_calib) -> np.ndarray:
  return euler2rot(np.asarray(rpy_calib, dtype=np.float64))


def get_model_frame_warp(rpy_calib, src_cam: CameraConfig = EON_ROAD_CAM, out_w: int = MODEL_FRAME_W,
                         out_h: int = MODEL_FRAME_H, out_focal: float = MODEL_FRAME_FOCAL) -> np.ndarray:
  """3x3 homography H mapping SOURCE-camera pixels to MODEL-FRAME pixels (pure rotation + intrinsics):

    model_px ~ K_model @ view_from_device @ calib_from_device @ device_from_view @ inv(K_src) @ src_px

  (a fresh array; the same calibration and cameras are computed once: modeld asks for it every frame)
  """
  rpy = np.asarray(rpy_calib, dtype=np.float64)
  if rpy.shape != (3,):
    raise ValueError(f"get_model_frame_warp(rpy_calib): expected shape (3,), got {rpy.shape}")
  K = src_cam.intrinsics
  return _model_frame_warp(tuple(rpy.tolist()), tuple(K.reshape(-1).tolist()), out_w, out_h, out_focal).copy()


@functools.lru_cache(maxsize=64)
def _model_frame_warp(rpy: tuple, k_src: tuple, out_w: int, out_h: int, out_focal: float) -> np.ndarray:
  K_src = np.array(k_src, dtype=np.float64).reshape(3, 3)
  K_model = model_frame_intrinsics(out_w, out_h, out_focal)
  calib_from_device = device_from_calib(np.array(rpy, dtype=np.float64)).T
  H = K_model @ view_frame_from_device_frame @ calib_from_device @ device_frame_from_view_frame @ np.linalg.inv(K_src)
  return H / H[2, 2]


def warp_to_model_frame(img: np.ndarray, rpy_calib, src_cam: CameraConfig = EON_ROAD_CAM,
                        out_w: int = MODEL_FRAME_W, out_h: int = MODEL_FRAME_H,
                        out_focal: float = MODEL_FRAME_FOCAL, antialias: bool = True) -> np.ndarray:
  """Warp an HxWxC (or HxW) source image into the model frame (bilinear, black outside).

  With antialias, a warp that shrinks the image by k >= 2 (src focal / out focal) first box-filters the
  source by the integer k (cv2.INTER_AREA) and warps from that, so e.g. the world model's 256x128
  frame (focal 455 from the EON's 910) does not alias the way point-sampled bilinear does."""
  import cv2
  img = np.asarray(img)
  if img.ndim not in (2, 3) or img.shape[0] != src_cam.height or img.shape[1] != src_cam.width:
    raise ValueError(f"warp_to_model_frame: image shape {img.shape} does not match camera "
                     f"{src_cam.width}x{src_cam.height}")
  k = int(np.floor(src_cam.focal / out_focal + 1e-9)) if antialias else 1
  if k >= 2:
    small_w, small_h = src_cam.width // k, src_cam.height // k
    img = cv2.resize(img[:small_h * k, :small_w * k], (small_w, small_h), interpolation=cv2.INTER_AREA)
    K = src_cam.intrinsics
    # integer-centred pixels: x_src = k * x_small + (k - 1) / 2
    src_cam = CameraConfig(small_w, small_h, src_cam.focal / k, (K[0, 2] - (k - 1) / 2) / k, (K[1, 2] - (k - 1) / 2) / k)
  H = get_model_frame_warp(rpy_calib, src_cam, out_w, out_h, out_focal)
  return cv2.warpPerspective(img, H, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def vanishing_point(rpy_calib, cam: CameraConfig = EON_ROAD_CAM) -> np.ndarray:
  """Pixel (u, v) in `cam` where the car's direction of travel (calib +x at infinity) appears."""
  fwd_device = device_from_calib(rpy_calib) @ np.array([1.0, 0.0, 0.0])
  return project(fwd_device[None], cam.intrinsics)[0]


def horizon_row(rpy_calib, cam: CameraConfig, u: float | None = None) -> float:
  """Row where the horizon (the calib-frame plane z = 0 at infinity) crosses image column u
  (default: the principal column)."""
  K = cam.intrinsics
  u = K[0, 2] if u is None else u
  # Horizon = image of directions d with d_z(calib) = 0: the line l = K^-T @ view_from_calib @ e_z.
  R = view_frame_from_device_frame @ device_from_calib(rpy_calib)          # view_from_calib
  line = np.linalg.inv(K).T @ (R @ np.array([0.0, 0.0, 1.0]))              # l . [u, v, 1] = 0
  if abs(line[1]) < 1e-12:
    raise ValueError("horizon_row: horizon is vertical in this image")
  return float(-(line[0] * u + line[2]) / line[1])
