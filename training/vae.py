"""Frozen image codec of the world model (paper §4.1): diffusers' AutoencoderKL.

Two sources, one code path (`load_vae(path)` -> `FrozenVAE`):
  * a local copy of Stable Diffusion's `sd-vae-ft-mse` (`AutoencoderKL.from_pretrained(dir)`, scaling 0.18215), or
  * our own small AutoencoderKL (same class: fewer channels, 8x downsampling, 4 latent channels) trained on our
    segments with
        python -m training.vae train --data DIR --out VAE_DIR [--preset tiny] [--max-steps N]
    and saved with `save_pretrained` (same format). Its `scaling_factor` is measured after training
    (1 / std of the latents over a sample of frames) and written into its config, so latents have unit variance.
    The loop is training.trainer's (VAETask; no checkpoints, the folder is the result; metrics.csv holds the loss).

Images are RGB in [-1, 1], (B, 3, H, W) with H, W multiples of 8; latents are (B, 4, H/8, W/8) already multiplied
by the scaling factor (decode divides it back). 128x256 frames -> 4x16x32 latents (every preset, tiny included).

A better decoder for the same latents: `python -m training.vae finetune-decoder --vae VAE_DIR --data DIR --out NEW_DIR
[--minutes M]` trains only the decoder further (DecoderTask on training.trainer); the encoder and scaling factor are
copied, so latent caches and world models made with VAE_DIR stay valid (`evaluate --vae NEW_DIR` decodes a run's
rollouts with it).

Latent cache: `python -m training.vae encode --data DIR --vae VAE_DIR --cache CACHE_DIR [--size HxW]` encodes every
frame of every segment once (see training/data/latent_cache.py).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.cli import add_common_args, emit_result, make_parser, tool_main
from training.data.frames import images_to_tensor
from training.torch_args import onednn_inference, set_threads
from training.trainer import RunConfig, StatelessTask, Trainer

log = logging.getLogger(__name__)

FRAME_INFO = "worldpilot_frames.json"   # frame size our VAE was trained at (absent for sd-vae-ft-mse)
DEFAULT_FRAME_HW = (128, 256)


@dataclass
class VAETrainConfig:
  name: str = "tiny"
  block_out_channels: tuple = (16, 32, 64, 64)     # 4 levels -> 3 downsamplings = 8x; ~0.9M params
  layers_per_block: int = 1
  norm_num_groups: int = 8
  mid_block_add_attention: bool = False
  frame_h: int = 128
  frame_w: int = 256
  train_crop: tuple | None = (64, 128)  # the VAE is fully convolutional: train on random crops (4x cheaper)
  batch_size: int = 8
  lr: float = 1e-3                      # peak; linear warm-up, then cosine decay to 0 over the run
  warmup_steps: int = 50
  kl_weight: float = 1e-6
  # initial posterior log-variance (bias of the encoder's log-variance channels): the decoder sees nearly clean
  # latents from the first step instead of unit-variance noise that the tiny KL weight takes thousands of steps
  # to shrink
  logvar_init: float = -6.0
  # weight of colour (chroma) errors relative to brightness errors in the MSE term: RGB errors are split on an
  # orthonormal opponent-colour basis; with weight 1 this is plain MSE. Chroma varies little in road scenes, so plain
  # MSE leaves a young codec desaturated (measured: chroma std 0.031 vs 0.073 in the frames after 1000 steps)
  chroma_weight: float = 4.0
  pool_frames: int = 3000               # frames decoded into memory for training (every k-th frame of each segment)
  max_steps: int = 1500

  def run_config(self, max_steps: int | None = None, minutes: float | None = None, seed: int = 0) -> RunConfig:
    """The training.trainer settings of this preset: AdamW without weight decay, gradient norm clipped to 1, cosine
    to 0 over max_steps (default: the preset's) or `minutes`, whichever is further along; no checkpoints."""
    steps = self.max_steps if max_steps is None else max_steps
    return RunConfig(max_steps=steps, minutes=minutes, lr=self.lr, warmup=self.warmup_steps, weight_decay=0.0,
                     grad_clip=1.0, log_every=10, log_last=True, eval_every=steps, ckpt_every=steps, seed=seed,
                     save_checkpoints=False)


VAE_PRESETS = {
  "tiny": VAETrainConfig(),
  # 128x256 frames for the small/250M/500M/1B world models
  "small": VAETrainConfig(name="small", block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                          norm_num_groups=32, mid_block_add_attention=True, frame_h=128, frame_w=256, train_crop=None,
                          batch_size=16,
                          max_steps=20000),
}


def make_autoencoder(cfg: VAETrainConfig):
  from diffusers import AutoencoderKL
  n = len(cfg.block_out_channels)
  ae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                       up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
                       layers_per_block=cfg.layers_per_block, latent_channels=4, norm_num_groups=cfg.norm_num_groups,
                       sample_size=cfg.frame_h, scaling_factor=1.0, mid_block_add_attention=cfg.mid_block_add_attention)
  with torch.no_grad():   # quant_conv maps the encoder output to (mean, logvar), 4 channels each
    ae.quant_conv.bias[ae.config.latent_channels:] = cfg.logvar_init
  return ae


