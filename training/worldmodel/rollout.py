"""Autoregressive rollout video: ground truth beside generated frames, with the Plan Head's trajectory drawn on them.

  python -m training.worldmodel.rollout --run RUN --segment SEG --frames 40 [--poses FILE] [--out RUN/rollout.gif]

The first window of SEG at or after --start seconds gives the context (and its future anchor unless --no-anchor).
Future poses: the logged ones, or --poses FILE, a .npy of (N, 6) transitions (x, y, z, roll, pitch, yaw of each
frame in the previous frame's car frame, 5 Hz) to drive the world model along a different path.
Writes a GIF (or an MP4 when --out ends with .mp4).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.modelconstants import CAMERA_HEIGHT_M
from common.transformations.camera import model_frame_intrinsics, project
from tools.plot.overlay import MAX_DRAW_DISTANCE
from training.data.frames import model_frame_focal
from training.mhp import best_hypothesis
from training.worldmodel.plan_head import denormalize_plan


def load_poses_file(path, n_frames: int) -> torch.Tensor:
  path = Path(path)
  try:
    with open(path, "rb") as f:
      arr = np.load(f, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npy array ({e})") from e
  if arr.ndim != 2 or arr.shape[1] != 6:
    raise ValueError(f"{path}: expected (N, 6) transitions, got shape {arr.shape}")
  if len(arr) < n_frames:
    raise ValueError(f"{path}: {len(arr)} transitions but --frames {n_frames}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{path}: contains NaN or inf")
  return torch.from_numpy(arr[:n_frames]).float()


def draw_plan(img: np.ndarray, plan_xyz: np.ndarray, focal: float, color=(255, 64, 32)) -> np.ndarray:
  """Draw a car-frame trajectory (T,3) on a model-frame image (H,W,3 uint8), on the ground plane, from 1 m to
  MAX_DRAW_DISTANCE ahead (a 10 s plan on a curve reaches 200 m and 60 m sideways, which in perspective runs along
  the horizon)."""
  h, w = img.shape[:2]
  K = model_frame_intrinsics(w, h, focal)
  pts = plan_xyz.astype(np.float64).copy()
  pts[:, 2] += CAMERA_HEIGHT_M            # the road under the car (z down)
  pts = pts[(pts[:, 0] > 1.0) & (pts[:, 0] <= MAX_DRAW_DISTANCE)]
  if len(pts) < 2:
    return img
  uv = project(pts, K)
  out = img.copy()
  cv2.polylines(out, [np.round(uv * 4).astype(np.int32)], False, color, 1, cv2.LINE_AA, shift=2)
  return out


def compose(gt: np.ndarray | None, gen: np.ndarray, label: str, scale: int = 3) -> np.ndarray:
  h, w = gen.shape[:2]
  gt = gt if gt is not None else np.zeros_like(gen)
  row = np.concatenate([gt, np.full((h, 2, 3), 255, np.uint8), gen], 1)
  row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
  bar = np.zeros((18, row.shape[1], 3), np.uint8)
  cv2.putText(bar, "ground truth", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
  cv2.putText(bar, f"generated {label}", (w * scale + 10, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
  return np.concatenate([bar, row], 0)


def write_video(frames: list[np.ndarray], out: Path, fps: float) -> Path:
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.suffix.lower() == ".mp4":
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
      vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
  else:
    from PIL import Image
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(out, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
  return out


@torch.no_grad()
def make_rollout(run, segment, n_frames: int = 40, poses_file=None, out=None, start_s: float = 0.0, steps: int = 15,
                 use_anchor: bool = True, device="cpu", seed: int = 0, temperature: float = 1.0,
                 vae_dir=None) -> dict:
  from tqdm import tqdm

  from common.poses import relative_poses, transitions
  from training.data.dataset import WindowConfig, WorldModelDataset
  from training.data.frames import SegmentFrames
  from training.worldmodel.evaluate import load_worldmodel_run
  from training.worldmodel.sample import Anchors, SampleOptions, rollout
  model, vae, cfg, run_cfg = load_worldmodel_run(run, device, vae_dir=vae_dir)
  seg = Path(segment)
  wc = WindowConfig(context_frames=cfg.context_frames, anchor_frames=cfg.anchor_frames, fps=cfg.fps,
                    frame_hw=cfg.frame_hw)
  ds = WorldModelDataset([seg], None, wc, None, deterministic=True, seed=seed)
  d0 = ds._seg(0)
  k = next((i for i, (_, c) in enumerate(ds.index) if d0.times[c] - d0.t0 >= start_s), None)
  if k is None:
    raise ValueError(f"{seg}: no window starts at or after {start_s} s (segment is {d0.times[-1] - d0.t0:.1f} s)")
  item = ds[k]
  c = ds.index[k][1]
  step = ds.step_of(0)
  C = cfg.context_frames
  with torch.no_grad():
    lat = vae.encode(item["frames"].to(device))                                  # (F,4,h,w)
  n_gt = min(n_frames, (len(d0.times) - 1 - c) // step)
  idx = c + step * np.arange(0, n_gt + 1)
  if poses_file is not None:
    fut = load_poses_file(poses_file, n_frames)
  else:
    if n_gt < n_frames:
      raise ValueError(f"{seg}: only {n_gt} logged future frames after {start_s} s; use --frames {n_gt} or --poses")
    fut = torch.from_numpy(transitions(relative_poses(d0.positions[idx], d0.quats[idx], 0, d0.calib))[1:]).float()
  t_now = float(item["t_world"][C - 1])
  fut_t = t_now + torch.arange(1, n_frames + 1).float() / cfg.fps
  anchors = None
  if use_anchor and bool(item["anchor_valid"]):
    anchors = Anchors(vae.encode(item["anchor_frames"].to(device))[None], item["anchor_pose"][None].to(device),
                      item["anchor_t"][None].to(device))
  r = rollout(model, lat[None, :C], item["transitions"][None, :C].to(device), item["t_world"][None, :C].to(device),
              fut[None].to(device), fut_t[None].to(device), anchors, SampleOptions(steps=steps, temperature=temperature),
              generator=torch.Generator(device=device).manual_seed(seed))
  fr = SegmentFrames(seg, cfg.frame_hw)
  focal = model_frame_focal(cfg.frame_hw[1])
  frames = []
  gen_imgs = ((vae.decode(r["frames"][0]).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
  for j in tqdm(range(n_frames), desc="rollout video"):
    gt = fr.frame(int(idx[j + 1])) if j + 1 <= n_gt and poses_file is None else None
    p = r["plans"][j + 1] if j + 1 < len(r["plans"]) else r["plans"][-1]
    plan = denormalize_plan(best_hypothesis(p.logits, p.mean))[0, :, :3].cpu().numpy()
    gen = draw_plan(gen_imgs[j], plan, focal)
    frames.append(compose(gt, gen, f"+{(j + 1) / cfg.fps:.1f}s{' (anchored)' if anchors else ''}"))
  fr.close()
  out = Path(out) if out else Path(run) / "rollout.gif"
  write_video(frames, out, cfg.fps)
  return {"out": str(out), "frames": n_frames, "anchored": anchors is not None, "window_time_s": t_now}


@tool_main
def main(argv=None):
  ap = make_parser("python -m training.worldmodel.rollout", __doc__.split("\n")[0])
  ap.add_argument("--run", required=True)
  ap.add_argument("--segment", required=True)
  ap.add_argument("--frames", type=int, default=40)
  ap.add_argument("--poses", default=None, help=".npy (N,6) transitions to drive along instead of the logged path")
  ap.add_argument("--out", default=None)
  ap.add_argument("--start", type=float, default=0.0, help="seconds into the segment")
  ap.add_argument("--steps", type=int, default=15)
  ap.add_argument("--no-anchor", action="store_true")
  ap.add_argument("--temperature", type=float, default=1.0, help="scale of each frame's starting noise (1: the model's "
                  "own distribution; lower: closer to its mean)")
  ap.add_argument("--vae", default=None, help="decode with this VAE (same encoder as the run's)")
  add_common_args(ap, device="cpu")
  args = ap.parse_args(argv)
  if args.frames < 1 or args.steps < 1:
    ap.error(f"--frames and --steps must be >= 1, got {args.frames} and {args.steps}")
  if not (0.0 <= args.temperature < 1e3) or not (0.0 <= args.start < 1e6):
    ap.error(f"--temperature and --start must be finite and >= 0, got {args.temperature} and {args.start}")
  from tools.lib.segment import SegmentError
  from tools.lib.video import VideoError
  try:
    res = make_rollout(args.run, args.segment, args.frames, args.poses, args.out, args.start, args.steps,
                       not args.no_anchor, args.device, temperature=args.temperature, vae_dir=args.vae)
  except (FileNotFoundError, ValueError, SegmentError, VideoError) as e:   # no checkpoint, bad segment/poses
    print(f"error: {e}", file=sys.stderr)
    return 1
  emit_result(res)
  return 0


if __name__ == "__main__":
  sys.exit(main())
