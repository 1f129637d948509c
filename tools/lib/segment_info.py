"""Summary and consistency checks of one segment.

  python -m tools.lib.segment_info SEGMENT_DIR [--car TOYOTA_RAV4] [--save-warp out.png] [--save-plot plot.png]

Prints one JSON object: frame count, duration, mean speed, estimated calibration (pitch, yaw, deg),
video frames and how many of them the decoder reported damaged (VideoReader refuses those),
and where the segment has the logs:
  speed_vs_can      RMS of |pose velocity| - CAN speed at the frame times (m/s)
  gyro_vs_pose      per-axis correlation of the device angular rate from consecutive orientations
                    with the IMU gyro (device axes)
  curvature_vs_steer correlation of the path curvature from poses (car frame, + left) with the
                    curvature the vehicle model predicts from the CAN steering angle, and a least-squares
                    fit of steerRatio * wheelbase next to the preset's value
--save-plot writes strip charts of those comparisons (PNG).
--save-warp writes preview.png (or video frame 0) warped into the model frame with the calibrated
horizon (green) and vanishing point (red) drawn on it.
"""
import sys
from pathlib import Path

import numpy as np

from common.calibration import CalibrationResult, estimate_calibration, to_car_frame, velocities_in_device_frame
from common.cli import emit_result, make_parser, tool_main
from common.modelconstants import MODEL_FRAME_FOCAL, MODEL_FRAME_H, MODEL_FRAME_W
from common.poses import angular_velocity, curvature_from_poses
from common.transformations.camera import (
  EON_ROAD_CAM,
  get_model_frame_warp,
  horizon_row,
  model_frame_intrinsics,
  vanishing_point,
  warp_to_model_frame,
)
from common.transformations.orientation import quat2rot
from selfdrive.controls.vehicle_model import VehicleModel, car_arg, car_params_for_dongle, get_car_params
from tools.lib.segment import Segment, SegmentError

MIN_SPEED = 5.0          # m/s: curvature and calibration use only samples faster than this
SMOOTH_S = 0.5           # s: moving-average window for the smoothed curvature correlation


def _moving_average(x: np.ndarray, n: int) -> np.ndarray:
  if n <= 1:
    return x
  k = np.ones(n) / n
  return np.convolve(x, k, mode="same") / np.convolve(np.ones_like(x), k, mode="same")


def _ratio_rms(v: np.ndarray, axis: int) -> float | None:
  return float(np.sqrt(np.mean((v[:, axis] / v[:, 0]) ** 2))) if len(v) else None


def calibration(seg: Segment) -> CalibrationResult:
  return estimate_calibration(velocities_in_device_frame(seg.velocities, seg.orientations), MIN_SPEED)


def speed_vs_can(seg: Segment) -> dict:
  t_can, v_can = seg.can("speed")
  speed = np.linalg.norm(seg.velocities, axis=1)
  inside = (seg.frame_times >= t_can[0]) & (seg.frame_times <= t_can[-1])
  if not inside.any():
    raise SegmentError(f"{seg.path / 'processed_log/CAN/speed/t'}: no sample time overlaps global_pose/frame_times")
  diff = np.interp(seg.frame_times[inside], t_can, v_can) - speed[inside]
  return {"rms_m_s": float(np.sqrt(np.mean(diff ** 2))), "mean_diff_m_s": float(diff.mean()), "n": int(inside.sum())}


