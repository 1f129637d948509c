"""End-to-end: training CLI (resume, metrics, checkpoints), torchrun DDP on CPU, evaluation and rollout video."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.segment_fixture import make_dataset
from training.checkpoint import load_latest
from training.vae import VAETrainConfig, make_autoencoder
from training.worldmodel import train as wm_train

REPO = Path(__file__).resolve().parents[3]
torch.set_num_threads(1)
SMALL = ["--set", "depth=2", "width=64", "heads=4", "plan_hidden=64", "plan_blocks=1", "context_frames=3",
         "anchor_frames=2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("wm")
  make_dataset(root / "data", n_routes=3, n_frames=140)
  torch.manual_seed(0)
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  ae.register_to_config(scaling_factor=2.0)
  ae.save_pretrained(str(root / "vae"))
  return root


def _args(root, run, steps, *extra):
  return ["--preset", "tiny", "--data", str(root / "data"), "--out", str(run), "--vae", str(root / "vae"),
          "--cache", str(root / "cache"), "--max-steps", str(steps), "--batch-size", "4", "--ckpt-every", "3",
          "--eval-every", "3", "--val-batches", "1", "--log-every", "1", "--num-workers", "0", *SMALL, *extra]


@pytest.fixture(scope="module")
def trained(setup):
  run = setup / "run"
  assert wm_train.train(_args(setup, run, 4)) == 4
  return run


def test_train_with_loader_workers(setup, tmp_path):
  """--num-workers 1: the loader's worker starts from a forkserver (training.data.dataset.LOADER_START_METHOD), which
  gets the dataset pickled, and training runs on its batches."""
  run = tmp_path / "workers"
  assert wm_train.train(_args(setup, run, 2, "--num-workers", "1")) == 2
  assert load_latest(run)["step"] == 2


def test_train_writes_checkpoints_metrics_and_resumes(setup, trained):
  run = trained
  ck = load_latest(run)
  assert (ck["step"] == 4 and set(ck["state"]) == {"model", "ema"}
          and load_latest(run, load_optimizer=True)["optimizer"] is not None)
  assert ck["config"]["model"]["depth"] == 2
  rows = (run / "metrics.csv").read_text().splitlines()
  header = rows[0].split(",")
  assert {"loss", "rf", "mhp", "plan_ade_m", "frames_per_s"} <= set(header)
  assert sum(",val," in r for r in rows) >= 2 and (run / "curves.png").stat().st_size > 1000
  ema_before = ck["state"]["ema"]
  # resume continues from step 4 to 6 with the saved weights (not from scratch)
  assert wm_train.train(_args(setup, run, 6, "--resume")) == 6
  ck2 = load_latest(run)
  assert ck2["step"] == 6
  assert any(not torch.equal(ema_before[k], ck2["state"]["ema"][k]) for k in ema_before)
  steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:] if ",train," in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_bad_cli_input(setup, tmp_path):
  with pytest.raises(SystemExit) as e:                      # a usage error: exit 2 naming the field
    wm_train.main(_args(setup, tmp_path / "r", 1, "--set", "depht=2"))
  assert e.value.code == 2
  with pytest.raises(FileNotFoundError, match="config.json"):
    wm_train.train(_args(setup, tmp_path / "r", 1)[:-len(SMALL)] + ["--vae", str(tmp_path / "novae")])


def test_torchrun_two_processes_cpu(setup, tmp_path):
  run = tmp_path / "ddp"
  env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
  import socket
  with socket.socket() as sock:   # a free port (torchrun's --master_port=0 does not pick one with the static rdzv)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "training.worldmodel.train", *_args(setup, run, 3), "--device", "cpu"]
  p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
  assert p.returncode == 0, p.stderr[-3000:]
  cfg = json.loads((run / "config.json").read_text())
  assert cfg["world_size"] == 2
  ck = load_latest(run)
  assert ck["step"] == 3
  rows = [r for r in (run / "metrics.csv").read_text().splitlines()[1:] if ",train," in r]
  assert len(rows) == 3   # only rank 0 logs


def test_evaluate_and_rollout(trained, setup, tmp_path):
  from training.worldmodel.evaluate import EvalConfig, evaluate_run
  from training.worldmodel.rollout import make_rollout
  small = EvalConfig(frames=3, windows=2, steps=2)
  s = evaluate_run(trained, setup / "data", replace(small, ctx_noise_tau=0.1, draws=2), out_dir=tmp_path / "new" / "dir")
  assert s["ctx_noise_tau"] == 0.1 and s["draws"] == 2
  with pytest.raises(ValueError, match="draws"):
    replace(small, draws=0)
  # one draw on the same windows: the baselines do not depend on the draws, and the model's figures are a mean over
  # draws (same scale), not a sum
  s1 = evaluate_run(trained, setup / "data", replace(small, ctx_noise_tau=0.1), out_dir=tmp_path / "one")
  for k in ("psnr_copy_last", "psnr_copy_last_codec", "psnr_warp_last_codec", "psnr_vae_floor", "latent_mse_copy_last"):
    assert s1[k] == s[k]
  for k in ("psnr_model", "ssim_model", "latent_mse_model"):
    assert np.allclose(s1[k], s[k], rtol=0.3), k
  # temperature 0: every draw takes the same deterministic path, so two draws give exactly the figures of one
  z2 = evaluate_run(trained, setup / "data", replace(small, draws=2, temperature=0.0), out_dir=tmp_path / "t0")
  z1 = evaluate_run(trained, setup / "data", replace(small, temperature=0.0), out_dir=tmp_path / "t0")
  assert z2["temperature"] == 0.0 and np.allclose(z2["latent_mse_model"], z1["latent_mse_model"], rtol=1e-5)
  assert not np.allclose(z1["latent_mse_model"], s1["latent_mse_model"], rtol=1e-3)
  # decoding with another VAE: one with the run's encoder (a fine-tuned decoder) is used and named in the report;
  # one with a different encoder is refused by name, since the run predicts the first VAE's latents
  from training.vae import load_vae
  ft = load_vae(setup / "vae").ae
  with torch.no_grad():
    for p in ft.decoder.parameters():
      p.mul_(0.9)
  ft.save_pretrained(str(tmp_path / "vae_ft"))
  v = evaluate_run(trained, setup / "data", replace(small, temperature=0.0), out_dir=tmp_path / "ft",
                   vae_dir=tmp_path / "vae_ft")
  assert v["vae"] == str(tmp_path / "vae_ft") and v["latent_mse_model"] == z1["latent_mse_model"]
  assert v["psnr_model"] != z1["psnr_model"] and v["psnr_copy_last"] == z1["psnr_copy_last"]
  other = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  other.register_to_config(scaling_factor=2.0)
  other.save_pretrained(str(tmp_path / "vae_other"))
  with pytest.raises(ValueError, match="encoder differs"):
    evaluate_run(trained, setup / "data", small, out_dir=tmp_path / "x", vae_dir=tmp_path / "vae_other")
  assert len(s["psnr_model"]) == 3 and len(s["ssim_copy_last"]) == 3
  assert all(np.isfinite(s["psnr_vae_floor"])) and all(-1 <= v <= 1 for v in s["ssim_model"])
  assert len(s["psnr_warp_last_codec"]) == 3 and np.isfinite(s["psnr_5frame_warp_last_codec"])   # geometry baseline
  assert "plan_ade_no_anchor_m" in s and "plan_ade_const_vel_m" in s
  # sharpness: each frame's image gradients over the true frame's, per horizon, and at the last one
  for name in ("model", "vae_floor", "copy_last_codec"):
    assert len(s[f"sharpness_{name}"]) == 3 and all(0 < v < 10 for v in s[f"sharpness_{name}"])
    assert s[f"sharpness_last_{name}"] == s[f"sharpness_{name}"][-1]
  assert isinstance(s["beats_copy_last_5frame"], bool)
  out = tmp_path / "new" / "dir"   # --out that does not exist yet is created
  assert (out / "eval.json").exists() and (out / "eval_psnr.png").exists()
  assert (out / "controllability.png").exists() and "left_minus_right_px" in s["controllability"]
  seg = sorted((setup / "data").glob("*/0"))[0]
  r = make_rollout(trained, seg, n_frames=4, out=tmp_path / "r.gif", steps=2)
  from PIL import Image
  im = Image.open(tmp_path / "r.gif")
  assert im.n_frames == 4 and r["frames"] == 4
  # a driven path from a file; a broken file is named
  np.save(tmp_path / "p.npy", np.tile([[2.0, 0, 0, 0, 0, 0.05]], (4, 1)))
  make_rollout(trained, seg, n_frames=4, poses_file=tmp_path / "p.npy", out=tmp_path / "r2.gif", steps=1,
               temperature=0.5)
  np.save(tmp_path / "bad.npy", np.zeros((4, 5)))
  with pytest.raises(ValueError, match="bad.npy"):
    make_rollout(trained, seg, n_frames=4, poses_file=tmp_path / "bad.npy", out=tmp_path / "r3.gif", steps=1)


def test_evaluate_on_a_held_out_folder_with_its_own_cache(trained, setup, tmp_path):
  """A test set made after training: every segment of its folder (split 'all'), latents from another cache root."""
  from tests.training.segment_fixture import make_segment
  from training.data.latent_cache import build_latent_cache
  from training.vae import load_vae
  from training.worldmodel.dit import DiTConfig
  from training.worldmodel.evaluate import EvalConfig, evaluate_run
  run_cfg = json.loads(sorted(trained.glob("ckpt_*.json"))[-1].read_text())["config"]
  held = tmp_path / "held"
  for k in range(2):   # two routes: the route hash would put them in different splits; 'all' takes both
    make_segment(held, f"heldout{k:09d}|2024-02-0{k + 1}--00-00-00", 0, n_frames=140, seed=50 + k)
  ec = EvalConfig(frames=3, windows=4, steps=2, temperature=0.0, split="all")
  with pytest.raises(FileNotFoundError, match="latent cache not finished"):   # not in the run's cache: said so
    evaluate_run(trained, held, ec, out_dir=tmp_path / "nocache")
  build_latent_cache(held, load_vae(setup / "vae"), tmp_path / "hcache",
                     frame_hw=DiTConfig.from_dict(run_cfg["model"]).frame_hw, progress=False)
  s = evaluate_run(trained, held, ec, cache=tmp_path / "hcache", out_dir=tmp_path / "held_eval")
  assert s["split"] == "all" and s["data"] == str(held) and s["latent_root"].startswith(str(tmp_path / "hcache"))
  assert s["windows"] == 4 and all(np.isfinite(s["psnr_model"]))


def test_sigkill_real_trainer_then_resume(setup, tmp_path):
  """Kill `python -m training.worldmodel.train` with SIGKILL while it checkpoints every step; --resume continues
  from the newest intact checkpoint."""
  import signal
  import time
  run = tmp_path / "killed"
  env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
  args = _args(setup, run, 1000)
  args[args.index("--ckpt-every") + 1] = "1"
  args[args.index("--eval-every") + 1] = "100000"
  proc = subprocess.Popen([sys.executable, "-m", "training.worldmodel.train", *args], env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 120
    while True:
      ck = load_latest(run)
      if ck is not None and ck["step"] >= 3:
        break
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.time() < deadline, "trainer wrote no checkpoints"
      time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = load_latest(run)["step"]
  assert killed_at >= 3
  assert wm_train.train(_args(setup, run, killed_at + 2, "--resume")) == killed_at + 2
  assert load_latest(run)["step"] == killed_at + 2


def test_ema_warmup_and_weight_choice(trained):
  from training.trainer import ema_warmup_decay
  from training.worldmodel.evaluate import load_worldmodel_run
  assert ema_warmup_decay(0, 0.999) == pytest.approx(0.1) and ema_warmup_decay(10 ** 6, 0.999) == 0.999
  ck = load_latest(trained)
  assert 0 < ck["extra"]["ema_init_weight"] < 0.01      # warm-up: the random init is forgotten quickly
  _, _, _, cfg = load_worldmodel_run(trained)
  assert cfg["weights_used"] == "ema"
  _, _, _, cfg = load_worldmodel_run(trained, weights="model")
  assert cfg["weights_used"] == "model"
  with pytest.raises(ValueError, match="weights must be"):
    load_worldmodel_run(trained, weights="best")


def test_learning_rate_schedule_follows_steps_or_minutes(tmp_path):
  from training.trainer import Trainer

  class Task:
    trainable = torch.nn.Linear(1, 1)

  def lr(argv, step, seconds):
    rc = wm_train.run_config(wm_train.parse_args(["--data", "d", "--out", "o", "--lr", "1e-3", "--warmup", "10", *argv]))
    return Trainer(Task(), rc, tmp_path, progress=False).lr_at(step, seconds)
  assert lr(["--max-steps", "100"], 0, 0.0) == pytest.approx(1e-4)            # warm-up
  assert lr(["--max-steps", "100"], 50, 0.0) == pytest.approx(5e-4)           # cosine, half-way by steps
  assert lr(["--max-steps", "100"], 100, 0.0) == pytest.approx(0.0, abs=1e-12)
  assert lr(["--minutes", "2"], 50, 60.0) == pytest.approx(5e-4)              # half-way by time
  assert lr(["--lr-schedule", "constant"], 10 ** 6, 1e6) == pytest.approx(1e-3)
  rc = wm_train.run_config(wm_train.parse_args(["--data", "d", "--out", "o"]))
  assert rc.betas == (0.9, 0.99) and rc.no_decay_names == ("embed",) and rc.ema_warmup and rc.fused_adamw


def test_bf16_autocast_on_cpu_trains(setup, tmp_path):
  assert isinstance(wm_train.bf16_supported(torch.device("cpu")), bool)
  run = tmp_path / "bf16"
  assert wm_train.train(_args(setup, run, 2, "--bf16", "on")) == 2
  cfg = json.loads((run / "config.json").read_text())
  assert cfg["bf16_autocast"] is True
  rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()]
  loss_col = rows[0].index("loss")
  assert all(np.isfinite(float(r[loss_col])) for r in rows[1:] if r[1] == "train")


def test_set_overrides_parse_types():
  from common.cli import parse_sets
  from training.trainer import RunConfig
  from training.worldmodel.dit import DiTConfig, get_config
  cfg, rc = parse_sets(["output=velocity", "depth=3", "delta_std=0.25", "keep_ckpts=5", "betas=0.8,0.95"],
                       get_config("tiny"), RunConfig())
  assert (cfg.output, cfg.depth, cfg.delta_std, rc.keep_ckpts, rc.betas) == ("velocity", 3, 0.25, 5, (0.8, 0.95))
  with pytest.raises(ValueError, match="unknown"):
    parse_sets(["no_such_field=1"], DiTConfig())
  with pytest.raises(ValueError, match="unknown"):   # a removed switch
    parse_sets(["prev_warp=true"], DiTConfig())
  args = wm_train.parse_args(["--data", "d", "--out", "o", "--val-every", "7"])   # the former spelling still parses
  assert args.eval_every == 7 and wm_train.run_config(args).eval_every == 7


# one training run of the trainer before it moved onto training/trainer.py (commit 6f0f77b, torch 2.13.0+cpu, AVX512,
# 1 thread): every logged value and the weights after 3 steps (checksums as in test_reference.py)
ORIGINAL_TRAINER_RUN = {
  "model": "ba280aef1bd6bbe2", "ema": "c98d79832be70e7a", "ema_init_weight": 0.004545454545454546,
  "rows": [(1, "train", {"loss": 1.1077525615692139, "rf": 0.8669849634170532, "mhp": 2.4076759815216064,
                         "grad_norm": 0.5616539716720581, "lr": 0.0005}),
           (2, "train", {"loss": 0.8696779608726501, "grad_norm": 0.3640998601913452, "lr": 0.00075}),
           (2, "val", {"loss": 1.1748639345169067, "rf": 0.9400866031646729, "plan_ade_m": 1.4125633239746094}),
           (3, "train", {"loss": 1.1898066997528076, "grad_norm": 0.5899824500083923, "lr": 0.0002500000000000001}),
           (3, "val", {"loss": 1.1709283590316772, "mhp": 2.3285560607910156, "plan_ade_m": 1.4504954814910889})]}


def test_training_matches_the_original_trainer(setup, tmp_path, monkeypatch):
  """Three steps (bf16 off, random anchor offsets fixed per window) give the losses, validation figures, weights and
  EMA of the world model's own loop before it ran on the shared one (under torch's default CPU kernels: conftest.py),
  with the constant-velocity Plan Head prior that loop had."""
  from tests.training.worldmodel.test_reference import reference_platform, state_checksum
  from training.data.dataset import WorldModelDataset
  from training.metrics import MetricsLogger
  init = WorldModelDataset.__init__
  monkeypatch.setattr(WorldModelDataset, "__init__", lambda self, *a, **kw: init(self, *a, **{**kw, "deterministic": True}))
  run = tmp_path / "run"
  args = _args(setup, run, 3, "--bf16", "off", "--warmup", "2", "--lr", "1e-3", "--ema", "0.9")
  args.insert(args.index("--set") + 1, "plan_prior=constant_velocity")     # the Plan Head prior of that loop's time
  args[args.index("--ckpt-every") + 1] = "2"
  args[args.index("--eval-every") + 1] = "2"
  assert wm_train.train(args) == 3
  rows = [(r["step"], r["split"], r) for r in MetricsLogger(run).read()]
  assert [(st, sp) for st, sp, _ in rows] == [(st, sp) for st, sp, _ in ORIGINAL_TRAINER_RUN["rows"]]
  # bit for bit only where this machine's kernels give the first training forward's loss the recorded bits: the
  # forward canary of test_reference uses other shapes, and an AVX512 EPYC passes it but rounds the training batch's
  # loss in its 7th digit (2026-12-07). test_reference pins the forward, loss and gradients themselves; what this test
  # adds (the loop: optimizer, schedule, EMA, validation) then stays exact wherever the first loss reproduces
  first_loss = ORIGINAL_TRAINER_RUN["rows"][0][2]["loss"]
  exact = reference_platform() and rows[0][2]["loss"] == first_loss
  assert rows[0][2]["loss"] == pytest.approx(first_loss, rel=1e-5)
  for (_, _, got), (_, _, want) in zip(rows, ORIGINAL_TRAINER_RUN["rows"]):
    for k, v in want.items():
      assert got[k] == (v if exact else pytest.approx(v, rel=1e-3)), k
  ck = load_latest(run)
  assert ck["extra"]["ema_init_weight"] == pytest.approx(ORIGINAL_TRAINER_RUN["ema_init_weight"], rel=1e-12)
  if exact:
    assert state_checksum(ck["state"]["model"]) == ORIGINAL_TRAINER_RUN["model"]
    assert state_checksum(ck["state"]["ema"]) == ORIGINAL_TRAINER_RUN["ema"]


def test_converted_old_run_resumes(setup, trained, tmp_path):
  """A run in the format before the model-config change (its configs and resume state rewritten back) is refused
  with the conversion command, converted once, then continues from its step with its wall time and epoch."""
  import shutil

  from tests.training.worldmodel.test_convert_checkpoint import OLD_TINY, to_old_form
  from training.worldmodel.convert_checkpoint import main as convert
  run = tmp_path / "old"
  shutil.copytree(trained, run)
  small = {k: v for k, v in load_latest(run)["config"]["model"].items() if k in ("depth", "width", "heads", "plan_hidden",
                                                                                  "plan_blocks", "context_frames",
                                                                                  "anchor_frames")}
  to_old_form(run, {**OLD_TINY, **small}, train_seconds=12.5, epoch=3)
  with pytest.raises(ValueError, match="convert_checkpoint"):
    wm_train.train(_args(setup, run, 5, "--resume"))
  assert convert([str(run)]) == 0
  ck = load_latest(run)
  assert ck["extra"]["elapsed_s"] == 12.5 and ck["extra"]["task"] == {"epoch": 3}
  step = ck["step"]
  assert wm_train.train(_args(setup, run, step + 1, "--resume")) == step + 1
  ck = load_latest(run)
  assert ck["step"] == step + 1 and ck["extra"]["elapsed_s"] > 12.5 and ck["extra"]["task"]["epoch"] >= 3


def test_several_data_folders_are_pooled(setup, tmp_path):
  """--data takes several roots: the latent cache and the windows cover every root, each split by route on its own;
  two roots holding the same route name are refused before anything is encoded."""
  from tests.training.segment_fixture import make_segment
  from training.data.dataset import WorldModelDataset
  extra = tmp_path / "extra"
  for k in range(2):
    make_segment(extra, f"extra{k:011d}|2024-02-0{k + 1}--00-00-00", 0, 140, 128, 64, seed=10 + k)
  run = tmp_path / "run"
  wm_train.train(_args(setup, run, 1, "--data", str(setup / "data"), str(extra), "--cache", str(tmp_path / "cache")))
  cfg = json.loads((run / "config.json").read_text())
  stores = sorted(p.parent.parent.name for p in Path(cfg["latent_root"]).glob("*/*/done.json"))
  assert len(stores) == 5 and sum(s.startswith("extra") for s in stores) == 2
  segs = {split: wm_train.data_segments([setup / "data", extra], split) for split in ("train", "val")}
  assert len(segs["train"]) + len(segs["val"]) == 5
  assert any("extra" in str(p) for p in segs["train"]) and any("extra" in str(p) for p in segs["val"])
  one = WorldModelDataset(setup / "data", "train", latent_root=cfg["latent_root"])
  pooled = WorldModelDataset(segs["train"], "train", latent_root=cfg["latent_root"])
  assert len(pooled) > len(one)
  twin = tmp_path / "twin"
  make_dataset(twin, n_routes=1, n_frames=140)             # the same route name as the first root's first route
  with pytest.raises(ValueError, match="same route and segment name"):
    wm_train.train(_args(setup, tmp_path / "run2", 1, "--data", str(setup / "data"), str(twin), "--cache",
                         str(tmp_path / "cache2")))
  with pytest.raises(SystemExit) as e:
    wm_train.main(_args(setup, tmp_path / "run3", 1, "--data", str(setup / "data"), str(tmp_path / "nowhere")))
  assert e.value.code == 2


def test_rollout_draws_the_plan_up_to_the_overlays_distance():
  """The Plan Head's path is drawn from 1 m to MAX_DRAW_DISTANCE ahead, like the drive overlay: a curving 10 s plan
  beyond that would run along the horizon. Points behind the car or past the limit leave the image as it is."""
  from tools.plot.overlay import MAX_DRAW_DISTANCE
  from training.worldmodel.rollout import draw_plan
  img = np.zeros((64, 128, 3), np.uint8)
  x = np.linspace(0.0, 200.0, 41)
  curve = np.stack([x, x ** 2 / 600.0, np.zeros_like(x)], 1)        # a 300 m right curve, car frame (y right)
  near, far = curve[x <= MAX_DRAW_DISTANCE], curve[x > MAX_DRAW_DISTANCE]
  drawn = draw_plan(img, curve, 60.0)
  assert drawn.any() and np.array_equal(drawn, draw_plan(img, near, 60.0))
  assert not draw_plan(img, far, 60.0).any() and not draw_plan(img, -near, 60.0).any()
