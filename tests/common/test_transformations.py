import numpy as np
import pytest

from common.transformations.camera import (
  EON_ROAD_CAM,
  CameraConfig,
  device_frame_from_view_frame,
  get_model_frame_warp,
  horizon_row,
  model_frame_intrinsics,
  project,
  sim_camera,
  unproject,
  vanishing_point,
  view_frame_from_device_frame,
  warp_to_model_frame,
)
from common.transformations.coordinates import LocalCoord, ecef2geodetic, geodetic2ecef, ned_from_ecef_matrix
from common.transformations.orientation import (
  euler2quat,
  euler2rot,
  quat2euler,
  quat2rot,
  quat_inverse,
  quat_multiply,
  rot2euler,
  rot2quat,
  rot2rotvec,
  rotvec2rot,
)

rng = np.random.default_rng(0)


def _rand_rpy(n):
  return np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-np.pi, np.pi, n)], -1)


def _Rx(a): return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
def _Ry(a): return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
def _Rz(a): return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_euler_convention_is_zyx():
  r, p, y = 0.3, -0.2, 1.1
  np.testing.assert_allclose(euler2rot([r, p, y]), _Rz(y) @ _Ry(p) @ _Rx(r), atol=1e-12)
  # yaw about z-down: +yaw turns the x-forward axis towards +y (right)
  assert euler2rot([0, 0, 0.1])[1, 0] > 0
  # +pitch raises the nose: forward axis gets negative z (up)
  assert euler2rot([0, 0.1, 0])[2, 0] < 0


def test_round_trips_vectorised():
  rpy = _rand_rpy(200).reshape(10, 20, 3)
  R = euler2rot(rpy)
  assert R.shape == (10, 20, 3, 3)
  np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
  np.testing.assert_allclose(rot2euler(R), rpy, atol=1e-9)
  q = euler2quat(rpy)
  np.testing.assert_allclose(quat2rot(q), R, atol=1e-12)
  np.testing.assert_allclose(quat2euler(q), rpy, atol=1e-9)
  np.testing.assert_allclose(rot2quat(R), q, atol=1e-12)
  # rot2quat handles all four Shepperd branches (rotations by ~pi about each axis)
  for axis in np.eye(3):
    Rpi = rotvec2rot(axis * (np.pi - 1e-3))
    np.testing.assert_allclose(quat2rot(rot2quat(Rpi)), Rpi, atol=1e-12)


def test_quaternion_algebra():
  a, b = euler2quat(_rand_rpy(50)), euler2quat(_rand_rpy(50))
  np.testing.assert_allclose(quat2rot(quat_multiply(a, b)), quat2rot(a) @ quat2rot(b), atol=1e-12)
  np.testing.assert_allclose(quat2rot(quat_multiply(a, quat_inverse(a))), np.broadcast_to(np.eye(3), (50, 3, 3)), atol=1e-12)
  rv = rng.normal(size=(50, 3))
  rv *= np.minimum(1.0, 3.0 / np.linalg.norm(rv, axis=-1, keepdims=True))
  np.testing.assert_allclose(rot2rotvec(rotvec2rot(rv)), rv, atol=1e-9)
  np.testing.assert_allclose(rot2rotvec(rotvec2rot(np.array([1e-14, 0, 0]))), [1e-14, 0, 0], atol=1e-20)


def test_orientation_bad_input():
  with pytest.raises(ValueError, match="quat2rot"):
    quat2rot(np.zeros((3, 3)))
  with pytest.raises(ValueError, match="zero-norm"):
    quat2rot(np.zeros(4))
  with pytest.raises(ValueError, match="euler2rot"):
    euler2rot([1.0, 2.0])


