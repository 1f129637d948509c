"""Off-policy (behaviour cloning) training of the driving policy, in two stages (paper §5):

  extractor  FastViT + bottleneck + auxiliary heads (lane lines and their centre near the car, road edges, lead,
             ego trajectory) on single stacked frames;
  temporal   the extractor frozen; its features (and outputs) are computed once for every frame and the causal
             transformer learns plan + action + the aux outputs on 2 s windows of them, with the bottleneck's
             channel noise added to the features. Aux targets: ground truth where the data has it, else the
             extractor's own outputs (the temporal model predicts the extractor's outputs).

  python -m training.policy.train --preset tiny --data DIR [DIR ...] --out RUN [--stage extractor|temporal|both]
                                  [--max-steps N] [--resume] [--set FIELD=VALUE ...] [--config FILE]
  torchrun --nproc_per_node=8 -m training.policy.train ...     # DDP

DDP: --batch-size is per rank (effective batch = batch size x world size); each rank draws its own i.i.d. frames
(an independent random stream per rank, stage and step) and its own bottleneck noise, and gradients are averaged
by DistributedDataParallel. Rank 0 alone writes split.json, checkpoints, metrics and curves; the frame cache is
filled by all ranks in parallel (segment i by rank i % world_size) before everyone reads it. BatchNorm statistics
are per rank's batch; the running statistics of rank 0 (the checkpointed ones) are broadcast to every rank before
the temporal stage computes its features. At every checkpoint the ranks compare a sha256 of their parameters and
stop with an error if they differ (logged per rank as "params sha256 ...").

Both stages run on the shared loop (training.trainer.Trainer; ExtractorTask and TemporalTask are its tasks): AdamW
(weight decay on matrices / conv kernels), gradient norm clipped to 1, linear warm-up over 50 steps and a cosine
to 0.1 x --lr over each stage's --max-steps (RunConfig.min_lr_frac).

Run dir: ckpt_*.safetensors/json (training.checkpoint; states "vision" and, in the temporal stage, "temporal";
numbered by optimizer steps over both stages; the stage and its step in extra["task"], read by
training.policy.model.checkpoint_stage), metrics.csv + curves.png (training.metrics; splits extractor_train,
extractor_val, temporal_train, temporal_val, logged at each stage's own step), split.json (train/val segments),
cache/ (warped model frames; features are recomputed in memory). Resuming continues the stage and step the newest
checkpoint was written at.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from common.cli import add_common_args, apply_sets, emit_result, make_parser, tool_main
from training.checkpoint import list_checkpoints, load_latest
from training.distributed import DistInfo, barrier, cleanup, setup_distributed
from training.metrics import MetricsLogger
from training.policy.data import (
  SegmentData,
  load_segment,
  photometric_augment,
  sample_picks,
  temporal_batch,
  vision_batch,
  yaw_augment,
)
from training.policy.losses import best_plan, output_losses, pool_errors, trajectory_errors
from training.policy.model import (
  PolicyConfig,
  TemporalPolicy,
  VisionModel,
  checkpoint_stage,
  get_config,
  measured_capacity_bits,
)
from training.torch_args import set_threads
from training.trainer import RunConfig, Trainer

log = logging.getLogger("training.policy.train")
STAGES = ("extractor", "temporal")
BATCH_SIZE = 16          # per rank
VAL_BATCHES = 4          # batches of each evaluation
# --yaw-augment RAD turns this share of the extractor's samples by a yaw drawn in [-RAD, RAD] (data.yaw_augment)
YAW_AUGMENT_SHARE = 0.5


def run_config(**overrides) -> RunConfig:
  """The policy's training.trainer settings (per stage), with overrides (e.g. max_steps, lr, eval_every)."""
  base = RunConfig(max_steps=1000, lr=1e-3, warmup=50, weight_decay=0.01, grad_clip=1.0, min_lr_frac=0.1, log_every=10,
                   log_last=True, eval_every=100, ckpt_every=100, keep_ckpts=3, seed=0)
  return replace(base, **overrides)


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
def eval_vision(vision, segs, rng, batch_size: int = BATCH_SIZE, val_batches: int = VAL_BATCHES) -> dict:
  vision = _unwrap(vision).eval()
  device = next(vision.parameters()).device
  infos, errs, zs = [], [], []
  for _ in range(val_batches):
    picks = sample_picks(segs, batch_size, rng)
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
def eval_temporal(temporal, segs, feats, rng, batch_size: int = BATCH_SIZE, val_batches: int = VAL_BATCHES) -> dict:
  temporal = _unwrap(temporal).eval()
  device = next(temporal.parameters()).device
  infos, errs = [], []
  T = temporal.cfg.history
  for _ in range(val_batches):
    picks = sample_picks(segs, batch_size, rng)
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


