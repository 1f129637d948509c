import numpy as np
import pytest

from common.modelconstants import (
  IDX_N,
  PLAN_HYPOTHESES,
  PLAN_WIDTH,
  ModelOutputError,
  layout_from_json,
  layout_size,
  layout_to_json,
  policy_output_layout,
  split_outputs,
  vision_output_layout,
)
from modeld.parse_model_outputs import parse_outputs


def test_layouts_are_contiguous_and_round_trip():
  for layout in (vision_output_layout(), policy_output_layout()):
    stops = 0
    for a, b, shape in layout.values():
      assert a == stops and b - a == int(np.prod(shape))
      stops = b
    assert layout_from_json(layout_to_json(layout)) == layout
  assert set(policy_output_layout()) - set(vision_output_layout()) == {"action"}


def test_parse_picks_most_probable_hypothesis():
  layout = policy_output_layout()
  raw = split_outputs(np.zeros(layout_size(layout), np.float32), layout)
  vec = np.zeros(layout_size(layout), np.float32)
  a, b, shape = layout["plan"]
  plan = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  vec[a:b] = plan.reshape(-1)
  a, b, _ = layout["plan_prob"]
  vec[a:b] = [0.0, 3.0, 1.0, 0.0, -1.0]
  a, b, _ = layout["action"]
  vec[a:b] = [0.01, np.log(0.5), -1.5, 0.0]
  a, b, _ = layout["lead_prob"]
  vec[a] = 0.0
  out = parse_outputs(vec, layout)
  assert out["plan"].shape == (IDX_N, PLAN_WIDTH) and np.array_equal(out["plan"], plan[1, ..., 0])
  np.testing.assert_allclose(out["plan_std"], np.exp(plan[1, ..., 1]), rtol=1e-6)
  assert out["hypotheses"].shape == (PLAN_HYPOTHESES, IDX_N, PLAN_WIDTH)
  assert out["hypothesis_probs"].sum() == pytest.approx(1.0) and out["hypothesis_probs"].argmax() == 1
  assert out["action"] == pytest.approx({"desiredCurvature": 0.01, "desiredAcceleration": -1.5})
  assert out["action_std"]["desiredCurvature"] == pytest.approx(0.5)
  assert out["lead_prob"] == pytest.approx(0.5)
  assert "action" not in parse_outputs(np.zeros(layout_size(vision_output_layout())), vision_output_layout())
  assert raw["plan"].shape == shape


def test_bad_vectors_and_layouts_are_named():
  layout = policy_output_layout()
  with pytest.raises(ModelOutputError, match="needs"):
    parse_outputs(np.zeros(10), layout)
  with pytest.raises(ModelOutputError, match="'plan'"):
    layout_from_json({"plan": [0, 10, [5, 33]]})
  with pytest.raises(ModelOutputError, match="non-empty"):
    layout_from_json([])
  with pytest.raises(ModelOutputError, match="lead"):
    layout_from_json({"lead": [0, 8]})
