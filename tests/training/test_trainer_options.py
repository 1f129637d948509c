"""training.trainer options the VAE and policy trainers use (issue 15): an LR floor, a train row at the last step, a
run without checkpoints, and two trainers in one run directory (split_prefix, ckpt_step_offset); resume restores the
optimizer."""
import json

import pytest
import torch

from tests.training.test_trainer import LinearTask, rows
from training.checkpoint import list_checkpoints, load_latest
from training.trainer import RunConfig, Trainer


def test_lr_floor_and_last_step_row(tmp_path):
  tr = Trainer(LinearTask(), RunConfig(max_steps=100, lr=1.0, warmup=10, min_lr_frac=0.1), tmp_path, progress=False)
  assert tr.lr_at(0, 0) == pytest.approx(0.1)                      # warm-up unchanged
  assert tr.lr_at(50, 0) == pytest.approx(0.1 + 0.9 * 0.5)
  assert tr.lr_at(100, 0) == pytest.approx(0.1)                    # the floor
  with pytest.raises(ValueError, match="min_lr_frac"):
    RunConfig(min_lr_frac=1.5)
  Trainer(LinearTask(), RunConfig(max_steps=7, log_every=5, log_last=True, eval_every=100), tmp_path / "last",
          progress=False).fit()
  assert [s for s, split in rows(tmp_path / "last") if split == "train"] == [5, 7]
  Trainer(LinearTask(), RunConfig(max_steps=7, log_every=5, eval_every=100), tmp_path / "every", progress=False).fit()
  assert [s for s, split in rows(tmp_path / "every") if split == "train"] == [5]


def test_no_checkpoints(tmp_path):
  task = LinearTask()
  task.before_checkpoint = lambda step: pytest.fail("no checkpoint, no hook")
  res = Trainer(task, RunConfig(max_steps=20, log_every=5, ckpt_every=5, save_checkpoints=False), tmp_path,
                progress=False).fit()
  assert "val" in res and not list_checkpoints(tmp_path) and (tmp_path / "metrics.csv").exists()


def test_two_stages_in_one_run_dir(tmp_path):
  """A second trainer numbers its checkpoints after the first one's and resumes its own stage without touching the
  first stage's metric rows; before_checkpoint runs before every checkpoint; the optimizer state comes back."""
  rc = RunConfig(max_steps=10, lr=0.05, log_every=2, eval_every=5, ckpt_every=5, keep_ckpts=10)
  Trainer(LinearTask(), rc, tmp_path, progress=False, split_prefix="a_").fit()
  task = LinearTask()
  seen = []
  task.before_checkpoint = seen.append
  b = Trainer(task, rc, tmp_path, progress=False, split_prefix="b_", ckpt_step_offset=10)
  b.fit()
  assert seen == [5, 10]
  assert [p.name for p in list_checkpoints(tmp_path)][-2:] == ["ckpt_00000015.json", "ckpt_00000020.json"]
  assert json.loads((tmp_path / "ckpt_00000020.json").read_text())["extra"]["task"] == {"batches": 10}
  before = rows(tmp_path)
  assert {split for _, split in before} == {"a_train", "a_val", "b_train", "b_val"}
  # the second stage died after checkpoint 15 (its step 5): resume there; the "a_" rows stay
  for f in tmp_path.glob("ckpt_00000020.*"):
    f.unlink()
  task2 = LinearTask()
  b2 = Trainer(task2, rc, tmp_path, progress=False, split_prefix="b_", ckpt_step_offset=10)
  assert b2.resume() and b2.step == 5 and task2.batches == 5
  opt = load_latest(tmp_path, load_optimizer=True)["optimizer"]
  assert all(torch.equal(b2.opt.state_dict()["state"][i]["exp_avg"], opt["state"][i]["exp_avg"]) for i in opt["state"])
  assert [r for r in rows(tmp_path) if r[1].startswith("a_")] == [r for r in before if r[1].startswith("a_")]
  assert max(s for s, split in rows(tmp_path) if split.startswith("b_")) == 5
  b2.fit()
  assert sorted(rows(tmp_path)) == sorted(before)