# ---------------------------------------------------------------- the two stages as training.trainer tasks

class _StageTask:
  """What both stages give training.trainer.Trainer: the run's state dicts, its config, the stage and step for the
  checkpoint, each rank's batches and the rank-sync check before every checkpoint."""
  stage: str

  def __init__(self, run: PolicyTraining, trainable: torch.nn.Module):
    self.run, self.trainable = run, trainable
    self.model = trainable             # the forward pass; the Trainer's DistributedDataParallel under torchrun
    self.step = run.step
    self.batch_rng: np.random.Generator | None = None
    self.data_hash = hashlib.sha256()  # of the (segment, frame) picks this rank trained on, for the sync log

  def state_dicts(self) -> dict:
    state = {"vision": self.run.vision.state_dict()}
    if self.stage == "temporal":
      state["temporal"] = self.run.temporal.state_dict()
    return state

  def load_state_dicts(self, state: dict) -> None:
    self.run.vision.load_state_dict(state["vision"])
    if "temporal" in state:
      self.run.temporal.load_state_dict(state["temporal"])

  def config_dict(self) -> dict:
    return self.run.config_dict()

  def extra_state(self) -> dict:
    return {"stage": self.stage, "stage_step": self.step}

  def load_extra_state(self, extra: dict) -> None:
    pass

  def after_step(self, step: int) -> None:
    self.step = step

  def before_checkpoint(self, step: int) -> None:
    self.run.check_ranks_in_sync(self.trainable, self.data_hash, self.stage, step)

  def picks(self, step: int) -> list[tuple[int, int]]:
    """This rank's training batch. Sampler: an independent stream per (seed, stage, rank, start step), so ranks
    draw different frames (the per-rank shard of an i.i.d. sampler) and a resumed run does not replay the batches it
    saw."""
    run = self.run
    if self.batch_rng is None:
      self.batch_rng = np.random.default_rng([run.rc.seed, STAGES.index(self.stage), run.dist.rank, step])
    picks = sample_picks(run.train_segs, run.batch_size, self.batch_rng)
    self.data_hash.update(np.asarray(picks, np.int64).tobytes())
    return picks


class ExtractorTask(_StageTask):
  """Stage 1: the vision model (FastViT + bottleneck + aux heads) on single stacked frames."""
  stage = "extractor"

  def __init__(self, run: PolicyTraining):
    super().__init__(run, run.vision)

  def train_batch(self, step: int):
    run, device = self.run, self.run.dist.device
    img, tgt = vision_batch(run.train_segs, self.picks(step))
    if run.augment:
      gen = torch.Generator().manual_seed(int(np.random.default_rng([run.rc.seed, run.dist.rank, step]).integers(2**62)))
      if run.yaw_augment > 0:
        img, tgt = yaw_augment(img, tgt, run.cfg, run.yaw_augment, YAW_AUGMENT_SHARE, gen)
      img = photometric_augment(img, gen)
    _, out = self.model(img.to(device))
    return output_losses(out, run.vision.layout, _to(tgt, device))

  def evaluate(self, step: int) -> dict | None:
    run = self.run
    if not run.val_segs:
      return None
    return {"val": eval_vision(run.vision, run.val_segs, np.random.default_rng(run.rc.seed + 7), run.batch_size,
                               run.val_batches)}


