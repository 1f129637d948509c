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
