"""fill_model_msg: openpilot's layouts filled from our outputs (lane-line times, poly path, lane order, stop flag)."""
import numpy as np
import pytest

from cereal import messaging
from common.modelconstants import IDX_N, PLAN_SLICES, T_IDXS, X_IDXS, layout_size, policy_output_layout
from modeld.fill_model_msg import FrameInfo, fill_model_msg, plan_t_at_distances, should_stop
from modeld.parse_model_outputs import parse_outputs


def outputs_for(speed=20.0, lane_y=(-1.8, 1.8)):
  layout = policy_output_layout()
  vec = np.zeros(layout_size(layout), np.float32)
  a, b, shape = layout["plan"]
  plan = np.zeros(shape, np.float32)
  plan[:, :, PLAN_SLICES["position"].start, 0] = speed * T_IDXS          # x = v t, every hypothesis
  plan[:, :, PLAN_SLICES["velocity"].start, 0] = speed
  plan[:, :, :, 1] = np.log(0.5)
  vec[a:b] = plan.reshape(-1)
  a, b, shape = layout["lane_lines"]
  ll = np.zeros(shape, np.float32)
  ll[0, :, 0, 0], ll[1, :, 0, 0] = lane_y
  vec[a:b] = ll.reshape(-1)
  a, b, _ = layout["action"]
  vec[a:b] = [0.003, 0.0, -0.5, 0.0]
  return parse_outputs(vec, layout)


def fill(out, valid=True):
  m, d, e = messaging.new_message("modelV2"), messaging.new_message("drivingModelData"), messaging.new_message("modelV2Extra")
  v = fill_model_msg(m, d, e, out, FrameInfo(7, 7, 9, 1.5, 123, 0.01, "name", "hash"), valid)
  return v, m, d, e


def test_plan_t_at_distances():
  t = plan_t_at_distances(20.0 * T_IDXS)                 # 200 m in 10 s
  reach = X_IDXS <= 200.0
  np.testing.assert_allclose(t[reach], X_IDXS[reach] / 20.0, atol=1e-6)
  assert (t[~reach] == T_IDXS[-1]).all()
  assert (plan_t_at_distances(np.zeros(IDX_N))[1:] == T_IDXS[-1]).all()     # standing still: never reached


def test_messages_follow_openpilot_layout():
  valid, m, d, e = fill(outputs_for())
  assert valid and m.valid and d.valid and e.valid
  mv = m.modelV2
  assert mv.frameId == 7 and mv.frameAge == 2 and mv.frameDropPerc == pytest.approx(1.5) and mv.timestampEof == 123
  assert len(mv.laneLines) == 4 and list(mv.laneLineProbs) == [0.0, 1.0, 1.0, 0.0]
  assert mv.laneLines[1].y[0] == pytest.approx(-1.8) and mv.laneLines[2].y[0] == pytest.approx(1.8)
  assert mv.laneLines[0].y[0] == pytest.approx(-5.4) and mv.laneLines[3].y[0] == pytest.approx(5.4)
  assert list(mv.laneLines[1].x) == pytest.approx(X_IDXS.tolist()) and mv.laneLines[1].t[4] == pytest.approx(X_IDXS[4] / 20)
  assert mv.action.desiredCurvature == pytest.approx(0.003) and mv.action.desiredAcceleration == pytest.approx(-0.5)
  assert not mv.action.shouldStop and list(mv.position.xStd) == pytest.approx([0.5] * IDX_N)
  dm = d.drivingModelData
  assert dm.laneLineMeta.leftY == pytest.approx(-1.8) and dm.laneLineMeta.rightProb == 1.0
  x = np.polynomial.polynomial.polyval(T_IDXS, list(dm.path.xCoefficients))
  np.testing.assert_allclose(x, 20.0 * T_IDXS, atol=1e-3)                  # the path polynomial reproduces the plan
  ex = e.modelV2Extra
  assert ex.modelName == "name" and ex.modelHash == "hash" and len(ex.planHypotheses) == 5
  assert sum(h.prob for h in ex.planHypotheses) == pytest.approx(1.0, abs=1e-5)


def test_stop_flag_and_invalid_passthrough():
  assert should_stop(np.zeros(IDX_N)) and not should_stop(np.full(IDX_N, 5.0))
  out = outputs_for(speed=0.0)
  valid, m, _, _ = fill(out)
  assert m.modelV2.action.shouldStop
  valid, m, d, e = fill(outputs_for(), valid=False)                        # e.g. no calibration yet
  assert not valid and not m.valid and not d.valid and not e.valid
  assert len(m.modelV2.position.x) == IDX_N                               # still filled, just flagged
