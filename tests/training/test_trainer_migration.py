"""The VAE and policy trainers moved onto training.trainer (issue 15) without changing what they compute: for a fixed
seed the losses of the first optimizer steps equal those of the code before the move (commit 6f0f77b, its own loops),
measured on the same in-memory data with the same seeds.

How the reference numbers were made: /tmp/refnum/ref_numbers.py run on a worktree of 6f0f77b (not kept in the
repository) with the same frame pool / synthetic segments as below and 1 torch thread; it wrapped the old loops'
optimizer-step helpers to record each step's loss. VAE: 3 steps of `train_vae` (tiny preset, its full 1500-step
schedule shape compressed to 3 steps: identical schedules) and of `finetune_decoder`; policy: the first 3 steps of a
1000-step extractor stage and then of the temporal stage (batch 4, lr 1e-3, 50 warm-up steps).
Measured when the move was made: the VAE numbers (losses, scaling factor, PSNR) and the extractor's losses are
bit-identical; the temporal losses differ by <= 1e-6. The policy's schedule is now the shared one with a 0.1 floor
(over these first steps its lr differs from the old one by < 1e-5 relative; mid-run by up to 6.5 % at 1000 steps),
and its weight decay no longer applies to biases / norm scales (the shared nanoGPT grouping)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import training.vae as V

torch.set_num_threads(1)
TOL = 1e-5

REF_VAE_TRAIN = [1.1971616744995117, 1.1118160486221313, 1.0063481330871582]
REF_VAE_SCALING_FACTOR = 3.3478339083098025
REF_VAE_VAL_PSNR = 11.799390964948833
REF_FINETUNE = [1.207851529121399, 0.9191688299179077, 0.8803513050079346]
REF_FINETUNE_PSNR = (11.052743330064473, 13.063195437159496)       # before, after
REF_EXTRACTOR = [6.194075584411621, 6.103487968444824, 6.229686260223389]
REF_TEMPORAL = [4.590429782867432, 4.551888942718506, 4.516610622406006]


def _pool(n=48, seed=123):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:128, 0:256]
  base = np.stack([xx / 256 * 200, yy / 128 * 200, (xx + yy) / 384 * 200], -1)
  return np.stack([(base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8) for _ in range(n)])


def _record(monkeypatch, cls, stop_after=None):
  """Wrap cls.train_batch: the losses it returns; with stop_after, raise _Stop after that many more forward passes
  (the old code's last, unapplied forward pass included, so the random streams stay aligned)."""
  losses = []
  orig = cls.train_batch

  def train_batch(self, step):
    loss, info = orig(self, step)
    if stop_after is not None and len(losses) == stop_after:
      raise _Stop
    losses.append(float(loss.item()))
    return loss, info
  monkeypatch.setattr(cls, "train_batch", train_batch)
  return losses


class _Stop(Exception):
  pass


def test_vae_train_and_finetune_match_the_old_loops(tmp_path, monkeypatch):
  pool = _pool()
  monkeypatch.setattr(V, "_frame_pool", lambda data_dir, hw, split, n: (pool[:32] if split == "train" else pool[32:])[:n])
  losses = _record(monkeypatch, V.VAETask)
  rep = V.train_vae("unused", tmp_path / "vae", "tiny", max_steps=3, seed=0)
  assert losses == pytest.approx(REF_VAE_TRAIN, abs=TOL)
  assert rep["scaling_factor"] == pytest.approx(REF_VAE_SCALING_FACTOR, rel=TOL)
  assert rep["val_psnr_db"] == pytest.approx(REF_VAE_VAL_PSNR, abs=1e-4)
  assert (tmp_path / "vae" / "metrics.csv").exists() and not list((tmp_path / "vae").glob("ckpt_*"))
  V.main(["train", "--data", "unused", "--out", str(tmp_path / "vae0"), "--max-steps", "0"])   # the paper preset's codec
  assert V.load_vae(tmp_path / "vae0").scaling_factor > 0

  losses = _record(monkeypatch, V.DecoderTask)
  torch.manual_seed(0)
  V.make_autoencoder(V.VAE_PRESETS["tiny"]).save_pretrained(str(tmp_path / "src"))
  rep = V.finetune_decoder(tmp_path / "src", "unused", tmp_path / "ft", V.decoder_run_config(3, lr=2e-3),
                           degrade_prob=0.5, jitter=0.1)
  assert losses == pytest.approx(REF_FINETUNE, abs=TOL)
  assert (rep["val_psnr_db_before"], rep["val_psnr_db"]) == pytest.approx(REF_FINETUNE_PSNR, abs=1e-4)


def test_policy_stages_match_the_old_loop(tmp_path, monkeypatch):
  from tests.training.policy.synthetic import make_segment
  from training.policy import losses as PL
  from training.policy import train as PT
  from training.policy.model import get_config
  for term in ("lane_centre", "lane_heading"):   # loss terms added after the move: the loop is compared
    monkeypatch.setitem(PL.LOSS_WEIGHTS, term, 0.0)
  # the curvature head the old loop trained, and tiny's bottleneck then
  cfg = replace(get_config("tiny"), curvature_param="direct", bottleneck_bits=96.0)
  train = [make_segment(cfg, 48, s, o, seed=i, name=f"syn/{i}") for i, (s, o) in enumerate([(5, 0), (15, 1), (25, -1)])]
  val = [make_segment(cfg, 48, 15, 1, seed=9, name="syn/val")]
  run = PT.PolicyTraining(cfg, PT.run_config(max_steps=1000), tmp_path, train, val, progress=False, batch_size=4,
                          val_batches=1)
  assert run.rc.lr == 1e-3 and run.rc.warmup == 50 and run.rc.min_lr_frac == 0.1   # the old TrainConfig's schedule
  ext = _record(monkeypatch, PT.ExtractorTask, stop_after=3)
  with torch.backends.mkldnn.flags(enabled=False):   # the native kernels, which REF_EXTRACTOR was recorded on
    with pytest.raises(_Stop):
      run.run_extractor(1000)
    tmp = _record(monkeypatch, PT.TemporalTask, stop_after=3)
    with pytest.raises(_Stop):
      run.run_temporal(1000)
  assert ext == pytest.approx(REF_EXTRACTOR, abs=TOL)
  assert tmp == pytest.approx(REF_TEMPORAL, abs=TOL)
