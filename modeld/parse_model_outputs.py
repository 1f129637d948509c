"""Output layout of the driving models and the code that turns their flat output vectors into named arrays.

Both exported networks end in ONE flat float32 vector (as openpilot's supercombo does); which range of it
means what is the *output layout*, stored in each ONNX file's metadata as ``output_slices``
(name -> [start, stop, shape]). The same layout is built here from the model constants, so training sizes
its heads with ``vision_output_layout()`` / ``policy_output_layout()`` and modeld reads them back from the
metadata: the two sides cannot drift apart silently (the runner checks they agree).

Every continuous output is a Laplace distribution: its trailing axis of size 2 is (mean, log_scale).

  plan         (K, IDX_N, PLAN_WIDTH, 2)      K = PLAN_HYPOTHESES trajectories on T_IDXS (PLAN_SLICES per point)
  plan_prob    (K,)                           hypothesis logits
  lane_lines   (NUM_LANE_LINES, IDX_N, 2, 2)  (y, z) of the ego lane's left/right line at X_IDXS, car frame
  road_edges   (NUM_ROAD_EDGES, IDX_N, 2, 2)  likewise for the road edges
  lead         (LEAD_WIDTH, 2)                x, y, v_rel, a_rel of the lead vehicle
  lead_prob    (1,)                           logit that a lead vehicle is present
  action       (2, 2)                         desiredCurvature (1/m, + = left), desiredAcceleration (m/s^2)   [policy only]

Device side: numpy only.
"""
from __future__ import annotations

import math

import numpy as np

from common.modelconstants import IDX_N, LEAD_WIDTH, NUM_LANE_LINES, NUM_ROAD_EDGES, PLAN_HYPOTHESES, PLAN_WIDTH

ACTION_NAMES = ("desiredCurvature", "desiredAcceleration")

_AUX_SHAPES = {
  "plan": (PLAN_HYPOTHESES, IDX_N, PLAN_WIDTH, 2),
  "plan_prob": (PLAN_HYPOTHESES,),
  "lane_lines": (NUM_LANE_LINES, IDX_N, 2, 2),
  "road_edges": (NUM_ROAD_EDGES, IDX_N, 2, 2),
  "lead": (LEAD_WIDTH, 2),
  "lead_prob": (1,),
}


class ModelOutputError(ValueError):
  pass


def _layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int, tuple[int, ...]]]:
  out, start = {}, 0
  for name, shape in shapes.items():
    n = math.prod(shape)
    out[name] = (start, start + n, tuple(shape))
    start += n
  return out


def vision_output_layout() -> dict[str, tuple[int, int, tuple[int, ...]]]:
  """name -> (start, stop, shape) of the vision model's auxiliary output vector."""
  return _layout(_AUX_SHAPES)


def policy_output_layout() -> dict[str, tuple[int, int, tuple[int, ...]]]:
  """name -> (start, stop, shape) of the policy model's output vector (aux outputs + action)."""
  return _layout({**_AUX_SHAPES, "action": (len(ACTION_NAMES), 2)})


def layout_size(layout: dict) -> int:
  return max(stop for _, stop, _ in layout.values())


def layout_to_json(layout: dict) -> dict:
  return {k: [int(a), int(b), [int(s) for s in shape]] for k, (a, b, shape) in layout.items()}


def layout_from_json(obj, where: str = "output_slices") -> dict:
  """Validate and convert a metadata output_slices object; raises ModelOutputError naming `where`."""
  if not isinstance(obj, dict) or not obj:
    raise ModelOutputError(f"{where}: expected a non-empty object name -> [start, stop, shape]")
  out = {}
  for k, v in obj.items():
    if not (isinstance(v, list) and len(v) == 3 and isinstance(v[2], list)):
      raise ModelOutputError(f"{where}[{k!r}]: expected [start, stop, shape], got {v!r}")
    a, b, shape = int(v[0]), int(v[1]), tuple(int(s) for s in v[2])
    if b - a != math.prod(shape) or a < 0:
      raise ModelOutputError(f"{where}[{k!r}]: range {a}:{b} does not hold shape {shape}")
    out[k] = (a, b, shape)
  return out


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def split_outputs(vec: np.ndarray, layout: dict) -> dict[str, np.ndarray]:
  """Flat output (N,) or batched (B, N) -> name -> array of shape ([B,] *shape)."""
  vec = np.asarray(vec)
  n = layout_size(layout)
  if vec.shape[-1] != n:
    raise ModelOutputError(f"output vector has {vec.shape[-1]} values, the layout needs {n}")
  lead = vec.shape[:-1]
  return {k: vec[..., a:b].reshape(*lead, *shape) for k, (a, b, shape) in layout.items()}


def parse_outputs(vec: np.ndarray, layout: dict) -> dict:
  """Unbatched flat output vector -> the named, physical outputs DrivingModel.run returns.

  The plan is the mean of the hypothesis with the highest logit (paper §5 / openpilot); the other
  hypotheses and their softmax probabilities are returned too. *_std are Laplace scales exp(log_scale).
  """
  raw = split_outputs(np.asarray(vec, dtype=np.float32).reshape(-1), layout)
  out: dict = {}
  if "plan" in raw:
    plan, logits = raw["plan"], raw["plan_prob"]  # (K, T, W, 2), (K,)
    best = int(np.argmax(logits))
    out["hypotheses"] = plan[..., 0].copy()                       # (K, IDX_N, PLAN_WIDTH)
    out["hypotheses_std"] = np.exp(plan[..., 1])
    out["hypothesis_probs"] = _softmax(logits)                    # (K,)
    out["plan"] = plan[best, ..., 0].copy()                       # (IDX_N, PLAN_WIDTH)
    out["plan_std"] = np.exp(plan[best, ..., 1])
  for name in ("lane_lines", "road_edges"):
    if name in raw:
      out[name] = raw[name][..., 0].copy()                        # (N, IDX_N, 2) (y, z) at X_IDXS
      out[name + "_std"] = np.exp(raw[name][..., 1])
  if "lead" in raw:
    out["lead"] = raw["lead"][:, 0].copy()                        # (LEAD_WIDTH,) x, y, v_rel, a_rel
    out["lead_std"] = np.exp(raw["lead"][:, 1])
    out["lead_prob"] = float(_sigmoid(raw["lead_prob"][0]))
  if "action" in raw:
    out["action"] = {n: float(raw["action"][i, 0]) for i, n in enumerate(ACTION_NAMES)}
    out["action_std"] = {n: float(np.exp(raw["action"][i, 1])) for i, n in enumerate(ACTION_NAMES)}
  return out