def gyro_vs_pose(seg: Segment) -> dict:
  t = seg.frame_times
  R = quat2rot(seg.orientations)
  w = angular_velocity(t, R)                                        # (N, 3) device axes, rad/s
  t_g, g = seg.imu("gyro")
  if g.ndim != 2 or g.shape[1] != 3:
    raise SegmentError(f"{seg.path / 'processed_log/IMU/gyro/value'}: expected shape (N, 3), got {g.shape}")
  inside = (t >= t_g[0]) & (t <= t_g[-1])
  if inside.sum() < 2:
    raise SegmentError(f"{seg.path / 'processed_log/IMU/gyro/t'}: fewer than 2 frame times inside the gyro's time range")
  gi = np.stack([np.interp(t[inside], t_g, g[:, k]) for k in range(3)], -1)
  with np.errstate(invalid="ignore", divide="ignore"):   # a constant signal has no correlation: NaN -> null in JSON
    corr = [float(np.corrcoef(w[inside, k], gi[:, k])[0, 1]) for k in range(3)]
  return {"corr_xyz": corr, "rms_rad_s": np.sqrt(np.mean((w[inside] - gi) ** 2, axis=0)).tolist(), "n": int(inside.sum())}


def curvature_vs_steer(seg: Segment, car: str, rpy_calib) -> dict:
  CP = get_car_params(car)
  VM = VehicleModel(CP)
  t = seg.frame_times
  speed = np.linalg.norm(seg.velocities, axis=1)
  k_pose = curvature_from_poses(t, seg.velocities, seg.orientations, calib=rpy_calib, min_speed=MIN_SPEED)
  t_s, sa_deg = seg.can("steering_angle")
  sa = np.radians(np.interp(t, t_s, sa_deg))
  k_vm = VM.calc_curvature(sa, speed)
  m = (speed > MIN_SPEED) & np.isfinite(k_pose) & (t >= t_s[0]) & (t <= t_s[-1])
  if m.sum() < 20:
    raise SegmentError(f"{seg.path}: fewer than 20 frames faster than {MIN_SPEED} m/s; no curvature check")
  n = max(1, int(round(SMOOTH_S / np.median(np.diff(t)))))
  corr = float(np.corrcoef(k_pose[m], k_vm[m])[0, 1])
  corr_s = float(np.corrcoef(_moving_average(k_pose, n)[m], _moving_average(k_vm, n)[m])[0, 1])
  # curvature = sa * slip(u) / (sR * L) + offset, slip(u) = curvature_factor(u) * L (dimensionless).
  # Both signals are noisy, so ordinary least squares of curvature on steer biases 1/slope up and the
  # reverse regression biases it down; report the reduced-major-axis fit (slope = sign(r) sd(y)/sd(x))
  # with both one-sided fits as the bracket.
  x, y = sa[m] * VM.curvature_factor(speed[m]) * CP.wheelbase, k_pose[m]
  slope_rma = np.sign(corr) * y.std() / x.std()
  slope_ols = np.cov(x, y)[0, 1] / x.var(ddof=1)
  slope_rev = y.var(ddof=1) / np.cov(x, y)[0, 1]
  offset = y.mean() - slope_rma * x.mean()
  return {
    "car": car,
    "corr": corr,
    f"corr_smoothed_{SMOOTH_S}s": corr_s,
    "fitted_steer_ratio_x_wheelbase_m": float(1.0 / slope_rma),
    "fitted_steer_ratio_x_wheelbase_bracket_m": sorted([float(1.0 / slope_ols), float(1.0 / slope_rev)]),
    "preset_steer_ratio_x_wheelbase_m": float(CP.steerRatio * CP.wheelbase),
    "fitted_steer_offset_deg": float(np.degrees(-offset / slope_rma)),
    "steer_range_deg": [float(np.degrees(sa[m].min())), float(np.degrees(sa[m].max()))],
    "n": int(m.sum()),
  }