class TemporalTask(_StageTask):
  """Stage 2: the causal transformer on the frozen extractor's features (+ its channel noise), 2 s windows."""
  stage = "temporal"

  def __init__(self, run: PolicyTraining):
    super().__init__(run, run.temporal)
    vision = run.vision
    vision.requires_grad_(False)
    vision.eval()
    run.broadcast_buffers(vision)
    self.train_f, self.train_o = compute_features(vision, run.train_segs, progress=run.progress)
    self.val_f = compute_features(vision, run.val_segs, progress=run.progress)[0] if run.val_segs else []
    self.noise_std = vision.bottleneck.noise_std

  def train_batch(self, step: int):
    run, device = self.run, self.run.dist.device
    f, v, d, tgt = temporal_batch(run.train_segs, self.train_f, self.picks(step), run.cfg.history, self.train_o,
                                  run.vision.layout)
    f, v, d, tgt = f.to(device), v.to(device), d.to(device), _to(tgt, device)
    f = f + self.noise_std * torch.randn_like(f)                      # the bottleneck's channel noise
    out = self.model(f, v, d)                                         # (B, T, N): every causal position
    return output_losses(out.reshape(-1, out.shape[-1]), run.temporal.layout, tgt)

  def evaluate(self, step: int) -> dict | None:
    run = self.run
    if not run.val_segs:
      return None
    return {"val": eval_temporal(run.temporal, run.val_segs, self.val_f, np.random.default_rng(run.rc.seed + 9),
                                 run.batch_size, run.val_batches)}


