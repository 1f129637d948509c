"""tools.sim.convergence --through-stack: the same drive with the model in-process and through modeld + controlsd
processes (VisionIPC frames, cereal messages) must agree within the stated tolerance."""
import numpy as np
import pytest


@pytest.mark.timeout(180)
def test_through_stack_matches_in_process():
  from modeld.modeld import DEFAULT_MODEL_DIR
  from tools.sim.convergence import run_scenario
  from tools.sim.policies import ModelPolicy
  from tools.sim.scenarios import Scenario, get_suite
  from tools.sim.stack import Stack, StackPolicy, compare_runs, model_camera
  model_dir = DEFAULT_MODEL_DIR                            # the shipped model
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
  cmp = compare_runs(ref, got)
  assert cmp["same_verdicts"] == 1 and cmp["within_tolerance"] == 1, cmp
  assert np.abs(a - b).max() > 0                          # the stack really ran (NV12 frames differ from RGB)
