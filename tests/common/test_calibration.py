import numpy as np
import pytest

from common.calibration import (
  PITCH_LIMITS,
  Calibrator,
  estimate_calibration,
  rpy_from_travel_direction,
  to_car_frame,
  velocities_in_device_frame,
)
from common.transformations.orientation import euler2rot
from tests.common.test_poses import REAL_SEG, circle_drive
from tools.lib.segment import load_npy


def test_recovers_synthetic_mounting():
  calib = (0.0, 0.04, -0.03)
  t, p, q, v, _ = circle_drive(calib=calib)
  vd = velocities_in_device_frame(v, q)
  res = estimate_calibration(vd)
  np.testing.assert_allclose(res.rpy, calib, atol=1e-9)
  assert res.valid and res.n_samples == len(t)
  # sign meaning: +pitch = camera tilted down -> travel direction has -z (up) in the device frame
  assert rpy_from_travel_direction([1.0, 0.0, -0.1])[1] > 0
  assert rpy_from_travel_direction([1.0, 0.1, 0.0])[2] > 0
  np.testing.assert_allclose(euler2rot(rpy_from_travel_direction([3.0, 0.2, -0.4]))[:, 0],
                             np.array([3.0, 0.2, -0.4]) / np.linalg.norm([3.0, 0.2, -0.4]), atol=1e-12)
  vc = to_car_frame(vd, res.rpy)
  np.testing.assert_allclose(vc[:, 1:], 0, atol=1e-6)
  cal = Calibrator()
  for x in vd:
    cal.feed(x)
  np.testing.assert_allclose(cal.rpy, res.rpy, atol=1e-12)
  assert cal.valid


def test_slow_and_out_of_limits():
  res = estimate_calibration(np.tile([2.0, 0, 0], (100, 1)))
  assert res.n_samples == 0 and not res.valid
  steep = np.tile([1.0, 0, -np.tan(PITCH_LIMITS[1] + 0.05)], (400, 1)) * 20
  assert not estimate_calibration(steep).valid
  with pytest.raises(ValueError, match="v_device"):
    estimate_calibration(np.zeros((4, 2)))
  with pytest.raises(ValueError, match="velocities_in_device_frame"):
    velocities_in_device_frame(np.zeros((4, 3)), np.zeros((3, 4)))


@pytest.mark.skipif(not REAL_SEG.exists(), reason="comma2k19 example segment not present")
def test_real_segment_calibration():
  load = lambda name: load_npy(REAL_SEG / "global_pose" / name)
  vd = velocities_in_device_frame(load("frame_velocities"), load("frame_orientations"))
  res = estimate_calibration(vd)
  print(f"real segment calibration: pitch {res.pitch_deg:.3f} deg, yaw {res.yaw_deg:.3f} deg")
  assert res.valid
  fast = np.linalg.norm(vd, axis=1) > 5
  vc = to_car_frame(vd[fast], res.rpy)
  lat, vert = np.sqrt(np.mean((vc[:, 1:] / vc[:, :1]) ** 2, axis=0))
  assert lat < 0.02 and vert < 0.02
  # the mounting is visible before calibration: vertical part is > 2 % in the device frame
  assert np.sqrt(np.mean((vd[fast, 2] / vd[fast, 0]) ** 2)) > 0.02
