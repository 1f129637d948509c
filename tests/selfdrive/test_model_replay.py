"""Model replay in CI: modeld (a process) on the committed segments, frame by frame, against the committed
references, per-field tolerance; the comparison itself is checked to catch a changed field."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from selfdrive.test.process_replay import model_replay as mr


def test_compare_fields_tolerance_rule():
  ref = {"a": np.array([1.0, 1000.0, 0.0]), "t": "x", "gone": np.zeros(2)}
  new = {"a": np.array([1.0 + 5e-5, 1000.05, 5e-5]), "t": "x", "extra": np.zeros(1)}
  bad = mr.compare_fields(ref, new)
  assert set(bad) == {"gone", "extra"} and math.isinf(bad["gone"])     # within max(tol, tol*|x|): 1000.05 passes
  new["a"][1] = 1000.2
  assert mr.compare_fields(ref, new)["a"] == pytest.approx(0.2)
  new["a"][1], new["t"] = 1000.0, "y"
  assert set(mr.compare_fields(ref, new)) == {"gone", "extra", "t"}
  assert mr.compare_fields({"s": np.zeros(3)}, {"s": np.zeros(4)}) == {"s": math.inf}


def test_flatten_merges_struct_lists():
  out = mr.flatten({"m": {"lines": [{"y": [1, 2]}, {"y": [3]}], "v": 2.5, "ok": True}}, "", {})
  assert out["m.lines.y"].tolist() == [1, 2, 3] and out["m.v"].tolist() == [2.5] and out["m.ok"].tolist() == [1.0]


@pytest.mark.timeout(300)
def test_model_replay_matches_references():
  """Every committed segment through modeld (the shipped model) matches its reference; a perturbed output is caught."""
  # a fresh interpreter, as CI and users run it: no messaging state of earlier tests in this process
  env = {k: v for k, v in os.environ.items() if not k.startswith("WORLDPILOT_")}   # nothing left by earlier tests
  proc = subprocess.run([sys.executable, "-m", "selfdrive.test.process_replay.model_replay", "--no-progress"],
                        cwd=mr.REPO, capture_output=True, text=True, timeout=280, env=env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["passed"] is True
  ref, meta = mr.read_ref("sim_lane_keep")
  assert len(ref) == meta["frames"] == 100
  r = mr.event_fields(ref[10]["modelV2"])
  o = dict(r)
  assert mr.compare_fields(r, o) == {}
  o["modelV2.action.desiredCurvature"] = o["modelV2.action.desiredCurvature"] + 1e-3
  assert set(mr.compare_fields(r, o)) == {"modelV2.action.desiredCurvature"}
