"""Turns one frame's parsed model outputs into the cereal messages modeld publishes: `modelV2` (the full
prediction) and `drivingModelData` (the small summary controls and loggers read), with openpilot's field
names and layouts.

  outputs = parse_outputs(policy_vector, layout)           # modeld/parse_model_outputs.py
  msg, dmd, extra = new_message("modelV2"), new_message("drivingModelData"), new_message("modelV2Extra")
  fill_model_msg(msg, dmd, extra, outputs, FrameInfo(...), valid=True)

modeld itself fills and sends modelV2 first (checked_outputs, fill_model_v2), then the other two (fill_summaries):
controlsd waits for modelV2 only.

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

Speed (one frame is ~170 lists of 33 floats, 115 of them the hypotheses): the fixed-length float lists are not
assigned from Python lists through pycapnp (~3 us each) but written with numpy into one template message per layout
(modeld/msg_template.py; constant lists such as t = T_IDXS and x = X_IDXS are written once) and deep-copied into
the messages; the values are the same float32 values either way (tests/modeld/test_fill_model_msg.py). modelV2's
template is the whole Event, header scalars included, so modeld sends its bytes with no builder (model_v2_bytes).
Device side: numpy + cereal only.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from cereal import custom, log
from common.modelconstants import IDX_N, NUM_ROAD_EDGES, PLAN_HYPOTHESES, PLAN_SLICES, T_IDXS, X_IDXS
from modeld.msg_template import FloatTemplate

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
  vision_time: float = 0.0      # s, the vision network alone
  policy_time: float = 0.0      # s, the policy network alone


def _finite_outputs(outputs: dict) -> bool:
  for v in outputs.values():
    if isinstance(v, dict):
      if not _finite_outputs(v):
        return False
    elif isinstance(v, np.ndarray):
      if not np.isfinite(v).all():
        return False
    elif isinstance(v, (float, int, np.floating)):
      if not math.isfinite(v):
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
  return x if math.isfinite(x) else 0.0


# ---- the per-frame float lists, written in place (modeld/msg_template.py)
# The five XYZTData of a plan in openpilot's layout, each with its columns of the plan (PLAN_SLICES; x, y, z).
_PLAN_XYZT = (("position", "position"), ("velocity", "velocity"), ("acceleration", "acceleration"),
              ("orientation", "orientation"), ("orientationRate", "orientation_rate"))
_MEAN_COLS = np.concatenate([np.arange(PLAN_SLICES[k].start, PLAN_SLICES[k].stop) for _, k in _PLAN_XYZT])
_XYZ, _XYZ_STD = ("x", "y", "z"), ("xStd", "yStd", "zStd")


def _plan_fields(prefix: tuple, std_of: tuple) -> tuple[list, list, dict]:
  """Template fields of one plan under `prefix`: the 15 mean lists (order of _MEAN_COLS), the std lists of the
  XYZTData in `std_of` (x, y, z each), and the constant t lists."""
  means = [(prefix + (f, a), IDX_N) for f, _ in _PLAN_XYZT for a in _XYZ]
  stds = [(prefix + (f, a), IDX_N) for f in std_of for a in _XYZ_STD]
  return means, stds, {prefix + (f, "t"): T_IDXS for f, _ in _PLAN_XYZT}


def _std_cols(names: tuple) -> np.ndarray:
  keys = dict(_PLAN_XYZT)
  return np.concatenate([np.arange(PLAN_SLICES[keys[f]].start, PLAN_SLICES[keys[f]].stop) for f in names])


_MODEL_STD = ("position", "velocity")      # modelV2: stds of position and velocity
_HYP_STD = ("position",)                   # planHypotheses: stds of position
_MODEL_STD_COLS, _HYP_STD_COLS = _std_cols(_MODEL_STD), _std_cols(_HYP_STD)
_LEAD_FIELDS = ("x", "y", "v", "a")
_TEMPLATES: dict = {}


# modelV2's per-frame scalars, in the order _model_template's `scalars` and _write_model_v2 give them
_MODEL_SCALARS = ((("logMonoTime",), "u64"), (("valid",), "bool"), (("modelV2", "frameId"), "u32"),
                  (("modelV2", "frameAge"), "u32"), (("modelV2", "timestampEof"), "u64"),
                  (("modelV2", "action", "shouldStop"), "bool"), (("modelV2", "frameIdExtra"), "u32"))


def _model_template(n_edges: int) -> FloatTemplate:
  """The whole modelV2 Event: the plan's five XYZTData, 4 lane lines and n_edges road edges (t, y, z per line; x =
  X_IDXS), leadsV3[0] (x, y, v, a, their stds, prob; t = [0]), the lines' stds and probabilities, the action and
  the header (_MODEL_SCALARS, frameDropPerc, modelExecutionTime)."""
  key = ("modelV2", n_edges)
  if key not in _TEMPLATES:
    means, stds, const = _plan_fields(("modelV2",), _MODEL_STD)
    lines = [(("modelV2", field, i, a), IDX_N) for field, n in (("laneLines", 4), ("roadEdges", n_edges))
             for i in range(n) for a in ("t", "y", "z")]
    const.update({("modelV2", field, i, "x"): X_IDXS
                  for field, n in (("laneLines", 4), ("roadEdges", n_edges)) for i in range(n)})
    lead = [(("modelV2", "leadsV3", 0, f), 1) for f in _LEAD_FIELDS] + \
           [(("modelV2", "leadsV3", 0, f + "Std"), 1) for f in _LEAD_FIELDS]
    lead.append((("modelV2", "leadsV3", 0, "prob"), None))
    const[("modelV2", "leadsV3", 0, "t")] = [0.0]
    const[("modelV2", "laneLineProbs")] = [0.0, 1.0, 1.0, 0.0]   # ego lines 1 and 2; the outer two are not predicted
    rest = [(("modelV2", "laneLineStds"), 4), (("modelV2", "roadEdgeStds"), n_edges),
            (("modelV2", "action", "desiredCurvature"), None), (("modelV2", "action", "desiredAcceleration"), None),
            (("modelV2", "frameDropPerc"), None), (("modelV2", "modelExecutionTime"), None)]
    # frameIdExtra is the last: a schema without it (older openpilot) gets every scalar but that one
    scalars = list(_MODEL_SCALARS if "frameIdExtra" in log.ModelDataV2.schema.fields else _MODEL_SCALARS[:-1])
    _TEMPLATES[key] = FloatTemplate(log.Event, means + stds + lines + lead + rest, const, scalars=scalars,
                                    init=lambda msg: msg.init("modelV2"))
  return _TEMPLATES[key]


def _hypotheses_template(k: int) -> FloatTemplate:
  """ModelV2Extra.planHypotheses: k plans (means, position stds) and their probabilities."""
  key = ("planHypotheses", k)
  if key not in _TEMPLATES:
    means, stds, const = [], [], {}
    for i in range(k):
      m, s, c = _plan_fields(("planHypotheses", i), _HYP_STD)
      means += m
      stds += s
      const.update(c)
    probs = [(("planHypotheses", i, "prob"), None) for i in range(k)]
    _TEMPLATES[key] = FloatTemplate(custom.ModelV2Extra, means + stds + probs, const)
  return _TEMPLATES[key]


# built at import for the shipped layout (~15 ms), so that the first frame does not pay for it
_model_template(NUM_ROAD_EDGES)
_hypotheses_template(PLAN_HYPOTHESES)


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


# np.polynomial.polynomial.polyfit(T_IDXS, y, POLY_PATH_DEGREE) with its y-independent part done once: the same
# scaled Vandermonde matrix and rcond go to the same lstsq call, so the coefficients are the same bits.
_POLY_LHS = np.polynomial.polynomial.polyvander(T_IDXS + 0.0, POLY_PATH_DEGREE).T
_POLY_SCL = np.sqrt(np.square(_POLY_LHS).sum(1))
_POLY_SCL[_POLY_SCL == 0] = 1
_POLY_A = _POLY_LHS.T / _POLY_SCL
_POLY_RCOND = len(T_IDXS) * np.finfo((T_IDXS + 0.0).dtype).eps


def poly_path_coefficients(plan_pos: np.ndarray) -> np.ndarray:
  """(POLY_PATH_DEGREE + 1, 3) polynomial coefficients of the plan's x/y/z in time (lowest order first);
  plan_pos must be finite."""
  rhs = np.asarray(plan_pos) + 0.0
  c = np.linalg.lstsq(_POLY_A, rhs, _POLY_RCOND)[0]
  return (c.T / _POLY_SCL).T


def fill_poly_path(builder, plan_pos: np.ndarray) -> None:
  """drivingModelData.path from the (finite) plan positions."""
  coeffs = poly_path_coefficients(plan_pos)   # (deg+1, 3)
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
  e.visionExecutionTime = _f(info.vision_time)
  e.policyExecutionTime = _f(info.policy_time)


def fill_model_msg(model_msg, driving_msg, extra_msg, outputs: dict, info: FrameInfo, valid: bool) -> bool:
  """Fill the Event builders `model_msg` (modelV2), `driving_msg` (drivingModelData) and `extra_msg`
  (modelV2Extra; either of the last two may be None) from parse_outputs()' dict.
  Returns the `valid` flag both messages were given (False if `valid` was False
  or any output was not finite)."""
  outputs, valid = checked_outputs(outputs, valid)
  fill_model_v2(model_msg, outputs, info, valid)
  fill_summaries(driving_msg, extra_msg, outputs, info, valid)
  return valid


def _quiet(fill):
  """Run `fill` with numpy's overflow / invalid warnings off (huge finite outputs may overflow float32 sums)."""
  @functools.wraps(fill)
  def wrapper(*args, **kwargs):
    with np.errstate(invalid="ignore", over="ignore"):
      return fill(*args, **kwargs)
  return wrapper


