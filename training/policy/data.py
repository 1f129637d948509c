"""Logged drives -> training arrays for the policy (behaviour cloning, paper §5).

For each segment (comma2k19 layout, see tools/lib/segment.py) we build, per 20 Hz frame i:

  frames      (N, H, W, 3) uint8  video frame warped into the model frame (common.transformations.camera,
                                  rotation-corrected with the segment's calibration)
  plan        (N, IDX_N, PLAN_WIDTH) + plan_valid   future poses in frame i's car frame (common.poses.plan_targets)
  v_ego (N,)  speed: ground_truth/speed, else CAN speed, else |velocity|
  desire (N,) ground_truth/desire, else 0 ("none")
  action (N, 2) + action_valid   (curvature, acceleration): ground_truth curvature/accel when present, else
                                  curvature from the poses (common.poses.curvature_from_poses; invalid
                                  below 1 m/s) and the plan's longitudinal acceleration at t=0
  lane_lines / road_edges / lead + has_* flags   from ground_truth when present, else masked out

Warped frames are cached (uint8 .npy) under the run's cache dir keyed by segment and frame spec, so the
video is decoded once per run. Samples: image = [frame(max(i-4, 0)), frame(i)] (what DrivingModel does
after a reset), temporal windows = the 5 Hz steps ending at i.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.modelconstants import DESIRE_LEN, IDX_N, NUM_LANE_LINES, NUM_ROAD_EDGES, PLAN_SLICES, X_IDXS
from common.poses import curvature_from_poses, plan_targets
from common.transformations.camera import warp_to_model_frame
from tools.lib.route import interp_extrapolate, open_segment
from tools.lib.segment import Segment, SegmentError
from training.data.segments import segment_calibration, segment_camera
from training.policy.model import FRAME_STACK_GAP, HISTORY_STRIDE, PolicyConfig

GT_LANES_SHAPE = (NUM_LANE_LINES, IDX_N, 2)
GT_EDGES_SHAPE = (NUM_ROAD_EDGES, IDX_N, 2)


@dataclass
class SegmentData:
  name: str
  frames: np.ndarray          # (N, H, W, 3) uint8 model frames
  v_ego: np.ndarray           # (N,)
  desire: np.ndarray          # (N,) int
  plan: np.ndarray            # (N, IDX_N, PLAN_WIDTH)
  plan_valid: np.ndarray      # (N, IDX_N) bool
  action: np.ndarray          # (N, 2)
  action_valid: np.ndarray    # (N,) bool
  lane_lines: np.ndarray      # (N, 2, IDX_N, 2)
  road_edges: np.ndarray      # (N, 2, IDX_N, 2)
  lead: np.ndarray            # (N, 5)
  has_lanes: bool
  has_edges: bool
  has_lead: bool

  def __len__(self) -> int:
    return len(self.v_ego)


def _gt_array(gt: dict, key: str, shape: tuple, n: int, seg: Segment) -> np.ndarray | None:
  if gt is None or key not in gt:
    return None
  a = np.asarray(gt[key], dtype=np.float32)
  if a.shape != (n, *shape):
    raise SegmentError(f"{seg.path / 'ground_truth' / key}: shape {a.shape}, expected {(n, *shape)}")
  return a


def load_segment(path, cfg: PolicyConfig, cache_dir: Path | None = None, progress: bool = False) -> SegmentData:
  """Read one segment into SegmentData (see module docstring). Raises SegmentError naming the bad file."""
  seg = open_segment(path)
  n = seg.num_frames
  t, pos, quats, vel = seg.frame_times, seg.positions, seg.orientations, seg.velocities
  gt = seg.ground_truth
  if gt is not None and len(gt["frame_times"]) != n:
    raise SegmentError(f"{seg.path / 'ground_truth' / 'frame_times'}: {len(gt['frame_times'])} rows, video/poses have {n}")
  calib = segment_calibration(seg)
  plan, plan_valid = plan_targets(t, pos, quats, calib=calib, velocities_ecef=vel)

  if gt is not None and "speed" in gt:
    v_ego = np.asarray(gt["speed"], dtype=np.float64).reshape(n)
  elif seg.has_log("CAN", "speed"):
    ct, cv = seg.can("speed")
    v_ego = np.interp(t, ct, cv)
  else:
    v_ego = np.linalg.norm(vel, axis=-1)
  desire = np.zeros(n, dtype=np.int64)
  if gt is not None and "desire" in gt:
    desire = np.asarray(gt["desire"]).astype(np.int64).reshape(n)
    if desire.min() < 0 or desire.max() >= DESIRE_LEN:
      raise SegmentError(f"{seg.path / 'ground_truth' / 'desire'}: values outside [0, {DESIRE_LEN})")
  if gt is not None and "curvature" in gt and "accel" in gt:
    action = np.stack([np.asarray(gt["curvature"], np.float64).reshape(n), np.asarray(gt["accel"], np.float64).reshape(n)], 1)
  else:
    curv = curvature_from_poses(t, vel, quats, calib=calib)
    action = np.stack([curv, plan[:, 0, PLAN_SLICES["acceleration"].start]], 1)
  action_valid = np.isfinite(action).all(1)
  action = np.nan_to_num(action)

  lanes = _gt_array(gt, "lane_lines", GT_LANES_SHAPE, n, seg)
  edges = _gt_array(gt, "road_edges", GT_EDGES_SHAPE, n, seg)
  lead = _gt_array(gt, "lead", (5,), n, seg)

  frames = _model_frames(seg, cfg, calib, cache_dir, progress)
  return SegmentData(
    name=f"{seg.route_name}/{seg.path.name}", frames=frames, v_ego=v_ego.astype(np.float32), desire=desire,
    plan=plan.astype(np.float32), plan_valid=plan_valid, action=action.astype(np.float32), action_valid=action_valid,
    lane_lines=lanes if lanes is not None else np.zeros((n, *GT_LANES_SHAPE), np.float32),
    road_edges=edges if edges is not None else np.zeros((n, *GT_EDGES_SHAPE), np.float32),
    lead=lead if lead is not None else np.zeros((n, 5), np.float32),
    has_lanes=lanes is not None, has_edges=edges is not None, has_lead=lead is not None)


def _model_frames(seg: Segment, cfg: PolicyConfig, calib: np.ndarray, cache_dir: Path | None, progress: bool):
  key = hashlib.sha1(f"{seg.path.resolve()}|{cfg.frame_w}x{cfg.frame_h}@{cfg.frame_focal}|{calib.round(6).tolist()}"
                     .encode()).hexdigest()[:16]
  cache = Path(cache_dir) / f"frames_{key}.npy" if cache_dir is not None else None
  if cache is not None and cache.exists():
    frames = np.load(cache, mmap_mode="r")
    if frames.shape == (seg.num_frames, cfg.frame_h, cfg.frame_w, 3):
      return frames
  if not seg.video_path.exists():
    raise SegmentError(f"{seg.video_path}: missing (the policy trains on video; this segment has none)")
  vr = seg.video
  cam = segment_camera(seg, vr.width, vr.height)
  out = np.empty((seg.num_frames, cfg.frame_h, cfg.frame_w, 3), np.uint8)
  it = vr.frames(0, seg.num_frames)
  for i, img in enumerate(tqdm(it, total=seg.num_frames, desc=f"warp {seg.path.name}", disable=not progress, leave=False)):
    out[i] = warp_to_model_frame(img, calib, cam, cfg.frame_w, cfg.frame_h, cfg.frame_focal)
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process' own: concurrent loaders (Ray actors sharing the cache) must not rename each other's file
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    tmp.replace(cache)
  return out


# ---------------------------------------------------------------- batching

def stacked_image(seg: SegmentData, i: int) -> np.ndarray:
  """(6, H, W) uint8: [frame(max(i-gap, 0)), frame(i)] channels-first."""
  prev = seg.frames[max(i - FRAME_STACK_GAP, 0)]
  return np.concatenate([prev, seg.frames[i]], axis=-1).transpose(2, 0, 1)


def targets_at(segs: list[SegmentData], picks: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
  """Target dict (training.policy.losses) for the (segment index, frame index) pairs."""
  def col(f):
    return torch.from_numpy(np.stack([f(segs[s], i) for s, i in picks]))
  return {
    "plan": col(lambda s, i: s.plan[i]), "plan_valid": col(lambda s, i: s.plan_valid[i]),
    "lane_lines": col(lambda s, i: s.lane_lines[i]), "has_lanes": col(lambda s, i: np.bool_(s.has_lanes)),
    "road_edges": col(lambda s, i: s.road_edges[i]), "has_edges": col(lambda s, i: np.bool_(s.has_edges)),
    "lead": col(lambda s, i: s.lead[i]), "has_lead_label": col(lambda s, i: np.bool_(s.has_lead)),
    "action": col(lambda s, i: s.action[i]), "action_valid": col(lambda s, i: s.action_valid[i]),
  }


def vision_batch(segs: list[SegmentData], picks: list[tuple[int, int]]):
  img = torch.from_numpy(np.stack([stacked_image(segs[s], i) for s, i in picks]))  # (B, 6, H, W) uint8
  return img, targets_at(segs, picks)


def photometric_augment(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
  """(B, 6, H, W) uint8 stacked frames -> the same scenes under other lighting and sensors, uint8: per sample a
  brightness gain in [0.6, 1.4], a contrast factor in [0.6, 1.4] about the image mean, a colour gain per channel in
  [0.85, 1.15] and Gaussian sensor noise of std up to 8 levels; both frames of a stack get the same draw (the
  motion between them stays what it was). Geometry is untouched, so every label stays valid. It stops the extractor
  from keying on one world's colours and light: generated worlds differ in exactly those (tools/sim/world.py)."""
  b = img.shape[0]
  x = img.float().view(b, 2, 3, *img.shape[2:])                        # (B, 2 frames, RGB, H, W)
  gain = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, 1, generator=gen)
  contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, 1, generator=gen)
  colour = 0.85 + 0.3 * torch.rand(b, 1, 3, 1, 1, generator=gen)
  mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
  x = ((x - mean) * contrast + mean) * gain * colour
  x = x + 8.0 * torch.rand(b, 1, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
  return x.clamp_(0, 255).round_().to(torch.uint8).view_as(img)


def _rotate_lines(lines: np.ndarray, R: np.ndarray) -> np.ndarray:
  """(L, IDX_N, 2) (y, z) at X_IDXS -> the same lines in the turned frame, resampled at X_IDXS (linear, the end
  segments extended)."""
  out = np.empty_like(lines)
  for k, line in enumerate(lines):
    p = np.stack([X_IDXS, line[:, 0], line[:, 1]], -1) @ R.T          # (IDX_N, 3) x, y, z in the turned frame
    for j in range(2):
      out[k, :, j] = interp_extrapolate(X_IDXS, p[:, 0], p[:, 1 + j])
  return out


def yaw_augment(img: torch.Tensor, tgt: dict[str, torch.Tensor], cfg: PolicyConfig, max_yaw: float,
                prob: float, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """The same scenes seen by a camera turned by a yaw drawn uniformly in [-max_yaw, max_yaw] rad (+ right), for a
  share `prob` of the samples. A camera turned by a yaw against the car is a calibration of roll 0, pitch 0 and
  that yaw, so both frames of a stack are warped by the model-frame warp of that calibration (an exact homography
  whatever the depth; border pixels replicated) and the lane lines, road edges and lead are rotated into it. The
  car's heading in its lane then varies independently of its offset and of the motion between the two frames, so
  the extractor must read the heading from the lane geometry of the current frame, not from how the lines moved,
  which is late. The plan and the action are the driver's for the unturned car: those labels are masked on turned
  samples. Returns new tensors; the inputs are not changed."""
  import cv2

  from common.transformations.camera import device_from_calib, get_model_frame_warp, model_frame_camera
  w, h, focal = cfg.frame_w, cfg.frame_h, cfg.frame_focal
  cam = model_frame_camera(w, h, focal)
  b = img.shape[0]
  turn = torch.rand(b, generator=gen) < prob
  yaws = (2.0 * torch.rand(b, generator=gen, dtype=torch.float64) - 1.0) * max_yaw
  if not turn.any():
    return img, tgt
  img = img.clone()
  tgt = {k: v.clone() for k, v in tgt.items()}
  for i in torch.nonzero(turn).flatten().tolist():
    rpy = (0.0, 0.0, float(yaws[i]))
    H = get_model_frame_warp(rpy, cam, w, h, focal)
    x = img[i].numpy().transpose(1, 2, 0)                                   # (H, W, 6)
    warped = [cv2.warpPerspective(np.ascontiguousarray(x[..., c:c + 3]), H, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE) for c in (0, 3)]
    img[i] = torch.from_numpy(np.concatenate(warped, -1).transpose(2, 0, 1))
    R = device_from_calib(rpy).T                                             # turned frame from the car's
    for name in ("lane_lines", "road_edges"):
      tgt[name][i] = torch.from_numpy(_rotate_lines(tgt[name][i].double().numpy(), R)).to(tgt[name].dtype)
    xy = R[:2, :2] @ tgt["lead"][i, 1:3].double().numpy()
    tgt["lead"][i, 1:3] = torch.from_numpy(xy).to(tgt["lead"].dtype)
  tgt["plan_valid"][turn] = False
  tgt["action_valid"][turn] = False
  return img, tgt


def window_indices(end: int, steps: int) -> np.ndarray:
  """Frame indices of the `steps` 5 Hz history steps ending at frame `end` (clamped at 0 like a reset)."""
  return np.maximum(end - HISTORY_STRIDE * np.arange(steps - 1, -1, -1), 0)


def temporal_batch(segs: list[SegmentData], feats: list[np.ndarray], picks: list[tuple[int, int]], steps: int,
                   extractor_outs: list[np.ndarray] | None = None, layout: dict | None = None):
  """features (B, T, D), v_ego (B, T), desire (B, T, DESIRE_LEN), targets flattened to (B*T, ...).
  With extractor_outs (per segment (N, N_vision)) missing aux labels come from the extractor (fill_from_extractor)."""
  idx = [(s, window_indices(i, steps)) for s, i in picks]
  f = torch.from_numpy(np.stack([feats[s][w] for s, w in idx])).float()
  v = torch.from_numpy(np.stack([segs[s].v_ego[w] for s, w in idx])).float()
  d = torch.from_numpy(np.stack([np.eye(DESIRE_LEN, dtype=np.float32)[segs[s].desire[w]] for s, w in idx]))
  flat = [(s, int(j)) for s, w in idx for j in w]
  tgt = targets_at(segs, flat)
  if extractor_outs is not None:
    fill_from_extractor(tgt, [extractor_outs[s][j] for s, j in flat], layout)
  return f, v, d, tgt


def fill_from_extractor(tgt: dict[str, torch.Tensor], outs: list[np.ndarray], layout: dict) -> None:
  """Where a frame has no lane-line / road-edge / lead label (e.g. comma2k19), make the frozen extractor's own
  prediction for that frame the temporal model's target (the temporal model predicts the extractor's outputs),
  and mark it labelled. Ground-truth labels are kept where present. In place."""
  from common.modelconstants import split_outputs
  raw = split_outputs(np.stack(outs), layout)
  for name, has in (("lane_lines", "has_lanes"), ("road_edges", "has_edges")):
    miss = ~tgt[has]
    if miss.any():
      tgt[name][miss] = torch.from_numpy(raw[name][..., 0][miss.numpy()]).to(tgt[name].dtype)
      tgt[has] = torch.ones_like(tgt[has])
  miss = ~tgt["has_lead_label"]
  if miss.any():
    m = miss.numpy()
    present = (raw["lead_prob"][m, 0] > 0).astype(np.float32)          # logit > 0 <=> p > 0.5
    tgt["lead"][miss] = torch.from_numpy(np.concatenate([present[:, None], raw["lead"][m, :, 0]], 1)).to(tgt["lead"].dtype)
    tgt["has_lead_label"] = torch.ones_like(tgt["has_lead_label"])


def sample_picks(segs: list[SegmentData], batch: int, rng: np.random.Generator) -> list[tuple[int, int]]:
  """Uniform over all frames of all segments."""
  sizes = np.array([len(s) for s in segs])
  flat = rng.integers(0, sizes.sum(), batch)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  s_idx = np.searchsorted(starts, flat, side="right") - 1
  return [(int(s), int(f - starts[s])) for s, f in zip(s_idx, flat)]
