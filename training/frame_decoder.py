"""A small decoder distilled from the world model's codec: scaled latents -> frames at the policy's resolution.

The world-model simulator (training/onpolicy/sim_worldmodel.py) shows the policy every generated latent as a
frame. The codec's own decoder makes that frame at the world model's resolution (tiny: 128x256, 3.9 GFLOP), and the
simulator then area-averages it to the policy's frame (tiny: 64x128): on a CPU the decode is most of a simulated
frame's cost. A FrameDecoder makes the policy's frame directly, with a few residual blocks at each resolution and
nearest-neighbour upsampling (no normalisation layers; tiny: 0.56 GFLOP, about a sixth of the codec's decode), so the
simulator can step several times faster. It is trained by distillation, so it shows the policy what the codec would:

  python -m training.frame_decoder --vae VAE_DIR --data DIR [DIR ...] --out DIR [--size HxW] [--max-steps N]
                                   [--minutes M] [--pool-frames N] [--threads N] [--seed S]

Targets: the codec's decode, area-averaged to the output size (what the simulator shows without a FrameDecoder), of
  * the encoder's latents (posterior means: the latent cache's values) of a pool of training frames, and
  * a share of them degraded (training.vae.degrade_latents: shrunk toward the local mean and noised), since a world
    model's generated latents are not the encoder's and the decoders must agree on those too.
The pool's latents and targets are computed once; training draws random crops of them (the network is fully
convolutional) and minimises L1 + MSE on the shared loop (training.trainer, no checkpoints: the folder is the result).

The result folder: frame_decoder.safetensors (weights), config.json (FrameDecoderConfig, the output size and the codec
it was distilled from: its folder, scaling factor and a hash of its decoder's weights), metrics.csv and
train_report.json: held-out PSNR against the codec's decode (the distillation's error) and, for both decoders,
against the frames themselves. `load_frame_decoder(dir, vae)` refuses a decoder distilled from another codec.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.cli import add_common_args, emit_result, make_parser, tool_main, write_json_atomic
from training.data.frames import images_to_tensor
from training.torch_args import onednn_inference, set_threads
from training.trainer import RunConfig, StatelessTask

WEIGHTS = "frame_decoder.safetensors"
CONFIG = "config.json"
REPORT = "train_report.json"


@dataclass
class FrameDecoderConfig:
  widths: tuple = (64, 32, 16)        # channels at the latent's resolution, then after each 2x upsampling
  blocks: tuple = (2, 2, 1)           # residual blocks at each resolution
  latent_channels: int = 4
  # distillation
  pool_frames: int = 512              # training frames whose latents (and targets) are computed once
  degrade_share: float = 0.25         # extra pool entries, as a share of the pool: degraded latents of pool frames
  val_frames: int = 128
  batch_size: int = 16
  crop: tuple | None = (8, 16)        # latent crop (h, w) of each training sample; None: whole latents
  lr: float = 1e-3
  warmup: int = 50
  max_steps: int = 1500

  def __post_init__(self):
    self.widths, self.blocks = tuple(self.widths), tuple(self.blocks)
    self.crop = None if self.crop is None else tuple(self.crop)
    if len(self.widths) != len(self.blocks) or not self.widths or min(self.widths) < 1 or min(self.blocks) < 0:
      raise ValueError(f"FrameDecoderConfig: widths {self.widths} and blocks {self.blocks} must be equally long, "
                       f"widths >= 1 and blocks >= 0")
    if not 0 <= self.degrade_share <= 1:
      raise ValueError(f"FrameDecoderConfig: degrade_share={self.degrade_share}: expected 0..1")

  @property
  def upsample(self) -> int:
    """Output pixels per latent pixel along each axis."""
    return 2 ** (len(self.widths) - 1)

  def run_config(self, max_steps: int | None = None, minutes: float | None = None, seed: int = 0) -> RunConfig:
    """The shared loop's settings: AdamW without weight decay, gradient norm clipped to 1, cosine to 0 over max_steps
    or `minutes` (whichever is further along), no checkpoints."""
    steps = self.max_steps if max_steps is None else max_steps
    return RunConfig(max_steps=steps, minutes=minutes, lr=self.lr, warmup=min(self.warmup, max(steps - 1, 0)),
                     weight_decay=0.0, grad_clip=1.0, log_every=10, log_last=True, eval_every=steps, ckpt_every=steps,
                     seed=seed, save_checkpoints=False)

  @staticmethod
  def for_upsample(factor: int, **kw) -> FrameDecoderConfig:
    """The default widths and blocks for an output `factor` times the latent's size (1, 2, 4 or 8)."""
    n = {1: 0, 2: 1, 4: 2, 8: 3}.get(factor)
    if n is None:
      raise ValueError(f"FrameDecoder: the output must be 1, 2, 4 or 8 times the latent's size, not {factor}x")
    return FrameDecoderConfig(widths=(64, 32, 16, 16)[:n + 1], blocks=(2, 2, 1, 1)[:n + 1], **kw)


