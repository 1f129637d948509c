"""tools.sim.response: the steady-state response of the reference controllers is what they are by construction."""
import json

import pytest

from tools.sim.policies import PerfectPolicy, StraightPolicy
from tools.sim.response import main, measure
from tools.sim.scenarios import CURVE_RADIUS

QUICK = dict(offsets=(-0.5, 0.0, 0.5), seconds=5.0, average=1.0, progress=False)


def test_perfect_controller_has_gain_one_and_no_bias():
  res = measure(PerfectPolicy(), roads=("straight", "curve"), speeds=(15.0, 30.0), **QUICK)
  for s in res["summary"]:
    assert s["gain"] == pytest.approx(1.0, abs=1e-6) and abs(s["bias"]) < 1e-9, s
  held = {(r["road"], r["speed"], r["target_offset"]): r["offset"] for r in res["rows"]}
  assert all(abs(held[k] - k[2]) < 0.03 for k in held), held      # the car really is held at each offset
  straight = {(r["speed"], r["target_offset"]): r["reference"] for r in res["rows"] if r["road"] == "straight"}
  assert straight[(15.0, 0.5)] > 3 * straight[(30.0, 0.5)] > 0     # right of centre: steer left, ~1/v^2


def test_straight_policy_has_no_gain_and_misses_the_curve():
  res = measure(StraightPolicy(), roads=("curve",), speeds=(20.0,), **QUICK)
  (s,) = res["summary"]
  assert s["gain"] == pytest.approx(0.0, abs=1e-9)
  assert s["bias"] == pytest.approx(-1.0 / CURVE_RADIUS, rel=0.1)   # the left curve it does not follow
  assert s["bias_lat_accel"] == pytest.approx(s["bias"] * 400.0)


def test_cli_writes_json_and_rejects_bad_arguments(tmp_path, capsys):
  out = tmp_path / "r.json"
  assert main(["--policy", "perfect", "--road", "straight", "--speeds", "20", "--offsets", "0", "0.4",
               "--seconds", "1.5", "--average", "0.5", "--json", str(out), "--plot", str(tmp_path / "r.png")]) == 0
  assert json.loads(out.read_text())["summary"][0]["gain"] == pytest.approx(1.0, abs=1e-6)
  assert (tmp_path / "r.png").stat().st_size > 0
  assert main(["--policy", "perfect", "--offsets", "0.3", "0.6"]) == 1            # no 0: no bias to report
  assert "one of them 0" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    main(["--policy", "perfect", "--seconds", "1", "--average", "2"])
  assert e.value.code == 2
