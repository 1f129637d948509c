"""The previous frame's latent, re-projected into the next frame's view by the pose transition between them.

A motion-compensated "previous frame" for tiny's world model (dit.WarpDenoiserDiT). The model frame is a
pinhole camera looking along the car's x axis (model_frame_intrinsics: focal MODEL_FRAME_FOCAL * W / 512, principal
point (W / 2, MODEL_FRAME_CY_FRAC * H)), `cam_height` metres above a flat road. For every latent cell of the NEXT
frame we cast its ray and find the point it sees under two assumptions:
  * a ray that hits the road within `max_depth` metres sees the road plane (plane-induced homography);
  * any other ray (sky, horizon, far road) sees something at infinity (rotation only).
That point, moved into the PREVIOUS frame by the transition, is projected back to the previous frame's image; the
previous latent is sampled there (bilinear, edges repeated). Cars, trees and buildings are not planar, so they are
only approximately right: the network predicts what the warp gets wrong.

Transitions follow common/poses.transitions: (x, y, z, roll, pitch, yaw) of frame f in frame f-1's car frame
(x forward, y right, z down), R = Rz(yaw) Ry(pitch) Rx(roll).

Pure torch, batched, no learned parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.modelconstants import CAMERA_HEIGHT_M
from common.transformations.camera import model_frame_intrinsics, scaled_model_frame


def euler2rot_torch(rpy: torch.Tensor) -> torch.Tensor:
  """(..., 3) (roll, pitch, yaw) -> (..., 3, 3) R = Rz(yaw) Ry(pitch) Rx(roll) (common.transformations.orientation)."""
  cr, sr = torch.cos(rpy[..., 0]), torch.sin(rpy[..., 0])
  cp, sp = torch.cos(rpy[..., 1]), torch.sin(rpy[..., 1])
  cy, sy = torch.cos(rpy[..., 2]), torch.sin(rpy[..., 2])
  return torch.stack([
    torch.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
    torch.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
    torch.stack([-sp, cp * sr, cp * cr], -1)], -2)


def source_pixels(transition: torch.Tensor, frame_hw: tuple[int, int], downsample: int = 8,
                  cam_height: float = CAMERA_HEIGHT_M, max_depth: float = 150.0) -> torch.Tensor:
  """transition (N,6) -> (N,h,w,2) image-pixel coordinates (x, y) in the PREVIOUS frame of what each latent cell
  (h = H / downsample, w = W / downsample; cell centres at (i + 0.5) * downsample - 0.5) of the NEXT frame sees."""
  H, W = frame_hw
  h, w = H // downsample, W // downsample
  dev = transition.device
  T = transition.double()
  K = model_frame_intrinsics(*scaled_model_frame(W, H))
  focal, cx, cy = float(K[0, 0]), float(K[0, 2]), float(K[1, 2])
  f64 = dict(device=dev, dtype=torch.float64)
  v, u = torch.meshgrid(torch.arange(h, **f64), torch.arange(w, **f64), indexing="ij")
  px, py = (u + 0.5) * downsample - 0.5, (v + 0.5) * downsample - 0.5
  # ray of each cell in the car frame (x fwd = view z, y right = view x, z down = view y), unit forward component
  ray = torch.stack([torch.ones_like(px), (px - cx) / focal, (py - cy) / focal], -1)          # (h,w,3)
  R = euler2rot_torch(T[:, 3:])                                                                # (N,3,3)
  t = T[:, :3]
  # road: the ray hits z = cam_height at depth lam = cam_height / ray_z (ray_z > 0 looks down)
  down = ray[..., 2]
  lam = torch.where(down > 1e-6, cam_height / down.clamp(min=1e-6), torch.full_like(down, float("inf")))
  on_road = (lam * ray.norm(dim=-1)) < max_depth                                               # (h,w)
  X_road = lam.clamp(max=1e9)[..., None] * ray                                                 # (h,w,3) next frame
  P_road = torch.einsum("nij,hwj->nhwi", R, X_road) + t[:, None, None, :]                    # previous frame
  P_inf = torch.einsum("nij,hwj->nhwi", R, ray)                                                # direction only
  P = torch.where(on_road[None, ..., None], P_road, P_inf)
  fwd = P[..., 0].clamp(min=1e-3)                   # points behind the previous camera: pushed to the image edge
  sx = cx + focal * P[..., 1] / fwd
  sy = cy + focal * P[..., 2] / fwd
  return torch.stack([sx, sy], -1)


WARP_MODES = ("bilinear", "bicubic")


def warp_previous(prev: torch.Tensor, transition: torch.Tensor, frame_hw: tuple[int, int], downsample: int = 8,
                  cam_height: float = CAMERA_HEIGHT_M, max_depth: float = 150.0, mode: str = "bilinear") -> torch.Tensor:
  """prev (N,C,h,w) latents of frame f-1, transition (N,6) of frame f -> (N,C,h,w) frame f-1 seen from frame f.
  mode: how the latent grid is resampled. "bilinear" averages neighbouring cells at fractional offsets (a latent
  cell is 8x8 pixels): the tiny codec's frames warped this way keep about half of the image detail the codec keeps;
  "bicubic" keeps more of it."""
  if mode not in WARP_MODES:
    raise ValueError(f"warp_previous: mode {mode!r}, expected one of {WARP_MODES}")
  if prev.ndim != 4 or transition.shape != (prev.shape[0], 6):
    raise ValueError(f"warp_previous: prev (N,C,h,w) and transition (N,6) expected, got {tuple(prev.shape)} and "
                     f"{tuple(transition.shape)}")
  h, w = prev.shape[-2:]
  if (frame_hw[0] // downsample, frame_hw[1] // downsample) != (h, w):
    raise ValueError(f"warp_previous: latents {h}x{w} do not match frame {frame_hw} / {downsample}")
  src = source_pixels(transition, frame_hw, downsample, cam_height, max_depth)                # (N,h,w,2) pixels
  # image pixel -> latent cell index -> grid_sample's [-1, 1] (align_corners=True: -1/+1 = first/last cell centre)
  gx = ((src[..., 0] + 0.5) / downsample - 0.5) / max(w - 1, 1) * 2 - 1
  gy = ((src[..., 1] + 0.5) / downsample - 0.5) / max(h - 1, 1) * 2 - 1
  grid = torch.stack([gx, gy], -1).to(torch.float32)
  out = F.grid_sample(prev.float(), grid, mode=mode, padding_mode="border", align_corners=True)
  return out.to(prev.dtype)