class ResBlock(nn.Module):
  """x + conv(relu(conv(relu(x)))), 3x3 convolutions, channels kept."""

  def __init__(self, c: int):
    super().__init__()
    self.conv1 = nn.Conv2d(c, c, 3, padding=1)
    self.conv2 = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Upsample(nn.Module):
  """2x nearest-neighbour upsampling, then a 3x3 convolution to the next width."""

  def __init__(self, c_in: int, c_out: int):
    super().__init__()
    self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class FrameDecoder(nn.Module):
  """(B, latent_channels, h, w) scaled latents (the codec's FrozenVAE.decode input) -> (B, 3, h*up, w*up) in about
  [-1, 1] (not clamped, like the codec's decode)."""

  def __init__(self, cfg: FrameDecoderConfig):
    super().__init__()
    self.cfg = cfg
    w = cfg.widths
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w[0], 3, padding=1)]
    for i, (c, n) in enumerate(zip(w, cfg.blocks)):
      if i:
        layers.append(Upsample(w[i - 1], c))
      layers += [ResBlock(c) for _ in range(n)]
    layers += [nn.ReLU(), nn.Conv2d(w[-1], 3, 3, padding=1)]
    self.net = nn.Sequential(*layers)

  def forward(self, lat: torch.Tensor) -> torch.Tensor:
    if lat.ndim != 4 or lat.shape[1] != self.cfg.latent_channels:
      raise ValueError(f"FrameDecoder expects (B,{self.cfg.latent_channels},h,w) latents, got {tuple(lat.shape)}")
    return self.net(lat)

  @torch.no_grad()
  def images(self, lat: torch.Tensor) -> np.ndarray:
    """(B,C,h,w) scaled latents -> (B, H, W, 3) uint8 frames (oneDNN's convolution kernels on a CPU, as the
    codec's FrozenVAE)."""
    from training.vae import tensor_to_images
    with onednn_inference():
      return tensor_to_images(self(lat))


def codec_decoder_hash(ae) -> str:
  """sha256 (16 hex digits) of what a codec's latents decode to: its scaling factor and the weights of its decoder and
  post_quant_conv (a FrameDecoder learnt exactly that mapping)."""
  h = hashlib.sha256(repr(float(ae.config.scaling_factor)).encode())
  for k, v in sorted(ae.state_dict().items()):
    if k.startswith(("decoder.", "post_quant_conv.")):
      h.update(k.encode())
      h.update(v.detach().cpu().contiguous().numpy().tobytes())
  return h.hexdigest()[:16]


def save_frame_decoder(model: FrameDecoder, out_dir, vae, out_hw, source=None) -> Path:
  """Write a frame decoder folder: the weights, then config.json (the folder loads only once that is there) naming
  the codec `vae` (a FrozenVAE) it decodes the latents of. source: the codec's folder (default vae.source)."""
  from safetensors.torch import save_file
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / CONFIG).unlink(missing_ok=True)
  save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS))
  meta = {"model": asdict(model.cfg), "out_hw": [int(n) for n in out_hw],
          "codec": {"source": str(Path(source or vae.source).resolve()), "scaling_factor": vae.scaling_factor,
                    "decoder_hash": codec_decoder_hash(vae.ae)}}
  write_json_atomic(out_dir / CONFIG, meta)
  return out_dir