def summarize(seg: Segment, car: str | None = None) -> dict:
  speed = np.linalg.norm(seg.velocities, axis=1)
  cal = calibration(seg)
  v_dev = velocities_in_device_frame(seg.velocities, seg.orientations)
  v_car = to_car_frame(v_dev, cal.rpy)
  fast = speed > MIN_SPEED
  out = {
    "segment": str(seg.path),
    "route_name": seg.route_name,
    "frames": seg.num_frames,
    "duration_s": seg.duration,
    "mean_speed_m_s": float(speed.mean()),
    "calibration": {
      "pitch_deg": cal.pitch_deg, "yaw_deg": cal.yaw_deg, "valid": cal.valid, "n_samples": cal.n_samples,
      "direction_spread_deg": cal.spread_deg,
      # per-sample |lateral| / forward and |vertical| / forward velocity (RMS over samples faster than
      # MIN_SPEED), in the device frame and in the calibrated car frame
      "device_frame_lateral_over_forward_rms": _ratio_rms(v_dev[fast], 1),
      "device_frame_vertical_over_forward_rms": _ratio_rms(v_dev[fast], 2),
      "car_frame_lateral_over_forward_rms": _ratio_rms(v_car[fast], 1),
      "car_frame_vertical_over_forward_rms": _ratio_rms(v_car[fast], 2),
    },
  }
  if seg.has_log("CAN", "speed"):
    out["speed_vs_can"] = speed_vs_can(seg)
  if seg.has_log("IMU", "gyro"):
    out["gyro_vs_pose"] = gyro_vs_pose(seg)
  if seg.has_log("CAN", "steering_angle"):
    car = car or _car_for(seg)
    if car is None:
      out["curvature_vs_steer"] = {"skipped": f"dongle id {seg.dongle_id!r} (route folder {seg.route_name!r}) is not a "
                                              f"known car: pass --car"}
    elif fast.sum() < 20:
      out["curvature_vs_steer"] = {"skipped": f"fewer than 20 frames faster than {MIN_SPEED} m/s"}
    else:
      out["curvature_vs_steer"] = curvature_vs_steer(seg, car, cal.rpy)
  if (seg.path / "video.hevc").exists():
    out["video_frames"] = len(seg.video)
    damaged = seg.video.damaged_frames()   # frames the decoder reported damage on: refused by the reader
    out["video_damaged_frames"] = len(damaged)
    if damaged:
      out["video_damaged_frame_indices"] = damaged
  out["has_ground_truth"] = seg.ground_truth is not None
  return out


def _car_for(seg: Segment) -> str | None:
  """The vehicle-model preset of the segment's dongle id, or None when it is not a known car."""
  try:
    return car_params_for_dongle(seg.dongle_id).carFingerprint
  except KeyError:
    return None


