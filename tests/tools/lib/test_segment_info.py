"""Consistency of the real comma2k19 segment (poses vs CAN vs IMU vs vehicle model vs camera)."""
import json

import cv2
import numpy as np
import pytest

from common.transformations.camera import EON_ROAD_CAM, model_frame_intrinsics, warp_to_model_frame
from tests.common.test_poses import REAL_SEG
from tools.lib import segment_info
from tools.lib.segment import Segment

pytestmark = pytest.mark.skipif(not REAL_SEG.exists(), reason="comma2k19 example segment not present")


@pytest.fixture(scope="module")
def info():
  return segment_info.summarize(Segment(REAL_SEG))


def test_summary_basics(info):
  assert info["frames"] == 1200 and 59 < info["duration_s"] < 61
  assert info["route_name"] == "b0c9d2329ad1606b|2018-08-02--08-34-47"
  assert 5 < info["mean_speed_m_s"] < 40
  cal = info["calibration"]
  print(f"calibration pitch {cal['pitch_deg']:.3f} deg yaw {cal['yaw_deg']:.3f} deg")
  assert cal["valid"] and abs(cal["pitch_deg"]) < 10 and abs(cal["yaw_deg"]) < 5
  assert cal["car_frame_lateral_over_forward_rms"] < 0.02 and cal["car_frame_vertical_over_forward_rms"] < 0.02


def test_speed_vs_can(info):
  print("speed RMS vs CAN", info["speed_vs_can"]["rms_m_s"])
  assert info["speed_vs_can"]["rms_m_s"] <= 0.25 and info["speed_vs_can"]["n"] > 1000


def test_gyro_vs_pose(info):
  corr = info["gyro_vs_pose"]["corr_xyz"]
  print("gyro correlations xyz", corr)
  assert min(corr) >= 0.75


def test_curvature_vs_steer(info):
  c = info["curvature_vs_steer"]
  print("curvature vs steer", c)
  assert c["car"] == "TOYOTA_RAV4"
  assert abs(c["corr"]) >= 0.7 and c["corr"] > 0          # same sign convention: + left on both sides
  lo, hi = c["fitted_steer_ratio_x_wheelbase_bracket_m"]
  assert lo <= c["fitted_steer_ratio_x_wheelbase_m"] <= hi
  assert 0.6 < c["fitted_steer_ratio_x_wheelbase_m"] / c["preset_steer_ratio_x_wheelbase_m"] < 1.5


def lane_vanishing_point(model_img: np.ndarray, horizon: float) -> tuple[np.ndarray, int]:
  """Least-squares intersection of the painted lane-line segments below the horizon (Hough)."""
  g = cv2.GaussianBlur(cv2.cvtColor(model_img, cv2.COLOR_RGB2GRAY), (5, 5), 0)
  e = cv2.Canny(g, 30, 90)
  e[:int(horizon) + 20] = 0                        # road only
  lines = cv2.HoughLinesP(e, 1, np.pi / 360, 25, minLineLength=15, maxLineGap=20)
  lines = np.zeros((0, 4)) if lines is None else lines.reshape(-1, 4).astype(float)
  d = lines[:, 2:] - lines[:, :2]
  ang = (np.degrees(np.arctan2(d[:, 1], d[:, 0])) + 180) % 180
  keep = (np.abs(ang - 90) > 20) & (np.abs(ang - 90) < 75)     # neither vertical nor horizontal
  L, d = lines[keep], d[keep]
  n = np.stack([-d[:, 1], d[:, 0]], 1) / np.linalg.norm(d, axis=1, keepdims=True)
  wts = np.linalg.norm(d, axis=1, keepdims=True)
  vp = np.linalg.lstsq(n * wts, (n * L[:, :2]).sum(1) * wts[:, 0], rcond=None)[0]
  return vp, int(keep.sum())


def test_preview_warp_horizon(tmp_path, info):
  seg = Segment(REAL_SEG)
  cal = info["calibration"]
  rpy = np.radians([0.0, cal["pitch_deg"], cal["yaw_deg"]])
  out = tmp_path / "preview_model_frame.png"
  warped = segment_info.save_warp(seg, rpy, out)
  assert out.exists() and cv2.imread(str(out)).shape[0] == 512
  K = model_frame_intrinsics()
  vp, n_lines = lane_vanishing_point(warped, K[1, 2])
  print(f"lane-line vanishing point in the model frame {vp.round(1)} vs calibrated ({K[0, 2]}, {K[1, 2]}) "
        f"from {n_lines} segments; saved {out}")
  assert n_lines >= 4
  # within 15 px (~0.9 deg at f=910): the calibration is a 60 s average, the road pitch varies
  assert abs(vp[0] - K[0, 2]) < 15 and abs(vp[1] - K[1, 2]) < 15
  # negative control: without the calibration the camera's 3.8 deg down-tilt puts the lane vanishing
  # point ~60 px ABOVE the model frame's horizon row
  raw = warp_to_model_frame(segment_info.source_image(seg), np.zeros(3), EON_ROAD_CAM)
  vp_raw, _ = lane_vanishing_point(raw, K[1, 2])
  print(f"uncalibrated lane vanishing point {vp_raw.round(1)}")
  assert K[1, 2] - vp_raw[1] > 40


def test_cli_json_and_errors(tmp_path, capsys):
  out, plot = tmp_path / "w.png", tmp_path / "plot.png"
  assert segment_info.main([str(REAL_SEG), "--save-warp", str(out), "--save-plot", str(plot)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["frames"] == 1200 and printed["warp_picture"] == str(out) and out.exists()
  img = cv2.imread(str(plot))
  assert img.shape[0] == 5 * 200 and img.std() > 10      # five strip charts, not blank
  assert segment_info.main([str(tmp_path / "missing|route" / "0")]) == 1
  assert "segment directory not found" in capsys.readouterr().err
