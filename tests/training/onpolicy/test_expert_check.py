"""training.onpolicy.expert_check: the geometric experts return to the logged path and are judged so; a world-model
run is driven the same way; the verdict and the correlation on made-up episodes; usage errors."""
import json

import numpy as np
import pytest

from training.onpolicy import expert_check


def _episode(offsets, expert, logged=None):
  return {"offset": list(offsets), "expert_curvature": list(expert),
          "logged_curvature": list(logged if logged is not None else np.zeros(len(offsets)))}


def test_verdict_on_made_up_episodes():
  back = [_episode(np.linspace(s, 0.1 * s, 21), 0.004 * np.linspace(s, 0.1 * s, 21)) for s in (-1.0, 1.0)]
  s = expert_check.summarize(back)
  assert s["returns"] and s["correction_correlation"] > 0.99 and abs(s["mean_abs_final_offset_m"] - 0.1) < 1e-9
  away = [_episode(np.linspace(s, 3 * s, 21), -0.004 * np.linspace(s, 3 * s, 21)) for s in (-1.0, 1.0)]
  s = expert_check.summarize(away)
  assert not s["returns"] and s["correction_correlation"] < -0.99 and s["mean_abs_final_offset_m"] == 3.0
  # ends near the path but got there by steering the wrong way on average: not a returning expert either
  wrong_sign = [_episode(np.linspace(s, 0.1 * s, 21), -0.004 * np.linspace(s, 0.1 * s, 21)) for s in (-1.0, 1.0)]
  assert not expert_check.summarize(wrong_sign)["returns"]
  assert expert_check.correction_correlation([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None


@pytest.mark.parametrize("sim", ["procedural", "reprojective"])
def test_geometric_experts_return(sim, policy_run, segment_dir, tmp_path):
  res = expert_check.check(sim, policy_run, [segment_dir.parent.parent], tmp_path, offset=1.0, seconds=4.0)
  assert res["episodes"] == 2 and res["returns"], res
  assert res["mean_abs_final_offset_m"] < 0.35 and res["correction_correlation"] > 0
  saved = json.loads((tmp_path / "expert_check.json").read_text())
  assert len(saved["runs"]) == 2 and len(saved["runs"][0]["offset"]) == 21
  assert (tmp_path / "expert_check.png").stat().st_size > 0


@pytest.mark.parametrize("predecessor", ["generated", "log"])
def test_world_model_expert_is_driven_the_same_way(wm_run, policy_run, segment_dir, tmp_path, predecessor):
  res = expert_check.check("worldmodel", policy_run, [segment_dir.parent.parent], tmp_path, wm_run=wm_run,
                           offset=0.0, heading_deg=2.0, seconds=1.0, wm_predecessor=predecessor)
  assert res["episodes"] == 2 and np.isfinite(res["mean_abs_final_offset_m"]) and res["wm_predecessor"] == predecessor
  runs = json.loads((tmp_path / "expert_check.json").read_text())["runs"]
  assert [r["heading_deg"] for r in runs] == [-2.0, 2.0] and all(len(r["offset"]) == 6 for r in runs)


def test_world_model_expert_check_drives_the_on_policy_runs_simulator(wm_run, policy_run, segment_dir, tmp_path,
                                                                        capsys):
  """--wm-rolling-anchor and --wm-anchor-max-s give the check the simulator of the on-policy run: with anchors at most
  2.5 s ahead and no rolling anchor an episode ends within 0.5 s of its start (the anchor comes within 2 s), with a
  rolling one it runs its 2 s; both settings are recorded; an anchor range of 2 s or less is refused."""
  data = [segment_dir.parent.parent]
  near = expert_check.check("worldmodel", policy_run, data, tmp_path / "near", wm_run=wm_run, offset=1.0, seconds=2.0,
                            wm_predecessor="log", wm_anchor_max_s=2.5)
  runs = json.loads((tmp_path / "near" / "expert_check.json").read_text())["runs"]
  assert near["wm_anchor_max_s"] == 2.5 and not near["wm_rolling_anchor"]
  assert all(len(r["offset"]) <= 4 for r in runs), [len(r["offset"]) for r in runs]
  rc = expert_check.main(["--sim", "worldmodel", "--wm", str(wm_run), "--policy", str(policy_run), "--data",
                          str(data[0]), "--out", str(tmp_path / "rolling"), "--offset", "1", "--seconds", "2",
                          "--wm-predecessor", "log", "--wm-rolling-anchor", "--wm-anchor-max-s", "2.5"])
  assert rc == 0
  saved = json.loads((tmp_path / "rolling" / "expert_check.json").read_text())
  assert saved["wm_rolling_anchor"] and saved["wm_anchor_max_s"] == 2.5
  assert all(len(r["offset"]) == 11 for r in saved["runs"]) and np.isfinite(saved["mean_abs_final_offset_m"])
  capsys.readouterr()
  rc = expert_check.main(["--sim", "worldmodel", "--wm", str(wm_run), "--policy", str(policy_run), "--data",
                          str(data[0]), "--out", str(tmp_path / "bad"), "--wm-anchor-max-s", "2"])
  assert rc == 1 and "anchor_max_s" in capsys.readouterr().err


def test_usage_errors(policy_run, segment_dir, tmp_path, capsys):
  data = str(segment_dir.parent.parent)
  for argv, needle in ((["--sim", "worldmodel"], "needs --wm"), (["--sim", "procedural", "--offset", "0"], "non-zero"),
                       (["--sim", "procedural", "--seconds", "0"], "--seconds")):
    with pytest.raises(SystemExit) as e:
      expert_check.main([*argv, "--policy", str(policy_run), "--data", data, "--out", str(tmp_path)])
    assert e.value.code == 2 and needle in capsys.readouterr().err
  rc = expert_check.main(["--sim", "procedural", "--policy", str(policy_run), "--data", data, "--out", str(tmp_path),
                          "--seconds", "60"])
  assert rc == 1 and "long enough" in capsys.readouterr().err


def _spread(tmp_path):
  """|offset of the right-start episode - offset of the left-start one| at the end, and their expert corrections."""
  runs = json.loads((tmp_path / "expert_check.json").read_text())["runs"]
  left, right = sorted(runs, key=lambda r: r["lateral"])
  return abs(right["offset"][-1] - left["offset"][-1]), np.subtract(right["expert_curvature"], left["expert_curvature"])


def test_world_model_expert_at_its_prior_steers_back(wm_run, policy_run, segment_dir, tmp_path):
  """The fixture's Plan Head is untrained, so its plan is its kinematic prior. With the anchor-reaching prior (the
  default) the cars started 1 m left and 1 m right of the log converge toward each other (the anchor reaches the Plan
  Head in the car's frame now, and the prior plans onto it); the car on the right is told to steer more to the left
  at every step. With the constant-velocity prior they keep their 2 m apart: nothing in it returns."""
  import shutil
  data = [segment_dir.parent.parent]
  res = expert_check.check("worldmodel", policy_run, data, tmp_path / "anchor", wm_run=wm_run, offset=1.0, seconds=3.0)
  spread, diff = _spread(tmp_path / "anchor")
  assert res["correction_correlation"] > 0.3 and spread < 1.5 and np.all(diff[1:] > 0), (res, spread, diff)

  cv_run = tmp_path / "cv_run"
  shutil.copytree(wm_run, cv_run)
  for f in cv_run.glob("ckpt_*.json"):
    meta = json.loads(f.read_text())
    meta["config"]["model"]["plan_prior"] = "constant_velocity"
    f.write_text(json.dumps(meta))
  expert_check.check("worldmodel", policy_run, data, tmp_path / "cv", wm_run=cv_run, offset=1.0, seconds=3.0)
  cv_spread, _ = _spread(tmp_path / "cv")
  assert cv_spread > 1.9, cv_spread
