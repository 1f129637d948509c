"""training.onpolicy.expert_suites: the geometric expert as the suites' controller settles on the 30 m/s curve
(its course, not its heading), a delay holds its commands back, the JSON and the usage errors."""
import json

import numpy as np
import pytest

from tools.sim.convergence import run_scenario
from tools.sim.scenarios import get_suite
from training.onpolicy import expert_suites
from training.onpolicy.expert_suites import ExpertController


def _scenario(name):
  return next(sc for sc in get_suite("lane-keep") if sc.name == name)


def test_expert_settles_on_the_lane_centre_of_a_fast_curve():
  """The suites' 30 m/s curve is 3 m/s^2 of cornering: starting along its heading the expert held the car 0.25 m off
  the centre (of the suites' 0.3 m)."""
  r = run_scenario(ExpertController(), _scenario("keep_curve_off+1.0_hd+0_v30"))
  off = np.asarray(r["trace"]["offset"])
  assert r["passed"] and np.abs(off[-100:]).max() < 0.08, off[-100:]


def test_delay_and_gain():
  ctrl = ExpertController(delay=0.2, gain=0.5)
  ctrl.reset()
  path = np.zeros((33, 3))
  path[:, 1] = 1.0                                          # the lane centre 1 m to the right
  out = [ctrl({"v_ego": 20.0}, {"path": path, "_course": 0.0})[0] for _ in range(6)]
  assert out[:4] == [0.0] * 4 and out[4] == out[5] < 0
  assert out[4] == pytest.approx(0.5 * ExpertController().command(path[:, 1], 20.0))
  with pytest.raises(ValueError, match="delay"):
    ExpertController(delay=-0.1)


def test_cli_writes_every_scenario(tmp_path, capsys):
  rc = expert_suites.main(["--suite", "lane-keep", "--limit", "2", "--out", str(tmp_path)])
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rc == 0 and res["lane-keep"]["total"] == 2 and res["lane-keep"]["passed"] == 2
  assert sum(n for _, n in res["lane-keep"]["by_speed"].values()) == 2
  saved = json.loads((tmp_path / "expert_suites.json").read_text())
  assert len(saved["runs"]["lane-keep"]) == 2 and "offset" in saved["runs"]["lane-keep"][0]["trace"]
  for argv, needle in ((["--return-speed", "fast"], "could not convert"), (["--limit", "0"], "--limit"),
                       (["--return-time", "0"], "return_time")):
    with pytest.raises(SystemExit) as e:
      expert_suites.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


class _Lanes:
  """A stand-in for modeld's DrivingModel whose vision net reads two fixed ego lane lines."""

  def __init__(self, left, right):
    self.lines = np.zeros((2, 33, 2))
    self.lines[0, :, 0], self.lines[1, :, 0] = left, right
    self.calls = []

  def run(self, img, v_ego, desire):
    self.calls.append((img.shape, v_ego, desire))
    return {"vision": {"lane_lines": self.lines}}

  def reset(self):
    pass


def test_perceived_expert_steers_to_the_lane_centre_the_vision_net_reads(monkeypatch):
  """PerceivedExpert's reference is the centre of the model's two lines, one lane (their spacing) over toward a lane
  change's desire; it commands what the truth expert commands for that centre."""
  from tools.sim import policies
  from training.onpolicy.expert_suites import PerceivedExpert

  class FakeModelPolicy:
    def __init__(self, model_dir):
      self.model = _Lanes(-1.3, 2.3)                                           # centre 0.5 m right, lane 3.6 m
  monkeypatch.setattr(policies, "ModelPolicy", FakeModelPolicy)
  ctrl = PerceivedExpert("unused")
  img = np.zeros((64, 128, 3), np.uint8)
  for desire, centre in ((0, 0.5), (1, 0.5 - 3.6), (2, 0.5 + 3.6)):
    assert np.allclose(ctrl.reference({"image": img, "v_ego": 20.0, "desire": desire}, {}), centre)
  truth = np.zeros((33, 3))
  truth[:, 1] = 7.0                                                            # the scenario's truth is ignored
  k = ctrl({"image": img, "v_ego": 20.0, "desire": 0}, {"path": truth, "_course": 0.0})[0]
  assert k == pytest.approx(ExpertController().command(np.full(33, 0.5), 20.0)) and k < 0
  assert ctrl.policy.model.calls[-1] == ((64, 128, 3), 20.0, 0)


def test_cli_lanes_from_a_model_directory(tmp_path, capsys):
  """--lanes-from MODEL_DIR drives the suite with frames rendered in that model's frame; a missing folder is a usage
  error."""
  torch = pytest.importorskip("torch")
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  torch.manual_seed(0)
  cfg = get_config("tiny")
  model = tmp_path / "model"
  export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), model, commit="test")
  rc = expert_suites.main(["--suite", "lane-keep", "--limit", "1", "--lanes-from", str(model)])
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rc == 0 and res["lanes_from"] == str(model) and res["lane-keep"]["total"] == 1
  with pytest.raises(SystemExit) as e:
    expert_suites.main(["--lanes-from", str(tmp_path / "none")])
  assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
