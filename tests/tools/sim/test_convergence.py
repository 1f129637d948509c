"""Convergence suites (paper §6) with the reference controllers, the pass criteria, and the CLI."""
import json

import numpy as np
import pytest

from tools.sim.convergence import main, run_scenario, run_suite
from tools.sim.policies import BiasedPolicy, PerfectPolicy, StraightPolicy
from tools.sim.scenarios import LANE_WIDTH, evaluate, lane_change_suite, lane_keep_suite


def test_suites_are_the_papers_grid():
  keep, change = lane_keep_suite(), lane_change_suite()
  assert len(keep) == 24 and len(change) == 20
  assert {(s.lateral_offset, round(np.degrees(s.heading_error)), s.road_shape) for s in keep} == {
    (o, h, r) for o in (-1.0, -0.5, 0.5, 1.0) for h in (0, -2, 2) for r in ("straight", "curve")}
  assert [s.speed for s in keep[:4]] == [15.0, 30.0, 15.0, 30.0]
  assert {s.lane_change for s in change} == {-1, 1} and {s.speed for s in change} == {15.0, 30.0}
  assert len({s.name for s in keep + change}) == 44


def test_pass_criteria():
  sc = lane_keep_suite()[0]
  t = np.arange(0, 20.05, 0.05)
  good = 1.0 * np.exp(-t)
  assert evaluate(sc, t, good, 3.6, np.zeros_like(t, bool))["passed"]
  late_excursion = good.copy(); late_excursion[-1] = 0.35          # outside the band at the end
  r = evaluate(sc, t, late_excursion, 3.6, np.zeros_like(t, bool))
  assert not r["passed"] and r["failure"] == "never settled"
  out_of_lane = good.copy(); out_of_lane[10] = 1.85
  r = evaluate(sc, t, out_of_lane, 3.6, np.zeros_like(t, bool))
  assert not r["passed"] and r["failure"] == "left the lane"
  lc = lane_change_suite()[0]
  t15 = np.arange(0, 15.05, 0.05)
  slow = np.where(t15 < 10.5, 3.6, 0.0)                               # settles after the 10 s deadline
  assert not evaluate(lc, t15, slow, 3.6, np.zeros_like(t15, bool))["passed"]
  fast = np.where(t15 < 5.0, 3.6, 0.0)
  assert evaluate(lc, t15, fast, 3.6, np.zeros_like(t15, bool))["passed"]
  assert not evaluate(lc, t15, fast, 3.6, t15 == 2.0)["passed"]      # left the road once


def test_perfect_controller_passes_every_lane_keep_scenario():
  s = run_suite(PerfectPolicy(), "lane-keep", progress=False)
  assert s["passed"] == 24, [r["name"] for r in s["scenarios"] if not r["passed"]]


def test_straight_controller_fails_the_curves():
  curved = [sc for sc in lane_keep_suite() if sc.road_shape == "curve"]
  res = [run_scenario(StraightPolicy(), sc) for sc in curved]
  assert sum(r["passed"] for r in res) == 0
  assert all(r["failure"] == "left the lane" for r in res)


def test_biased_controller_fails_on_one_side():
  s = run_suite(BiasedPolicy(), "lane-keep", progress=False)
  right = [r for r in s["scenarios"] if "_off+" in r["name"]]
  left = [r for r in s["scenarios"] if "_off-" in r["name"]]
  fail_right, fail_left = sum(not r["passed"] for r in right), sum(not r["passed"] for r in left)
  assert fail_right <= 2 and fail_left >= 8, (fail_right, fail_left)   # today: 1 and 10
  for r in s["scenarios"]:
    if not r["passed"]:                   # every failure leaves the lane on the side the steering pulls to
      assert r["failure"] == "left the lane" and max(r["trace"]["offset"]) > 1.8
  # the same controller without the bias converges from the left too
  assert run_scenario(BiasedPolicy(bias_curvature=0.0), lane_keep_suite()[1])["passed"]


def test_cli_lane_change_perfect_json(tmp_path, capsys):
  out = tmp_path / "lc.json"
  assert main(["--policy", "perfect", "--suite", "lane-change", "--json", str(out)]) == 0
  summary = json.loads(out.read_text())
  assert summary["passed"] == 20 and summary["total"] == 20
  r0 = summary["scenarios"][0]
  assert {"passed", "max_offset", "final_offset", "t_converged"} <= set(r0) and abs(r0["final_offset"]) < 0.3
  assert "perfect on lane-change: 20/20 passed" in capsys.readouterr().out
  for r in summary["scenarios"]:   # the desire is given until the car's centre is in the target lane, then never again
    desire, off = np.array(r["trace"]["desire"]), np.abs(r["trace"]["offset"][:-1])
    k = int(np.argmin(desire != 0))
    assert k > 0 and not desire[k:].any() and desire[:k].all()
    assert off[k] < LANE_WIDTH / 2 <= off[k - 1], (r["name"], k, off[k - 1:k + 1])


def test_cli_rejects_a_bad_policy(tmp_path):
  with pytest.raises(SystemExit):
    main(["--policy", str(tmp_path / "no_such_model")])
  with pytest.raises(SystemExit):
    main(["--policy", "perfect", "--suite", "nope"])


