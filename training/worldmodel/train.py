"""Train the world model (paper §4.2, §4.4): rectified flow on VAE latents + Plan Head, L = L_RF + alpha * L_MHP.

  python -m training.worldmodel.train --preset tiny --data DIR --out RUN [--max-steps N] [--resume] [--vae PATH]
  python -m training.worldmodel.train --config config/worldmodel_tiny_cpu.py       # a recipe; options still win
  torchrun --nproc_per_node=8 -m training.worldmodel.train --config config/worldmodel_250M_gpu.py --data DIR

Pipeline: VAE (--vae PATH, or our own tiny one trained into RUN/vae when absent) -> latent cache (every frame encoded
once, resumable; RUN/latent_cache unless --cache) -> windows (training/data/dataset.py) -> the shared training loop
(training/trainer.py: AdamW, warm-up + cosine schedule over steps or --minutes, gradient clipping, EMA with warm-up,
checkpoints every --ckpt-every steps, --resume, DDP) driving WorldModelTask: bf16 autocast + TF32 on CUDA, anchor
dropout, validation of the EMA weights every --eval-every steps on the route-split validation set; metrics.csv +
curves.png in RUN.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from common.cli import ToolError, add_common_args, apply_sets, emit_result, make_parser, tool_main
from training.checkpoint import load_latest
from training.distributed import barrier, cleanup, setup_distributed
from training.torch_args import set_threads
from training.trainer import RunConfig, Trainer
from training.worldmodel.dit import DiTConfig, WindowBatch, build_model, count_params, get_config, rectified_flow_loss

log = logging.getLogger("worldmodel.train")


def build_parser() -> argparse.ArgumentParser:
  ap = make_parser("python -m training.worldmodel.train", __doc__.split("\n")[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--data", required=True, nargs="+",
                  help="dataset root(s), comma2k19 layout segments with video.hevc; several roots are pooled, each "
                       "split into train/val by route")
  ap.add_argument("--out", required=True, help="run directory")
  ap.add_argument("--vae", default=None, help="AutoencoderKL folder (sd-vae-ft-mse or ours); default: RUN/vae, "
                                              "trained here if missing")
  ap.add_argument("--vae-steps", type=int, default=1500, help="steps when training our VAE here")
  ap.add_argument("--cache", default=None, help="latent cache root (default RUN/latent_cache)")
  ap.add_argument("--max-steps", type=int, default=20000)
  ap.add_argument("--minutes", type=float, default=None,
                  help="stop (and checkpoint) after this much training wall time, summed over resumed sessions")
  ap.add_argument("--batch-size", type=int, default=16, help="per process")
  ap.add_argument("--lr", type=float, default=3e-4)
  ap.add_argument("--weight-decay", type=float, default=0.01)
  ap.add_argument("--warmup", type=int, default=200)
  ap.add_argument("--lr-schedule", default="cosine", choices=("cosine", "constant"),
                  help="after warm-up: cosine decay to 0 over the run (max-steps or --minutes, whichever is further "
                       "along) or constant")
  ap.add_argument("--grad-clip", type=float, default=1.0)
  ap.add_argument("--ema", type=float, default=0.999)
  ap.add_argument("--ckpt-every", type=int, default=500)
  ap.add_argument("--keep", type=int, default=3)
  ap.add_argument("--eval-every", type=int, default=500, help="validate the EMA weights every N steps")
  ap.add_argument("--val-every", type=int, dest="eval_every", default=argparse.SUPPRESS,
                  help=argparse.SUPPRESS)   # the former spelling
  ap.add_argument("--val-batches", type=int, default=8)
  ap.add_argument("--log-every", type=int, default=20)
  ap.add_argument("--num-workers", type=int, default=2)
  ap.add_argument("--resume", action="store_true", help="continue from RUN's latest checkpoint")
  ap.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                  help="bf16 autocast; auto = on for CUDA GPUs with bf16 and for CPUs with AVX512-BF16/AMX-BF16")
  add_common_args(ap, threads=0, threads_help="torch intra-op threads (CPU)", device=None, seed=0,
                  sets=(DiTConfig, RunConfig))
  return ap


def parse_args(argv=None, ap: argparse.ArgumentParser | None = None):
  ap = ap or build_parser()
  args = ap.parse_args(argv)
  if args.max_steps < 1:
    ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
  return args


def bf16_supported(device: torch.device) -> bool:
  """Whether bf16 autocast runs natively: a CUDA GPU with bf16, or an x86 CPU with AVX512-BF16 / AMX-BF16 (measured
  on a 2-core EPYC with AVX512-BF16: the tiny training step is ~1.4x faster, bench/worldmodel.py)."""
  if device.type == "cuda":
    return torch.cuda.is_bf16_supported()
  if device.type == "cpu":
    try:
      flags = Path("/proc/cpuinfo").read_text()
    except OSError:
      return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))
  return False


def prepare_latents(args, dist_info, frame_hw):
  """Rank 0 trains the VAE if needed and fills the latent cache; everyone returns the store folder."""
  from training.data.latent_cache import build_latent_cache, store_root
  from training.vae import load_vae, train_vae
  out = Path(args.out)
  vae_dir = Path(args.vae) if args.vae else out / "vae"
  if dist_info.is_main:
    if not args.vae and not (vae_dir / "config.json").exists():
      log.info("no --vae given: training a tiny AutoencoderKL into %s", vae_dir)
      train_vae(args.data, vae_dir, "tiny", args.vae_steps, seed=args.seed)
  barrier()
  vae = load_vae(vae_dir)
  if tuple(vae.frame_hw) != tuple(frame_hw) and (vae_dir / "worldpilot_frames.json").exists():
    raise ValueError(f"{vae_dir}: VAE was trained on {vae.frame_hw} frames but preset needs {frame_hw}")
  cache = Path(args.cache) if args.cache else out / "latent_cache"
  if dist_info.is_main:
    build_latent_cache(None, vae, cache, frame_hw=frame_hw, segments=data_segments(args.data))
  barrier()
  return store_root(cache, vae.identity, frame_hw), vae_dir


def data_segments(roots, split: str | None = None) -> list[Path]:
  """The usable segments of one split (None: all) pooled over the data roots; each root is split by route on its own,
  so a root of few routes still gives both splits."""
  from training.data.segments import find_segments
  return [p for root in roots for p in find_segments(root, split)]


def make_loaders(args, cfg: DiTConfig, latent_root, dist_info):
  from training.data.dataset import LOADER_START_METHOD, WindowConfig, WorldModelDataset
  wc = WindowConfig(context_frames=cfg.context_frames, anchor_frames=cfg.anchor_frames, fps=cfg.fps,
                    frame_hw=cfg.frame_hw)
  train_ds = WorldModelDataset(data_segments(args.data, "train"), "train", wc, latent_root, seed=args.seed)
  try:
    val_ds = WorldModelDataset(data_segments(args.data, "val"), "val", wc, latent_root, seed=args.seed)
  except ValueError as e:
    log.warning("no validation windows (%s); validation skipped", e)
    val_ds = None
  sampler = DistributedSampler(train_ds, dist_info.world_size, dist_info.rank, shuffle=True, seed=args.seed,
                               drop_last=True)
  kw = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0, pin_memory=dist_info.device.type == "cuda",
            multiprocessing_context=LOADER_START_METHOD if args.num_workers > 0 else None)
  train_dl = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True, **kw)
  val_dl = None
  if val_ds is not None:
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(val_ds), generator=g)[:args.val_batches * args.batch_size].tolist()
    val_dl = DataLoader(torch.utils.data.Subset(val_ds, idx), batch_size=args.batch_size, shuffle=False,
                        num_workers=0)
  return train_dl, sampler, val_dl


@torch.no_grad()
def validate(model, val_dl, device, autocast) -> dict:
  """Mean rectified-flow / plan losses (fixed noise) and plan ADE of the most likely hypothesis, with anchors as
  logged (anchor_valid), over val_dl's batches (dataset dicts). Leaves the model in the train/eval mode it found."""
  from training.mhp import best_hypothesis
  from training.worldmodel.plan_head import denormalize_plan
  was_training = model.training
  model.eval()
  g = torch.Generator(device=device).manual_seed(1234)
  sums, n = {}, 0
  for batch in val_dl:
    b = WindowBatch.from_dict(batch).to(device, non_blocking=True)
    with autocast():
      _, info = rectified_flow_loss(model, b, generator=g)
      out = model(b.latents[:, :-1], b.transitions[:, :-1], torch.zeros(b.latents.shape[:2], device=device)[:, :-1],
                  b.t_world[:, :-1], b.anchors, b.anchor_pose, b.anchor_t, b.anchor_valid, plan_index=-1).plan
    plan = denormalize_plan(best_hypothesis(out.logits, out.mean))[..., :3]
    m = b.plan_mask.float()
    err = (plan - b.plan[..., :3]).norm(dim=-1)
    ade = ((err * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    for k, v in {**info, "plan_ade_m": ade}.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  model.train(was_training)
  return {f"{k}": v / max(n, 1) for k, v in sums.items()}


class WorldModelTask:
  """The world model as a training.trainer.TrainTask: batches of windows (a new epoch of the distributed sampler
  whenever the loader runs dry), anchor dropout, the rectified-flow + MHP loss under bf16 autocast, and validation of
  the EMA weights. bind(trainer) hands it the trainer's forward module (DDP-wrapped under torchrun) and EMA."""

  def __init__(self, model, cfg: DiTConfig, train_dl, sampler, val_dl, device, autocast, config: dict,
               world_size: int = 1, log_every: int = 20):
    self.trainable, self.cfg, self.config = model, cfg, config
    self.train_dl, self.sampler, self.val_dl = train_dl, sampler, val_dl
    self.device, self.autocast = device, autocast
    self.world_size, self.log_every = world_size, log_every
    self.forward_model, self.ema = model, None
    self.epoch = 0
    self._batches = None
    self._frames, self._t_mark = 0, None     # frames/s over each log interval

  def bind(self, trainer: Trainer) -> None:
    self.forward_model, self.ema = trainer.model, trainer.ema

  def state_dicts(self) -> dict:
    return {"model": self.trainable.state_dict()}

  def load_state_dicts(self, state: dict) -> None:
    self.trainable.load_state_dict(state["model"])

  def config_dict(self) -> dict:
    return self.config

  def extra_state(self) -> dict:
    return {"epoch": self.epoch}

  def load_extra_state(self, extra: dict) -> None:
    self.epoch = int(extra.get("epoch", 0))

  def _next_batch(self) -> dict:
    for _ in range(2):
      if self._batches is None:
        self.sampler.set_epoch(self.epoch)
        self._batches = iter(self.train_dl)
      try:
        return next(self._batches)
      except StopIteration:
        self._batches = None
        self.epoch += 1
    raise ValueError("the training loader yields no batch (fewer windows than --batch-size x processes?)")

  def train_batch(self, step: int):
    if self._t_mark is None:
      self._t_mark = time.time()
    b = WindowBatch.from_dict(self._next_batch()).to(self.device, non_blocking=True)
    B = b.latents.shape[0]
    b.anchor_valid = b.anchor_valid & (torch.rand(B, device=self.device) >= self.cfg.anchor_drop_prob)
    with self.autocast():
      loss, info = rectified_flow_loss(self.forward_model, b, cfg=self.cfg)
    self._frames += B * self.world_size
    if (step + 1) % self.log_every == 0:
      now = time.time()
      info["frames_per_s"] = self._frames / max(now - self._t_mark, 1e-9)
      self._frames, self._t_mark = 0, now
    return loss, info

  def evaluate(self, step: int) -> dict | None:
    if self.val_dl is None:
      return None
    return {"val": validate(self.ema if self.ema is not None else self.trainable, self.val_dl, self.device,
                            self.autocast)}

  def after_step(self, step: int) -> None:
    pass


def run_config(args) -> RunConfig:
  """The shared loop's settings from the command line: AdamW betas (0.9, 0.99), no weight decay on the embedders
  (parameter names with "embed"), fused AdamW on CUDA, EMA with warm-up."""
  return RunConfig(max_steps=args.max_steps, minutes=args.minutes, lr=args.lr, warmup=args.warmup,
                   weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema, ema_warmup=True,
                   lr_schedule=args.lr_schedule, betas=(0.9, 0.99), no_decay_names=("embed",), fused_adamw=True,
                   log_every=args.log_every, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                   keep_ckpts=args.keep, seed=args.seed)


def train(argv=None) -> int:
  """The run; returns the step it reached."""
  ap = build_parser()
  args = parse_args(argv, ap)
  for root in args.data:
    if not Path(root).is_dir():
      ap.error(f"--data {root}: not a directory")
  preset_cfg, rc = apply_sets(ap, args.set, get_config(args.preset), run_config(args))
  for root in args.data:   # checked before a VAE or latent cache is built for nothing
    if not any(Path(root).rglob("video.hevc")):
      raise ToolError(f"--data {root}: no segment with a video.hevc under it")
  dist_info = setup_distributed(args.device)
  device = dist_info.device
  set_threads(args.threads)
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  use_bf16 = {"on": True, "off": False, "auto": bf16_supported(device)}[args.bf16]

  def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  ckpt = load_latest(out) if args.resume else None   # its config; the trainer loads its state below
  if args.resume and ckpt is None:
    log.warning("--resume: no usable checkpoint in %s, starting from scratch", out)
  if ckpt is not None:
    cfg = DiTConfig.from_dict(ckpt["config"]["model"], source=out)
  else:
    cfg = preset_cfg
  torch.manual_seed(args.seed + dist_info.rank)

  latent_root, vae_dir = prepare_latents(args, dist_info, cfg.frame_hw)
  train_dl, sampler, val_dl = make_loaders(args, cfg, latent_root, dist_info)
  model = build_model(cfg).to(device)
  config = {"model": cfg.to_dict(), "args": vars(args), "vae": str(vae_dir), "latent_root": str(latent_root),
            "world_size": dist_info.world_size, "params": count_params(model), "bf16_autocast": use_bf16}
  task = WorldModelTask(model, cfg, train_dl, sampler, val_dl, device, autocast, config, dist_info.world_size,
                        args.log_every)
  trainer = Trainer(task, rc, out, dist_info, desc=f"wm-{cfg.name}")
  task.bind(trainer)
  if ckpt is not None:
    trainer.resume()
  if dist_info.is_main:
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    log.info("preset %s: %.2fM parameters, %d train windows", cfg.name, count_params(model) / 1e6,
             len(train_dl.dataset))
  t_start = time.time()
  result = trainer.fit()
  if dist_info.is_main:
    log.info("done: step %d in %.1f min", trainer.step, (time.time() - t_start) / 60)
    emit_result({"run": str(out), "step": trainer.step, "minutes": (time.time() - t_start) / 60,
                 **{f"val_{k}": v for k, v in result.get("val", {}).items()}})
  step = trainer.step
  del trainer, task, model   # they hold the DDP wrapper and its process group: released before cleanup destroys it
  barrier()
  cleanup()
  return step


@tool_main
def main(argv=None) -> int:
  train(argv)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
