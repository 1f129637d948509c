"""training.trainer: the shared loop (schedule, budget, EMA, checkpoints, resume without duplicate metric rows)."""
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from training.checkpoint import list_checkpoints
from training.metrics import MetricsLogger
from training.trainer import RunConfig, Trainer


class LinearTask:
  """Fit y = 3x - 1 with a 1-d linear model: a task whose loss must go down."""

  def __init__(self):
    torch.manual_seed(0)
    self.trainable = nn.Linear(1, 1)
    self.evals = 0
    self.batches = 0

  def state_dicts(self):
    return {"model": self.trainable.state_dict()}

  def load_state_dicts(self, state):
    self.trainable.load_state_dict(state["model"])

  def config_dict(self):
    return {"task": "linear"}

  def train_batch(self, step):
    self.batches += 1
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 1, generator=g)
    loss = ((self.trainable(x) - (3 * x - 1)) ** 2).mean()
    return loss, {"loss": float(loss.detach())}

  def evaluate(self, step):
    self.evals += 1
    x = torch.linspace(-2, 2, 64)[:, None]
    with torch.no_grad():
      return {"val": {"mse": float(((self.trainable(x) - (3 * x - 1)) ** 2).mean())}}

  def after_step(self, step):
    pass

  def extra_state(self):
    return {"batches": self.batches}

  def load_extra_state(self, extra):
    self.batches = int(extra["batches"])


def rows(run):
  return [(r["step"], r["split"]) for r in MetricsLogger(run).read()]


def test_trains_logs_checkpoints_and_ema(tmp_path):
  task = LinearTask()
  rc = RunConfig(max_steps=60, lr=0.3, warmup=5, log_every=10, eval_every=30, ckpt_every=20, ema_decay=0.9)
  res = Trainer(task, rc, tmp_path, progress=False).fit()
  assert res["val"]["mse"] < 0.05
  assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_00000020.json", "ckpt_00000040.json", "ckpt_00000060.json"]
  meta = json.loads((tmp_path / "ckpt_00000060.json").read_text())
  assert "ema" in meta["state_names"] and meta["extra"]["task"] == {"batches": 60}
  assert rows(tmp_path).count((60, "val")) == 1 and (tmp_path / "curves.png").exists()


def test_curves_are_redrawn_at_most_every_plot_every_s_and_at_the_end(tmp_path, monkeypatch):
  drawn = []
  monkeypatch.setattr(MetricsLogger, "plot", lambda self, path=None: drawn.append(len(self.read())))
  rc = RunConfig(max_steps=60, lr=0.3, warmup=5, log_every=10, eval_every=10, ckpt_every=60)
  Trainer(LinearTask(), replace(rc, plot_every_s=3600.0), tmp_path / "a", progress=False).fit()
  assert len(drawn) == 2                           # the first evaluation's, and the end of fit's
  drawn.clear()
  Trainer(LinearTask(), replace(rc, plot_every_s=0.0), tmp_path / "b", progress=False).fit()
  assert len(drawn) == 6 + 1 and drawn == sorted(drawn)   # every evaluation's, then the end's


def test_lr_schedule_warms_up_and_decays_to_zero(tmp_path):
  tr = Trainer(LinearTask(), RunConfig(max_steps=100, lr=1.0, warmup=10), tmp_path, progress=False)
  assert tr.lr_at(0, 0) == pytest.approx(0.1)
  assert tr.lr_at(9, 0) == pytest.approx(1.0, rel=0.03)
  assert tr.lr_at(50, 0) == pytest.approx(0.5, rel=0.01)
  assert tr.lr_at(100, 0) == pytest.approx(0.0, abs=1e-9)
  timed = Trainer(LinearTask(), RunConfig(max_steps=100, minutes=1.0, lr=1.0, warmup=1), tmp_path / "t", progress=False)
  assert timed.lr_at(10, 30.0) == pytest.approx(0.5, rel=0.01)     # half the time budget spent: half-way down the cosine


def test_time_budget_ends_the_run(tmp_path):
  task = LinearTask()
  tr = Trainer(task, RunConfig(max_steps=10_000, minutes=0.02, log_every=1000, eval_every=1000, ckpt_every=1000),
               tmp_path, progress=False)
  tr.fit()
  assert 0 < tr.step < 10_000 and list_checkpoints(tmp_path)


