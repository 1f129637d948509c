"""The shared training loop (issue 15): one optimizer loop in the spirit of nanoGPT's / DiT's train.py that a
training program drives through a small task object.

  task = MyTask(...)                       # supplies models, batches, evaluation (see TrainTask)
  trainer = Trainer(task, RunConfig(max_steps=1000, minutes=30, lr=3e-4), run_dir)
  trainer.resume()                         # with --resume: newest loadable checkpoint, metrics trimmed to it
  result = trainer.fit()

What the loop does, in order, every step:
  lr      linear warm-up over `warmup` steps, then cosine decay to min_lr_frac * lr (0 by default;
          training.schedule.warmup_cosine) over the run's progress = max(step / max_steps, elapsed / (minutes * 60)):
          a time budget (--minutes) ends the schedule exactly like a step budget (--max-steps); whichever is reached
          first ends the run. lr_schedule="constant": the warm-up, then the peak rate to the end.
  step    task.train_batch(step) -> (loss, info); backward; grad-norm clipping; AdamW step (weight decay on
          parameters with dim >= 2 only, nanoGPT's grouping, and not on parameters whose names contain one of
          `no_decay_names`); EMA of the trainable module when ema_decay > 0 (with ema_warmup the decay is
          min(ema_decay, (1 + step) / (10 + step)), so short runs do not average in the random init).
  log     every `log_every` steps (and at step max_steps with log_last) a "train" row in run_dir/metrics.csv
          (training.metrics): the task's info and the loss averaged over DDP ranks, lr, grad norm, steps/s;
          task.after_step(step) (e.g. publish weights to actors).
  eval    every `eval_every` steps (and at the end) task.evaluate(step) -> row(s) in metrics.csv + curves.png.
  ckpt    every `ckpt_every` steps (and at the end) an atomic checkpoint (training.checkpoint): the task's state
          dicts, the EMA, the optimizer, the step, the wall time spent, the weight the EMA still gives the initial
          parameters (extra "ema_init_weight") and the task's extra state. Before it, on every rank, the task's
          optional before_checkpoint(step) (e.g. a check that DDP ranks agree); under DDP all ranks wait for rank 0's
          write. save_checkpoints=False: no checkpoint files at all (a task that saves its result itself and is
          never resumed, e.g. the VAE's save_pretrained folder).

Several trainers in one run directory (training.policy.train: the extractor, then the temporal stage):
split_prefix names the rows this trainer logs ("extractor_" -> "extractor_train", "extractor_val") and limits the
rows a resume removes to those; ckpt_step_offset numbers the checkpoints offset + step (steps counted over the
stages) while step, schedule and metrics count this trainer's own steps.

Resume: the newest checkpoint that loads (damaged ones are skipped with a warning by training.checkpoint;
when checkpoints exist but none loads, resume raises instead of silently starting over). metrics.csv rows
logged after that checkpoint are removed before training goes on, so a resumed run never holds a step twice.
The time budget counts the wall time of every session of the run (stored in the checkpoint).

DDP: wrap with torchrun; `dist` (training.distributed.DistInfo) makes the trainable module a
DistributedDataParallel (`trainer.model`: a task's train_batch must run its forward pass through it for the gradients
to be averaged), averages logged values over ranks, ends the run on every rank at the same step when the time budget
runs out, and lets rank 0 alone write checkpoints/metrics.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from training.distributed import DistInfo, all_reduce_mean, barrier
from training.metrics import MetricsLogger
from training.schedule import warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
  max_steps: int = 1000
  minutes: float | None = None      # wall-time budget of the run (all sessions); None = steps only
  lr: float = 3e-4
  warmup: int = 50
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  ema_decay: float = 0.0            # 0 = no EMA
  ema_warmup: bool = False          # decay min(ema_decay, (1 + step) / (10 + step)) instead of ema_decay
  lr_schedule: str = "cosine"       # after the warm-up: "cosine" decay to 0 over the run, or "constant"
  betas: tuple = (0.9, 0.999)       # AdamW
  no_decay_names: tuple = ()        # parameters whose names contain one of these get no weight decay
  fused_adamw: bool = False         # the fused AdamW kernel on CUDA devices
  log_every: int = 10
  eval_every: int = 200
  ckpt_every: int = 200
  keep_ckpts: int = 3
  seed: int = 0
  min_lr_frac: float = 0.0          # the cosine's floor, a fraction of lr
  log_last: bool = False            # also log the train row of step max_steps (not only every log_every steps)
  save_checkpoints: bool = True     # False: no checkpoint files (nothing to resume from)
  # curves.png is redrawn after an evaluation at most this often (wall seconds; always at the end of fit): one drawing
  # of a run's ~20 metric panels costs ~2 s of matplotlib, a large share of a small CPU run evaluated often
  plot_every_s: float = 60.0

  def __post_init__(self):
    if self.max_steps < 1:
      raise ValueError(f"RunConfig.max_steps must be >= 1, got {self.max_steps}")
    if self.minutes is not None and not self.minutes > 0:
      raise ValueError(f"RunConfig.minutes must be > 0, got {self.minutes}")
    for name in ("log_every", "eval_every", "ckpt_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"RunConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
    if not 0.0 <= self.min_lr_frac <= 1.0:
      raise ValueError(f"RunConfig.min_lr_frac must be in [0, 1], got {self.min_lr_frac}")
    if self.lr_schedule not in ("cosine", "constant"):
      raise ValueError(f"RunConfig.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")


class TrainTask(Protocol):
  """What a training program gives the Trainer."""
  trainable: nn.Module                                   # the module the optimizer updates

  def state_dicts(self) -> dict[str, dict]: ...          # everything to checkpoint, e.g. {"vision": ..., "temporal": ...}
  def load_state_dicts(self, state: dict[str, dict]) -> None: ...
  def config_dict(self) -> dict: ...                     # saved in every checkpoint's json
  def train_batch(self, step: int) -> tuple[torch.Tensor, dict]: ...   # (loss, info of floats)
  def evaluate(self, step: int) -> dict[str, dict] | None: ...         # {split: metrics} or None
  def after_step(self, step: int) -> None: ...
  def extra_state(self) -> dict: ...                     # JSON-able, saved with the checkpoint
  def load_extra_state(self, extra: dict) -> None: ...
  # optional: before_checkpoint(step) -> None, called on every rank right before a checkpoint (collectives allowed)


class StatelessTask:
  """The TrainTask hooks a task without per-step work or extra state uses (the codec's and the frame decoder's): nothing
  to do after a step, no extra state to checkpoint."""

  def after_step(self, step: int) -> None:
    pass

  def extra_state(self) -> dict:
    return {}

  def load_extra_state(self, extra: dict) -> None:
    pass


def configure_optimizer(module: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), no_decay_names=(),
                        fused: bool = False) -> torch.optim.AdamW:
  """AdamW with weight decay on matrices / conv kernels only (dim >= 2), none on biases, norms, embeddings' scales,
  nor on parameters whose names contain one of no_decay_names."""
  decay, no_decay = [], []
  for n, p in module.named_parameters():
    if p.requires_grad:
      (decay if p.dim() >= 2 and not any(s in n for s in no_decay_names) else no_decay).append(p)
  return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=tuple(betas), fused=fused)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
  for e, p in zip(ema.parameters(), model.parameters()):
    e.lerp_(p.detach().to(e.dtype), 1 - decay)
  for e, b in zip(ema.buffers(), model.buffers()):
    e.copy_(b)


def ema_warmup_decay(step: int, target: float) -> float:
  """EMA decay with warm-up, min(target, (1 + step) / (10 + step)), so short runs do not average in the random init."""
  return min(target, (1 + step) / (10 + step))


class Trainer:
  def __init__(self, task: TrainTask, rc: RunConfig, run_dir, dist: DistInfo | None = None, progress: bool = True,
               desc: str = "train", split_prefix: str = "", ckpt_step_offset: int = 0):
    self.task, self.rc, self.run_dir, self.desc = task, rc, Path(run_dir), desc
    self.split_prefix, self.ckpt_step_offset = split_prefix, int(ckpt_step_offset)
    self.dist = dist or DistInfo(0, 0, 1, torch.device("cpu"), True)
    self.progress = progress and self.dist.is_main
    self.run_dir.mkdir(parents=True, exist_ok=True)
    self.metrics = MetricsLogger(self.run_dir) if self.dist.is_main else None
    self.step = 0
    self.elapsed_s = 0.0                   # training wall time of earlier sessions of this run
    self._plotted_at: float | None = None  # time.monotonic() of the last curves.png (RunConfig.plot_every_s)
    self.ema_init_weight = 1.0             # weight the EMA still gives the initial parameters (product of decays)
    self.opt = configure_optimizer(task.trainable, rc.lr, rc.weight_decay, rc.betas, rc.no_decay_names,
                                   fused=rc.fused_adamw and self.dist.device.type == "cuda")
    self.ema = copy.deepcopy(task.trainable).eval().requires_grad_(False) if rc.ema_decay > 0 else None
    self.model = task.trainable
    if self.dist.distributed:
      ids = [self.dist.device] if self.dist.device.type == "cuda" else None
      self.model = torch.nn.parallel.DistributedDataParallel(task.trainable, device_ids=ids)

  # ---------------------------------------------------------------- checkpoints
  def resume(self) -> bool:
    """Load the newest loadable checkpoint; False when the run has none. Raises when checkpoints exist but every
    one is damaged (starting over silently would overwrite a run)."""
    had = list_checkpoints(self.run_dir)
    ck = load_latest(self.run_dir, load_optimizer=True)
    if ck is None:
      if had:
        raise ValueError(f"{self.run_dir}: {len(had)} checkpoint(s) found but none loads (see warnings); "
                         f"refusing to start over in this directory")
      return False
    self.task.load_state_dicts({k: v for k, v in ck["state"].items() if k != "ema"})
    if self.ema is not None and "ema" in ck["state"]:
      self.ema.load_state_dict(ck["state"]["ema"])
    if ck["optimizer"] is not None:
      self.opt.load_state_dict(ck["optimizer"])
    self.step = int(ck["step"]) - self.ckpt_step_offset
    self.elapsed_s = float(ck["extra"].get("elapsed_s", 0.0))
    self.ema_init_weight = float(ck["extra"].get("ema_init_weight", self.rc.ema_decay ** self.step))
    self.task.load_extra_state(ck["extra"].get("task", {}))
    if self.metrics is not None:
      self._trim_metrics(self.step)
    log.info("resumed %s at step %d (%.0f s trained)", ck["path"], self.step, self.elapsed_s)
    return True

  def _trim_metrics(self, step: int) -> None:
    """Drop this trainer's metrics rows (split_prefix) logged after checkpoint `step` (they will be logged again)."""
    rows = self.metrics.read()
    keep = [r for r in rows if r["step"] <= step or not r["split"].startswith(self.split_prefix)]
    if len(keep) == len(rows):
      return
    self.metrics.path.unlink()
    fields = self.metrics.fields
    self.metrics = MetricsLogger(self.run_dir)
    self.metrics._widen(fields)
    for r in keep:
      self.metrics.log(r["step"], r["split"], **{k: v for k, v in r.items() if k not in ("step", "split") and v is not None})
    log.info("metrics.csv: dropped %d rows logged after step %d", len(rows) - len(keep), step)

  def save(self, elapsed_s: float) -> None:
    if not self.rc.save_checkpoints:
      return
    before = getattr(self.task, "before_checkpoint", None)
    if before is not None:
      before(self.step)
    if self.dist.is_main:
      state = dict(self.task.state_dicts())
      if self.ema is not None:
        state["ema"] = self.ema.state_dict()
      extra = {"elapsed_s": elapsed_s, "task": self.task.extra_state(), "run": asdict(self.rc)}
      if self.ema is not None:
        extra["ema_init_weight"] = self.ema_init_weight
      save_checkpoint(self.run_dir, self.ckpt_step_offset + self.step, state, self.opt.state_dict(),
                      self.task.config_dict(), extra, keep=self.rc.keep_ckpts)
    if self.dist.distributed:
      barrier()                            # nobody reads the run directory before rank 0 has written it

  # ---------------------------------------------------------------- the loop
  def lr_at(self, step: int, elapsed_s: float) -> float:
    if self.rc.lr_schedule == "constant":
      return warmup_cosine(self.rc.lr, step, self.rc.warmup, 0.0)
    progress = step / self.rc.max_steps
    if self.rc.minutes is not None:
      progress = max(progress, elapsed_s / (60.0 * self.rc.minutes))
    return warmup_cosine(self.rc.lr, step, self.rc.warmup, progress, self.rc.min_lr_frac)

  def out_of_budget(self, elapsed_s: float) -> bool:
    out = self.step >= self.rc.max_steps or (self.rc.minutes is not None and elapsed_s >= 60.0 * self.rc.minutes)
    if self.dist.distributed and self.rc.minutes is not None:   # ranks' clocks differ: all stop when one does
      out = float(all_reduce_mean(torch.tensor(float(out), device=self.dist.device))) > 0
    return out

  def ema_decay_at(self, step: int) -> float:
    return ema_warmup_decay(step, self.rc.ema_decay) if self.rc.ema_warmup else self.rc.ema_decay

  def _mean_over_ranks(self, v) -> float:
    """An info value (a 0-d tensor or a number) averaged over DDP ranks (itself in one process)."""
    t = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64, device=self.dist.device)
    return float(all_reduce_mean(t))

  def _evaluate(self) -> dict:
    res = self.task.evaluate(self.step) if self.dist.is_main else None
    if res and self.metrics is not None:
      for split, values in res.items():
        self.metrics.log(self.step, self.split_prefix + split, **values)
      now = time.monotonic()
      if self._plotted_at is None or now - self._plotted_at >= self.rc.plot_every_s:
        self.metrics.plot()
        self._plotted_at = now
    return res or {}

  def fit(self) -> dict:
    """Train until the step or time budget is spent; returns the last evaluation (or the last train info)."""
    rc = self.rc
    t0 = time.monotonic()
    elapsed = lambda: self.elapsed_s + time.monotonic() - t0
    bar = tqdm(total=rc.max_steps, initial=self.step, desc=self.desc, disable=not self.progress)
    last_eval: dict = {}
    info: dict = {}
    saved_at = start = self.step
    t_log, step_log = time.monotonic(), self.step
    while not self.out_of_budget(elapsed()):
      self.model.train()
      lr = self.lr_at(self.step, elapsed())
      for g in self.opt.param_groups:
        g["lr"] = lr
      loss, info = self.task.train_batch(self.step)
      if not torch.isfinite(loss):
        raise FloatingPointError(f"{self.run_dir}: non-finite loss {float(loss)} at step {self.step} ({info})")
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      gnorm = torch.nn.utils.clip_grad_norm_(self.task.trainable.parameters(), rc.grad_clip)
      self.opt.step()
      if self.ema is not None:
        decay = self.ema_decay_at(self.step)
        update_ema(self.ema, self.task.trainable, decay)
        self.ema_init_weight *= decay
      self.step += 1
      bar.update(1)
      bar.set_postfix(loss=f"{float(info.get('loss', loss.detach())):.3f}")
      if self.step % rc.log_every == 0 or (rc.log_last and self.step == rc.max_steps):
        values = {k: self._mean_over_ranks(v) for k, v in info.items()}
        loss_mean = float(all_reduce_mean(loss.detach()))
        now = time.monotonic()
        steps_per_s = (self.step - step_log) / max(now - t_log, 1e-9)
        t_log, step_log = now, self.step
        if self.metrics is not None:
          self.metrics.log(self.step, self.split_prefix + "train", **values, loss_mean=loss_mean, lr=lr,
                           grad_norm=float(gnorm), steps_per_s=steps_per_s, elapsed_s=elapsed())
      self.task.after_step(self.step)
      if self.step % rc.eval_every == 0:
        last_eval = self._evaluate()
      if self.step % rc.ckpt_every == 0:
        self.save(elapsed())
        saved_at = self.step
    bar.close()
    if self.step == start and list_checkpoints(self.run_dir):
      return {"train": info}          # nothing left to do (a resumed run that had finished): log nothing twice
    if self.step % rc.eval_every != 0 or not last_eval:
      last_eval = self._evaluate() or last_eval
    if self.metrics is not None and self.metrics.path.exists():
      self.metrics.plot()
    if saved_at != self.step or not list_checkpoints(self.run_dir):
      self.save(elapsed())
    return last_eval or {"train": info}
