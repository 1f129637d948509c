"""Latent cache: every frame of every segment encoded ONCE by the frozen VAE.

Layout (memory-mappable, one folder per segment, mirroring the dataset's <route>/<segment> layout):

  <cache>/<vae identity>/<H>x<W>/<route name>/<segment>/latents.npy   (N, 4, H/8, W/8) float16, np.lib.format
                                                        /progress.json  {"frames_done": k}   (while encoding)
                                                        /done.json      {"num_frames", "vae", "frame_hw", ...}

Encoding is resumable: a killed run continues each segment from its last flushed batch; a segment counts as cached
only once done.json exists (written last, atomically).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.cli import write_json_atomic
from training.data.frames import SegmentFrames, images_to_tensor
from training.data.segments import find_segments


def store_root(cache_root, vae_identity: str, frame_hw) -> Path:
  return Path(cache_root) / vae_identity / f"{frame_hw[0]}x{frame_hw[1]}"


def segment_store(root: Path, seg_path) -> Path:
  seg_path = Path(seg_path)
  return root / seg_path.parent.name / seg_path.name


def load_latents(store: Path) -> np.ndarray:
  """Memory-map a finished segment store (raises FileNotFoundError naming the folder if not finished)."""
  done = store / "done.json"
  if not done.exists():
    raise FileNotFoundError(f"{store}: latent cache not finished (no done.json); run `python -m training.vae encode`")
  meta = json.loads(done.read_text())
  arr = np.load(store / "latents.npy", mmap_mode="r")
  if arr.shape[0] != meta["num_frames"]:
    raise ValueError(f"{store / 'latents.npy'}: {arr.shape[0]} frames but done.json says {meta['num_frames']}")
  return arr


def build_latent_cache(data_dir, vae, cache_root, frame_hw=None, batch_size: int = 32, segments=None,
                       progress: bool = True, max_batches: int | None = None) -> dict:
  """Encode all frames of all segments under data_dir (or the given segment paths). Returns stats.
  max_batches stops early (used to test resuming)."""
  from tqdm import tqdm
  frame_hw = tuple(frame_hw or vae.frame_hw)
  root = store_root(cache_root, vae.identity, frame_hw)
  segs = list(segments) if segments is not None else find_segments(data_dir)
  stores: dict[Path, Path] = {}
  for s in segs:   # a store is named by route and segment: two data folders holding the same route would share one
    other = stores.setdefault(segment_store(root, s), Path(s))
    if other != Path(s):
      raise ValueError(f"{other} and {s}: same route and segment name, so they would share one latent store; "
                       "rename one route folder")
  todo = []
  for s in segs:
    st = segment_store(root, s)
    if not (st / "done.json").exists():
      todo.append((s, st))
  total = 0
  readers = {}
  for s, st in todo:
    readers[s] = SegmentFrames(s, frame_hw)
    total += readers[s].num_frames
  stats = {"segments": len(segs), "already_cached": len(segs) - len(todo), "encoded_frames": 0, "root": str(root)}
  bar = tqdm(total=total, desc="encode latents", unit="frame", disable=not progress)
  batches = 0
  h, w = frame_hw[0] // vae.downsample, frame_hw[1] // vae.downsample
  for s, st in todo:
    fr = readers[s]
    n = fr.num_frames
    st.mkdir(parents=True, exist_ok=True)
    lat_path, prog_path = st / "latents.npy", st / "progress.json"
    start = 0
    if lat_path.exists() and prog_path.exists():
      try:
        arr = np.lib.format.open_memmap(lat_path, mode="r+")
        if arr.shape == (n, vae.latent_channels, h, w):
          start = int(json.loads(prog_path.read_text())["frames_done"])
        else:
          arr = None
      except (ValueError, OSError, KeyError, json.JSONDecodeError):
        arr = None
    else:
      arr = None
    if arr is None:
      start = 0
      arr = np.lib.format.open_memmap(lat_path, mode="w+", dtype=np.float16, shape=(n, vae.latent_channels, h, w))
    bar.update(start)
    it = fr.frames(start, n)
    i = start
    while i < n:
      if max_batches is not None and batches >= max_batches:
        bar.close()
        arr.flush()
        stats["stopped_early"] = True
        return stats
      imgs = [next(it) for _ in range(min(batch_size, n - i))]
      lat = vae.encode(images_to_tensor(np.stack(imgs)))
      arr[i:i + len(imgs)] = lat.cpu().numpy().astype(np.float16)
      arr.flush()
      i += len(imgs)
      write_json_atomic(prog_path, {"frames_done": i})
      stats["encoded_frames"] += len(imgs)
      bar.update(len(imgs))
      batches += 1
    del arr
    write_json_atomic(st / "done.json", {"num_frames": n, "vae": vae.identity, "scaling_factor": vae.scaling_factor,
                                    "frame_hw": list(frame_hw), "segment": str(s)})
    prog_path.unlink(missing_ok=True)
    fr.close()
  bar.close()
  return stats
