"""Tiny comma2k19-layout segments for the training tests (real HEVC video written with PyAV/libx265).

The scene is a textured ground plane with lane lines under a sky, rendered from the car's true pose with a pinhole
camera that IS the tiny model frame (camera.json: 128x64, focal 227.5, zero calibration), so images move with the
poses the way a world model must learn. The car drives at ~10 m/s with a slowly varying yaw rate.
"""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from common.modelconstants import MODEL_FRAME_FOCAL, MODEL_FRAME_W
from common.transformations.camera import MODEL_FRAME_CY_FRAC
from common.transformations.coordinates import LocalCoord
from common.transformations.orientation import euler2rot, rot2quat

ORIGIN_LLA = (37.4, -122.2, 30.0)
CAM_HEIGHT = 1.2


def camera_for(w: int, h: int) -> dict:
  return {"width": w, "height": h, "focal": MODEL_FRAME_FOCAL * w / MODEL_FRAME_W, "cx": w / 2.0,
          "cy": MODEL_FRAME_CY_FRAC * h}


def trajectory(n: int, seed: int, fps: float = 20.0, speed: float = 10.0):
  """(t (n,), ned (n,3), yaw (n,)) of a car weaving gently on flat ground."""
  rng = np.random.default_rng(seed)
  t = np.arange(n) / fps
  a1, a2, p1, p2 = rng.uniform(0.05, 0.12), rng.uniform(0.02, 0.06), rng.uniform(0, 6.3), rng.uniform(0, 6.3)
  yaw_rate = a1 * np.sin(2 * np.pi * t / 6 + p1) + a2 * np.sin(2 * np.pi * t / 2.3 + p2)
  v = speed + rng.uniform(-2, 2) + np.sin(t / 3)
  yaw = np.cumsum(yaw_rate) / fps + rng.uniform(-0.3, 0.3)
  ned = np.zeros((n, 3))
  ned[:, 0] = np.cumsum(v * np.cos(yaw)) / fps
  ned[:, 1] = np.cumsum(v * np.sin(yaw)) / fps
  return t, ned, yaw, v


def render(cam: dict, ned_xy: np.ndarray, yaw: float, seed: int) -> np.ndarray:
  """(H,W,3) uint8: ground texture + lane-like stripes every 3.6 m (east), sky above the horizon."""
  w, h, f, cx, cy = cam["width"], cam["height"], cam["focal"], cam["cx"], cam["cy"]
  u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
  dy, dz = (u - cx) / f, (v - cy) / f              # device ray (1, dy, dz)
  ground = dz > 1e-3
  s = np.where(ground, CAM_HEIGHT / np.maximum(dz, 1e-3), 0.0)
  gx, gy = s, s * dy                                # car-frame ground point
  c, sn = np.cos(yaw), np.sin(yaw)
  N = ned_xy[0] + c * gx - sn * gy
  E = ned_xy[1] + sn * gx + c * gy
  rng = np.random.default_rng(seed)
  tone = rng.uniform(0.35, 0.55)
  tex = tone + 0.12 * np.sin(N / 2.1) * np.cos(E / 1.7) + 0.08 * np.sin(N / 0.7 + E / 1.3)
  lane = (np.abs(((E + 1.8) % 3.6) - 1.8) < 0.12) & ((N % 6.0) < 3.5)
  post = (np.abs(((N + 2) % 8.0) - 4.0) < 0.25)
  img = np.zeros((h, w, 3))
  for k, base in enumerate((tex, tex * 0.95, tex * 0.9)):
    img[..., k] = np.where(lane, 0.95, np.where(post & (np.abs(E) > 7), 0.2, base))
  fade = np.clip(s / 80.0, 0, 1)[..., None]
  img = img * (1 - fade) + 0.6 * fade
  sky = np.stack([0.55 + 0.2 * (v / h), 0.7 + 0.1 * (v / h), np.full_like(v, 0.95)], -1)
  img = np.where(ground[..., None], img, sky)
  return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_hevc(path: Path, frames: np.ndarray, fps: int = 20, gop: int = 20) -> None:
  with av.open(str(path), "w", format="hevc") as out:
    st = out.add_stream("libx265", rate=fps)
    st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    st.options = {"x265-params": f"log-level=none:keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0", "crf": "18"}
    for img in frames:
      for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        out.mux(pkt)
    for pkt in st.encode():
      out.mux(pkt)


def make_segment(root, route: str = "fixture0000000000|2024-01-01--00-00-00", seg_num: int = 0, n_frames: int = 120,
                 w: int = 128, h: int = 64, seed: int = 0, video: bool = True) -> Path:
  """Write one segment folder; returns its path."""
  d = Path(root) / route / str(seg_num)
  (d / "global_pose").mkdir(parents=True, exist_ok=True)
  t, ned, yaw, v = trajectory(n_frames, seed)
  lc = LocalCoord.from_geodetic(ORIGIN_LLA)
  R_ned_from_dev = euler2rot(np.stack([np.zeros(n_frames), np.zeros(n_frames), yaw], -1))
  R_ecef_from_dev = lc.ecef_from_ned_matrix @ R_ned_from_dev
  vel_ned = np.stack([v * np.cos(yaw), v * np.sin(yaw), np.zeros(n_frames)], -1)
  arrays = {"frame_times": t + 100.0, "frame_positions": lc.ned2ecef(ned), "frame_orientations": rot2quat(R_ecef_from_dev),
            "frame_velocities": vel_ned @ lc.ecef_from_ned_matrix.T}
  for name, a in arrays.items():
    with open(d / "global_pose" / name, "wb") as fh:
      np.save(fh, a)
  cam = camera_for(w, h)
  (d / "camera.json").write_text(json.dumps(cam))
  if video:
    frames = np.stack([render(cam, ned[i, :2], yaw[i], seed) for i in range(n_frames)])
    write_hevc(d / "video.hevc", frames)
  return d


def make_dataset(root, n_routes: int = 3, n_frames: int = 120, w: int = 128, h: int = 64) -> list[Path]:
  return [make_segment(root, f"fixture{k:010d}|2024-01-0{k + 1}--00-00-00", 0, n_frames, w, h, seed=k)
          for k in range(n_routes)]
