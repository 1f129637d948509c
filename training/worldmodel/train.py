"""Train the world model (paper §4.2, §4.4): rectified flow on VAE latents + Plan Head, L = L_RF + alpha * L_MHP.

  python -m training.worldmodel.train --preset tiny --data DIR --out RUN [--max-steps N] [--resume] [--vae PATH]
  torchrun --nproc_per_node=8 -m training.worldmodel.train --preset 250M --data DIR --out RUN --vae sd-vae-ft-mse

Pipeline: VAE (--vae PATH, or our own tiny one trained into RUN/vae when absent) -> latent cache (every frame encoded
once, resumable; RUN/latent_cache unless --cache) -> windows (training/data/dataset.py) -> AdamW + EMA, bf16
autocast + TF32 on CUDA, gradient clipping, checkpoints every --ckpt-every steps (atomic, training/checkpoint.py),
validation every --val-every steps on the route-split validation set, metrics.csv + curves.png in RUN.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from common.cli import emit_result
from training.checkpoint import load_latest, save_checkpoint
from training.distributed import all_reduce_mean, barrier, cleanup, setup_distributed
from training.metrics import MetricsLogger
from training.schedule import warmup_cosine
from training.worldmodel.dit import DiTConfig, WorldModelDiT, count_params, get_config, rectified_flow_loss

log = logging.getLogger("worldmodel.train")

BATCH_KEYS = ("latents", "transitions", "t_world", "anchors", "anchor_pose", "anchor_t", "anchor_valid", "plan",
              "plan_mask")


def parse_args(argv=None):
  ap = argparse.ArgumentParser(prog="python -m training.worldmodel.train", description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--data", required=True, help="dataset root (comma2k19 layout segments with video.hevc)")
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
  ap.add_argument("--val-every", type=int, default=500)
  ap.add_argument("--val-batches", type=int, default=8)
  ap.add_argument("--log-every", type=int, default=20)
  ap.add_argument("--num-workers", type=int, default=2)
  ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
  ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
  ap.add_argument("--resume", action="store_true", help="continue from RUN's latest checkpoint")
  ap.add_argument("--bf16", default="auto", choices=("auto", "on", "off"),
                  help="bf16 autocast; auto = on for CUDA GPUs with bf16 and for CPUs with AVX512-BF16/AMX-BF16")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                  help="override DiTConfig fields (repeatable: every --set adds to the list)")
  args = ap.parse_args(argv)
  if args.max_steps < 1:
    ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
  return args


def _overrides(pairs) -> dict:
  out = {}
  for p in pairs:
    if "=" not in p:
      raise ValueError(f"--set {p!r}: expected FIELD=VALUE")
    k, v = p.split("=", 1)
    field_type = type(getattr(DiTConfig(), k, None))
    if field_type is type(None):
      raise ValueError(f"--set {k}: unknown DiTConfig field")
    if field_type is bool:   # bool("false") is True
      if v.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"--set {k}={v}: expected true or false")
      out[k] = v.lower() in ("true", "1")
    else:
      out[k] = field_type(v)
  return out


def to_device(batch: dict, device) -> dict:
  return {k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS if k in batch}


def learning_rate(args, step: int, train_seconds: float) -> float:
  """Peak --lr with linear warm-up; then cosine decay to 0 as the run's progress goes 0 -> 1, where progress is the
  larger of step / max_steps and train_seconds / minutes (so a time-limited run still ends at a small rate)."""
  if args.lr_schedule == "constant":
    return args.lr * min(1.0, (step + 1) / max(1, args.warmup))
  progress = step / max(1, args.max_steps)
  if args.minutes:
    progress = max(progress, train_seconds / (args.minutes * 60))
  return warmup_cosine(args.lr, step, args.warmup, progress)


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


def ema_decay(step: int, target: float) -> float:
  """EMA decay with warm-up, min(target, (1 + step) / (10 + step)), so short runs do not average in the random init."""
  return min(target, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
  for pe, pm in zip(ema.parameters(), model.parameters()):
    pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)


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
    build_latent_cache(args.data, vae, cache, frame_hw=frame_hw)
  barrier()
  return store_root(cache, vae.identity, frame_hw), vae_dir


def make_loaders(args, cfg: DiTConfig, latent_root, dist_info):
  from training.data.dataset import WindowConfig, WorldModelDataset
  wc = WindowConfig(context_frames=cfg.context_frames, anchor_frames=cfg.anchor_frames, fps=cfg.fps,
                    frame_hw=cfg.frame_hw)
  train_ds = WorldModelDataset(args.data, "train", wc, latent_root, seed=args.seed)
  try:
    val_ds = WorldModelDataset(args.data, "val", wc, latent_root, seed=args.seed)
  except ValueError as e:
    log.warning("no validation windows (%s); validation skipped", e)
    val_ds = None
  sampler = DistributedSampler(train_ds, dist_info.world_size, dist_info.rank, shuffle=True, seed=args.seed,
                               drop_last=True)
  kw = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0, pin_memory=dist_info.device.type == "cuda")
  train_dl = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True, **kw)
  val_dl = None
  if val_ds is not None:
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(val_ds), generator=g)[:args.val_batches * args.batch_size].tolist()
    val_dl = DataLoader(torch.utils.data.Subset(val_ds, idx), batch_size=args.batch_size, shuffle=False,
                        num_workers=0)
  return train_dl, sampler, val_dl


@torch.no_grad()
def validate(model: WorldModelDiT, val_dl, device, autocast) -> dict:
  """Mean rectified-flow / plan losses (fixed noise) and plan ADE of the most likely hypothesis, with anchors as
  logged (anchor_valid). The rectified-flow loss is always that of the paper's layout (the last frame only,
  gen_frames = 1), so runs with different gen_frames compare. Leaves the model in the train/eval mode it found."""
  import dataclasses

  from training.mhp import best_hypothesis
  from training.worldmodel.plan_head import denormalize_plan
  was_training = model.training
  model.eval()
  g = torch.Generator(device=device).manual_seed(1234)
  sums, n = {}, 0
  for batch in val_dl:
    b = to_device(batch, device)
    with autocast():
      _, info = rectified_flow_loss(model, b, generator=g, cfg=dataclasses.replace(model.cfg, gen_frames=1))
      _, _, out = model(b["latents"][:, :-1], b["transitions"][:, :-1],
                        torch.zeros(b["latents"].shape[:2], device=device)[:, :-1], b["t_world"][:, :-1], b["anchors"],
                        b["anchor_pose"], b["anchor_t"], b["anchor_valid"], plan_index=-1)
    plan = denormalize_plan(best_hypothesis(out["logits"], out["mean"]))[..., :3]
    m = b["plan_mask"].float()
    err = (plan - b["plan"][..., :3]).norm(dim=-1)
    ade = ((err * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    for k, v in {**info, "plan_ade_m": ade}.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  model.train(was_training)
  return {f"{k}": v / max(n, 1) for k, v in sums.items()}


def measure_decoder_metric(cfg: DiTConfig, vae_dir, dataset, n_latents: int = 32) -> DiTConfig:
  """decoder_weighted_loss: measure the frozen decoder's pixel cost of latent error (decoder_metric.measure) around
  n_latents training latents spread over the dataset; returns cfg with the weights filled in. Deterministic, so every
  DDP rank gets the same numbers."""
  import dataclasses

  from training.vae import load_vae
  from training.worldmodel.decoder_metric import measure
  vae = load_vae(vae_dir)
  idx = torch.linspace(0, len(dataset) - 1, min(n_latents, len(dataset))).long().unique()
  z = torch.stack([dataset[int(i)]["latents"][-1] for i in idx])
  m = measure(vae.decode, z, pool=cfg.loss_lowpass_pool)
  log.info("decoder metric: channel weights %s, low-pass weight %.2f (pixel cost per latent: white %.3g, smooth %.3g)",
           [round(w, 3) for w in m["channel_weights"]], m["lowpass_weight"], m["pixel_per_latent"]["white"],
           m["pixel_per_latent"]["lowpass"])
  return dataclasses.replace(cfg, loss_channel_weights=m["channel_weights"], loss_lowpass_weight=m["lowpass_weight"])


def main(argv=None):
  args = parse_args(argv)
  if not Path(args.data).is_dir():
    print(f"usage error: --data {args.data}: not a directory", file=sys.stderr)
    raise SystemExit(2)
  if not any(Path(args.data).rglob("video.hevc")):   # checked before a VAE or latent cache is built for nothing
    print(f"error: --data {args.data}: no segment with a video.hevc under it", file=sys.stderr)
    raise SystemExit(1)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  dist_info = setup_distributed(args.device)
  device = dist_info.device
  if args.threads:
    torch.set_num_threads(args.threads)
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  use_bf16 = {"on": True, "off": False, "auto": bf16_supported(device)}[args.bf16]

  def autocast():
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  ckpt = load_latest(out, load_optimizer=True) if args.resume else None
  if args.resume and ckpt is None:
    log.warning("--resume: no usable checkpoint in %s, starting from scratch", out)
  if ckpt is not None:
    cfg = DiTConfig.from_dict(ckpt["config"]["model"])
  else:
    cfg = get_config(args.preset, **_overrides(args.set))
  torch.manual_seed(args.seed + dist_info.rank)

  latent_root, vae_dir = prepare_latents(args, dist_info, cfg.frame_hw)
  train_dl, sampler, val_dl = make_loaders(args, cfg, latent_root, dist_info)
  if cfg.decoder_weighted_loss and cfg.loss_channel_weights is None:
    cfg = measure_decoder_metric(cfg, vae_dir, train_dl.dataset)

  model = WorldModelDiT(cfg).to(device)
  ema = copy.deepcopy(model).requires_grad_(False).eval()
  decay, no_decay = [], []
  for n_, p in model.named_parameters():
    (decay if p.ndim >= 2 and "embed" not in n_ else no_decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.99),
                          fused=device.type == "cuda")
  step, epoch = 0, 0
  seconds_before = 0.0    # training wall time of earlier (resumed) sessions of this run
  ema_init_weight = 1.0   # weight the EMA still gives the initial parameters (product of decays)
  if ckpt is not None:
    model.load_state_dict(ckpt["state"]["model"])
    ema.load_state_dict(ckpt["state"]["ema"])
    if ckpt["optimizer"] is not None:
      opt.load_state_dict(ckpt["optimizer"])
    step, epoch = ckpt["step"], ckpt["extra"].get("epoch", 0)
    seconds_before = float(ckpt["extra"].get("train_seconds", 0.0))
    ema_init_weight = ckpt["extra"].get("ema_init_weight", args.ema ** step)
    log.info("resumed from %s (step %d)", ckpt["path"], step)
  ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
    if dist_info.distributed else model
  metrics = MetricsLogger(out) if dist_info.is_main else None
  run_config = {"model": cfg.to_dict(), "args": vars(args), "vae": str(vae_dir), "latent_root": str(latent_root),
                "world_size": dist_info.world_size, "params": count_params(model), "bf16_autocast": use_bf16}
  if dist_info.is_main:
    (out / "config.json").write_text(json.dumps(run_config, indent=1, default=str))
    log.info("preset %s: %.2fM parameters, %d train windows", cfg.name, count_params(model) / 1e6,
             len(train_dl.dataset))

  def save():
    if dist_info.is_main:
      save_checkpoint(out, step, {"model": model.state_dict(), "ema": ema.state_dict()}, opt.state_dict(),
                      run_config, {"epoch": epoch, "ema_init_weight": ema_init_weight,
                                   "train_seconds": seconds_before + time.time() - t_start}, keep=args.keep)

  from tqdm import tqdm
  t_start = time.time()
  bar = tqdm(total=args.max_steps, initial=step, desc=f"wm-{cfg.name}", disable=not dist_info.is_main,
             dynamic_ncols=True)
  model.train()
  frames_seen, t_log = 0, time.time()
  stop = step >= args.max_steps
  while not stop:
    sampler.set_epoch(epoch)
    for batch in train_dl:
      b = to_device(batch, device)
      B = b["latents"].shape[0]
      b["anchor_valid"] = b["anchor_valid"] & (torch.rand(B, device=device) >= cfg.anchor_drop_prob)
      lr = learning_rate(args, step, seconds_before + time.time() - t_start)
      for grp in opt.param_groups:
        grp["lr"] = lr
      with autocast():
        loss, info = rectified_flow_loss(ddp, b, cfg=cfg)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
      opt.step()
      d = ema_decay(step, args.ema)
      ema_update(ema, model, d)
      ema_init_weight *= d
      step += 1
      frames_seen += B * dist_info.world_size
      bar.update(1)
      bar.set_postfix(loss=f"{info['loss'].item():.4f}", rf=f"{info['rf'].item():.4f}")
      if step % args.log_every == 0:
        vals = {k: all_reduce_mean(v.float()).item() for k, v in info.items()}
        if metrics:
          dt = time.time() - t_log
          metrics.log(step, "train", **vals, grad_norm=float(gnorm), lr=lr, frames_per_s=frames_seen / max(dt, 1e-9))
        frames_seen, t_log = 0, time.time()
      if val_dl is not None and step % args.val_every == 0 and dist_info.is_main:
        vals = validate(ema, val_dl, device, autocast)
        metrics.log(step, "val", **vals)
        metrics.plot()
      if step % args.ckpt_every == 0:
        save()
      timed_out = args.minutes is not None and seconds_before + (time.time() - t_start) > args.minutes * 60
      if dist_info.distributed:
        flag = torch.tensor(float(timed_out), device=device)
        timed_out = all_reduce_mean(flag).item() > 0
      if step >= args.max_steps or timed_out:
        stop = True
        break
    epoch += 1
  bar.close()
  if step % args.ckpt_every != 0:
    save()
  if dist_info.is_main:
    final_val = validate(ema, val_dl, device, autocast) if val_dl is not None else {}
    if final_val:
      metrics.log(step, "val", **final_val)
    metrics.plot()
    log.info("done: step %d in %.1f min", step, (time.time() - t_start) / 60)
    emit_result({"run": str(out), "step": step, "minutes": (time.time() - t_start) / 60,
                 **{f"val_{k}": v for k, v in final_val.items()}})
  barrier()
  cleanup()
  return step


if __name__ == "__main__":
  main()