def json_safe(x):
  """x with every non-finite float replaced by None: the printed JSON must parse with strict parsers."""
  if isinstance(x, dict):
    return {k: json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_safe(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  return x


def source_image(seg: Segment) -> np.ndarray:
  """preview.png if present, else video frame 0 (RGB)."""
  import cv2
  png = seg.path / "preview.png"
  if png.exists():
    bgr = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if bgr is None:
      raise SegmentError(f"{png}: not a readable image")
    return bgr[..., ::-1].copy()
  if seg.video_path.exists():
    return seg.video.frame(0)
  raise SegmentError(f"{seg.path}: neither preview.png nor video.hevc to warp")


def save_warp(seg: Segment, rpy_calib, out_path, out_w: int = MODEL_FRAME_W, out_h: int = MODEL_FRAME_H,
              out_focal: float = MODEL_FRAME_FOCAL) -> np.ndarray:
  """Warp the segment's picture into the model frame, draw horizon + vanishing point, save a PNG
  (source with its calibrated horizon on the left, model frame on the right). Returns the warp."""
  import cv2
  img = source_image(seg)
  if img.shape[:2] != (EON_ROAD_CAM.height, EON_ROAD_CAM.width):
    raise SegmentError(f"{seg.path}: picture is {img.shape[1]}x{img.shape[0]}, expected the EON's "
                       f"{EON_ROAD_CAM.width}x{EON_ROAD_CAM.height}")
  warped = warp_to_model_frame(img, rpy_calib, EON_ROAD_CAM, out_w, out_h, out_focal)
  K = model_frame_intrinsics(out_w, out_h, out_focal)
  cx, cy = int(round(K[0, 2])), int(round(K[1, 2]))
  vis_m = warped.copy()
  cv2.line(vis_m, (0, cy), (out_w - 1, cy), (0, 255, 0), 1)
  cv2.drawMarker(vis_m, (cx, cy), (255, 0, 0), cv2.MARKER_CROSS, 15, 2)
  src = img.copy()
  u0, u1 = 0, EON_ROAD_CAM.width - 1
  cv2.line(src, (u0, int(round(horizon_row(rpy_calib, EON_ROAD_CAM, u0)))),
           (u1, int(round(horizon_row(rpy_calib, EON_ROAD_CAM, u1)))), (0, 255, 0), 2)
  vp = vanishing_point(rpy_calib, EON_ROAD_CAM)
  cv2.drawMarker(src, (int(round(vp[0])), int(round(vp[1]))), (255, 0, 0), cv2.MARKER_CROSS, 30, 3)
  # model frame corners outlined in the source
  Hinv = np.linalg.inv(get_model_frame_warp(rpy_calib, EON_ROAD_CAM, out_w, out_h, out_focal))
  corners = np.array([[0, 0, 1], [out_w, 0, 1], [out_w, out_h, 1], [0, out_h, 1]], float) @ Hinv.T
  corners = (corners[:, :2] / corners[:, 2:]).round().astype(np.int32)
  cv2.polylines(src, [corners], True, (255, 255, 0), 2)
  scale = out_h * 2 / src.shape[0]
  src_small = cv2.resize(src, (int(src.shape[1] * scale), out_h * 2), interpolation=cv2.INTER_AREA)
  right = cv2.resize(vis_m, (out_w * 2, out_h * 2), interpolation=cv2.INTER_NEAREST)
  canvas = np.concatenate([src_small, right], axis=1)
  cv2.putText(canvas, "road camera + calibrated horizon / model-frame crop", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
              (255, 255, 255), 1)
  cv2.putText(canvas, f"model frame {out_w}x{out_h} f={out_focal:g} (x2)", (src_small.shape[1] + 8, 20),
              cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(out_path), canvas[..., ::-1]):
    raise OSError(f"{out_path}: could not write image")
  return warped


def _panel(title: str, t: np.ndarray, traces: list[tuple[str, np.ndarray, tuple[int, int, int]]],
           w: int = 900, h: int = 200) -> np.ndarray:
  """One strip chart drawn with OpenCV (the device side has no matplotlib): traces share the y axis."""
  import cv2
  img = np.full((h, w, 3), 255, np.uint8)
  ml, mr, mt, mb = 70, 10, 24, 22
  ys = np.concatenate([y[np.isfinite(y)] for _, y, _ in traces])
  lo, hi = np.percentile(ys, 0.5), np.percentile(ys, 99.5)
  pad = 0.05 * (hi - lo + 1e-12)
  lo, hi = lo - pad, hi + pad
  X = lambda x: ml + (x - t[0]) / (t[-1] - t[0]) * (w - ml - mr)
  Y = lambda y: mt + (hi - y) / (hi - lo) * (h - mt - mb)
  cv2.rectangle(img, (ml, mt), (w - mr, h - mb), (0, 0, 0), 1)
  for v in (lo + pad, hi - pad):
    cv2.putText(img, f"{v:.3g}", (4, int(Y(v)) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
  if lo < 0 < hi:
    cv2.line(img, (ml, int(Y(0))), (w - mr, int(Y(0))), (200, 200, 200), 1)
  cv2.putText(img, title, (ml, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
  x_text = w - mr - 8
  for name, y, color in reversed(traces):
    ok = np.isfinite(y)
    pts = np.stack([X(t[ok]), Y(np.clip(y[ok], lo, hi))], -1).round().astype(np.int32)
    cv2.polylines(img, [pts], False, color, 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)
    x_text -= tw + 12
    cv2.putText(img, name, (x_text, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, 1, cv2.LINE_AA)
  cv2.putText(img, f"t - t0 [s]: 0 .. {t[-1] - t[0]:.0f}", (ml, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
  return img


def save_consistency_plot(seg: Segment, out_path, car: str | None = None) -> list[str]:
  """Strip charts (RGB PNG) of the consistency checks: speed vs CAN, each gyro axis vs the pose-derived
  rate, curvature from poses vs the vehicle model's curvature from the CAN steering angle.
  Returns why panels were left out (e.g. no car preset for the curvature), empty when none was."""
  import cv2
  t = seg.frame_times
  speed = np.linalg.norm(seg.velocities, axis=1)
  blue, red = (0, 90, 200), (220, 40, 40)
  panels, skipped = [], []
  if seg.has_log("CAN", "speed"):
    tc, vc = seg.can("speed")
    panels.append(_panel("speed [m/s]", t, [("|pose velocity|", speed, blue), ("CAN speed", np.interp(t, tc, vc), red)]))
  if seg.has_log("IMU", "gyro"):
    w = angular_velocity(t, quat2rot(seg.orientations))
    tg, g = seg.imu("gyro")
    for k, ax in enumerate("xyz"):
      panels.append(_panel(f"angular rate about device {ax} [rad/s]", t,
                           [("from orientations", w[:, k], blue), ("IMU gyro", np.interp(t, tg, g[:, k]), red)]))
  if seg.has_log("CAN", "steering_angle") and (car or _car_for(seg)) is None:
    skipped.append(f"curvature: dongle id {seg.dongle_id!r} is not a known car (pass --car)")
  elif seg.has_log("CAN", "steering_angle"):
    car = car or _car_for(seg)
    VM = VehicleModel(get_car_params(car))
    k_pose = curvature_from_poses(t, seg.velocities, seg.orientations, calib=calibration(seg).rpy, min_speed=MIN_SPEED)
    ts, sa = seg.can("steering_angle")
    k_vm = VM.calc_curvature(np.radians(np.interp(t, ts, sa)), speed)
    panels.append(_panel(f"curvature [1/m, + left] ({car})", t, [("from poses", k_pose, blue),
                                                                  ("vehicle model(CAN steer)", k_vm, red)]))
  if not panels:
    raise SegmentError(f"{seg.path}: no CAN or IMU logs to plot")
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(out_path), np.concatenate(panels, 0)[..., ::-1]):
    raise OSError(f"{out_path}: could not write image")
  return skipped


def _image_path_error(path: str) -> str | None:
  p = Path(path)
  if p.is_dir():
    return "is a directory; give a file name ending in .png or .jpg"
  if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
    return "must end in .png or .jpg"
  return None


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.lib.segment_info", __doc__.split("\n")[0])
  ap.add_argument("segment", help="segment directory (quote it: comma2k19 route names contain '|')")
  ap.add_argument("--car", type=car_arg, default=None,
                  help="an opendbc platform, e.g. TOYOTA_RAV4 (default: the car of the comma2k19 dongle)")
  ap.add_argument("--save-warp", metavar="PATH", default=None, help="save the model-frame warp picture here")
  ap.add_argument("--save-plot", metavar="PATH", default=None, help="save strip charts of the consistency checks here")
  args = ap.parse_args(argv)
  for opt, path in (("--save-warp", args.save_warp), ("--save-plot", args.save_plot)):
    if path is not None and (why := _image_path_error(path)) is not None:
      ap.error(f"{opt} {path}: {why}")
  # a SegmentError (a missing or damaged file) or an unwritable picture: one line, exit 1 (common.cli.tool_main)
  seg = Segment(args.segment)
  info = summarize(seg, args.car)
  if args.save_warp:
    save_warp(seg, np.radians([0.0, info["calibration"]["pitch_deg"], info["calibration"]["yaw_deg"]]), args.save_warp)
    info["warp_picture"] = str(args.save_warp)
  if args.save_plot:
    skipped = save_consistency_plot(seg, args.save_plot, args.car)
    info["consistency_plot"] = str(args.save_plot)
    if skipped:
      info["consistency_plot_skipped"] = skipped
  emit_result(json_safe(info))
  return 0


if __name__ == "__main__":
  sys.exit(main())