def test_geodetic_ecef():
  # known point: lat 0, lon 0, alt 0 -> (a, 0, 0); north pole -> (0, 0, b)
  np.testing.assert_allclose(geodetic2ecef([0, 0, 0]), [6378137.0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(geodetic2ecef([90, 0, 0]), [0, 0, 6356752.314245], atol=1e-5)
  lla = np.stack([rng.uniform(-89.9, 89.9, 500), rng.uniform(-180, 180, 500), rng.uniform(-500, 20000, 500)], -1)
  back = ecef2geodetic(geodetic2ecef(lla))
  np.testing.assert_allclose(back[:, :2], lla[:, :2], atol=1e-9)
  np.testing.assert_allclose(back[:, 2], lla[:, 2], atol=1e-4)


def test_local_ned():
  origin = np.array([37.4, -122.1, 10.0])
  lc = LocalCoord.from_geodetic(origin)
  # 100 m north along the meridian -> ~(100, 0, ~0)
  north = lc.ecef2ned(geodetic2ecef([37.4 + 100 / 111_000, -122.1, 10.0]))
  assert 99 < north[0] < 101 and abs(north[1]) < 1e-6 and abs(north[2]) < 0.01
  up = lc.ecef2ned(geodetic2ecef(origin + [0, 0, 5]))
  np.testing.assert_allclose(up, [0, 0, -5], atol=1e-6)
  pts = rng.normal(size=(30, 3)) * 1000
  np.testing.assert_allclose(lc.ecef2ned(lc.ned2ecef(pts)), pts, atol=1e-6)
  lc2 = LocalCoord.from_ecef(geodetic2ecef(origin))
  np.testing.assert_allclose(lc2.ned_from_ecef_matrix, ned_from_ecef_matrix(origin), atol=1e-12)
  R = lc.ned_from_ecef_matrix
  np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
  with pytest.raises(ValueError, match="origin"):
    LocalCoord.from_geodetic(np.zeros((2, 3)))


def test_camera_projection():
  assert EON_ROAD_CAM.width == 1164 and EON_ROAD_CAM.height == 874 and EON_ROAD_CAM.focal == 910
  K = EON_ROAD_CAM.intrinsics
  np.testing.assert_allclose(device_frame_from_view_frame @ [0, 0, 1], [1, 0, 0])  # view z = device x
  np.testing.assert_allclose(view_frame_from_device_frame @ [0, 1, 0], [1, 0, 0])  # device y right = view x right
  uv = project(np.array([[10.0, 0, 0], [10.0, 1.0, 0.5], [-1.0, 0, 0]]), K)
  np.testing.assert_allclose(uv[0], [582, 437])
  np.testing.assert_allclose(uv[1], [582 + 91, 437 + 45.5])   # right -> +u, down -> +v
  assert np.all(np.isnan(uv[2]))
  rays = unproject(uv[:2], K)
  np.testing.assert_allclose(rays[1], np.array([10, 1, .5]) / np.linalg.norm([10, 1, .5]), atol=1e-12)
  cam = sim_camera(640, 480, fov_x_deg=90)
  assert cam.focal == pytest.approx(320)
  half = EON_ROAD_CAM.scaled(0.5)
  assert half.width == 582 and half.focal == 455
  with pytest.raises(ValueError, match="CameraConfig"):
    CameraConfig(0, 10, 100)


def test_model_frame_warp_geometry():
  rpy = np.array([0.0, 0.03, -0.02])   # camera tilted down 1.7 deg, turned right 1.1 deg
  H = get_model_frame_warp(rpy, EON_ROAD_CAM)
  Km = model_frame_intrinsics(512, 256, 910)
  vp = vanishing_point(rpy, EON_ROAD_CAM)
  # travel direction above the centre (camera tilted down) and left of it (camera turned right)
  assert vp[1] < 437 and vp[0] < 582
  # the vanishing point maps onto the model frame's principal point
  m = H @ np.array([vp[0], vp[1], 1.0])
  np.testing.assert_allclose(m[:2] / m[2], Km[:2, 2], atol=1e-9)
  # a point on the ground 20 m ahead, 2 m right in the calibrated frame
  p_calib = np.array([20.0, 2.0, 1.22])
  p_dev = euler2rot(rpy) @ p_calib
  src = project(p_dev[None], EON_ROAD_CAM.intrinsics)[0]
  dst = project(p_calib[None], Km)[0]
  m = H @ np.array([*src, 1.0])
  np.testing.assert_allclose(m[:2] / m[2], dst, atol=1e-9)
  # horizon row in the source passes through the vanishing point; in the model frame it is cy
  assert horizon_row(rpy, EON_ROAD_CAM, u=vp[0]) == pytest.approx(vp[1], abs=1e-9)
  from common.transformations.camera import model_frame_camera
  assert horizon_row(rpy * 0, model_frame_camera()) == pytest.approx(Km[1, 2])


def test_warp_image_moves_pixels():
  img = np.zeros((874, 1164, 3), np.uint8)
  rpy = np.array([0.0, 0.02, 0.01])
  vp = vanishing_point(rpy, EON_ROAD_CAM)
  u, v = int(round(vp[0])), int(round(vp[1]))
  img[v - 4:v + 5, u - 4:u + 5] = 255
  out = warp_to_model_frame(img, rpy, EON_ROAD_CAM, 512, 256, 910)
  assert out.shape == (256, 512, 3)
  ys, xs = np.nonzero(out[..., 0] > 128)
  Km = model_frame_intrinsics()
  assert abs(xs.mean() - Km[0, 2]) < 1.0 and abs(ys.mean() - Km[1, 2]) < 1.0
  with pytest.raises(ValueError, match="does not match camera"):
    warp_to_model_frame(np.zeros((10, 10, 3), np.uint8), rpy)


def test_world_model_frame_is_downscaled_model_frame():
  import cv2

  from common.transformations.camera import WM_FRAME, scaled_model_frame
  assert WM_FRAME == (256, 128, 455.0)
  rng2 = np.random.default_rng(3)
  src = cv2.resize((rng2.random((44, 58, 3)) * 255).astype(np.uint8), (1164, 874), interpolation=cv2.INTER_CUBIC)
  rpy = np.array([0.0, 0.05, 0.01])
  big = warp_to_model_frame(src, rpy, EON_ROAD_CAM, 512, 256, 910)
  small = warp_to_model_frame(src, rpy, EON_ROAD_CAM, *WM_FRAME)
  down = cv2.resize(big, (256, 128), interpolation=cv2.INTER_AREA)
  # same field of view: the direct low-res warp matches the downscaled full warp (up to resampling)
  assert np.abs(small.astype(float) - down).mean() < 3.5
  # anti-aliasing: on fine texture the point-sampled warp differs much more from the area downscale
  fine = (rng2.random((874, 1164, 3)) * 255).astype(np.uint8)
  ref = cv2.resize(warp_to_model_frame(fine, rpy, EON_ROAD_CAM, 512, 256, 910), (256, 128), interpolation=cv2.INTER_AREA)
  err_aa = np.abs(warp_to_model_frame(fine, rpy, EON_ROAD_CAM, *WM_FRAME).astype(float) - ref).mean()
  err_pt = np.abs(warp_to_model_frame(fine, rpy, EON_ROAD_CAM, *WM_FRAME, antialias=False).astype(float) - ref).mean()
  assert err_aa < 0.7 * err_pt
  shifted = warp_to_model_frame(src, rpy + [0, 0.02, 0], EON_ROAD_CAM, *WM_FRAME)
  assert np.abs(shifted.astype(float) - down).mean() > 3 * np.abs(small.astype(float) - down).mean()
  with pytest.raises(ValueError, match="downscale"):
    scaled_model_frame(256, 100)
