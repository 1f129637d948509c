import json

import numpy as np
import pytest
import torch

from modeld.model_runner import DrivingModel
from tests.training.policy.synthetic import make_segment
from training.export.export import export_policy
from training.policy.evaluate import TorchDrivingModel, bottleneck_report, open_loop, write_report
from training.policy.model import TemporalPolicy, VisionModel, get_config

torch.set_num_threads(1)
CFG = get_config("tiny")


def test_open_loop_torch_equals_onnx_and_report(tmp_path):
  torch.manual_seed(0)
  vision, temporal = VisionModel(CFG).eval(), TemporalPolicy(CFG).eval()
  export_policy(vision, temporal, tmp_path / "m", commit="t")
  segs = [make_segment(CFG, 30, 10, 0.5, seed=3, name="syn/a"), make_segment(CFG, 25, 20, -0.5, seed=4, name="syn/b")]
  ref = open_loop(TorchDrivingModel(vision, temporal), segs, progress=False)
  onx = open_loop(DrivingModel(tmp_path / "m"), segs, progress=False)
  assert set(ref["segments"]) == {"syn/a", "syn/b"}
  for k in ("mae", "ade", "fde", "curvature_mae"):
    assert np.isfinite(ref[k]) and ref[k] == pytest.approx(onx[k], rel=1e-4)
  # every valid plan point of every frame was scored
  assert ref["n_points"] == sum(int(s.plan_valid.sum()) for s in segs)
  report = {"model_name": "tiny", "step": 3, "segments": ["syn/a", "syn/b"], "open_loop": {"torch": ref, "onnx": onx},
            "bottleneck": bottleneck_report(vision, segs),
            "closed_loop": {"onnx": {"lane-keep": {"passed": 2, "total": 5, "pass_rate": 0.4, "mean_t_converged": 3.5,
                                                   "scenarios": []}}}}
  js, md = write_report(tmp_path, report)
  text = md.read_text()
  b = report["bottleneck"]
  assert b["frames"] == 55 and 0 < b["measured_bits"] <= b["configured_bits"] * 1.05
  assert "measured" in text and "| onnx |" in text and "2/5" in text and "| torch |" in text and "not run" in text
  assert json.loads(js.read_text())["open_loop"]["onnx"]["ade"] == pytest.approx(onx["ade"])


def test_runner_drives_the_simulator_closed_loop():
  import dataclasses

  from tools.sim.convergence import run_scenario
  from tools.sim.scenarios import get_suite
  from training.policy.evaluate import runner_policy
  torch.manual_seed(0)
  runner = TorchDrivingModel(VisionModel(CFG).eval(), TemporalPolicy(CFG).eval())
  policy = runner_policy(runner, "torch")
  cam = policy.camera()
  assert (cam.width, cam.height) == (CFG.frame_w, CFG.frame_h)
  sc = dataclasses.replace(get_suite("lane-keep")[0], duration=1.5)
  res = run_scenario(policy, sc, cam)
  assert len(res["trace"]["t"]) == 31 and isinstance(res["passed"], bool) and np.isfinite(res["max_offset"])