def test_resume_from_an_older_checkpoint_never_duplicates_metric_rows(tmp_path):
  rc = RunConfig(max_steps=40, lr=0.05, log_every=5, eval_every=20, ckpt_every=10, keep_ckpts=5)
  Trainer(LinearTask(), rc, tmp_path, progress=False).fit()
  before = rows(tmp_path)
  # the run "died" after step 20's checkpoint: later checkpoints gone, metrics of steps 25..40 already written
  for p in list_checkpoints(tmp_path)[2:]:
    for f in tmp_path.glob(p.name.replace(".json", ".*")):
      f.unlink()
  task = LinearTask()
  tr = Trainer(task, rc, tmp_path, progress=False)
  assert tr.resume() and tr.step == 20 and task.batches == 20
  tr.fit()
  after = rows(tmp_path)
  assert len(after) == len(set(after)) and sorted(after) == sorted(before)
  assert tr.step == 40 and task.batches == 40


def test_resume_of_a_finished_run_adds_nothing(tmp_path):
  rc = RunConfig(max_steps=20, log_every=5, eval_every=20, ckpt_every=10)
  Trainer(LinearTask(), rc, tmp_path, progress=False).fit()
  before = rows(tmp_path)
  tr = Trainer(LinearTask(), rc, tmp_path, progress=False)
  tr.resume()
  tr.fit()
  assert rows(tmp_path) == before


def test_resume_refuses_when_every_checkpoint_is_damaged(tmp_path):
  rc = RunConfig(max_steps=20, ckpt_every=10)
  Trainer(LinearTask(), rc, tmp_path, progress=False).fit()
  for p in tmp_path.glob("ckpt_*.safetensors"):
    p.write_bytes(b"garbage")
  with pytest.raises(ValueError, match="none loads"):
    Trainer(LinearTask(), rc, tmp_path, progress=False).resume()


def test_non_finite_loss_stops_with_the_step(tmp_path):
  task = LinearTask()
  task.train_batch = lambda step: (torch.tensor(float("nan"), requires_grad=True), {})
  with pytest.raises(FloatingPointError, match="step 0"):
    Trainer(task, RunConfig(max_steps=5), tmp_path, progress=False).fit()


def test_run_config_validates():
  with pytest.raises(ValueError, match="max_steps"):
    RunConfig(max_steps=0)
  with pytest.raises(ValueError, match="minutes"):
    RunConfig(minutes=0)


def test_resume_restores_the_optimizer_and_the_ema_init_weight(tmp_path):
  rc = RunConfig(max_steps=10, lr=0.05, ckpt_every=5, eval_every=100, ema_decay=0.9, ema_warmup=True)
  tr = Trainer(LinearTask(), rc, tmp_path, progress=False)
  tr.fit()
  assert tr.ema_init_weight == pytest.approx(math.prod(min(0.9, (1 + s) / (10 + s)) for s in range(10)))
  tr2 = Trainer(LinearTask(), rc, tmp_path, progress=False)
  assert tr2.resume() and tr2.ema_init_weight == tr.ema_init_weight
  s1, s2 = tr.opt.state_dict()["state"], tr2.opt.state_dict()["state"]
  assert s2 and all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)   # Adam's moments are back


def test_optimizer_options_and_constant_schedule(tmp_path):
  class Named(LinearTask):
    def __init__(self):
      super().__init__()
      self.trainable = nn.Sequential(nn.Linear(1, 4), nn.Embedding(3, 4))
  rc = RunConfig(max_steps=10, lr=1.0, warmup=4, lr_schedule="constant", betas=(0.9, 0.99), no_decay_names=("1.",))
  tr = Trainer(Named(), rc, tmp_path, progress=False)
  decay, no_decay = tr.opt.param_groups
  assert [p.shape for p in decay["params"]] == [(4, 1)] and len(no_decay["params"]) == 2   # embedding excluded by name
  assert decay["betas"] == (0.9, 0.99)
  assert tr.lr_at(0, 0) == pytest.approx(0.25) and tr.lr_at(9, 1e9) == 1.0
  with pytest.raises(ValueError, match="lr_schedule"):
    RunConfig(lr_schedule="linear")