@_quiet
def checked_outputs(outputs: dict, valid: bool) -> tuple[dict, bool]:
  """(outputs, valid) as the messages get them: any non-finite output makes valid False and is written as 0."""
  finite = _finite_outputs(outputs)
  if not finite:
    outputs = _sanitize(outputs)   # from here on every output is finite
  return outputs, bool(valid and finite)


def _action(outputs: dict, valid: bool) -> tuple[float, float, bool]:
  """modelV2.action / drivingModelData.action: desired curvature, desired acceleration, shouldStop."""
  act, plan = outputs["action"], outputs["plan"]
  stop = should_stop(plan[:, PLAN_SLICES["velocity"]][:, 0]) if valid else False
  return _f(act["desiredCurvature"]), _f(act["desiredAcceleration"]), stop


@_quiet
def _write_model_v2(outputs: dict, info: FrameInfo, valid: bool, log_mono_time: int) -> FloatTemplate:
  """The modelV2 Event of checked_outputs()' (outputs, valid), written into its template (valid until the next
  call)."""
  plan, plan_std = outputs["plan"], outputs["plan_std"]          # (IDX_N, PLAN_WIDTH)
  pos = plan[:, PLAN_SLICES["position"]]
  # lane lines and road edges: (y, z) at X_IDXS, reached at the plan's times
  plan_t = plan_t_at_distances(pos[:, 0]).astype(np.float32)
  ll, ll_std = outputs["lane_lines"], outputs["lane_lines_std"]   # (2, IDX_N, 2): left, right
  width = ll[1, :, 0] - ll[0, :, 0]                                # ego lane width along X_IDXS
  lines = [(ll[0, :, 0] - width, ll[0, :, 1]),                     # outer left (not predicted)
           (ll[0, :, 0], ll[0, :, 1]),
           (ll[1, :, 0], ll[1, :, 1]),
           (ll[1, :, 0] + width, ll[1, :, 1])]                     # outer right (not predicted)
  re, re_std = outputs["road_edges"], outputs["road_edges_std"]
  lead, lead_std = outputs["lead"], outputs["lead_std"]           # (LEAD_WIDTH,) x, y, v_rel, a_rel
  curvature, accel, stop = _action(outputs, valid)
  tmpl = _model_template(len(re))
  tmpl.read(np.concatenate([plan[:, _MEAN_COLS].T.reshape(-1), plan_std[:, _MODEL_STD_COLS].T.reshape(-1)] +
                           [a for y, z in lines + [(e[:, 0], e[:, 1]) for e in re] for a in (plan_t, y, z)] +
                           [np.asarray(lead[:4], dtype=np.float32), np.asarray(lead_std[:4], dtype=np.float32),
                            np.float32([_f(outputs["lead_prob"])]),
                            np.asarray([ll_std[0, 0, 0], ll_std[0, 0, 0], ll_std[1, 0, 0], ll_std[1, 0, 0]], np.float32),
                            np.asarray(re_std[:, 0, 0], np.float32),
                            np.float32([curvature, accel, _f(info.frame_drop_perc), _f(info.model_execution_time)])]))
  scalars = [int(log_mono_time), valid, int(info.frame_id), max(0, int(info.newest_frame_id) - int(info.frame_id)),
             int(info.timestamp_eof), stop, int(info.frame_id_extra)]
  tmpl.set_scalars(scalars[:len(tmpl.scalars)])
  return tmpl


