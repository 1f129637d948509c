"""tools.sim.convergence --through-stack: the same drive with the model in-process and through modeld + controlsd
processes (VisionIPC frames, cereal messages) must agree within the stated tolerance."""
import numpy as np
import pytest

pytest.importorskip("torch")


@pytest.mark.timeout(180)
def test_through_stack_matches_in_process(tmp_path_factory):
  from tests.modeld.conftest import _export
  from tools.sim.convergence import run_scenario
  from tools.sim.policies import ModelPolicy
  from tools.sim.scenarios import Scenario, get_suite
  from tools.sim.stack import Stack, StackPolicy, model_camera
  model_dir = _export(tmp_path_factory.mktemp("stack_model"), seed=0)
  sc = get_suite("lane-keep")[0]
  sc = Scenario(**{**sc.__dict__, "duration": 4.0})
  cam = model_camera(model_dir)
  ref = run_scenario(ModelPolicy(str(model_dir)), sc, cam)
  with Stack(model_dir) as stack:
    pol = StackPolicy(stack, cam)
    try:
      got = run_scenario(pol, sc, cam)
      assert pol.frames == 80 and pol.engaged == 80       # controlsd steered every frame
    finally:
      pol.close()
  a, b = np.array(ref["trace"]["offset"]), np.array(got["trace"]["offset"])
  assert a.shape == b.shape == (81,)
  # tolerance: NV12 chroma subsampling of the frames and controlsd's jerk limit -> |offset difference| <= 5 cm
  assert np.abs(a - b).max() < 0.05, np.abs(a - b).max()
  assert got["passed"] == ref["passed"] and got["failure"] == ref["failure"]
