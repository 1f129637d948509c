"""Off-policy (behaviour cloning) training of the driving policy, in two stages (paper §5):

  extractor  FastViT + bottleneck + auxiliary heads (lane lines, road edges, lead, ego trajectory) on
             single stacked frames;
  temporal   the extractor frozen; its features (and outputs) are computed once for every frame and the causal
             transformer learns plan + action + the aux outputs on 2 s windows of them, with the bottleneck's
             channel noise added to the features. Aux targets: ground truth where the data has it, else the
             extractor's own outputs (the temporal model predicts the extractor's outputs).

  python -m training.policy.train --preset tiny --data DIR --out RUN [--stage extractor|temporal|both]
                                  [--max-steps N] [--resume]
  torchrun --nproc_per_node=8 -m training.policy.train ...     # DDP

DDP: --batch-size is per rank (effective batch = batch size x world size); each rank draws its own i.i.d. frames
(an independent random stream per rank, stage and step) and its own bottleneck noise, and gradients are averaged
by DistributedDataParallel. Rank 0 alone writes split.json, checkpoints, metrics and curves; the frame cache is
filled by all ranks in parallel (segment i by rank i % world_size) before everyone reads it. BatchNorm statistics
are per rank's batch; the running statistics of rank 0 (the checkpointed ones) are broadcast to every rank before
the temporal stage computes its features. At every checkpoint the ranks compare a sha256 of their parameters and
stop with an error if they differ (logged per rank as "params sha256 ...").

Run dir: ckpt_*.safetensors/json (training.checkpoint; states "vision" and, in the temporal stage,
"temporal"), metrics.csv + curves.png (training.metrics), split.json (train/val segments), cache/ (warped
model frames; features are recomputed in memory). Resuming continues the stage and step the newest
checkpoint was written at.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from common.cli import emit_result
from training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from training.distributed import DistInfo, all_reduce_mean, barrier, cleanup, setup_distributed
from training.metrics import MetricsLogger
from training.policy.data import SegmentData, load_segment, sample_picks, temporal_batch, vision_batch
from training.policy.losses import best_plan, output_losses, pool_errors, trajectory_errors
from training.policy.model import PolicyConfig, TemporalPolicy, VisionModel, get_config, measured_capacity_bits

log = logging.getLogger("training.policy.train")
STAGES = ("extractor", "temporal")


@dataclass
class TrainConfig:
  batch_size: int = 16
  lr: float = 1e-3
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  warmup: int = 50
  log_every: int = 10
  eval_every: int = 100
  ckpt_every: int = 100
  val_batches: int = 4
  seed: int = 0


def _lr(step: int, max_steps: int, tc: TrainConfig) -> float:
  if step < tc.warmup:
    return tc.lr * (step + 1) / tc.warmup
  p = (step - tc.warmup) / max(1, max_steps - tc.warmup)
  return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _unwrap(m):
  return m.module if hasattr(m, "module") else m


def _to(tgt: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
  return {k: v.to(device) for k, v in tgt.items()}


def param_digest(module: torch.nn.Module) -> str:
  """sha256 over every parameter's name and raw bytes: equal iff the weights are bit-identical."""
  h = hashlib.sha256()
  for name, p in _unwrap(module).named_parameters():
    h.update(name.encode())
    h.update(p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
  return h.hexdigest()


# ---------------------------------------------------------------- evaluation helpers (also used by evaluate.py)

@torch.no_grad()
def compute_features(vision: VisionModel, segs: list[SegmentData], batch: int = 32, progress: bool = True):
  """Noise-free features (N, D) and aux outputs for every frame of every segment."""
  vision.eval()
  device = next(vision.parameters()).device
  feats, outs = [], []
  for si, s in enumerate(tqdm(segs, desc="features", disable=not progress)):
    f, o = [], []
    for a in range(0, len(s), batch):
      img, _ = vision_batch([s], [(0, i) for i in range(a, min(a + batch, len(s)))])
      z, out = vision(img.to(device), noise=False)
      f.append(z.cpu().numpy())
      o.append(out.cpu().numpy())
    feats.append(np.concatenate(f))
    outs.append(np.concatenate(o))
  return feats, outs


@torch.no_grad()
def eval_vision(vision, segs, tc: TrainConfig, rng) -> dict:
  vision = _unwrap(vision).eval()
  device = next(vision.parameters()).device
  infos, errs, zs = [], [], []
  for _ in range(tc.val_batches):
    picks = sample_picks(segs, tc.batch_size, rng)
    img, tgt = vision_batch(segs, picks)
    img, tgt = img.to(device), _to(tgt, device)
    z, out = vision(img, noise=False)
    _, info = output_losses(out, vision.layout, tgt)
    infos.append(info)
    errs.append(trajectory_errors(best_plan(out, vision.layout), tgt["plan"], tgt["plan_valid"]))
    zs.append(z)
  res = {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}
  pooled = pool_errors(errs)
  res.update(ade=pooled["ade"], fde=pooled["fde"], mae=pooled["mae"])
  res["capacity_bits"] = measured_capacity_bits(torch.cat(zs), vision.bottleneck.noise_std)
  return res


@torch.no_grad()
def eval_temporal(temporal, segs, feats, tc: TrainConfig, rng) -> dict:
  temporal = _unwrap(temporal).eval()
  device = next(temporal.parameters()).device
  infos, errs = [], []
  T = temporal.cfg.history
  for _ in range(tc.val_batches):
    picks = sample_picks(segs, tc.batch_size, rng)
    f, v, d, tgt = temporal_batch(segs, feats, picks, T)
    f, v, d, tgt = f.to(device), v.to(device), d.to(device), _to(tgt, device)
    out = temporal(f, v, d)[:, -1]                                  # deployment reads the last step
    last = {k: x.reshape(len(picks), T, *x.shape[1:])[:, -1] for k, x in tgt.items()}
    _, info = output_losses(out, temporal.layout, last)
    infos.append(info)
    errs.append(trajectory_errors(best_plan(out, temporal.layout), last["plan"], last["plan_valid"]))
  res = {k: float(np.mean([i[k] for i in infos])) for k in infos[0]}
  pooled = pool_errors(errs)
  res.update(ade=pooled["ade"], fde=pooled["fde"], mae=pooled["mae"])
  return res


# ---------------------------------------------------------------- the trainer

class Trainer:
  def __init__(self, cfg: PolicyConfig, tc: TrainConfig, run_dir: Path, train: list[SegmentData],
               val: list[SegmentData], dist: DistInfo | None = None, progress: bool = True):
    self.cfg, self.tc, self.run_dir = cfg, tc, Path(run_dir)
    self.train_segs, self.val_segs = train, val
    self.dist = dist or DistInfo(0, 0, 1, torch.device("cpu"), True)
    self.progress = progress and self.dist.is_main
    self.metrics = MetricsLogger(self.run_dir) if self.dist.is_main else None
    if self.dist.device.type == "cpu":
      # oneDNN's CPU conv backward (torch 2.13) can segfault ("double free") on some inputs of this network (real
      # frames, not uniform noise), so the native kernels are used; they are ~10% slower.
      torch.backends.mkldnn.enabled = False
    torch.manual_seed(tc.seed)                  # same initial weights on every rank (DDP also broadcasts rank 0's)
    self.vision = VisionModel(cfg)
    self.temporal = TemporalPolicy(cfg)
    torch.manual_seed(tc.seed + 1 + self.dist.rank)   # bottleneck / feature noise: an independent stream per rank
    self.stage, self.step = STAGES[0], 0   # current stage and its optimizer step
    self.global_step = 0                    # optimizer steps over both stages (checkpoint numbering)
    self.opt_state = None

  def config_dict(self) -> dict:
    return {"policy": self.cfg.to_dict(), "train": asdict(self.tc)}

  def resume(self) -> bool:
    ck = load_latest(self.run_dir, load_optimizer=True)
    if ck is None:
      damaged = list_checkpoints(self.run_dir)
      if damaged:   # starting over would overwrite them and log the same steps into metrics.csv twice
        raise ValueError(f"{self.run_dir}: --resume found {len(damaged)} checkpoint(s) and none loads "
                         f"({', '.join(p.name for p in damaged)}; the warnings above say why); "
                         f"repair them or train into a new --out")
      self._drop_metrics_after_resume()
      return False
    saved = ck["config"].get("policy")
    if saved is not None and saved != self.cfg.to_dict():
      raise ValueError(f"{ck['path']}: run was trained with preset {saved.get('name')!r} config {saved}, "
                       f"not {self.cfg.name!r}; use a new --out or the same --preset")
    self.vision.load_state_dict(ck["state"]["vision"])
    if "temporal" in ck["state"]:
      self.temporal.load_state_dict(ck["state"]["temporal"])
    self.stage, self.step = ck["extra"]["stage"], int(ck["extra"]["stage_step"])
    self.global_step = int(ck["step"])
    self.opt_state = ck["optimizer"]
    self._drop_metrics_after_resume()
    log.info("resumed %s at stage %s step %d", ck["path"], self.stage, self.step)
    return True

  def _drop_metrics_after_resume(self) -> None:
    """Rows logged after the resumed checkpoint (the killed session's steps past it, which this session trains
    again): drop them so metrics.csv holds each (split, step) once."""
    if self.metrics is None:
      return
    order = {s: i for i, s in enumerate(STAGES)}

    def after(row) -> bool:
      stage = row["split"].split("_")[0]
      if stage not in order:
        return False
      return order[stage] > order[self.stage] or (stage == self.stage and row["step"] > self.step)
    dropped = self.metrics.drop_rows(after)
    if dropped:
      log.info("metrics.csv: dropped %d rows logged after the resumed step", dropped)

  def _save(self, opt) -> None:
    if not self.dist.is_main:
      return
    state = {"vision": self.vision.state_dict()}
    if self.stage == "temporal":
      state["temporal"] = self.temporal.state_dict()
    save_checkpoint(self.run_dir, self.global_step, state, opt.state_dict(), self.config_dict(),
                    {"stage": self.stage, "stage_step": self.step})

  def _wrap(self, model):
    if self.dist.distributed:
      ids = [self.dist.device] if self.dist.device.type == "cuda" else None
      return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model

  def _rng(self, stage_index: int) -> np.random.Generator:
    """Training-batch sampler: an independent stream per (seed, stage, rank, start step), so ranks draw different
    frames (the per-rank shard of an i.i.d. sampler) and a resumed run does not replay the batches it saw."""
    return np.random.default_rng([self.tc.seed, stage_index, self.dist.rank, self.step])

  def _check_ranks_in_sync(self, model, data_hash) -> str:
    """Every rank: sha256 of its parameters, logged; under DDP the digests are gathered and a mismatch (ranks whose
    weights drifted apart, i.e. gradients not averaged) is an error. Collective: all ranks call it at the same step."""
    digest = param_digest(model)
    log.info("rank %d/%d %s step %d: params sha256 %s, data sha256 %s", self.dist.rank, self.dist.world_size,
             self.stage, self.step, digest, data_hash.hexdigest())
    if self.dist.distributed:
      digests = [None] * self.dist.world_size
      tdist.all_gather_object(digests, digest)
      if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks diverged in stage {self.stage} at step {self.step}: parameter sha256 per rank "
                           f"{digests}")
    return digest

  def _broadcast_buffers(self, module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which DDP leaves per rank after the last
    forward pass), so frozen-extractor features are the same on every rank and match the checkpoint."""
    if self.dist.distributed:
      for b in module.buffers():
        tdist.broadcast(b, 0)

  def _optimizer_step(self, opt, loss, info: dict, module, bar, max_steps: int, split: str) -> None:
    """Backward, clip, step, advance the counters and log; the same for both stages."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), self.tc.grad_clip)
    opt.step()
    self.step += 1
    self.global_step += 1
    bar.update(1)
    bar.set_postfix(loss=f"{info['loss']:.3f}")
    if self.step % self.tc.log_every == 0 or self.step == max_steps:
      loss_mean = float(all_reduce_mean(loss.detach()))               # collective: every rank takes part
      if self.metrics:
        self.metrics.log(self.step, split, **info, loss_mean=loss_mean)

  def run_extractor(self, max_steps: int) -> dict:
    model = self._wrap(self.vision.to(self.dist.device))
    opt = torch.optim.AdamW(self.vision.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
    if self.opt_state is not None and self.stage == "extractor":
      opt.load_state_dict(self.opt_state)
    rng = self._rng(0)
    data_hash = hashlib.sha256()      # of the (segment, frame) picks this rank trained on, for the sync log
    val_rng_seed = self.tc.seed + 7
    last = {}
    bar = tqdm(total=max_steps, initial=self.step, desc="extractor", disable=not self.progress)
    while self.step < max_steps:
      model.train()
      for g in opt.param_groups:
        g["lr"] = _lr(self.step, max_steps, self.tc)
      picks = sample_picks(self.train_segs, self.tc.batch_size, rng)
      data_hash.update(np.asarray(picks, np.int64).tobytes())
      img, tgt = vision_batch(self.train_segs, picks)
      img, tgt = img.to(self.dist.device), _to(tgt, self.dist.device)
      _, out = model(img)
      loss, info = output_losses(out, self.vision.layout, tgt)
      self._optimizer_step(opt, loss, info, self.vision, bar, max_steps, "extractor_train")
      if self.step % self.tc.eval_every == 0 or self.step == max_steps:
        if self.dist.is_main and self.val_segs:
          last = eval_vision(self.vision, self.val_segs, self.tc, np.random.default_rng(val_rng_seed))
          self.metrics.log(self.step, "extractor_val", **last)
          self.metrics.plot()
      if self.step % self.tc.ckpt_every == 0 or self.step == max_steps:
        self._check_ranks_in_sync(self.vision, data_hash)
        self._save(opt)
        barrier()
    bar.close()
    return last

  def run_temporal(self, max_steps: int) -> dict:
    if self.stage != "temporal":
      self.stage, self.step, self.opt_state = "temporal", 0, None
    for p in self.vision.parameters():
      p.requires_grad_(False)
    self.vision.eval()
    self._broadcast_buffers(self.vision)
    train_f, train_o = compute_features(self.vision, self.train_segs, progress=self.progress)
    val_f, _ = compute_features(self.vision, self.val_segs, progress=self.progress) if self.val_segs else ([], [])
    noise_std = self.vision.bottleneck.noise_std
    model = self._wrap(self.temporal.to(self.dist.device))
    opt = torch.optim.AdamW(self.temporal.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
    if self.opt_state is not None:
      opt.load_state_dict(self.opt_state)
    rng = self._rng(1)
    data_hash = hashlib.sha256()
    T = self.cfg.history
    last = {}
    bar = tqdm(total=max_steps, initial=self.step, desc="temporal", disable=not self.progress)
    while self.step < max_steps:
      model.train()
      for g in opt.param_groups:
        g["lr"] = _lr(self.step, max_steps, self.tc)
      picks = sample_picks(self.train_segs, self.tc.batch_size, rng)
      data_hash.update(np.asarray(picks, np.int64).tobytes())
      f, v, d, tgt = temporal_batch(self.train_segs, train_f, picks, T, train_o, self.vision.layout)
      f, v, d, tgt = f.to(self.dist.device), v.to(self.dist.device), d.to(self.dist.device), _to(tgt, self.dist.device)
      f = f + noise_std * torch.randn_like(f)                           # the bottleneck's channel noise
      out = model(f, v, d)                                              # (B, T, N): every causal position
      loss, info = output_losses(out.reshape(-1, out.shape[-1]), self.temporal.layout, tgt)
      self._optimizer_step(opt, loss, info, self.temporal, bar, max_steps, "temporal_train")
      if self.step % self.tc.eval_every == 0 or self.step == max_steps:
        if self.dist.is_main and self.val_segs:
          last = eval_temporal(self.temporal, self.val_segs, val_f, self.tc, np.random.default_rng(self.tc.seed + 9))
          self.metrics.log(self.step, "temporal_val", **last)
          self.metrics.plot()
      if self.step % self.tc.ckpt_every == 0 or self.step == max_steps:
        self._check_ranks_in_sync(self.temporal, data_hash)
        self._save(opt)
        barrier()
    bar.close()
    return last


# ---------------------------------------------------------------- data split + CLI

def split_segments(root: Path, run_dir: Path, val_frac: float, seed: int) -> tuple[list[Path], list[Path]]:
  """Train/val split by segment, frozen in run_dir/split.json so resumes and evaluate.py see the same one."""
  from tools.lib.route import scan_segments
  path = run_dir / "split.json"
  if path.exists():
    try:
      s = json.loads(path.read_text())
      return [Path(p) for p in s["train"]], [Path(p) for p in s["val"]]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{path}: unreadable split file ({e}); delete it to re-split") from e
  good, bad = scan_segments(root, check_video=True, progress=False)
  for p, why in bad:
    log.warning("skipping segment %s: %s", p, why)
  good = [p for p in good if (p / "video.hevc").exists()]
  if not good:
    raise ValueError(f"{root}: no segment with video found (bad: {len(bad)})")
  order = np.random.default_rng(seed).permutation(len(good))
  n_val = int(round(val_frac * len(good))) if len(good) > 1 else 0
  n_val = min(max(n_val, 1 if len(good) > 1 else 0), len(good) - 1)
  val = sorted(good[i] for i in order[:n_val])
  train = sorted(good[i] for i in order[n_val:])
  run_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"train": [str(p) for p in train], "val": [str(p) for p in val]}, indent=1))
  return train, val


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--data", type=Path, required=True, help="root with segment dirs (video + poses [+ ground_truth])")
  ap.add_argument("--out", type=Path, required=True, help="run directory")
  ap.add_argument("--stage", choices=("extractor", "temporal", "both"), default="both")
  ap.add_argument("--max-steps", type=int, default=1000, help="optimizer steps per stage")
  ap.add_argument("--resume", action="store_true")
  ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
  ap.add_argument("--lr", type=float, default=TrainConfig.lr)
  ap.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
  ap.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
  ap.add_argument("--ckpt-every", type=int, default=TrainConfig.ckpt_every)
  ap.add_argument("--val-frac", type=float, default=0.2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if args.threads:
    torch.set_num_threads(args.threads)
  cfg = get_config(args.preset)
  tc = TrainConfig(batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, eval_every=args.eval_every,
                   ckpt_every=args.ckpt_every,
                   seed=args.seed)
  if args.max_steps < 1:
    ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
  if not args.data.is_dir():
    ap.error(f"--data {args.data}: not a directory")
  if args.out.exists() and any(args.out.glob("ckpt_*.json")) and not args.resume:
    ap.error(f"--out {args.out} already holds checkpoints; pass --resume or choose a new directory")
  dist = setup_distributed()
  try:
    # rank 0 scans and freezes the split; the others read its split.json
    try:
      if dist.is_main:
        train_paths, val_paths = split_segments(args.data, args.out, args.val_frac, args.seed)
      barrier()
      if not dist.is_main:
        train_paths, val_paths = split_segments(args.data, args.out, args.val_frac, args.seed)
    except ValueError as e:   # no usable segment / unreadable split.json
      print(f"error: {e}", file=sys.stderr)
      return 1
    cache = args.out / "cache"
    if dist.distributed:   # decode + warp each segment once, in parallel: segment i by rank i % world_size
      for p in (train_paths + val_paths)[dist.rank::dist.world_size]:
        load_segment(p, cfg, cache)
      barrier()
    train = [load_segment(p, cfg, cache, progress=dist.is_main)
             for p in tqdm(train_paths, desc="load train", disable=not dist.is_main)]
    val = [load_segment(p, cfg, cache, progress=dist.is_main) for p in tqdm(val_paths, desc="load val", disable=not dist.is_main)]
    tr = Trainer(cfg, tc, args.out, train, val, dist)
    if args.resume:
      try:
        tr.resume()
      except ValueError as e:   # every checkpoint damaged, or another preset's run
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = {}
    if args.stage in ("extractor", "both") and tr.stage == "extractor":
      results["extractor"] = tr.run_extractor(args.max_steps)
    if args.stage in ("temporal", "both"):
      if tr.stage == "extractor" and tr.step == 0 and args.stage == "temporal":
        ap.error(f"--stage temporal needs a trained extractor in {args.out} (run --stage extractor first)")
      results["temporal"] = tr.run_temporal(args.max_steps)
    if dist.is_main:
      (args.out / "train_result.json").write_text(json.dumps(results, indent=1))
      emit_result(results)
  finally:
    cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
