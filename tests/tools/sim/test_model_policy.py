"""--policy PATH: an exported (untrained, tiny) model directory drives through modeld's DrivingModel with
frames rendered in its own frame spec. Only checks the plumbing; an untrained model is not expected to pass."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  torch.set_num_threads(1)
  torch.manual_seed(0)
  cfg = get_config("tiny")
  out = tmp_path_factory.mktemp("model")
  export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), out, commit="simtest")
  return out


def test_model_policy_closed_loop(model_dir, tmp_path):
  from tools.sim.convergence import main
  from tools.sim.policies import ModelPolicy
  pol = ModelPolicy(str(model_dir))
  cam = pol.camera()
  spec = pol.frame_spec
  assert (cam.width, cam.height, cam.focal) == (int(spec["width"]), int(spec["height"]), float(spec["focal"]))
  out = tmp_path / "r.json"
  assert main(["--policy", str(model_dir), "--suite", "lane-keep", "--limit", "1", "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["total"] == 1 and len(r["scenarios"][0]["trace"]["t"]) == 401
  assert np.isfinite(r["scenarios"][0]["max_offset"])