def load_frame_decoder(path, vae=None, device="cpu", latent_hw=None, out_hw=None) -> FrameDecoder:
  """A FrameDecoder folder (`python -m training.frame_decoder`). With `vae` (a training.vae.FrozenVAE), the decoder
  must have been distilled from that codec (same decoder weights and scaling factor); with latent_hw and out_hw, it
  must make out_hw frames from latent_hw latents (the caller's latents and the frames its policy sees); else
  ValueError."""
  from safetensors.torch import load_file
  path = Path(path)
  cfg_file, weights = path / CONFIG, path / WEIGHTS
  if not cfg_file.is_file() or not weights.is_file():
    raise FileNotFoundError(f"{path}: not a frame decoder folder (needs {CONFIG} and {WEIGHTS}; made by "
                            f"`python -m training.frame_decoder`)")
  try:
    meta = json.loads(cfg_file.read_text())
    names = {f.name for f in fields(FrameDecoderConfig)}
    cfg = FrameDecoderConfig(**{k: v for k, v in meta["model"].items() if k in names})
    codec = meta["codec"]
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{cfg_file}: not a frame decoder config ({e})") from e
  if vae is not None and codec.get("decoder_hash") != codec_decoder_hash(vae.ae):
    raise ValueError(f"{path}: distilled from the codec {codec.get('source')} (decoder {codec.get('decoder_hash')}), "
                     f"not from {vae.source} (decoder {codec_decoder_hash(vae.ae)}); distil one from this codec")
  if latent_hw is not None and out_hw is not None:
    made = tuple(n * cfg.upsample for n in latent_hw)
    if made != tuple(out_hw):
      raise ValueError(f"{path}: makes {made[0]}x{made[1]} frames from {latent_hw[0]}x{latent_hw[1]} latents; the "
                       f"policy sees {out_hw[0]}x{out_hw[1]}")
  model = FrameDecoder(cfg)
  try:
    model.load_state_dict(load_file(str(weights)))
  except Exception as e:
    raise ValueError(f"{weights}: could not load the frame decoder's weights ({e})") from e
  return model.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ distillation

def area_resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
  """(B,3,H,W) -> (B,3,h,w) by area averaging (H, W integer multiples of h, w): cv2's INTER_AREA, which the
  simulator applies to the codec's frames (simulator.policy_image), on float tensors."""
  fy, fx = x.shape[-2] // hw[0], x.shape[-1] // hw[1]
  if fy * hw[0] != x.shape[-2] or fx * hw[1] != x.shape[-1]:
    raise ValueError(f"area_resize: {tuple(x.shape[-2:])} is not a multiple of {tuple(hw)}")
  return x if (fy, fx) == (1, 1) else F.avg_pool2d(x, (fy, fx))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
  """PSNR (dB) of two image batches in [-1, 1] (both clamped)."""
  mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
  return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def distillation_pool(vae, frames: np.ndarray, out_hw, degrade_share: float, seed: int, chunk: int = 32) -> dict:
  """Latents and targets of a pool of frames (N,H,W,3) uint8 at the codec's size: {"latents" (M,C,h,w), "targets"
  (M,3,H',W') the codec's decode area-averaged to out_hw, "frames" (N,3,H',W') the frames area-averaged}, M = N plus
  round(degrade_share * N) degraded latents of the first pool frames."""
  from tqdm import tqdm

  from training.vae import degrade_latents
  gen = torch.Generator().manual_seed(seed)
  lats, tgts, small = [], [], []
  n_deg = int(round(degrade_share * len(frames)))
  with tqdm(total=len(frames) + n_deg, desc="frame decoder targets", unit="frame", leave=False) as bar:
    for a in range(0, len(frames), chunk):
      x = images_to_tensor(frames[a:a + chunk])
      z = vae.encode(x)
      lats.append(z)
      tgts.append(area_resize(vae.decode(z).clamp(-1, 1), out_hw))
      small.append(area_resize(x, out_hw))
      bar.update(len(x))
    z_all = torch.cat(lats)
    for a in range(0, n_deg, chunk):
      z = degrade_latents(z_all[a:min(a + chunk, n_deg)], 1.0, gen)
      lats.append(z)
      tgts.append(area_resize(vae.decode(z).clamp(-1, 1), out_hw))
      bar.update(len(z))
  return {"latents": torch.cat(lats), "targets": torch.cat(tgts), "frames": torch.cat(small)}


