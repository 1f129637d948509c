"""Turns one frame's parsed model outputs into the cereal messages modeld publishes: `modelV2` (the full
prediction) and `drivingModelData` (the small summary controls and loggers read), with openpilot's field
names and layouts.

  outputs = parse_outputs(policy_vector, layout)           # modeld/parse_model_outputs.py
  msg, dmd, extra = new_message("modelV2"), new_message("drivingModelData"), new_message("modelV2Extra")
  fill_model_msg(msg, dmd, extra, outputs, FrameInfo(...), valid=True)

What our networks predict and how it lands in openpilot's layout:
  * plan: the most probable of PLAN_HYPOTHESES hypotheses on T_IDXS -> position/velocity/acceleration/
    orientation/orientationRate (XYZTData, stds = Laplace scales of position and velocity); every hypothesis
    with its softmax probability -> modelV2Extra.planHypotheses, with the model's name and hash (our own
    message, custom.capnp: openpilot's modelV2 has no field for them).
  * lane lines: the model predicts the ego lane's left and right line on X_IDXS. openpilot publishes four
    (outer left, left, right, outer right; consumers read [1] and [2] for the ego lane), so ours go to
    indices 1 and 2; the outer two are the ego lines shifted by the predicted lane width, with probability 0
    (the model does not see them). `t` of every line is the time the plan needs to reach each X_IDXS distance.
  * lead: one lead now (x, y, v_rel, a_rel) -> leadsV3[0] with t = [0] and probTime 0.
  * action: the policy's action head (desiredCurvature 1/m + left, desiredAcceleration m/s^2); shouldStop
    when the plan's speed stays under STOP_SPEED at the action time and 1 s later.
  * drivingModelData.path: degree-POLY_PATH_DEGREE polynomials of the plan's x/y/z in time.
The model has no meta (disengage / desire-state) or pose heads; those fields stay at their defaults.

NaN/Inf never reach a message: any non-finite value in the outputs makes the whole message invalid
(valid=false) and every value is written as 0.
Device side: numpy + cereal only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.modelconstants import IDX_N, PLAN_SLICES, T_IDXS, X_IDXS

POLY_PATH_DEGREE = 4        # openpilot's degree for drivingModelData.path
STOP_SPEED = 0.05           # m/s: plan speeds below this count as standing still (openpilot's vEgoStopping)
ACTION_T = 0.05             # s, one model period: where shouldStop reads the plan


@dataclass
class FrameInfo:
  """Per-frame bookkeeping that goes into the header fields of both messages."""
  frame_id: int              # VisionIPC frame id the model ran on
  frame_id_extra: int        # the wide camera's frame (= frame_id: one camera here)
  newest_frame_id: int       # newest roadCameraState frameId seen (for frameAge)
  frame_drop_perc: float     # filtered share of dropped camera frames, %
  timestamp_eof: int         # ns, end of frame
  model_execution_time: float   # s, warp + vision + policy
  model_name: str = ""
  model_hash: str = ""


def _finite_outputs(outputs: dict) -> bool:
  for v in outputs.values():
    if isinstance(v, dict):
      if not _finite_outputs(v):
        return False
    elif isinstance(v, (np.ndarray, float, int, np.floating)):
      if not np.all(np.isfinite(v)):
        return False
  return True


def _sanitize(outputs):
  """A copy of the outputs with every non-finite value replaced by 0."""
  if isinstance(outputs, dict):
    return {k: _sanitize(v) for k, v in outputs.items()}
  if isinstance(outputs, (np.ndarray, float, np.floating)):
    return np.nan_to_num(outputs, nan=0.0, posinf=0.0, neginf=0.0)
  return outputs


def _clean(a) -> list[float]:
  """float32 list (the outputs are sanitized first, so nothing non-finite gets here)."""
  return np.asarray(a, dtype=np.float32).tolist()


def _f(x) -> float:
  x = float(x)
  return x if np.isfinite(x) else 0.0


def has_field(builder, name: str) -> bool:
  return name in builder.schema.fields


_T_LIST = T_IDXS.astype(np.float32).tolist()
_X_LIST = X_IDXS.astype(np.float32).tolist()


def fill_xyzt(builder, t, x, y, z, x_std=None, y_std=None, z_std=None) -> None:
  builder.t = _T_LIST if t is T_IDXS else _clean(t)
  builder.x, builder.y, builder.z = _clean(x), _clean(y), _clean(z)
  if x_std is not None:
    builder.xStd = _clean(x_std)
  if y_std is not None:
    builder.yStd = _clean(y_std)
  if z_std is not None:
    builder.zStd = _clean(z_std)


def plan_t_at_distances(plan_x: np.ndarray) -> np.ndarray:
  """Time (s) at which the plan's longitudinal position reaches each X_IDXS distance; points the plan never
  reaches get the horizon T_IDXS[-1] (openpilot's convention). plan_x must be on T_IDXS."""
  x = np.maximum.accumulate(np.asarray(plan_x, dtype=np.float64))   # a plan that drifts back stays put
  t = np.full(IDX_N, T_IDXS[-1])
  t[0] = 0.0
  reach = X_IDXS <= x[-1]
  if x[-1] > x[0]:
    # np.interp needs strictly increasing x: drop flat stretches (the car standing still)
    keep = np.concatenate([[True], np.diff(x) > 1e-9])
    t[reach] = np.interp(X_IDXS[reach], x[keep], T_IDXS[keep])
  t[0] = 0.0
  return t


def fill_poly_path(builder, plan_pos: np.ndarray) -> None:
  coeffs = np.polynomial.polynomial.polyfit(T_IDXS, np.nan_to_num(plan_pos), deg=POLY_PATH_DEGREE)   # (deg+1, 3)
  builder.xCoefficients = _clean(coeffs[:, 0])
  builder.yCoefficients = _clean(coeffs[:, 1])
  builder.zCoefficients = _clean(coeffs[:, 2])


def should_stop(plan_vel_x: np.ndarray, action_t: float = ACTION_T) -> bool:
  v_now = float(np.interp(action_t, T_IDXS, plan_vel_x))
  v_1s = float(np.interp(action_t + 1.0, T_IDXS, plan_vel_x))
  return v_now < STOP_SPEED and v_1s < STOP_SPEED


def _fill_extra_header(extra_msg, info: FrameInfo, valid: bool) -> None:
  extra_msg.valid = valid
  e = extra_msg.modelV2Extra
  e.frameId = int(info.frame_id)
  e.modelName = info.model_name
  e.modelHash = info.model_hash


def fill_model_msg(model_msg, driving_msg, extra_msg, outputs: dict, info: FrameInfo, valid: bool) -> bool:
  """Fill the Event builders `model_msg` (modelV2), `driving_msg` (drivingModelData) and `extra_msg`
  (modelV2Extra; either of the last two may be None) from parse_outputs()' dict.
  Returns the `valid` flag both messages were given (False if `valid` was False
  or any output was not finite)."""
  with np.errstate(invalid="ignore", over="ignore"):
    return _fill_model_msg(model_msg, driving_msg, extra_msg, outputs, info, valid)


def _fill_model_msg(model_msg, driving_msg, extra_msg, outputs: dict, info: FrameInfo, valid: bool) -> bool:
  finite = _finite_outputs(outputs)
  valid = bool(valid and finite)
  if not finite:
    outputs = _sanitize(outputs)
  model_msg.valid = valid
  m = model_msg.modelV2
  frame_age = max(0, int(info.newest_frame_id) - int(info.frame_id))
  m.frameId = int(info.frame_id)
  if has_field(m, "frameIdExtra"):
    m.frameIdExtra = int(info.frame_id_extra)
  m.frameAge = frame_age
  m.frameDropPerc = _f(info.frame_drop_perc)
  m.timestampEof = int(info.timestamp_eof)
  m.modelExecutionTime = _f(info.model_execution_time)
  if extra_msg is not None:
    _fill_extra_header(extra_msg, info, valid)

  plan, plan_std = outputs["plan"], outputs["plan_std"]          # (IDX_N, PLAN_WIDTH)
  pos, vel = plan[:, PLAN_SLICES["position"]], plan[:, PLAN_SLICES["velocity"]]
  fill_xyzt(m.position, T_IDXS, *pos.T, *plan_std[:, PLAN_SLICES["position"]].T)
  fill_xyzt(m.velocity, T_IDXS, *vel.T, *plan_std[:, PLAN_SLICES["velocity"]].T)
  fill_xyzt(m.acceleration, T_IDXS, *plan[:, PLAN_SLICES["acceleration"]].T)
  fill_xyzt(m.orientation, T_IDXS, *plan[:, PLAN_SLICES["orientation"]].T)
  fill_xyzt(m.orientationRate, T_IDXS, *plan[:, PLAN_SLICES["orientation_rate"]].T)

  if extra_msg is not None and "hypotheses" in outputs:
    hyps, hstd, probs = outputs["hypotheses"], outputs["hypotheses_std"], outputs["hypothesis_probs"]
    lst = extra_msg.modelV2Extra.init("planHypotheses", len(hyps))
    for k, h in enumerate(lst):
      h.prob = _f(probs[k])
      fill_xyzt(h.position, T_IDXS, *hyps[k][:, PLAN_SLICES["position"]].T, *hstd[k][:, PLAN_SLICES["position"]].T)
      fill_xyzt(h.velocity, T_IDXS, *hyps[k][:, PLAN_SLICES["velocity"]].T)
      fill_xyzt(h.acceleration, T_IDXS, *hyps[k][:, PLAN_SLICES["acceleration"]].T)
      fill_xyzt(h.orientation, T_IDXS, *hyps[k][:, PLAN_SLICES["orientation"]].T)
      fill_xyzt(h.orientationRate, T_IDXS, *hyps[k][:, PLAN_SLICES["orientation_rate"]].T)

  # lane lines and road edges: (y, z) at X_IDXS, reached at the plan's times
  plan_t = plan_t_at_distances(np.nan_to_num(pos[:, 0]))
  ll, ll_std = outputs["lane_lines"], outputs["lane_lines_std"]   # (2, IDX_N, 2): left, right
  width = ll[1, :, 0] - ll[0, :, 0]                                # ego lane width along X_IDXS
  lines = [(ll[0, :, 0] - width, ll[0, :, 1], 0.0, ll_std[0, 0, 0]),   # outer left (not predicted)
           (ll[0, :, 0], ll[0, :, 1], 1.0, ll_std[0, 0, 0]),
           (ll[1, :, 0], ll[1, :, 1], 1.0, ll_std[1, 0, 0]),
           (ll[1, :, 0] + width, ll[1, :, 1], 0.0, ll_std[1, 0, 0])]   # outer right (not predicted)
  re, re_std = outputs["road_edges"], outputs["road_edges_std"]
  for field, curves in (("laneLines", [(y, z) for y, z, _, _ in lines]), ("roadEdges", [(e[:, 0], e[:, 1]) for e in re])):
    for b, (y, z) in zip(m.init(field, len(curves)), curves):
      fill_xyzt(b, plan_t, _X_LIST, y, z)
  m.laneLineProbs = [p for _, _, p, _ in lines]
  m.laneLineStds = _clean([s for _, _, _, s in lines])
  m.roadEdgeStds = _clean(re_std[:, 0, 0])

  lead, lead_std = outputs["lead"], outputs["lead_std"]           # (LEAD_WIDTH,) x, y, v_rel, a_rel
  leads = m.init("leadsV3", 1)
  ld = leads[0]
  ld.prob, ld.probTime, ld.t = _f(outputs["lead_prob"]), 0.0, [0.0]
  ld.x, ld.y, ld.v, ld.a = _clean(lead[0:1]), _clean(lead[1:2]), _clean(lead[2:3]), _clean(lead[3:4])
  ld.xStd, ld.yStd, ld.vStd, ld.aStd = (_clean(lead_std[i:i + 1]) for i in range(4))

  act = outputs["action"]
  stop = should_stop(np.nan_to_num(vel[:, 0])) if valid else False
  m.action.desiredCurvature = _f(act["desiredCurvature"])
  m.action.desiredAcceleration = _f(act["desiredAcceleration"])
  m.action.shouldStop = stop

  if driving_msg is not None:
    driving_msg.valid = valid
    d = driving_msg.drivingModelData
    d.frameId = int(info.frame_id)
    d.frameIdExtra = int(info.frame_id_extra)
    d.frameDropPerc = _f(info.frame_drop_perc)
    d.modelExecutionTime = _f(info.model_execution_time)
    d.action.desiredCurvature = m.action.desiredCurvature
    d.action.desiredAcceleration = m.action.desiredAcceleration
    d.action.shouldStop = stop
    llm = d.laneLineMeta
    llm.leftY, llm.rightY = _f(ll[0, 0, 0]), _f(ll[1, 0, 0])
    llm.leftProb, llm.rightProb = 1.0, 1.0
    fill_poly_path(d.path, pos)
  return valid


def fill_invalid_msg(model_msg, driving_msg, extra_msg, info: FrameInfo) -> None:
  """A frame the model could not run on (bad frame, failed inference): header fields only, valid=false, so
  subscribers see at once that this frame has no usable prediction."""
  model_msg.valid = False
  m = model_msg.modelV2
  m.frameId = int(info.frame_id)
  m.frameAge = max(0, int(info.newest_frame_id) - int(info.frame_id))
  m.frameDropPerc = _f(info.frame_drop_perc)
  m.timestampEof = int(info.timestamp_eof)
  m.modelExecutionTime = _f(info.model_execution_time)
  if extra_msg is not None:
    _fill_extra_header(extra_msg, info, False)
  if driving_msg is not None:
    driving_msg.valid = False
    d = driving_msg.drivingModelData
    d.frameId = int(info.frame_id)
    d.frameIdExtra = int(info.frame_id_extra)
    d.frameDropPerc = _f(info.frame_drop_perc)
    d.modelExecutionTime = _f(info.model_execution_time)
