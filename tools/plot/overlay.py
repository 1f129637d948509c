"""Model predictions drawn on the road camera, like openpilot's onroad UI, plus a time plot.

  python -m tools.plot.overlay SEGMENT_OR_LOG --out video.mp4 [--plot plot.png] [--model-dir DIR]
                               [--runtime onnxruntime|tinygrad|auto] [--start S] [--seconds N] [--every K]

SEGMENT_OR_LOG is a segment folder (openpilot layout, simulator rlog + video.hevc, comma2k19 + video) or a log file
inside one. When the log has modelV2, its predictions are drawn; otherwise the model is run on the frames
(modeld.model_runner.DrivingModel, frames warped into the model frame with liveCalibration or zero calibration).

Drawn on each camera frame (points in the calibrated car frame -> device frame -> camera pixels):
  path: the plan's position ahead (width 1.8 m, at road level = the plan z + camera height), shaded green;
  lane lines white (opacity = probability), road edges red, the lead a red chevron (opacity = probability);
  text: frame id, vEgo, desired curvature.
The plot (PNG): desired curvature (model) vs the car's curvature (yawRate / vEgo), steering angle, and the lateral
error from the lane centre (groundTruth, simulator segments only).
Last stdout line: JSON {out, plot, frames, source, model}.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import emit_result, make_parser, tool_main
from common.modelconstants import CAMERA_HEIGHT_M
from common.transformations.camera import CameraConfig, device_from_calib, project

DEFAULT_HEIGHT = CAMERA_HEIGHT_M   # m, camera above the road when liveCalibration has no height
PATH_HALF_WIDTH = 0.9
LINE_HALF_WIDTH = 0.06
EDGE_HALF_WIDTH = 0.12
MAX_DRAW_DISTANCE = 100.0   # m ahead: farther points of a path crowd into the horizon (openpilot's UI stops there too)


@dataclass
class Prediction:
  """What the UI draws, in the calibrated car frame (x fwd, y right, z down at the camera)."""
  path: np.ndarray              # (N, 3)
  lane_lines: list              # [(points (N, 3), prob)]
  road_edges: list              # [(points (N, 3), std)]
  lead: tuple | None            # (x, y, prob)
  desired_curvature: float


def prediction_from_model_v2(m) -> Prediction:
  p = m.position
  path = np.stack([np.array(p.x), np.array(p.y), np.array(p.z)], 1)
  probs = list(m.laneLineProbs) or [1.0] * len(m.laneLines)
  lines = [(np.stack([np.array(ll.x), np.array(ll.y), np.array(ll.z)], 1), float(pr))
           for ll, pr in zip(m.laneLines, probs)]
  edges = [(np.stack([np.array(e.x), np.array(e.y), np.array(e.z)], 1), 0.0) for e in m.roadEdges]
  lead = None
  if len(m.leadsV3) and len(m.leadsV3[0].x):
    ld = m.leadsV3[0]
    lead = (float(ld.x[0]), float(ld.y[0]), float(ld.prob))
  return Prediction(path, lines, edges, lead, float(m.action.desiredCurvature))


def prediction_from_outputs(out: dict) -> Prediction:
  """DrivingModel.run() outputs -> Prediction (the two ego lane lines and the road edges, on X_IDXS)."""
  from common.modelconstants import PLAN_SLICES, X_IDXS
  path = out["plan"][:, PLAN_SLICES["position"]].astype(np.float64)
  vis = {**out.get("vision", {}), **out}

  def on_x(yz):
    return np.stack([X_IDXS, yz[:, 0], yz[:, 1]], 1)
  lines = [(on_x(l), 1.0) for l in vis.get("lane_lines", [])]
  edges = [(on_x(e), 0.0) for e in vis.get("road_edges", [])]
  lead = None
  if "lead" in vis:
    lead = (float(vis["lead"][0]), float(vis["lead"][1]), float(vis.get("lead_prob", 1.0)))
  return Prediction(path, lines, edges, lead, float(out["action"]["desiredCurvature"]))


# ------------------------------------------------------------------ drawing

def _to_pixels(pts_calib: np.ndarray, rpy, K: np.ndarray, z_offset: float = 0.0) -> np.ndarray:
  pts = np.asarray(pts_calib, dtype=np.float64).copy()
  pts[:, 2] += z_offset
  dev = pts @ device_from_calib(rpy).T
  return project(dev, K)


def _strip(pts: np.ndarray, half_width: float, rpy, K, z_offset: float = 0.0, min_x: float = 1.0) -> np.ndarray | None:
  """A ribbon of half_width metres either side of a polyline on the road -> polygon (M, 2) in pixels."""
  pts = pts[np.isfinite(pts).all(1) & (pts[:, 0] >= min_x)]
  if len(pts) < 2:
    return None
  left, right = pts.copy(), pts.copy()
  left[:, 1] -= half_width
  right[:, 1] += half_width
  poly = np.concatenate([_to_pixels(left, rpy, K, z_offset), _to_pixels(right, rpy, K, z_offset)[::-1]])
  poly = poly[np.isfinite(poly).all(1)]
  return poly if len(poly) >= 3 else None


def _blend_poly(img: np.ndarray, poly: np.ndarray, color, alpha: float) -> None:
  import cv2
  if poly is None or alpha <= 0:
    return
  overlay = img.copy()
  cv2.fillPoly(overlay, [np.round(poly * 4).astype(np.int32)], color, lineType=cv2.LINE_AA, shift=2)
  cv2.addWeighted(overlay, float(np.clip(alpha, 0, 1)), img, 1 - float(np.clip(alpha, 0, 1)), 0, dst=img)


def draw_prediction(img_rgb: np.ndarray, pred: Prediction, K: np.ndarray, rpy=(0.0, 0.0, 0.0),
                    height: float = DEFAULT_HEIGHT, text: str = "") -> np.ndarray:
  """A copy of the RGB camera frame with the prediction drawn on it (openpilot UI colours)."""
  import cv2
  img = np.ascontiguousarray(img_rgb).copy()
  rpy = np.asarray(rpy, dtype=np.float64)
  # path: green, fading with distance like the UI's gradient (drawn as near/far halves)
  path = pred.path[pred.path[:, 0] <= MAX_DRAW_DISTANCE]
  n = len(path)
  if n >= 2:
    _blend_poly(img, _strip(path[: n // 2 + 1], PATH_HALF_WIDTH, rpy, K, height), (23, 212, 126), 0.55)
    _blend_poly(img, _strip(path[n // 2:], PATH_HALF_WIDTH, rpy, K, height), (23, 212, 126), 0.3)
  for pts, prob in pred.lane_lines:
    _blend_poly(img, _strip(pts, LINE_HALF_WIDTH, rpy, K), (255, 255, 255), float(np.clip(prob, 0, 1)) * 0.9)
  for pts, _ in pred.road_edges:
    _blend_poly(img, _strip(pts, EDGE_HALF_WIDTH, rpy, K), (230, 30, 30), 0.8)
  if pred.lead is not None and pred.lead[2] > 0.1 and pred.lead[0] > 1.0:
    x, y, prob = pred.lead
    base = _to_pixels(np.array([[x, y, height]]), rpy, K)[0]
    if np.isfinite(base).all():
      sz = float(np.clip(25 * 30.0 / x * img.shape[1] / 1164, 4, 40))
      chevron = np.array([[base[0] - sz, base[1] + sz * 0.3], [base[0], base[1] - sz * 0.5],
                          [base[0] + sz, base[1] + sz * 0.3]])
      _blend_poly(img, chevron, (201, 34, 49), float(np.clip(prob, 0, 1)))
  if text:
    scale = img.shape[1] / 1400
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale *= min(1.0, 0.95 * img.shape[1] / max(tw, 1))
    org = (max(2, img.shape[1] // 100), max(8, int(30 * scale)))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
  return img


# ------------------------------------------------------------------ the segment

def _segment_dir(path: Path) -> Path:
  return path.parent if path.is_file() else path


def _camera(seg_dir: Path, events, width: int, height: int) -> CameraConfig:
  """roadCameraInfo intrinsics (simulator logs), camera.json (simulator segments), else the EON scaled to the width."""
  from cereal.messaging import log_from_bytes
  from common.modelconstants import EON_FOCAL, EON_ROAD_W
  for e in events:
    if e.service == "roadCameraInfo":
      ci = log_from_bytes(e.data).roadCameraInfo
      K = np.array(ci.intrinsics, dtype=np.float64).reshape(3, 3)
      if ci.width == width and K[0, 0] > 0:
        return CameraConfig(width, height, float(K[0, 0]), float(K[0, 2]), float(K[1, 2]))
  cj = seg_dir / "camera.json"
  if cj.is_file():
    c = json.loads(cj.read_text())
    if int(c["width"]) == width:
      return CameraConfig(width, height, float(c["focal"]), c.get("cx"), c.get("cy"))
  return CameraConfig(width, height, EON_FOCAL * width / EON_ROAD_W)


def collect(seg_path, model_dir=None, runtime: str = "onnxruntime"):
  """Open the segment; when its log has no modelV2, load the model that will be run on its frames.
  Returns (segment, segment dir, has_model, DrivingModel or None)."""
  from tools.replay.replay import ReplayError, load_segment
  seg_dir = _segment_dir(Path(seg_path))
  seg = load_segment(seg_dir)
  if seg.video_path is None:
    raise ReplayError(f"{seg_dir}: no video (video.hevc / fcamera.hevc) to draw on")
  has_model = any(e.service == "modelV2" for e in seg.events)
  dm = None
  if not has_model:
    from modeld.model_runner import DrivingModel
    if model_dir is None:
      model_dir = Path(__file__).resolve().parents[2] / "modeld" / "models"
    dm = DrivingModel(model_dir, runtime=runtime)
  return seg, seg_dir, has_model, dm


def frames_with_predictions(seg, seg_dir, has_model, dm, start_s=0.0, seconds=None, every=1, progress=True):
  """First yields the segment's CameraConfig, then per drawn camera frame (camera event, RGB frame, Prediction,
  car state at that frame: v, steer, yaw_rate, lat, rpy, height). Frames are decoded one at a time."""
  from tqdm import tqdm

  from cereal.messaging import log_from_bytes
  from common.transformations.camera import warp_to_model_frame
  from tools.lib.video import VideoReader
  state = {"v": 0.0, "steer": 0.0, "yaw_rate": 0.0, "lat": np.nan, "rpy": np.zeros(3), "height": DEFAULT_HEIGHT}
  models = {}
  if has_model:
    for e in seg.events:
      if e.service == "modelV2":
        m = log_from_bytes(e.data).modelV2
        models[int(m.frameId)] = prediction_from_model_v2(m)
  t0 = seg.start_ns + int(start_s * 1e9)
  t1 = None if seconds is None else t0 + int(seconds * 1e9)
  cams = [e for e in seg.events if e.service == "roadCameraState" and e.frame >= 0 and e.t_ns >= t0
          and (t1 is None or e.t_ns <= t1)]
  cams = cams[::max(1, int(every))] if dm is None else cams   # the model needs every frame for its history
  wanted = {id(e) for e in cams[::max(1, int(every))]}
  ev_iter = iter(seg.events)
  pending = None
  with VideoReader(seg.video_path) as video:
    cam = _camera(seg_dir, seg.events, video.width, video.height)
    yield cam
    for ce in tqdm(cams, desc="overlay", disable=not progress, file=sys.stderr):
      # apply every message logged up to this frame
      while True:
        e = pending if pending is not None else next(ev_iter, None)
        pending = None
        if e is None:
          break
        if e.t_ns > ce.t_ns:
          pending = e
          break
        if e.service == "carState":
          c = log_from_bytes(e.data).carState
          state["v"], state["steer"], state["yaw_rate"] = c.vEgo, c.steeringAngleDeg, c.yawRate
        elif e.service == "liveCalibration":
          lc = log_from_bytes(e.data).liveCalibration
          if len(lc.rpyCalib) == 3:
            state["rpy"] = np.array(lc.rpyCalib, dtype=np.float64)
          if len(lc.height):
            state["height"] = float(lc.height[0])
        elif e.service == "groundTruth":
          state["lat"] = float(log_from_bytes(e.data).groundTruth.lateralOffset)
      if has_model:
        pred = models.get(ce.frame_id)
        if pred is None or id(ce) not in wanted:
          continue
        rgb = video.frame(ce.frame)
      else:
        rgb = video.frame(ce.frame)
        warped = warp_to_model_frame(rgb, state["rpy"], cam, dm.width, dm.height, dm.focal)
        pred = prediction_from_outputs(dm.run(warped, float(state["v"]), 0))
        if id(ce) not in wanted:
          continue
      yield ce, rgb, pred, dict(state)


def save_time_plot(rows: list[dict], out_path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = np.array([r["t"] for r in rows])
  fig, ax = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
  ax[0].plot(t, [r["desired_curvature"] for r in rows], label="desired (model)", color="tab:green")
  car_curv = [r["yaw_rate"] / r["v"] if r["v"] > 1.0 else np.nan for r in rows]
  ax[0].plot(t, car_curv, label="car (yawRate / vEgo)", color="tab:blue", alpha=0.8)
  ax[0].set_ylabel("curvature (1/m, + left)")
  ax[0].legend(loc="upper right", fontsize=8)
  ax[1].plot(t, [r["steer"] for r in rows], color="tab:orange")
  ax[1].set_ylabel("steering angle (deg)")
  lat = np.array([r["lat"] for r in rows], dtype=np.float64)
  if np.isfinite(lat).any():
    ax[2].plot(t, lat, color="tab:red")
  else:
    ax[2].text(0.5, 0.5, "no groundTruth in this log: lateral error unknown", ha="center", va="center",
               transform=ax[2].transAxes)
  ax[2].set_ylabel("lateral error (m, + right)")
  ax[2].set_xlabel("time (s)")
  for a in ax:
    a.grid(alpha=0.3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def write_overlay(seg_path, out: Path, plot: Path | None = None, model_dir=None, runtime: str = "onnxruntime",
                  start_s: float = 0.0, seconds: float | None = None, every: int = 1, progress: bool = True,
                  fps: float = 20.0) -> dict:
  import av
  seg, seg_dir, has_model, dm = collect(seg_path, model_dir, runtime)
  gen = frames_with_predictions(seg, seg_dir, has_model, dm, start_s, seconds, every, progress)
  cam = next(gen)
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  plot = Path(plot) if plot is not None else out.with_suffix(".png")
  rows, n = [], 0
  w, h = cam.width - cam.width % 2, cam.height - cam.height % 2
  with av.open(str(out), "w") as container:
    stream = container.add_stream("libx264" if out.suffix in (".mp4", ".mkv") else "mpeg4", rate=round(fps / every))
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for ce, rgb, pred, st in gen:
      text = f"frame {ce.frame_id}  v {st['v']:.1f} m/s  desired curvature {pred.desired_curvature:+.4f}"
      img = draw_prediction(rgb, pred, cam.intrinsics, st["rpy"], st["height"], text)[:h, :w]
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
      rows.append({"t": (ce.t_ns - seg.start_ns) / 1e9, "desired_curvature": pred.desired_curvature, **st})
      n += 1
      if n == 1:
        first_png = out.with_name(out.stem + "_frame0.png")
        import cv2
        cv2.imwrite(str(first_png), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for packet in stream.encode():
      container.mux(packet)
  if not rows:
    raise ValueError(f"{seg_dir}: no frame had a prediction to draw (modelV2 frame ids do not match the camera?)")
  save_time_plot(rows, plot, f"{seg_dir.name}: {'logged modelV2' if has_model else f'model {dm.model_name} ({dm.runtime})'}")
  return {"out": str(out), "plot": str(plot), "frames": n, "source": "modelV2" if has_model else "model",
          "model": None if dm is None else dm.model_name}


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.plot.overlay", __doc__.split("\n\n")[0])
  ap.add_argument("segment", help="segment folder or a log file inside one")
  ap.add_argument("--out", required=True, type=Path, help="video file (.mp4)")
  ap.add_argument("--plot", type=Path, default=None, help="time plot PNG (default: beside --out)")
  ap.add_argument("--model-dir", type=Path, default=None, help="model to run when the log has no modelV2 "
                  "(default modeld/models)")
  ap.add_argument("--runtime", default="onnxruntime", choices=("onnxruntime", "tinygrad", "auto"))
  ap.add_argument("--start", type=float, default=0.0, metavar="S")
  ap.add_argument("--seconds", type=float, default=None, metavar="N")
  ap.add_argument("--every", type=int, default=1, metavar="K", help="draw every K-th frame")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  if args.every < 1:
    ap.error("--every must be >= 1")
  if not Path(args.segment).exists():
    print(f"error: {args.segment}: no such segment or log", file=sys.stderr)
    return 1
  try:
    result = write_overlay(args.segment, args.out, args.plot, args.model_dir, args.runtime, args.start, args.seconds,
                           args.every, not args.no_progress)
  except Exception as e:  # segment / model / video errors: one line naming the input
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {args.segment}: {msg}", file=sys.stderr)
    return 1
  emit_result(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