class DistillTask(StatelessTask):
  """training.trainer.TrainTask: random crops of the pool's latents, L1 + MSE to the codec's (area-averaged) decode."""

  def __init__(self, model: FrameDecoder, pool: dict, val: dict, cfg: FrameDecoderConfig, seed: int):
    self.trainable, self.pool, self.val, self.cfg = model, pool, val, cfg
    self.gen = torch.Generator().manual_seed(seed)
    self.loss_hist: list[float] = []

  def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
    lat, tgt, cfg = self.pool["latents"], self.pool["targets"], self.cfg
    idx = torch.randint(len(lat), (cfg.batch_size,), generator=self.gen)
    z, y = lat[idx], tgt[idx]
    if cfg.crop is None or tuple(cfg.crop) == tuple(z.shape[-2:]):
      return z, y
    ch, cw, up = cfg.crop[0], cfg.crop[1], cfg.upsample
    zs, ys = [], []
    for b in range(len(z)):
      i = int(torch.randint(z.shape[-2] - ch + 1, (1,), generator=self.gen))
      j = int(torch.randint(z.shape[-1] - cw + 1, (1,), generator=self.gen))
      zs.append(z[b, :, i:i + ch, j:j + cw])
      ys.append(y[b, :, i * up:(i + ch) * up, j * up:(j + cw) * up])
    return torch.stack(zs), torch.stack(ys)

  def train_batch(self, step: int):
    z, y = self._batch()
    out = self.trainable(z)
    loss = F.l1_loss(out, y) + F.mse_loss(out, y)
    self.loss_hist.append(float(loss.detach()))
    return loss, {"loss": self.loss_hist[-1]}

  @torch.no_grad()
  def evaluate(self, step: int) -> dict:
    self.trainable.eval()
    out = torch.cat([self.trainable(z) for z in self.val["latents"].split(32)])
    self.trainable.train()
    return {"val": {"psnr_vs_codec_db": _psnr(out, self.val["targets"]),
                    "psnr_vs_frames_db": _psnr(out, self.val["frames"])}}

  def state_dicts(self) -> dict:
    return {"frame_decoder": self.trainable.state_dict()}

  def load_state_dicts(self, state: dict) -> None:
    self.trainable.load_state_dict(state["frame_decoder"])

  def config_dict(self) -> dict:
    return {"frame_decoder": asdict(self.cfg)}


