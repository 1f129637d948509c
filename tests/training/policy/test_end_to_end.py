"""Simulator segments -> train (both stages, CLI) -> export (CLI) -> DrivingModel on a rendered frame."""
import json

import numpy as np
import pytest
import torch

from modeld.model_runner import DrivingModel
from training.checkpoint import load_latest
from training.export.__main__ import main as export_main
from training.metrics import MetricsLogger
from training.policy.data import load_segment
from training.policy.evaluate import TorchDrivingModel
from training.policy.model import checkpoint_stage, get_config, load_policy_run
from training.policy.train import main as train_main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
  from tools.sim.generate import main as generate
  root = tmp_path_factory.mktemp("sim")
  assert generate(["--out", str(root), "--segments", "2", "--seed", "3", "--duration", "2.5", "--resolution", "292x220"]) == 0
  return root


def test_sim_segment_labels(sim_data, tmp_path):
  seg_dir = sorted(sim_data.glob("*/0"))[0]
  s = load_segment(seg_dir, get_config("tiny"), tmp_path)
  assert s.has_lanes and s.has_edges and s.has_lead and s.frames.shape == (50, 64, 128, 3)
  assert s.frames[:, 40:].mean() > 20                         # the road is visible in the model frame
  assert (s.lane_lines[:, 0, 0, 0] < 0).all() and (s.lane_lines[:, 1, 0, 0] > 0).all()   # left line at -y
  x_end = s.plan[0, s.plan_valid[0]][-1, 0]
  assert x_end == pytest.approx(s.v_ego[0] * 10 * (np.flatnonzero(s.plan_valid[0])[-1] / 32) ** 2, rel=0.15)
  cached = list(tmp_path.glob("frames_*.npy"))                # the warped frames, cached once per segment + frame spec
  assert len(cached) == 1 and np.array_equal(np.load(cached[0]), s.frames)
  again = load_segment(seg_dir, get_config("tiny"), tmp_path)  # read back from the cache: the same frames and labels
  assert np.array_equal(again.frames, s.frames) and np.array_equal(again.lane_lines, s.lane_lines)


def test_train_export_run(sim_data, tmp_path, capsys):
  run = tmp_path / "run"
  args = ["--preset", "tiny", "--data", str(sim_data), "--out", str(run), "--max-steps", "4", "--batch-size", "4",
          "--eval-every", "2", "--ckpt-every", "2"]
  assert train_main(args) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert np.isfinite(res["extractor"]["ade"]) and np.isfinite(res["temporal"]["ade"])
  split = json.loads((run / "split.json").read_text())
  assert len(split["train"]) == 1 and len(split["val"]) == 1
  ck = load_latest(run)
  assert ck["step"] == 8 and checkpoint_stage(ck) == ("temporal", 4)     # 4 + 4 steps, numbered over both stages
  rows = {(r["split"], r["step"]) for r in MetricsLogger(run).read()}
  assert {("extractor_val", 2), ("extractor_val", 4), ("temporal_val", 2), ("temporal_val", 4)} <= rows
  newest = sorted(run.glob("ckpt_*.safetensors"))[-1]
  stamp = newest.stat().st_mtime_ns
  assert train_main(args + ["--resume"]) == 0                 # already done: resumes at the end, no retraining
  assert sorted(run.glob("ckpt_*.safetensors"))[-1] == newest and newest.stat().st_mtime_ns == stamp
  assert export_main(["--run", str(run), "--out", str(tmp_path / "model")]) == 0
  # the exported pair runs modeld's per-frame loop exactly as the trained PyTorch models do
  vision, temporal, _ = load_policy_run(run)
  runners = [DrivingModel(tmp_path / "model", "onnxruntime"), TorchDrivingModel(vision, temporal)]
  seg = load_segment(split["val"][0], get_config("tiny"), run / "cache")
  for i in range(0, 12, 3):
    outs = [r.run(np.ascontiguousarray(seg.frames[i]), float(seg.v_ego[i]), 0) for r in runners]
    assert np.isfinite(outs[0]["plan"]).all()
    np.testing.assert_allclose(outs[0]["plan"], outs[1]["plan"], atol=1e-3, rtol=1e-3)
    assert outs[0]["action"]["desiredCurvature"] == pytest.approx(outs[1]["action"]["desiredCurvature"], abs=1e-4)