def test_cli_unloadable_model_and_json_under_a_file_fail_up_front(tmp_path, capsys):
  bad = tmp_path / "model"
  bad.mkdir()
  (bad / "driving_vision.onnx").write_bytes(b"not onnx")
  assert main(["--policy", str(bad), "--limit", "1"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "driving_vision.onnx" in err[0]
  f = tmp_path / "afile"
  f.write_text("x")
  for target in (f / "out.json", tmp_path):
    with pytest.raises(SystemExit) as e:
      main(["--policy", "perfect", "--json", str(target)])
    assert e.value.code == 2 and "--json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_suite_seed_redraws_scenery_not_geometry():
  from dataclasses import replace

  from tools.sim.scenarios import get_suite
  for name in ("lane-keep", "lane-change"):
    base = get_suite(name)
    assert get_suite(name, 0) == base and all(sc.scenery_seed is None for sc in base)   # today's suites
    s7, s8 = get_suite(name, 7), get_suite(name, 8)
    assert [replace(sc, scenery_seed=None) for sc in s7] == base           # same scenarios, geometry, start state
    seeds7 = [sc.appearance_seed for sc in s7]
    assert len(set(seeds7)) == len(base)                                    # every scenario its own scenery
    assert not set(seeds7) & {sc.appearance_seed for sc in s8} and not set(seeds7) & {sc.seed for sc in base}
    assert [sc.appearance_seed for sc in get_suite(name, 7)] == seeds7     # reproducible
  with pytest.raises(ValueError, match="seed"):
    get_suite("lane-keep", -1)


def test_scenery_seed_changes_the_look_but_not_the_road():
  from common.transformations.camera import model_frame_camera
  from tools.sim.env import SimEnv
  from tools.sim.render import random_appearance
  from tools.sim.scenarios import get_suite
  sc0, sc7 = get_suite("lane-keep")[6], get_suite("lane-keep", 7)[6]
  envs = [SimEnv(camera=model_frame_camera(128, 64, 227.5)) for _ in range(2)]
  imgs = [env.reset(sc)["image"] for env, sc in zip(envs, (sc0, sc7))]
  r0, r7 = envs[0].world.road, envs[1].world.road
  for f in ("xy", "psi", "kappa", "height"):
    np.testing.assert_array_equal(getattr(r0, f), getattr(r7, f))
  assert (r0.lane_width, r0.n_lanes, r0.edge_d) == (r7.lane_width, r7.n_lanes, r7.edge_d)
  assert envs[0].world.appearance == random_appearance(sc0.seed) != envs[1].world.appearance
  assert [(o.s, o.d) for o in r0.objects] != [(o.s, o.d) for o in r7.objects]
  assert np.abs(imgs[0].astype(int) - imgs[1].astype(int)).mean() > 5          # a different-looking world
  # the same start state and ground truth: the labels do not depend on the scenery
  np.testing.assert_array_equal(envs[0].gt["path"], envs[1].gt["path"])
  assert envs[0].gt["_target_offset"] == envs[1].gt["_target_offset"]


def test_cli_seed_same_scores_for_a_controller_that_ignores_the_look(tmp_path):
  out0, out5 = tmp_path / "s0.json", tmp_path / "s5.json"
  assert main(["--policy", "perfect", "--limit", "2", "--json", str(out0)]) == 0
  assert main(["--policy", "perfect", "--limit", "2", "--seed", "5", "--json", str(out5)]) == 0
  s0, s5 = json.loads(out0.read_text()), json.loads(out5.read_text())
  assert (s0["seed"], s5["seed"]) == (0, 5)
  assert [r["trace"] for r in s0["scenarios"]] == [r["trace"] for r in s5["scenarios"]]
  with pytest.raises(SystemExit) as e:
    main(["--policy", "perfect", "--seed", "-3"])
  assert e.value.code == 2


def test_controls_policy_applies_controlsds_limits():
  """--controls: the perfect controller through controlsd's logic in-process. On a 30 m/s curve of radius 300 m the
  road alone needs 3.0 m/s^2, controlsd's lateral-acceleration limit, so from an outward offset it cannot come back;
  on a straight road it still converges, every frame's command moving no faster than the lateral-jerk limit."""
  from selfdrive.controls.lib.drive_helpers import MAX_LATERAL_JERK
  from tools.sim.policies import ControlsPolicy
  keep = lane_keep_suite()
  curve = next(s for s in keep if s.road_shape == "curve" and s.speed == 30.0 and s.lateral_offset == -0.5
               and s.heading_error == 0.0)
  assert run_scenario(PerfectPolicy(), curve)["passed"]
  limited = ControlsPolicy(PerfectPolicy())
  r = run_scenario(limited, curve)
  assert not r["passed"] and r["failure"] == "left the lane"
  accel = 30.0 ** 2 * np.abs(np.array(limited.desired_curvature))
  assert accel.max() <= 3.0 + 1e-6                                    # MAX_LATERAL_ACCEL_NO_ROLL, no roll here
  straight = keep[1]                                                  # 30 m/s, 1 m off, heading 2 deg away
  assert straight.speed == 30.0 and straight.road_shape == "straight"
  r = run_scenario(limited, straight)
  assert r["passed"]
  step = np.abs(np.diff(limited.desired_curvature))                  # per 20 Hz frame = 5 control steps of 10 ms
  per_frame = 5 * 0.01 * MAX_LATERAL_JERK / 30.0 ** 2                 # the speed stays 30 m/s (accel 0)
  assert step.max() <= per_frame * 1.01 and step.max() > 0.9 * per_frame   # the limit holds, and it binds
  with pytest.raises(RuntimeError, match="reset"):
    ControlsPolicy(PerfectPolicy())({"v_ego": 15.0}, {})
  with pytest.raises(ValueError, match="steps"):
    ControlsPolicy(PerfectPolicy(), steps=0)


def test_cli_controls(tmp_path, capsys):
  out = tmp_path / "c.json"
  assert main(["--policy", "perfect", "--controls", "--limit", "2", "--json", str(out)]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["policy"] == "perfect+controlsd" and res["total"] == 2
  with pytest.raises(SystemExit) as e:
    main(["--policy", "perfect", "--controls", "--through-stack"])
  assert e.value.code == 2
