"""`torchrun --nproc_per_node=2 -m training.policy.train` on CPU (gloo): both stages, a few steps each.

What would break if DDP were not really averaging gradients: each rank draws its own frames (checked: the
ranks' logged data digests differ), so without the gradient all-reduce the ranks' weights drift apart. The test
reads every rank's logged parameter sha256 at each checkpoint, requires them to be equal across ranks, and
requires rank 0's checkpoint to hold exactly those weights. Only rank 0 writes checkpoints / metrics / results.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.segment_fixture import make_dataset
from training.checkpoint import load_latest
from training.policy.model import TemporalPolicy, VisionModel, get_config
from training.policy.train import param_digest

REPO = Path(__file__).resolve().parents[3]
STEPS = 3
SYNC_RE = re.compile(r"rank (\d+)/(\d+) (extractor|temporal) step (\d+): params sha256 ([0-9a-f]{64}), "
                     r"data sha256 ([0-9a-f]{64})")


def _free_port() -> int:
  with socket.socket() as sock:   # torchrun's --master_port=0 does not pick a free port with the static rendezvous
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run(cmd, env, timeout, log_dir: Path) -> subprocess.CompletedProcess:
  """Run torchrun with its output in files (the ranks inherit them; pipes would block on a hung rank). On a hang
  (e.g. ranks stuck in mismatched collectives) SIGTERM torchrun, which stops its ranks, then fail."""
  with open(log_dir / "stdout.txt", "w") as out, open(log_dir / "stderr.txt", "w") as err:
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err)
    try:
      p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      p.send_signal(signal.SIGTERM)
      try:
        p.wait(timeout=30)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
      pytest.fail(f"torchrun did not finish in {timeout} s (ranks hung?):\n{(log_dir / 'stderr.txt').read_text()[-4000:]}")
  return subprocess.CompletedProcess(cmd, p.returncode, (log_dir / "stdout.txt").read_text(),
                                     (log_dir / "stderr.txt").read_text())


def _checkpoint_digests(run: Path, step: int) -> dict[str, str]:
  ck = load_latest(run)
  assert ck["step"] == step
  cfg = get_config("tiny")
  out = {}
  for name, model in (("vision", VisionModel(cfg)), ("temporal", TemporalPolicy(cfg))):
    if name in ck["state"]:
      model.load_state_dict(ck["state"][name])
      out[name] = param_digest(model)
  return out


def test_torchrun_two_ranks_stay_in_sync(tmp_path):
  make_dataset(tmp_path / "data", n_routes=3, n_frames=40)
  run = tmp_path / "run"
  # CPU + gloo even on a machine with a GPU (the brief of this test is the CPU path)
  env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
  cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         f"--master_port={_free_port()}", "-m", "training.policy.train", "--preset", "tiny",
         "--data", str(tmp_path / "data"), "--out", str(run), "--stage", "both", "--max-steps", str(STEPS),
         "--batch-size", "4", "--eval-every", "100", "--ckpt-every", "100", "--threads", "1"]
  p = _run(cmd, env, timeout=120, log_dir=tmp_path)
  assert p.returncode == 0, p.stderr[-4000:]

  # every rank logged its parameter digest at the end of each stage (the checkpoint steps)
  logged = {}
  for m in SYNC_RE.finditer(p.stderr):
    rank, world, stage, step, params, data = m.groups()
    assert int(world) == 2
    logged[(stage, int(step), int(rank))] = (params, data)
  assert set(logged) == {(s, STEPS, r) for s in ("extractor", "temporal") for r in (0, 1)}, p.stderr[-4000:]
  for stage in ("extractor", "temporal"):
    (p0, d0), (p1, d1) = logged[(stage, STEPS, 0)], logged[(stage, STEPS, 1)]
    assert d0 != d1, f"{stage}: both ranks trained on the same frames (no per-rank sampling)"
    assert p0 == p1, f"{stage}: ranks' parameters differ after {STEPS} steps (gradients not averaged)"

  # rank 0's checkpoint (global step 2 * STEPS, both stages) holds those weights; the extractor moved off its init
  final = _checkpoint_digests(run, 2 * STEPS)
  assert final["temporal"] == logged[("temporal", STEPS, 0)][0]
  assert final["vision"] == logged[("extractor", STEPS, 0)][0]
  torch.manual_seed(0)
  assert final["vision"] != param_digest(VisionModel(get_config("tiny")))

  # only rank 0 wrote: one checkpoint per stage end, one metrics row per log step, one result line
  assert sorted(q.name for q in run.glob("ckpt_*.json")) == [f"ckpt_{STEPS:08d}.json", f"ckpt_{2 * STEPS:08d}.json"]
  assert not [q for q in run.iterdir() if ".tmp" in q.name]
  rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
  assert sorted((r[0], r[1]) for r in rows if r[1].endswith("_train")) == [(str(STEPS), "extractor_train"),
                                                                           (str(STEPS), "temporal_train")]
  results = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
  assert len(results) == 1 and set(json.loads(results[0])) == {"extractor", "temporal"}
  split = json.loads((run / "split.json").read_text())
  assert len(split["train"]) == 2 and len(split["val"]) == 1