class PolicyTraining:
  """One policy run directory, both stages: the models, the stage reached and its step; each stage is a
  training.trainer.Trainer (its metrics rows prefixed with the stage, its checkpoints numbered over both stages)."""

  def __init__(self, cfg: PolicyConfig, rc: RunConfig, run_dir: Path, train: list[SegmentData],
               val: list[SegmentData], dist: DistInfo | None = None, progress: bool = True,
               batch_size: int = BATCH_SIZE, val_batches: int = VAL_BATCHES, augment: bool = False,
               yaw_augment: float = 0.0):
    self.cfg, self.rc, self.run_dir = cfg, rc, Path(run_dir)
    self.augment = augment          # photometric augmentation of the extractor's frames (data.photometric_augment)
    self.yaw_augment = yaw_augment  # with augment: the largest yaw turn (rad) of data.yaw_augment, 0 = none
    self.train_segs, self.val_segs = train, val
    self.batch_size, self.val_batches = batch_size, val_batches
    self.dist = dist or DistInfo(0, 0, 1, torch.device("cpu"), True)
    self.progress = progress and self.dist.is_main
    self.metrics = MetricsLogger(self.run_dir) if self.dist.is_main else None
    torch.manual_seed(rc.seed)                  # same initial weights on every rank (DDP also broadcasts rank 0's)
    self.vision = VisionModel(cfg)
    self.temporal = TemporalPolicy(cfg)
    torch.manual_seed(rc.seed + 1 + self.dist.rank)   # bottleneck / feature noise: an independent stream per rank
    self.stage, self.step = STAGES[0], 0   # current stage and its optimizer step
    self.global_step = 0                    # optimizer steps over both stages (checkpoint numbering)

  def config_dict(self) -> dict:
    return {"policy": self.cfg.to_dict(), "train": {**asdict(self.rc), "batch_size": self.batch_size,
                                                    "val_batches": self.val_batches}}

  def resume(self) -> bool:
    """Weights, stage and step of the newest loadable checkpoint (the stage's Trainer restores its optimizer from
    the same checkpoint); False when the run has none. Raises when checkpoints exist but none loads, or the run is
    another preset's."""
    ck = load_latest(self.run_dir)
    if ck is None:
      damaged = list_checkpoints(self.run_dir)
      if damaged:   # starting over would overwrite them and log the same steps into metrics.csv twice
        raise ValueError(f"{self.run_dir}: --resume found {len(damaged)} checkpoint(s) and none loads "
                         f"({', '.join(p.name for p in damaged)}; the warnings above say why); "
                         f"repair them or train into a new --out")
      self._drop_metrics_after_resume()
      return False
    saved = ck["config"].get("policy")
    theirs = None if saved is None else PolicyConfig.from_dict(saved).to_dict()
    if theirs is not None and theirs != self.cfg.to_dict():
      diff = {k: (theirs[k], v) for k, v in self.cfg.to_dict().items() if theirs[k] != v}
      raise ValueError(f"{ck['path']}: run was trained with preset {saved.get('name')!r}, which differs from "
                       f"{self.cfg.name!r} in (saved, now) {diff}; use a new --out or the same --preset")
    self.vision.load_state_dict(ck["state"]["vision"])
    if "temporal" in ck["state"]:
      self.temporal.load_state_dict(ck["state"]["temporal"])
    self.stage, self.step = checkpoint_stage(ck)
    self.global_step = int(ck["step"])
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

  def check_ranks_in_sync(self, model, data_hash, stage: str, step: int) -> str:
    """Every rank: sha256 of its parameters, logged; under DDP the digests are gathered and a mismatch (ranks whose
    weights drifted apart, i.e. gradients not averaged) is an error. Collective: all ranks call it at the same step."""
    digest = param_digest(model)
    log.info("rank %d/%d %s step %d: params sha256 %s, data sha256 %s", self.dist.rank, self.dist.world_size,
             stage, step, digest, data_hash.hexdigest())
    if self.dist.distributed:
      digests = [None] * self.dist.world_size
      tdist.all_gather_object(digests, digest)
      if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks diverged in stage {stage} at step {step}: parameter sha256 per rank "
                           f"{digests}")
    return digest

  def broadcast_buffers(self, module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which DDP leaves per rank after the last
    forward pass), so frozen-extractor features are the same on every rank and match the checkpoint."""
    if self.dist.distributed:
      for b in module.buffers():
        tdist.broadcast(b, 0)

  def _run(self, task: _StageTask, max_steps: int) -> dict:
    """Train the current stage to its step max_steps with the shared loop; its last validation metrics."""
    trainer = Trainer(task, replace(self.rc, max_steps=max_steps), self.run_dir, self.dist, self.progress,
                      desc=self.stage, split_prefix=f"{self.stage}_", ckpt_step_offset=self.global_step - self.step)
    task.model = trainer.model
    if self.step > 0:                  # the stage's newest checkpoint (this or an earlier session): optimizer, step
      trainer.resume()
      if trainer.step != self.step:
        raise RuntimeError(f"{self.run_dir}: the newest checkpoint is at {self.stage} step {trainer.step}, "
                           f"expected {self.step}")
    res = trainer.fit()
    self.step, self.global_step = trainer.step, trainer.ckpt_step_offset + trainer.step
    return res.get("val", {})

  def run_extractor(self, max_steps: int) -> dict:
    if self.stage != "extractor":
      raise ValueError(f"{self.run_dir}: the extractor stage is over (the run is in stage {self.stage})")
    self.vision.to(self.dist.device)
    return self._run(ExtractorTask(self), max_steps)

  def run_temporal(self, max_steps: int) -> dict:
    if self.stage != "temporal":
      self.stage, self.step = "temporal", 0
    self.vision.to(self.dist.device)
    self.temporal.to(self.dist.device)
    return self._run(TemporalTask(self), max_steps)


# ---------------------------------------------------------------- data split + CLI

def split_segments(roots: Path | list[Path], run_dir: Path, val_frac: float, seed: int) -> tuple[list[Path], list[Path]]:
  """Train/val split by segment over every segment under the given dataset root(s), frozen in run_dir/split.json so
  resumes and evaluate.py see the same one."""
  from tools.lib.route import scan_segments
  path = run_dir / "split.json"
  if path.exists():
    try:
      s = json.loads(path.read_text())
      return [Path(p) for p in s["train"]], [Path(p) for p in s["val"]]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{path}: unreadable split file ({e}); delete it to re-split") from e
  roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
  good, bad = [], []
  for root in roots:
    g, b = scan_segments(root, check_video=True, progress=False)
    good += g
    bad += b
  good = sorted(set(good))
  for p, why in bad:
    log.warning("skipping segment %s: %s", p, why)
  good = [p for p in good if (p / "video.hevc").exists()]
  if not good:
    raise ValueError(f"{', '.join(map(str, roots))}: no segment with video found (bad: {len(bad)})")
  order = np.random.default_rng(seed).permutation(len(good))
  n_val = int(round(val_frac * len(good))) if len(good) > 1 else 0
  n_val = min(max(n_val, 1 if len(good) > 1 else 0), len(good) - 1)
  val = sorted(good[i] for i in order[:n_val])
  train = sorted(good[i] for i in order[n_val:])
  run_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"train": [str(p) for p in train], "val": [str(p) for p in val]}, indent=1))
  return train, val


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.policy.train", __doc__)
  ap.add_argument("--preset", default="tiny")
  ap.add_argument("--data", type=Path, nargs="+", required=True, metavar="ROOT",
                  help="dataset root(s) with segment dirs (video + poses [+ ground_truth]); several roots are pooled")
  ap.add_argument("--out", type=Path, required=True, help="run directory")
  ap.add_argument("--stage", choices=("extractor", "temporal", "both"), default="both")
  ap.add_argument("--max-steps", type=int, default=1000, help="optimizer steps per stage")
  ap.add_argument("--resume", action="store_true")
  ap.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="per rank")
  ap.add_argument("--lr", type=float, default=run_config().lr)
  ap.add_argument("--weight-decay", type=float, default=run_config().weight_decay)
  ap.add_argument("--eval-every", type=int, default=run_config().eval_every)
  ap.add_argument("--ckpt-every", type=int, default=run_config().ckpt_every)
  ap.add_argument("--val-frac", type=float, default=0.2)
  ap.add_argument("--augment", action="store_true", help="photometric augmentation of the extractor's training frames "
                  "(brightness, contrast, colour, sensor noise; training/policy/data.photometric_augment)")
  ap.add_argument("--yaw-augment", type=float, default=0.0, metavar="RAD",
                  help=f"with --augment: turn {YAW_AUGMENT_SHARE * 100:.0f}%% of the extractor's samples by a camera yaw drawn "
                  "uniformly in [-RAD, RAD], the lane lines, road edges and lead with it, the plan and action masked "
                  "(data.yaw_augment; 0.035 = the suites' 2 deg); 0, the default: none")
  add_common_args(ap, threads=0, threads_help="torch CPU threads", device=None, seed=0, sets=(PolicyConfig, RunConfig))
  args = ap.parse_args(argv)
  set_threads(args.threads)
  try:
    cfg = get_config(args.preset)
  except ValueError as e:   # unknown preset
    ap.error(f"--preset: {e}")
  if args.max_steps < 1:
    ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
  if args.batch_size < 1:
    ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
  if not 0.0 <= args.yaw_augment <= 0.3:
    ap.error(f"--yaw-augment must be in [0, 0.3] rad, got {args.yaw_augment}")
  if args.yaw_augment and not args.augment:
    ap.error("--yaw-augment turns the augmented frames: it needs --augment")
  try:
    rc = run_config(max_steps=args.max_steps, lr=args.lr, weight_decay=args.weight_decay, eval_every=args.eval_every,
                    ckpt_every=args.ckpt_every, seed=args.seed)
  except ValueError as e:   # --eval-every / --ckpt-every < 1
    ap.error(str(e))
  cfg, rc = apply_sets(ap, args.set, cfg, rc)
  for root in args.data:
    if not root.is_dir():
      ap.error(f"--data {root}: not a directory")
  if args.out.exists() and any(args.out.glob("ckpt_*.json")) and not args.resume:
    ap.error(f"--out {args.out} already holds checkpoints; pass --resume or choose a new directory")
  dist = setup_distributed(args.device)
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
    tr = PolicyTraining(cfg, rc, args.out, train, val, dist, batch_size=args.batch_size, augment=args.augment,
                        yaw_augment=args.yaw_augment)
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
    tr = None   # it holds the DDP wrapper and its process group: released before cleanup destroys it
    cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
