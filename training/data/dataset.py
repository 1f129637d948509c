"""World-model training windows over many segments.

One item = one window around a "current" frame c of a segment, at `fps` (default 5 Hz = every 4th 20 Hz frame):

  ordinary frames  c - (C-1)s, ..., c - s, c   (C past context frames, the last one is "now")
                   c + s                       (the frame to generate)
  anchor frames    c + round(f_s * 20) + k s   k = 0..A-1 (future anchor, f_s ~ U[anchor_min_s, anchor_max_s],
                                               1 s long at 5 Hz); anchor_valid False when the segment ends first
with s = round(source fps / fps). Keys of the returned dict (torch tensors, F = C + 1):

  latents (F,4,h,w) float32 scaled VAE latents   [with a latent cache]   or
  frames  (F,3,H,W) float32 in [-1, 1]            [without]
  anchors (A,4,h,w) / anchor_frames (A,3,H,W)     zeros when anchor_valid is False
  poses (F,6)        6-DOF pose of each frame in the car frame of "now" (x,y,z,roll,pitch,yaw)
  transitions (F,6)  transform from the previous window frame (row 0: from frame c - C s) to each frame
  t_world (F,)       seconds since the segment's first frame;  frame_times (F,) the logged times
  anchor_pose (A,6)  anchor poses in the car frame of "now";  anchor_t (A,);  anchor_valid () bool
  plan (33,15), plan_mask (33,) bool   trajectory of the car from "now" on T_IDXS (common.poses.plan_targets)
  segment (), frame_index (F,) int64   where the window came from;  anchor_index (A,) int64 the anchor's frames

Pose math comes from common.poses in the calibrated car frame (training/data/segments.segment_calibration).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from common.modelconstants import IDX_N, PLAN_WIDTH, T_IDXS, WORLD_MODEL_FREQ
from common.poses import plan_targets, relative_poses, transitions
from tools.lib.route import open_segment
from tools.lib.segment import SegmentError
from training.data.frames import SegmentFrames
from training.data.latent_cache import load_latents, segment_store
from training.data.segments import find_segments, segment_calibration

log = logging.getLogger(__name__)

# How DataLoader worker processes start. Not fork: a forked worker inherits the locks other threads of the parent held
# at that moment (torch's thread pools, tqdm's monitor, a CUDA context), and a worker that inherits a held lock waits
# forever (the dataset test hung this way in a test process that had run many tests before it). A forkserver starts
# workers from a clean process, once per loader (~2 s), and the dataset reaches them pickled.
LOADER_START_METHOD = "forkserver"


@dataclass
class WindowConfig:
  context_frames: int = 10       # C (2 s at 5 Hz)
  anchor_frames: int = 5         # A (1 s at 5 Hz)
  fps: float = WORLD_MODEL_FREQ
  anchor_min_s: float = 2.0      # T: earliest anchor start (seconds after "now")
  anchor_max_s: float = 9.0      # latest anchor start; anchor end <= 10 s = plan horizon
  frame_hw: tuple = (64, 128)    # used when reading video (no latent cache)


class _SegmentData:
  """Per-segment arrays a worker needs, loaded lazily once per process."""

  def __init__(self, path: Path, latent_root: Path | None, frame_hw):
    seg = open_segment(path)
    self.path = path
    self.times = seg.frame_times
    self.t0 = float(self.times[0])
    self.positions, self.quats, self.velocities = seg.positions, seg.orientations, seg.velocities
    self.calib = segment_calibration(seg)
    self.plan, self.plan_valid = plan_targets(self.times, self.positions, self.quats, T_IDXS, self.calib,
                                              self.velocities)
    self.plan = self.plan.astype(np.float32)
    self.latents = load_latents(segment_store(latent_root, path)) if latent_root is not None else None
    if self.latents is not None and len(self.latents) != len(self.times):
      raise SegmentError(f"{segment_store(latent_root, path)}: {len(self.latents)} cached latents but "
                         f"{len(self.times)} frames in {path}")
    self.frames = SegmentFrames(path, frame_hw) if self.latents is None else None

  def images(self, idx) -> torch.Tensor:
    if self.latents is not None:
      return torch.from_numpy(np.asarray(self.latents[idx], dtype=np.float32))
    from training.data.frames import images_to_tensor
    return images_to_tensor(np.stack([self.frames.frame(int(i)) for i in idx]))


class WorldModelDataset(Dataset):
  def __init__(self, data, split: str | None = "train", cfg: WindowConfig | None = None, latent_root=None,
               deterministic: bool | None = None, seed: int = 0):
    """data: dataset root folder or a list of segment paths. latent_root: the store folder returned by
    training.data.latent_cache.store_root (None = decode video). deterministic (default: split == 'val') draws the
    anchor offset from a RNG seeded by the item index, so validation sees the same windows every time."""
    self.cfg = cfg or WindowConfig()
    if isinstance(data, (str, Path)):
      if not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: dataset folder not found")
      self.segments = find_segments(data, split)
    else:
      self.segments = [Path(p) for p in data]
    self.latent_root = Path(latent_root) if latent_root is not None else None
    self.deterministic = (split == "val") if deterministic is None else deterministic
    self.seed = seed
    self._cache: dict[int, _SegmentData] = {}
    self._inherited: list = []
    self._pid = os.getpid()
    # index of (segment, current frame) pairs, built from frame_times only
    self.index = []
    self.source_fps = []
    C = self.cfg.context_frames
    for si, p in enumerate(self.segments):
      t = open_segment(p).frame_times
      fps = 1.0 / float(np.median(np.diff(t)))
      step = max(1, int(round(fps / self.cfg.fps)))
      self.source_fps.append(fps)
      first, last = C * step, len(t) - 1 - step  # need a frame before the window and the frame to generate
      self.index.extend((si, c) for c in range(first, last + 1))
    if not self.index:
      raise ValueError(f"no windows: {len(self.segments)} segments in split {split!r}, each needs at least "
                       f"{(C + 1) * int(round(20 / self.cfg.fps)) + 1} frames")

  def __len__(self) -> int:
    return len(self.index)

  def _seg(self, si: int) -> _SegmentData:
    if os.getpid() != self._pid:
      # forked worker: never use the parent's open decoders, and never free them either (closing an FFmpeg
      # decoder whose threads lived in the parent deadlocks), so keep the references and start a fresh cache
      self._inherited.append(self._cache)
      self._cache, self._pid = {}, os.getpid()
    if si not in self._cache:
      self._cache[si] = _SegmentData(self.segments[si], self.latent_root, self.cfg.frame_hw)
    return self._cache[si]

  def step_of(self, si: int) -> int:
    return max(1, int(round(self.source_fps[si] / self.cfg.fps)))

  def future_anchor(self, si: int, c: int, fs: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """The future anchor of "now" = frame c of segment si, fs seconds ahead: (A,) frame indices, (A,6) poses relative
    to frame c, and whether it is valid. Pulled earlier where the segment ends first; invalid (indices all c) when
    that leaves it less than anchor_min_s ahead."""
    d, cfg, step = self._seg(si), self.cfg, self.step_of(si)
    A, n, fps = cfg.anchor_frames, len(d.times), self.source_fps[si]
    a0 = min(c + int(round(fs * fps)), n - 1 - (A - 1) * step)   # not enough future: pull the anchor earlier
    valid = A > 0 and a0 >= c + int(round(cfg.anchor_min_s * fps))
    a_idx = a0 + step * np.arange(A) if valid else np.full(A, c)
    pose = relative_poses(np.concatenate([d.positions[[c]], d.positions[a_idx]]),
                          np.concatenate([d.quats[[c]], d.quats[a_idx]]), 0, d.calib)[1:]
    return a_idx, pose, bool(valid)

  def __getitem__(self, i: int) -> dict:
    si, c = self.index[i]
    d = self._seg(si)
    cfg, step, C = self.cfg, self.step_of(si), self.cfg.context_frames
    idx = c + step * np.arange(-(C - 1), 2)                    # (F,) window frames
    idx_prev = np.concatenate([[c - C * step], idx])            # plus the frame before (for transitions)
    ref = C                                                     # "now" in idx_prev
    poses_prev = relative_poses(d.positions[idx_prev], d.quats[idx_prev], ref, d.calib)
    trans = transitions(poses_prev)[1:]
    poses = poses_prev[1:]
    rng = np.random.default_rng((self.seed, i)) if self.deterministic else np.random.default_rng()
    a_idx, anchor_pose, anchor_valid = self.future_anchor(si, c, rng.uniform(cfg.anchor_min_s, cfg.anchor_max_s))
    imgs = d.images(np.concatenate([idx, a_idx]))
    out = {
      "poses": torch.from_numpy(poses).float(), "transitions": torch.from_numpy(trans).float(),
      "t_world": torch.from_numpy(d.times[idx] - d.t0).float(), "frame_times": torch.from_numpy(d.times[idx]),
      "anchor_pose": torch.from_numpy(anchor_pose).float(),
      "anchor_t": torch.from_numpy(d.times[a_idx] - d.t0).float(),
      "anchor_valid": torch.tensor(bool(anchor_valid)),
      "plan": torch.from_numpy(d.plan[c]), "plan_mask": torch.from_numpy(d.plan_valid[c]),
      "segment": torch.tensor(si), "frame_index": torch.from_numpy(idx.astype(np.int64)),
      "anchor_index": torch.from_numpy(np.asarray(a_idx, dtype=np.int64)),
    }
    win, anc = imgs[:len(idx)], imgs[len(idx):]
    if not anchor_valid:
      anc = torch.zeros_like(anc)
    if d.latents is not None:
      out["latents"], out["anchors"] = win, anc
    else:
      out["frames"], out["anchor_frames"] = win, anc
    assert out["plan"].shape == (IDX_N, PLAN_WIDTH)
    return out