_OPPONENT = torch.tensor([[1 / math.sqrt(3)] * 3,                                  # brightness
                          [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],                  # red - green
                          [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]])    # yellow - blue


def colour_weighted_mse(rec: torch.Tensor, x: torch.Tensor, chroma_weight: float) -> torch.Tensor:
  """MSE of (B,3,H,W) images with the two chroma components of the error weighted by chroma_weight."""
  e = torch.einsum("kc,bchw->bkhw", _OPPONENT.to(rec.device, rec.dtype), rec - x)
  w = torch.tensor([1.0, chroma_weight, chroma_weight], device=rec.device, dtype=rec.dtype)
  return (e.pow(2) * w[None, :, None, None]).mean()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
  """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
  return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


class FrozenVAE:
  """Frozen AutoencoderKL with scaled latents. `encode(img)` uses the posterior MEAN (deterministic, so a cache
  is reproducible); `decode(latents)`.

  On a CPU both run on oneDNN's convolution kernels (training.torch_args.onednn_inference; several times the native
  ones on 128x256 frames, whatever the process chose) and a few frames at a time (CPU_CHUNK):
  in larger batches a frame's activations outgrow the caches and each frame costs more (bench/codec.py measures
  both). The result equals the whole batch's to float rounding. On a GPU the whole batch goes at once."""

  CPU_CHUNK = {"encode": 4, "decode": 2}
  onednn = True            # False: torch's native kernels (bench/codec.py, bench/onpolicy.py measure the difference)

  def __init__(self, ae, source: str, device="cpu"):
    self.ae = ae.to(device).eval().requires_grad_(False)
    self.source = source
    self.device = torch.device(device)
    self.scaling_factor = float(ae.config.scaling_factor)
    if not self.scaling_factor > 0:
      raise ValueError(f"{source}: VAE config has scaling_factor {self.scaling_factor}; must be > 0")
    self.downsample = 2 ** (len(ae.config.block_out_channels) - 1)
    self.latent_channels = int(ae.config.latent_channels)
    info = Path(source) / FRAME_INFO
    self.frame_hw = tuple(json.loads(info.read_text()).values()) if info.is_file() else DEFAULT_FRAME_HW

  @property
  def identity(self) -> str:
    """Short name for cache folders: the source folder's name + scaling factor."""
    return f"{Path(self.source).name}-{self.scaling_factor:.5f}"

  @torch.no_grad()
  def encode(self, img: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1,1] -> (B,4,H/8,W/8) scaled latents."""
    if img.ndim != 4 or img.shape[1] != 3:
      raise ValueError(f"VAE.encode expects (B,3,H,W) images, got {tuple(img.shape)}")
    if img.shape[2] % self.downsample or img.shape[3] % self.downsample:
      raise ValueError(f"VAE.encode: image size {tuple(img.shape[2:])} not a multiple of {self.downsample}")
    return self._chunked("encode", lambda x: self.ae.encode(x).latent_dist.mean * self.scaling_factor, img)

  @torch.no_grad()
  def decode(self, lat: torch.Tensor) -> torch.Tensor:
    """(B,4,h,w) scaled latents -> (B,3,8h,8w) in [-1,1] (not clamped)."""
    return self._chunked("decode", lambda z: self.ae.decode(z / self.scaling_factor).sample, lat)

  def _chunked(self, what: str, fn, x: torch.Tensor) -> torch.Tensor:
    x = x.to(self.device, torch.float32)
    if self.device.type != "cpu":
      return fn(x)
    with onednn_inference() if self.onednn else torch.backends.mkldnn.flags(enabled=False):
      return torch.cat([fn(part) for part in x.split(self.CPU_CHUNK[what])])


def load_vae(path, device="cpu") -> FrozenVAE:
  """Load an AutoencoderKL saved with save_pretrained (ours or sd-vae-ft-mse). Clear error if it is not one."""
  from diffusers import AutoencoderKL
  path = Path(path)
  cfg_file = path / "config.json"
  if not cfg_file.is_file():
    raise FileNotFoundError(f"{cfg_file}: no VAE config (expected a diffusers AutoencoderKL folder, e.g. a local "
                            f"copy of stabilityai/sd-vae-ft-mse or the output of `python -m training.vae train`)")
  try:
    cfg = json.loads(cfg_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_file}: invalid JSON ({e})") from e
  if cfg.get("_class_name") != "AutoencoderKL":
    raise ValueError(f"{cfg_file}: _class_name is {cfg.get('_class_name')!r}, expected 'AutoencoderKL'")
  try:
    ae = AutoencoderKL.from_pretrained(str(path), low_cpu_mem_usage=False)
  except Exception as e:
    raise ValueError(f"{path}: could not load AutoencoderKL weights ({e})") from e
  return FrozenVAE(ae, str(path), device)


# ------------------------------------------------------------------------------------------------ training

def _frame_pool(data_dirs, frame_hw, split: str | None, max_frames: int) -> np.ndarray:
  """Up to max_frames model frames (N,H,W,3) uint8, every k-th frame of every segment of one split in one or more
  data folders (each video is decoded once, sequentially). Training draws random frames from this pool: batches of
  independent frames learn far faster than runs of neighbouring frames."""
  from tqdm import tqdm

  from training.data.frames import SegmentFrames
  from training.data.segments import find_segments
  dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
  segs = [s for d in dirs for s in find_segments(d, split)]
  if not segs:
    raise ValueError(f"{', '.join(map(str, dirs))}: no usable segments in split {split!r}")
  readers = [SegmentFrames(s, frame_hw) for s in segs]
  total = sum(r.num_frames for r in readers)
  every = max(1, math.ceil(total / max_frames))
  pool = []
  with tqdm(total=total, desc=f"vae frames ({split})", unit="frame", leave=False) as bar:
    for r in readers:
      for i, img in enumerate(r.frames()):
        if i % every == 0:
          pool.append(img)
        bar.update(1)
      r.close()
  return np.stack(pool[:max_frames])


def _pool_stream(pool: np.ndarray, seed: int):
  """Endless iterator of random frames of a pool."""
  rng = np.random.default_rng(seed)
  while True:
    yield pool[rng.integers(len(pool))]


def _batches(stream, batch_size, crop=None, seed: int = 0):
  """Batches (B,3,H,W) in [-1,1]; with crop=(h, w), a random crop (multiple-of-8 offsets) of each frame."""
  rng = np.random.default_rng(seed)
  while True:
    imgs = [next(stream) for _ in range(batch_size)]
    if crop is not None:
      ch, cw = crop
      out = []
      for im in imgs:
        y = 8 * int(rng.integers(0, (im.shape[0] - ch) // 8 + 1))
        x = 8 * int(rng.integers(0, (im.shape[1] - cw) // 8 + 1))
        out.append(im[y:y + ch, x:x + cw])
      imgs = out
    yield images_to_tensor(np.stack(imgs))


def measure_scaling_factor(ae, batches, n_batches: int = 8) -> float:
  """1 / std of unscaled posterior means over a sample of frames (so scaled latents have unit variance)."""
  xs = []
  with torch.no_grad():
    for _ in range(n_batches):
      xs.append(ae.encode(next(batches)).latent_dist.mean.flatten())
  std = torch.cat(xs).std().item()
  if not std > 0 or not math.isfinite(std):
    raise ValueError(f"latent std is {std}; cannot compute a scaling factor")
  return 1.0 / std


class VAETask(StatelessTask):
  """training.trainer.TrainTask of our AutoencoderKL: L1 + colour-weighted MSE reconstruction of a sampled latent
  + kl_weight * KL to the unit Gaussian, on every parameter."""

  def __init__(self, ae, batches, cfg: VAETrainConfig):
    self.trainable, self.batches, self.cfg = ae, batches, cfg
    self.rec_hist: list[float] = []            # reconstruction loss of every step

  def train_batch(self, step: int):
    ae, x = self.trainable, next(self.batches)
    post = ae.encode(x).latent_dist
    rec = ae.decode(post.sample()).sample
    l_rec = F.l1_loss(rec, x) + colour_weighted_mse(rec, x, self.cfg.chroma_weight)
    kl = post.kl().mean()                      # kl(): summed over latent elements, (B,)
    loss = l_rec + self.cfg.kl_weight * kl
    self.rec_hist.append(l_rec.item())
    return loss, {"loss": float(loss.detach()), "rec": self.rec_hist[-1], "kl": float(kl.detach())}

  def state_dicts(self) -> dict:
    return {"vae": self.trainable.state_dict()}

  def load_state_dicts(self, state: dict) -> None:
    self.trainable.load_state_dict(state["vae"])

  def config_dict(self) -> dict:
    return {"vae": asdict(self.cfg)}

  def evaluate(self, step: int):
    return None                                # held-out PSNR once, after training (train_vae)



def _fit(task, rc: RunConfig | None, out_dir: Path, desc: str) -> tuple[int, dict]:
  """Train `task` with the shared loop into out_dir (a new metrics.csv; no checkpoints: the VAE folder is the result);
  rc None (0 steps) trains nothing. Returns (steps trained, last evaluation)."""
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "metrics.csv").unlink(missing_ok=True)
  if rc is None:
    return 0, {}
  trainer = Trainer(task, rc, out_dir, desc=desc)
  res = trainer.fit()
  return trainer.step, res


def train_vae(data_dir, out_dir, preset: str = "tiny", max_steps: int | None = None, seed: int = 0, *,
              minutes: float | None = None) -> dict:
  """Train our small AutoencoderKL (L1 + MSE reconstruction + tiny KL) and save it with save_pretrained.
  data_dir: one data folder or a list of them (frames are pooled over all; validation is every folder's val split).
  Stops after max_steps (default: the preset's) or `minutes` of wall time, whichever comes first; the cosine schedule
  follows whichever of the two is further along, so a time-limited run still ends at a small learning rate."""
  if preset not in VAE_PRESETS:
    raise ValueError(f"unknown VAE preset {preset!r}; choose one of {sorted(VAE_PRESETS)}")
  cfg = VAE_PRESETS[preset]
  steps = cfg.max_steps if max_steps is None else max_steps
  rc = cfg.run_config(steps, minutes, seed) if steps > 0 else None
  torch.manual_seed(seed)
  out_dir = Path(out_dir)
  ae = make_autoencoder(cfg)
  stream = _pool_stream(_frame_pool(data_dir, (cfg.frame_h, cfg.frame_w), "train", cfg.pool_frames), seed)
  task = VAETask(ae, _batches(stream, cfg.batch_size, cfg.train_crop, seed), cfg)
  full = _batches(stream, cfg.batch_size)
  t0 = time.time()
  trained, _ = _fit(task, rc, out_dir, "vae")
  ae.eval()
  sf = measure_scaling_factor(ae, full)
  ae.register_to_config(scaling_factor=sf)
  ae.save_pretrained(str(out_dir))
  (out_dir / FRAME_INFO).write_text(json.dumps({"frame_h": cfg.frame_h, "frame_w": cfg.frame_w}))
  # held-out reconstruction PSNR (route-split validation frames when there are any, else train frames)
  try:
    val = _batches(_pool_stream(_frame_pool(data_dir, (cfg.frame_h, cfg.frame_w), "val", 256), seed + 1), 32)
    split = "val"
    next(val)
  except ValueError:
    val, split = full, "train"
  hist = task.rec_hist
  report = {"preset": preset, "steps": trained, "max_steps": steps, "minutes_limit": minutes,
            "seconds": round(time.time() - t0, 1), "scaling_factor": sf,
            "final_rec_loss": float(np.mean(hist[-20:])) if hist else None,
            f"{split}_psnr_db": _val_psnr(ae, next(val)),
            "params": sum(p.numel() for p in ae.parameters()), "train_config": asdict(cfg)}
  (out_dir / "train_report.json").write_text(json.dumps(report, indent=1))
  return report


def same_encoder(a, b) -> bool:
  """True when two AutoencoderKLs encode identically: equal encoder + quant_conv weights and scaling factor (so a
  latent cache written by one is valid for the other)."""
  if float(a.config.scaling_factor) != float(b.config.scaling_factor):
    return False
  def encoding_weights(ae) -> dict:
    return {k: v for k, v in ae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
  sa, sb = encoding_weights(a), encoding_weights(b)
  return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _val_psnr(ae, x: torch.Tensor) -> float:
  """Reconstruction PSNR (dB) of a batch of frames in [-1, 1] through the posterior mean."""
  with torch.no_grad():
    rec = ae.decode(ae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return 10 * math.log10(1.0 / max(((rec - x) / 2).pow(2).mean().item(), 1e-12))


def degrade_latents(z: torch.Tensor, prob: float, generator: torch.Generator | None = None,
                    max_shrink: float = 0.5, max_noise: float = 0.3) -> torch.Tensor:
  """Scaled latents (B,4,h,w) made to look like a generative model's predictions, each with probability `prob`:
  contrast pulled toward the 3x3 local mean by a factor alpha ~ U(1 - max_shrink, 1) (a conditional mean is a
  shrunk, smoothed latent) plus Gaussian noise of std ~ U(0, max_noise) (a sample's own error). The rest pass
  unchanged."""
  B = z.shape[0]
  u = torch.rand(B, 3, generator=generator, device=z.device).to(z.dtype)
  use = (u[:, 0] < prob).view(B, 1, 1, 1).to(z.dtype)
  alpha = (1 - max_shrink * u[:, 1]).view(B, 1, 1, 1)
  sigma = (max_noise * u[:, 2]).view(B, 1, 1, 1)
  local = F.avg_pool2d(z, 3, stride=1, padding=1, count_include_pad=False)
  noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
  return z + use * ((alpha - 1) * (z - local) + sigma * noise)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
  """Frames (B,3,H,W) in [-1,1] with each frame's colour balance changed: per channel, a gain ~ U(1 - s, 1 + s) and an
  offset ~ U(-s/2, s/2) on the [0,1] intensity, clipped to range. A decoder trained on such frames (from the frozen
  encoder's latents of them) must read colour from the latent, not from the palette of the training scenery."""
  if strength <= 0:
    return x
  B = x.shape[0]
  u = torch.rand(B, 2, 3, 1, 1, generator=generator, device=x.device).to(x.dtype) * 2 - 1   # U(-1, 1)
  gain, offset = 1 + strength * u[:, 0], 0.5 * strength * u[:, 1]
  return (((x + 1) / 2 * gain + offset).clamp(0, 1) * 2 - 1)


def decoder_run_config(max_steps: int = 2000, minutes: float | None = None, lr: float = 3e-4,
                       seed: int = 0) -> RunConfig:
  """training.trainer settings of finetune_decoder: AdamW without weight decay, 20 warm-up steps, gradient norm clipped
  to 1, cosine to 0 over max_steps or `minutes` (whichever is further along), held-out PSNR at the end only, no
  checkpoints."""
  return RunConfig(max_steps=max_steps, minutes=minutes, lr=lr, warmup=20, weight_decay=0.0, grad_clip=1.0,
                   log_every=10, log_last=True, eval_every=max_steps, ckpt_every=max_steps, seed=seed,
                   save_checkpoints=False)


class DecoderTask(StatelessTask):
  """training.trainer.TrainTask of finetune_decoder: the decoder (+ post_quant_conv) of a frozen-encoder AutoencoderKL
  on the reconstruction loss of the encoder's posterior means (optionally degraded, of colour-jittered frames)."""

  def __init__(self, ae, batches, chroma_weight: float, degrade_prob: float, jitter: float, x_val: torch.Tensor,
               val_split: str, seed: int):
    self.ae, self.batches, self.chroma_weight = ae, batches, chroma_weight
    self.degrade_prob, self.jitter, self.x_val, self.val_split = degrade_prob, jitter, x_val, val_split
    parts = {"decoder": ae.decoder} | ({"post_quant_conv": ae.post_quant_conv} if ae.post_quant_conv is not None else {})
    self.trainable = nn.ModuleDict(parts)
    self.gen = torch.Generator().manual_seed(seed)
    self.rec_hist: list[float] = []

  def train_batch(self, step: int):
    x = colour_jitter(next(self.batches), self.jitter, self.gen)
    with torch.no_grad():
      z = self.ae.encode(x).latent_dist.mean
      if self.degrade_prob > 0:
        sf = float(self.ae.config.scaling_factor)
        z = degrade_latents(z * sf, self.degrade_prob, self.gen) / sf
    rec = self.ae.decode(z).sample
    loss = F.l1_loss(rec, x) + colour_weighted_mse(rec, x, self.chroma_weight)
    self.rec_hist.append(loss.item())
    return loss, {"loss": self.rec_hist[-1]}

  def evaluate(self, step: int) -> dict:
    self.ae.eval()
    return {self.val_split: {"psnr_db": _val_psnr(self.ae, self.x_val)}}

  def state_dicts(self) -> dict:
    return {"decoder": self.trainable.state_dict()}

  def load_state_dicts(self, state: dict) -> None:
    self.trainable.load_state_dict(state["decoder"])

  def config_dict(self) -> dict:
    return {}



def finetune_decoder(vae_dir, data_dir, out_dir, rc: RunConfig | None = None, batch_size: int = 8,
                     degrade_prob: float = 0.0, jitter: float = 0.0) -> dict:
  """Train only the decoder (and post_quant_conv) of a saved AutoencoderKL further, on the reconstruction loss it
  was trained with, and save the result as a new VAE folder. The encoder, quant_conv and scaling factor are copied
  unchanged, so every latent cache and world model made with the original stays valid: only what latents decode to
  improves (what Stability's sd-vae-ft-mse is to the original SD VAE). rc: steps / time budget / lr / seed
  (decoder_run_config(): 2000 steps at 3e-4); the report gives held-out PSNR before and after.
  degrade_prob > 0: that share of each batch is decoded from `degrade_latents` (shrunk toward the local mean and
  noised) and still has to give the clean frame. A decoder trained only on the encoder's latents turns a world
  model's lower-contrast predictions into darker, greyer frames; this teaches it what such latents should look like.
  jitter > 0: every training frame gets `colour_jitter` of that strength first (input and target alike), so the
  decoder keeps colours it has not seen in training (the held-out batch is never jittered)."""
  from diffusers import AutoencoderKL
  rc = rc or decoder_run_config()
  src = load_vae(vae_dir)          # validates the folder
  seed = rc.seed
  torch.manual_seed(seed)
  out_dir = Path(out_dir)
  if out_dir.resolve() == Path(vae_dir).resolve():
    raise ValueError(f"{out_dir}: write the fine-tuned VAE to a new folder, not over its source")
  ae = AutoencoderKL.from_pretrained(str(vae_dir), low_cpu_mem_usage=False)
  ae.requires_grad_(False)
  for p in list(ae.decoder.parameters()) + (list(ae.post_quant_conv.parameters()) if ae.post_quant_conv is not None
                                            else []):
    p.requires_grad_(True)
  cfg = VAE_PRESETS["tiny"] if src.frame_hw == (128, 256) else VAETrainConfig(frame_h=src.frame_hw[0],
                                                                                  frame_w=src.frame_hw[1])
  crop = cfg.train_crop if cfg.train_crop and all(c < f for c, f in zip(cfg.train_crop, src.frame_hw)) else None
  stream = _pool_stream(_frame_pool(data_dir, src.frame_hw, "train", cfg.pool_frames), seed)
  train = _batches(stream, batch_size, crop, seed)
  try:   # one fixed held-out batch, scored before and after
    x_val = next(_batches(_pool_stream(_frame_pool(data_dir, src.frame_hw, "val", 256), seed + 1), 32))
    split = "val"
  except ValueError:
    x_val, split = next(_batches(stream, 32)), "train"
  ae.eval()
  before = _val_psnr(ae, x_val)
  task = DecoderTask(ae, train, cfg.chroma_weight, degrade_prob, jitter, x_val, split, seed)
  t0 = time.time()
  steps, res = _fit(task, rc, out_dir, "vae decoder")
  ae.eval()
  after = res[split]["psnr_db"] if split in res else _val_psnr(ae, x_val)
  if not same_encoder(ae, src.ae):
    raise RuntimeError("decoder fine-tuning changed the encoder; refusing to save")
  ae.save_pretrained(str(out_dir))
  (out_dir / FRAME_INFO).write_text(json.dumps({"frame_h": src.frame_hw[0], "frame_w": src.frame_hw[1]}))
  hist = task.rec_hist
  report = {"source": str(vae_dir), "steps": steps, "max_steps": rc.max_steps, "minutes_limit": rc.minutes,
            "seconds": round(time.time() - t0, 1), "lr": rc.lr, "batch_size": batch_size, "crop": crop,
            "degrade_prob": degrade_prob, "colour_jitter": jitter,
            "scaling_factor": float(ae.config.scaling_factor),
            "final_rec_loss": float(np.mean(hist[-20:])) if hist else None,
            f"{split}_psnr_db_before": before, f"{split}_psnr_db": after}
  (out_dir / "train_report.json").write_text(json.dumps(report, indent=1))
  return report


@tool_main
def main(argv=None):
  ap = make_parser("python -m training.vae", config=False, description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("train", help="train our small AutoencoderKL on segments")
  t.add_argument("--data", nargs="+", required=True, help="data folder(s); frames are pooled over all of them")
  t.add_argument("--out", required=True)
  t.add_argument("--preset", default="tiny", choices=sorted(VAE_PRESETS))
  t.add_argument("--max-steps", type=int, default=None)
  t.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
  add_common_args(t, threads=0, threads_help="torch CPU threads", seed=0, config=True)
  f = sub.add_parser("finetune-decoder", help="train only the decoder further (encoder and latents unchanged)")
  f.add_argument("--vae", required=True, help="the VAE folder to start from")
  f.add_argument("--data", required=True)
  f.add_argument("--out", required=True, help="new VAE folder")
  f.add_argument("--max-steps", type=int, default=2000)
  f.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
  f.add_argument("--lr", type=float, default=3e-4)
  f.add_argument("--batch-size", type=int, default=8)
  f.add_argument("--degrade", type=float, default=0.0, metavar="P",
                 help="share of each batch decoded from shrunk + noised latents (training.vae.degrade_latents)")
  f.add_argument("--colour-jitter", type=float, default=0.0, metavar="S",
                 help="per-channel gain 1 +- S and offset +- S/2 on every training frame (training.vae.colour_jitter)")
  add_common_args(f, threads=0, threads_help="torch CPU threads", seed=0, config=True)
  e = sub.add_parser("encode", help="encode every frame of every segment into a latent cache")
  e.add_argument("--data", required=True)
  e.add_argument("--vae", required=True)
  e.add_argument("--cache", required=True)
  e.add_argument("--size", default=None, help="frame HxW, default from the VAE (e.g. 128x256)")
  e.add_argument("--batch-size", type=int, default=32)
  add_common_args(e, threads=0, threads_help="torch CPU threads", config=True)
  args = ap.parse_args(argv)
  if args.cmd in ("train", "finetune-decoder"):
    least = 0 if args.cmd == "train" else 1           # train --max-steps 0: an untrained codec (scaling factor measured)
    if args.max_steps is not None and args.max_steps < least:
      ap.error(f"--max-steps must be >= {least}, got {args.max_steps}")
    if args.minutes is not None and not args.minutes > 0:
      ap.error(f"--minutes must be > 0, got {args.minutes}")
  hw = None
  if args.cmd == "encode" and args.size:
    try:
      h, w = args.size.lower().split("x")
      hw = (int(h), int(w))
    except ValueError:
      ap.error(f"--size {args.size}: expected HxW, e.g. 128x256")
  set_threads(args.threads)
  if args.cmd == "train":
    emit_result(train_vae(args.data, args.out, args.preset, args.max_steps, args.seed, minutes=args.minutes))
  elif args.cmd == "finetune-decoder":
    rc = decoder_run_config(args.max_steps, args.minutes, args.lr, args.seed)
    emit_result(finetune_decoder(args.vae, args.data, args.out, rc, args.batch_size, args.degrade, args.colour_jitter))
  else:
    from training.data.latent_cache import build_latent_cache
    vae = load_vae(args.vae)
    emit_result(build_latent_cache(args.data, vae, args.cache, frame_hw=hw, batch_size=args.batch_size))


if __name__ == "__main__":
  raise SystemExit(main())
