"""Turns the driving models' flat output vectors into named arrays (modeld's side of the output layout).

The layout itself (name -> (start, stop, shape) of each output, the contract between training and modeld) is built
from the model constants in common/modelconstants.py (vision_output_layout / policy_output_layout); modeld reads it
back from each ONNX file's ``output_slices`` metadata (layout_from_json) and checks the two agree. split_outputs
(common) is re-exported here.

Device side: numpy only.
"""
from __future__ import annotations

import numpy as np

from common.modelconstants import ACTION_NAMES, ModelOutputError, split_outputs

__all__ = ["ModelOutputError", "parse_outputs", "split_outputs"]


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


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
