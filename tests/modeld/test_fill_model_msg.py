"""fill_model_msg: openpilot's layouts filled from our outputs (lane-line times, poly path, lane order, stop flag)."""
import time

import numpy as np
import pytest

from cereal import messaging
from common.modelconstants import IDX_N, PLAN_SLICES, T_IDXS, X_IDXS, layout_size, policy_output_layout
from modeld.fill_model_msg import (
  FrameInfo,
  checked_outputs,
  fill_model_msg,
  fill_model_v2,
  model_v2_bytes,
  plan_t_at_distances,
  should_stop,
)
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


def _f32(a) -> list[float]:
  return np.asarray(a, dtype=np.float32).tolist()


@pytest.mark.parametrize("nonfinite", [False, True])
def test_every_list_holds_the_outputs_float32_values(nonfinite):
  """The lists written in place (modeld/msg_template.py) read back as exactly the float32 values of the outputs,
  as assigning each array's tolist() would give; the path polynomial is np.polynomial's polyfit, bit for bit."""
  layout = policy_output_layout()
  vec = np.random.default_rng(3).standard_normal(layout_size(layout)).astype(np.float32)
  if nonfinite:
    vec[[5, 700, 1500]] = np.nan, np.inf, -np.inf
  out = parse_outputs(vec, layout)
  valid, m, d, e = fill(out)
  assert valid is not nonfinite
  if nonfinite:   # what is published: the outputs with every non-finite value replaced by 0
    out = {k: (v if isinstance(v, dict) else np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)) for k, v in out.items()}
  mv, ex = m.modelV2, e.modelV2Extra
  fields = {"position": "position", "velocity": "velocity", "acceleration": "acceleration", "orientation": "orientation",
            "orientationRate": "orientation_rate"}

  def check_plan(b, plan, std, std_fields):
    for f, k in fields.items():
      xyzt = getattr(b, f)
      assert list(xyzt.t) == _f32(T_IDXS)
      for i, a in enumerate("xyz"):
        assert list(getattr(xyzt, a)) == _f32(plan[:, PLAN_SLICES[k]][:, i])
        assert list(getattr(xyzt, a + "Std")) == (_f32(std[:, PLAN_SLICES[k]][:, i]) if f in std_fields else [])

  check_plan(mv, out["plan"], out["plan_std"], ("position", "velocity"))
  assert len(ex.planHypotheses) == len(out["hypotheses"])
  for k, h in enumerate(ex.planHypotheses):
    check_plan(h, out["hypotheses"][k], out["hypotheses_std"][k], ("position",))
    assert h.prob == _f32(out["hypothesis_probs"][k])
  plan_t = _f32(plan_t_at_distances(out["plan"][:, 0]))
  ll = out["lane_lines"]
  width = ll[1, :, 0] - ll[0, :, 0]
  for line, y, z in zip(mv.laneLines, (ll[0, :, 0] - width, ll[0, :, 0], ll[1, :, 0], ll[1, :, 0] + width),
                        (ll[0, :, 1], ll[0, :, 1], ll[1, :, 1], ll[1, :, 1])):
    assert (list(line.t), list(line.x), list(line.y), list(line.z)) == (plan_t, _f32(X_IDXS), _f32(y), _f32(z))
  for edge, re in zip(mv.roadEdges, out["road_edges"], strict=True):
    assert (list(edge.t), list(edge.x), list(edge.y), list(edge.z)) == (plan_t, _f32(X_IDXS), _f32(re[:, 0]), _f32(re[:, 1]))
  ld = mv.leadsV3[0]
  assert [ld.x[0], ld.y[0], ld.v[0], ld.a[0]] == _f32(out["lead"][:4]) and list(ld.t) == [0.0] and ld.probTime == 0.0
  assert [ld.xStd[0], ld.yStd[0], ld.vStd[0], ld.aStd[0]] == _f32(out["lead_std"][:4])
  assert ld.prob == _f32([out["lead_prob"]])[0]
  coeffs = np.polynomial.polynomial.polyfit(T_IDXS, out["plan"][:, PLAN_SLICES["position"]], 4)
  p = d.drivingModelData.path
  assert [list(p.xCoefficients), list(p.yCoefficients), list(p.zCoefficients)] == [_f32(c) for c in coeffs.T]


@pytest.mark.parametrize("nonfinite", [False, True])
def test_wire_bytes_are_the_builders_message(nonfinite):
  """model_v2_bytes (what modeld sends: the whole Event written in place, no builder) decodes to the same message as
  fill_model_v2 into a new_message builder, header included (u64 times above 2^32, frameAge, valid, shouldStop);
  the lists, the lines' stds and the action hold the outputs' float32 values."""
  layout = policy_output_layout()
  vec = np.random.default_rng(4).standard_normal(layout_size(layout)).astype(np.float32)
  if nonfinite:
    vec[[9, 800]] = np.nan, np.inf
  info = FrameInfo(frame_id=4_000_000_001, frame_id_extra=4_000_000_001, newest_frame_id=4_000_000_004,
                   frame_drop_perc=2.5, timestamp_eof=(1 << 62) + 12345, model_execution_time=0.0125)
  for speed_out in (parse_outputs(vec, layout), outputs_for(speed=0.0)):   # the second stops: shouldStop set
    for valid_in in (True, False):
      out, valid = checked_outputs(speed_out, valid_in)
      wire = messaging.log_from_bytes(model_v2_bytes(out, info, valid, log_mono_time=(1 << 63) + 7))
      m = messaging.new_message("modelV2", logMonoTime=(1 << 63) + 7)
      fill_model_v2(m, out, info, valid)
      assert wire.to_dict() == m.as_reader().to_dict()
      assert wire.which() == "modelV2" and wire.logMonoTime == (1 << 63) + 7 and wire.valid == valid
      mv = wire.modelV2
      assert (mv.frameId, mv.frameIdExtra, mv.frameAge, mv.timestampEof) == (4_000_000_001, 4_000_000_001, 3, (1 << 62) + 12345)
      assert mv.action.shouldStop == (valid and should_stop(out["plan"][:, PLAN_SLICES["velocity"]][:, 0]))
      assert [mv.action.desiredCurvature, mv.action.desiredAcceleration] == _f32(
        [out["action"]["desiredCurvature"], out["action"]["desiredAcceleration"]])
      assert [mv.frameDropPerc, mv.modelExecutionTime] == _f32([2.5, 0.0125])
      ll_std = out["lane_lines_std"]
      assert list(mv.laneLineStds) == _f32([ll_std[0, 0, 0], ll_std[0, 0, 0], ll_std[1, 0, 0], ll_std[1, 0, 0]])
      assert list(mv.roadEdgeStds) == _f32(out["road_edges_std"][:, 0, 0]) and list(mv.laneLineProbs) == [0, 1, 1, 0]


def test_wire_bytes_default_time_is_now():
  out, valid = checked_outputs(outputs_for(), True)
  t0 = time.monotonic_ns()
  wire = messaging.log_from_bytes(model_v2_bytes(out, FrameInfo(1, 1, 1, 0.0, 0, 0.0), valid))
  assert t0 <= wire.logMonoTime <= time.monotonic_ns()