def distill(vae_dir, data_dirs, out_dir, out_hw: tuple[int, int] | None = None, cfg: FrameDecoderConfig | None = None,
            max_steps: int | None = None, minutes: float | None = None, seed: int = 0,
            pool_frames: int | None = None) -> dict:
  """Distil a FrameDecoder from the codec at vae_dir on frames of data_dirs (train split; held-out PSNR on the val
  split, or on training frames when there is none) and save it to out_dir. out_hw: the output frame (default: half
  the codec's, the tiny policy's frame). pool_frames: overrides cfg.pool_frames. Returns the training report."""
  from training.trainer import Trainer
  from training.vae import _frame_pool, load_vae, tensor_to_images
  vae = load_vae(vae_dir)
  H, W = vae.frame_hw
  out_hw = tuple(out_hw or (H // 2, W // 2))
  lat_hw = (H // vae.downsample, W // vae.downsample)
  factor = out_hw[0] // lat_hw[0]
  if factor * lat_hw[0] != out_hw[0] or factor * lat_hw[1] != out_hw[1] or H % out_hw[0] or W % out_hw[1]:
    raise ValueError(f"frame decoder: output {out_hw[0]}x{out_hw[1]} must be the latent's {lat_hw[0]}x{lat_hw[1]} "
                     f"times 1, 2, 4 or 8 and divide the codec's {H}x{W} frame")
  cfg = cfg or FrameDecoderConfig.for_upsample(factor)
  if pool_frames is not None:
    cfg = replace(cfg, pool_frames=pool_frames)
  if cfg.upsample != factor:
    raise ValueError(f"frame decoder: its config upsamples {cfg.upsample}x, the output needs {factor}x")
  if cfg.crop is not None and (cfg.crop[0] > lat_hw[0] or cfg.crop[1] > lat_hw[1]):
    cfg = replace(cfg, crop=None)                 # latents smaller than the crop: whole latents
  torch.manual_seed(seed)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  for f in (WEIGHTS, CONFIG, REPORT):       # a folder is a frame decoder only once it is complete
    (out_dir / f).unlink(missing_ok=True)
  t0 = time.time()
  pool = distillation_pool(vae, _frame_pool(data_dirs, (H, W), "train", cfg.pool_frames), out_hw, cfg.degrade_share,
                           seed)
  try:
    val_frames, split = _frame_pool(data_dirs, (H, W), "val", cfg.val_frames), "val"
  except ValueError:
    val_frames, split = None, "train"
  if val_frames is None:                     # no val split: the pool's first frames (clean latents)
    n = min(cfg.val_frames, len(pool["frames"]))
    val = {k: v[:n] for k, v in pool.items()}
  else:
    val = distillation_pool(vae, val_frames, out_hw, 0.0, seed + 1)
  pool_s = time.time() - t0
  model = FrameDecoder(cfg)
  task = DistillTask(model, pool, val, cfg, seed)
  rc = cfg.run_config(max_steps, minutes, seed)
  (out_dir / "metrics.csv").unlink(missing_ok=True)
  trainer = Trainer(task, rc, out_dir, desc="frame decoder")
  res = trainer.fit()
  model.eval()
  scores = res.get("val") or task.evaluate(trainer.step)["val"]
  codec_vs_frames = _psnr(val["targets"], val["frames"])
  z = val["latents"][:8]
  with torch.no_grad():                      # per-frame cost of both decoders here, one frame at a time
    timing = {}
    for name, fn in (("codec", lambda x: tensor_to_images(area_resize(vae.decode(x), out_hw))),
                     ("frame_decoder", model.images)):
      fn(z[:1])
      t = time.perf_counter()
      for k in range(len(z)):
        fn(z[k:k + 1])
      timing[name] = 1000 * (time.perf_counter() - t) / len(z)
  report = {"steps": trainer.step, "max_steps": rc.max_steps, "minutes_limit": minutes, "seed": seed,
            "seconds": round(time.time() - t0, 1), "pool_seconds": round(pool_s, 1),
            "pool": len(pool["latents"]), "degraded": len(pool["latents"]) - len(pool["frames"]),
            "out_hw": list(out_hw), "params": sum(p.numel() for p in model.parameters()),
            "final_loss": float(np.mean(task.loss_hist[-20:])) if task.loss_hist else None,
            "split": split,                     # the frames the three PSNRs are measured on
            "psnr_vs_codec_db": scores["psnr_vs_codec_db"], "psnr_vs_frames_db": scores["psnr_vs_frames_db"],
            "codec_psnr_vs_frames_db": codec_vs_frames,
            "ms_per_frame": {k: round(v, 2) for k, v in timing.items()},
            "speedup": round(timing["codec"] / timing["frame_decoder"], 2) if timing["frame_decoder"] > 0 else None}
  write_json_atomic(out_dir / REPORT, report)
  save_frame_decoder(model, out_dir, vae, out_hw, vae_dir)
  return report


def parse_size(s: str) -> tuple[int, int]:
  h, w = s.lower().split("x")
  return int(h), int(w)


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.frame_decoder", __doc__)
  ap.add_argument("--vae", required=True, help="the codec folder to distil from (the world model's RUN/vae)")
  ap.add_argument("--data", nargs="+", required=True, help="data folder(s); frames are pooled over all of them")
  ap.add_argument("--out", required=True, help="the frame decoder's folder")
  ap.add_argument("--size", default=None, help="output frame HxW (default: half the codec's frame, e.g. 64x128)")
  ap.add_argument("--max-steps", type=int, default=None, help=f"default {FrameDecoderConfig.max_steps}")
  ap.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
  ap.add_argument("--pool-frames", type=int, default=FrameDecoderConfig.pool_frames,
                  help="training frames whose latents and targets are computed once (default %(default)s)")
  add_common_args(ap, threads=0, threads_help="torch CPU threads", seed=0)
  args = ap.parse_args(argv)
  if args.max_steps is not None and args.max_steps < 1:
    ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
  if args.minutes is not None and not args.minutes > 0:
    ap.error(f"--minutes must be > 0, got {args.minutes}")
  if args.pool_frames < 1:
    ap.error(f"--pool-frames must be >= 1, got {args.pool_frames}")
  try:
    size = parse_size(args.size) if args.size else None
  except ValueError:
    ap.error(f"--size {args.size}: expected HxW, e.g. 64x128")
  set_threads(args.threads)
  emit_result(distill(args.vae, args.data, args.out, size, max_steps=args.max_steps, minutes=args.minutes,
                      seed=args.seed, pool_frames=args.pool_frames))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