def model_v2_bytes(outputs: dict, info: FrameInfo, valid: bool, log_mono_time: int | None = None) -> bytes:
  """The modelV2 Event on the wire, from checked_outputs()' (outputs, valid), with logMonoTime = now unless given:
  the same message fill_model_v2 builds, without a pycapnp builder (what modeld sends every frame)."""
  t = time.monotonic_ns() if log_mono_time is None else log_mono_time
  return _write_model_v2(outputs, info, valid, t).to_bytes()


def fill_model_v2(model_msg, outputs: dict, info: FrameInfo, valid: bool) -> None:
  """modelV2 alone into an Event builder, from checked_outputs()' (outputs, valid) (its logMonoTime stays)."""
  r = _write_model_v2(outputs, info, valid, model_msg.logMonoTime).reader()
  model_msg.valid = valid
  model_msg.modelV2 = r.modelV2


@_quiet
def fill_summaries(driving_msg, extra_msg, outputs: dict, info: FrameInfo, valid: bool) -> None:
  """drivingModelData and modelV2Extra (either may be None), from checked_outputs()' (outputs, valid)."""
  if extra_msg is not None:
    _fill_extra_header(extra_msg, info, valid)
    if "hypotheses" in outputs:
      hyps, hstd, probs = outputs["hypotheses"], outputs["hypotheses_std"], outputs["hypothesis_probs"]
      tmpl = _hypotheses_template(len(hyps))
      r = tmpl.read(np.concatenate([hyps[:, :, _MEAN_COLS].transpose(0, 2, 1).reshape(-1),
                                    hstd[:, :, _HYP_STD_COLS].transpose(0, 2, 1).reshape(-1),
                                    np.asarray(probs, dtype=np.float32).reshape(-1)]))
      extra_msg.modelV2Extra.planHypotheses = r.planHypotheses
  if driving_msg is not None:
    ll = outputs["lane_lines"]
    driving_msg.valid = valid
    d = driving_msg.drivingModelData
    d.frameId = int(info.frame_id)
    d.frameIdExtra = int(info.frame_id_extra)
    d.frameDropPerc = _f(info.frame_drop_perc)
    d.modelExecutionTime = _f(info.model_execution_time)
    d.action.desiredCurvature, d.action.desiredAcceleration, d.action.shouldStop = _action(outputs, valid)
    llm = d.laneLineMeta
    llm.leftY, llm.rightY = _f(ll[0, 0, 0]), _f(ll[1, 0, 0])
    llm.leftProb, llm.rightProb = 1.0, 1.0
    fill_poly_path(d.path, outputs["plan"][:, PLAN_SLICES["position"]])


def fill_invalid_msg(model_msg, driving_msg, extra_msg, info: FrameInfo) -> None:
  """A frame the model could not run on (bad frame, failed inference): header fields only, valid=false, so
  subscribers see at once that this frame has no usable prediction. Any of the three builders may be None."""
  if model_msg is not None:
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
