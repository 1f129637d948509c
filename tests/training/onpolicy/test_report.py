"""training/onpolicy/report.py on tiny exported models the test builds: row order, the table's columns and seeds,
the lane-keep plot, and agreement with tools.sim.convergence run on the same export."""
import json

import pytest
import torch

from tests.training.segment_fixture import make_segment
from training.onpolicy import report as rep

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  root = tmp_path_factory.mktemp("report")
  cfg = get_config("tiny")
  models = {}
  for name, seed in (("bc", 0), ("wm", 1)):
    torch.manual_seed(seed)
    models[name] = root / name
    export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), models[name], commit="test")
  make_segment(root / "data", n_frames=50, w=128, h=64, seed=3)
  return root, models


def test_parse_runs_orders_the_papers_rows_first():
  runs = rep.parse_runs(["mine=/a", "procedural=/b", "bc=/c", "worldmodel=/d"])
  assert [n for n, _ in runs] == ["bc", "worldmodel", "procedural", "mine"]
  assert rep.row_label("worldmodel") == "on-policy world model" and rep.row_label("mine") == "mine"
  for bad in (["bc"], ["=x"], ["bc=/a", "bc=/b"]):
    with pytest.raises(ValueError):
      rep.parse_runs(bad)


def test_report_table_plot_and_json(setup, capsys):
  root, models = setup
  out = root / "out"
  assert rep.main(["--runs", f"worldmodel={models['wm']}", f"bc={models['bc']}", "--data", str(root / "data"),
                   "--out", str(out), "--seed", "7", "--limit", "1"]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["seed"] == 7 and list(last["rows"]) == ["bc", "worldmodel"]
  r = json.loads((out / "report.json").read_text())
  assert [row["label"] for row in r["rows"]] == ["off-policy (BC)", "on-policy world model"]
  for row in r["rows"]:
    assert row["open_loop"]["n_points"] > 0 and row["open_loop"]["mae"] > 0
    for s in ("lane-keep", "lane-change"):
      cl = row["closed_loop"][s]
      assert cl["total"] == 1 and cl["seed"] == 7 and len(cl["scenarios"][0]["trace"]["t"]) > 100
  # two different random policies: different open-loop errors
  assert r["rows"][0]["open_loop"]["mae"] != r["rows"][1]["open_loop"]["mae"]
  md = (out / "report.md").read_text()
  assert "scenery seed **7**" in md and "| off-policy (BC) |" in md and "lane-change passed" in md
  assert "without controlsd's limits" in md and last["controls"] is False
  assert (out / "lane_keep_offsets.png").stat().st_size > 10000


def test_closed_loop_column_is_what_the_convergence_cli_measures(setup):
  root, models = setup
  from tools.sim.convergence import run_suite
  from tools.sim.policies import ModelPolicy
  row = rep.evaluate_policy(models["bc"], "bc", root / "data", suites=("lane-keep",), seed=7, limit=1, progress=False)
  pol = ModelPolicy(str(models["bc"]))
  ref = run_suite(pol, "lane-keep", pol.camera(), progress=False, limit=1, seed=7)
  got = row["closed_loop"]["lane-keep"]["scenarios"][0]
  assert got["trace"] == ref["scenarios"][0]["trace"] and got["passed"] == ref["scenarios"][0]["passed"]
  # --controls: what tools.sim.convergence --controls measures (controlsd's logic, NV12 frames), another drive
  from tools.sim.policies import ControlsPolicy
  row = rep.evaluate_policy(models["bc"], "bc", root / "data", suites=("lane-keep",), seed=7, limit=1, progress=False,
                            controls=True)
  twin = ControlsPolicy(ModelPolicy(str(models["bc"]), nv12=True))
  ref_c = run_suite(twin, "lane-keep", pol.camera(), progress=False, limit=1, seed=7)
  got_c = row["closed_loop"]["lane-keep"]["scenarios"][0]
  assert got_c["trace"] == ref_c["scenarios"][0]["trace"] and got_c["trace"] != got["trace"]


def test_bad_input(setup, tmp_path, capsys):
  root, _ = setup
  with pytest.raises(SystemExit) as e:
    rep.main(["--runs", f"bc={tmp_path / 'none'}", "--data", str(root / "data"), "--out", str(tmp_path)])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    rep.main(["--runs", "bc", "--data", str(root / "data"), "--out", str(tmp_path)])
  assert e.value.code == 2
  bad = tmp_path / "bad_model"
  bad.mkdir()
  (bad / "driving_vision.onnx").write_bytes(b"not onnx")
  assert rep.main(["--runs", f"bc={bad}", "--data", str(root / "data"), "--out", str(tmp_path / "o")]) == 1
  assert "driving_vision.onnx" in capsys.readouterr().err


def test_parallel_workers_give_the_same_rows(setup):
  root, models = setup
  runs = rep.parse_runs([f"bc={models['bc']}", f"worldmodel={models['wm']}"])
  one = rep.build_report(runs, root / "data", root / "w1", suites=("lane-keep",), limit=1, progress=False, workers=1)
  two = rep.build_report(runs, root / "data", root / "w2", suites=("lane-keep",), limit=1, progress=False, workers=2)
  assert [r["name"] for r in two["rows"]] == ["bc", "worldmodel"] and two["held_out_segments"] == 1
  for a, b in zip(one["rows"], two["rows"]):
    assert json.dumps(a["open_loop"]) == json.dumps(b["open_loop"])      # (fde is NaN on so short a segment)
    ta, tb = a["closed_loop"]["lane-keep"]["scenarios"][0], b["closed_loop"]["lane-keep"]["scenarios"][0]
    assert ta["trace"] == tb["trace"] and ta["passed"] == tb["passed"]
