"""python -m training.onpolicy.train end to end (in-process actor): checkpoints, metrics, export, --resume."""
import json

import numpy as np
import pytest

from modeld.model_runner import DrivingModel
from training.checkpoint import list_checkpoints
from training.metrics import MetricsLogger
from training.onpolicy import train

ARGS = ["--actors", "0", "--batch-size", "8", "--episode-steps", "8", "--min-buffer-steps", "16", "--log-every", "2",
        "--eval-every", "3", "--ckpt-every", "3"]


def test_train_export_and_resume(tmp_path, policy_run, capsys):
  out = tmp_path / "run"
  for sim in ("procedural",):
    assert train.main(["--sim", sim, "--policy", str(policy_run), "--out", str(out), "--max-steps", "6", *ARGS]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["step"] == 6 and res["received_trajectories"] >= 2 and res["received_states"] >= 16
  assert [p.name for p in list_checkpoints(out)][-1] == "ckpt_00000006.json"
  rows = MetricsLogger(out).read()
  roll = [r for r in rows if r["split"] == "rollout"]
  assert roll and all(r["mean_abs_offset"] >= 0 and r["curvature_err"] >= 0 and r["policy_lag"] >= 0 for r in roll)
  assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6] and (out / "curves.png").exists()
  assert (out / "replay.npz").exists()

  # the run is a policy run: training.export writes the ONNX pair modeld loads
  from training.export.__main__ import main as export_main
  assert export_main(["--run", str(out), "--out", str(tmp_path / "model")]) == 0
  dm = DrivingModel(tmp_path / "model")
  o = dm.run(np.zeros((64, 128, 3), np.uint8), 20.0, 0)
  assert np.isfinite(o["action"]["desiredCurvature"])

  # refuses to overwrite; --resume continues from step 6 with the replay buffer and writes no row twice
  with pytest.raises(SystemExit) as e:
    train.main(["--sim", "procedural", "--policy", str(policy_run), "--out", str(out), "--max-steps", "9", *ARGS])
  assert e.value.code == 2
  capsys.readouterr()
  assert train.main(["--sim", "procedural", "--policy", str(policy_run), "--out", str(out), "--max-steps", "9",
                     "--resume", *ARGS]) == 0
  res2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res2["step"] == 9 and res2["received_trajectories"] >= res["received_trajectories"]
  rows2 = MetricsLogger(out).read()
  keys = [(r["step"], r["split"]) for r in rows2]
  assert len(keys) == len(set(keys)) and [r["step"] for r in rows2 if r["split"] == "train"] == [2, 4, 6, 8]


def test_demo_batch_trains_on_the_policy_runs_own_data(tmp_path, policy_run, segment_dir, capsys):
  out = tmp_path / "run"
  assert train.main(["--sim", "procedural", "--policy", str(policy_run), "--out", str(out), "--max-steps", "2",
                     "--demo-batch", "4", *ARGS]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["step"] == 2 and res["demo_batch"] == 4
  rows = [r for r in MetricsLogger(out).read() if r["split"] == "train"]
  assert rows and all(r["demo_loss"] > 0 for r in rows)
  cfg = json.loads(list_checkpoints(out)[-1].read_text())["config"]["onpolicy"]
  assert cfg["learner"]["demo_batch"] == 4 and cfg["demo_segments"] == [str(segment_dir)]
  with pytest.raises(SystemExit) as e:
    train.main(["--sim", "procedural", "--policy", str(policy_run), "--out", str(tmp_path / "n"), "--demo-batch", "-1"])
  assert e.value.code == 2
  for bad in ("demo_batch=-2", "speed_range=30,20", "speed_range=20", "return_time=0", "return_speed=-5"):   # same checks
    with pytest.raises(SystemExit) as e:
      train.main(["--sim", "procedural", "--policy", str(policy_run), "--out", str(tmp_path / "n"), "--set", bad])
    assert e.value.code == 2, bad


def test_usage_errors(tmp_path, policy_run):
  with pytest.raises(SystemExit) as e:
    train.main(["--sim", "worldmodel", "--policy", str(policy_run), "--out", str(tmp_path / "x")])
  assert e.value.code == 2
  assert train.main(["--sim", "procedural", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "y"),
                     "--actors", "0"]) == 1
  with pytest.raises(SystemExit) as e:
    train.main(["--sim", "worldmodel", "--wm", str(tmp_path), "--wm-predecessor", "nearest", "--policy",
                str(policy_run), "--out", str(tmp_path / "z")])
  assert e.value.code == 2
