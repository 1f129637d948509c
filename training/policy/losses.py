"""Losses and trajectory metrics of the policy (paper §5).

Every output of the vision and temporal models is scored against a target dict (batched, torch):

  plan        (B, IDX_N, PLAN_WIDTH)   future poses (common.poses.plan_targets)       plan_valid (B, IDX_N) bool
  lane_lines  (B, NUM_LANE_LINES, IDX_N, 2)                                           has_lanes  (B,) bool
  road_edges  (B, NUM_ROAD_EDGES, IDX_N, 2)                                           has_edges  (B,) bool
  lead        (B, 5) present, x, y, v_rel, a_rel                                      has_lead_label (B,) bool
  action      (B, 2) curvature (1/m, + left), acceleration (m/s^2)                    action_valid (B,) bool

The plan uses the multi-hypothesis Laplace loss (training.mhp.mhp_loss); every other continuous output a
Laplace NLL with its predicted scale; the lead's presence a logistic loss. On top, the lane centre (the mean of the
two predicted lines) up to 20 m ahead gets a Huber loss (lane_centre_loss): it is where the car is in its lane; and
its mean slope 9..32 m ahead another (lane_heading_loss): where the car is heading in its lane.
Missing labels (comma2k19 has only the ego trajectory) are masked out, never faked.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.modelconstants import PLAN_SLICES, T_IDXS, X_IDXS
from training.mhp import laplace_nll, mhp_loss

LOSS_WEIGHTS = {"plan": 1.0, "lane_lines": 1.0, "lane_centre": 1.0, "lane_heading": 1.0, "road_edges": 1.0,
                "lead": 0.5, "lead_prob": 0.5, "action": 1.0}
# The ego lane's centre near the car (x <= 20 m) says where the car is in its lane (offset, heading): what lateral
# control needs most and what the lane lines' Laplace NLL learns last (its gradient does not grow with the error).
LANE_CENTRE_X = int((X_IDXS <= 20.0).sum())   # grid points 0 .. 10
LANE_CENTRE_SCALE = 0.2                      # m: quadratic below this error, linear above (Huber)
# The car's heading in its lane: the lane centre's mean slope from the car to 9..32 m ahead. Within 20 m a heading
# error of 0.02 rad moves the centre by at most 0.4 m and by under 0.14 m at the 7 points nearest the car, so the
# lane-centre loss leaves it to the far field; this loss scores it directly.
LANE_HEADING_X = np.flatnonzero((X_IDXS >= 9.0) & (X_IDXS <= 32.0))   # grid points 7 .. 13
LANE_HEADING_SCALE = 0.01                    # rad


def split(out: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
  """(B, N) -> name -> (B, *shape)."""
  B = out.shape[0]
  return {k: out[:, a:b].reshape(B, *shape) for k, (a, b, shape) in layout.items()}


def _laplace_per_sample(dist: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
  """dist (B, ..., D, 2), target (B, ..., D), has (B,) -> masked Laplace NLL (0 when nothing labelled)."""
  B, D = dist.shape[0], dist.shape[-2]
  mean, ls = dist[..., 0].reshape(B, -1, D), dist[..., 1].reshape(B, -1, D)
  tgt = torch.nan_to_num(target.reshape(B, -1, D).to(mean.dtype))
  mask = has.reshape(B, 1).expand(B, mean.shape[1])
  return laplace_nll(mean, ls, tgt, mask)


def _masked_mean(per: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
  """per (B,) a per-sample loss, has (B,) bool -> its mean over the samples that have a label (0 when none has)."""
  m = has.to(per.dtype)
  return (per * m).sum() / m.sum().clamp(min=1.0)


def _lane_centres(lines: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """lines (B, 2, IDX_N, 2 (y, z), 2 (mean, log_scale)), target (B, 2, IDX_N, 2) -> the predicted and the target
  lane centre's lateral position (the mean of the two lines), each (B, IDX_N) m."""
  centre = lines[:, :, :, 0, 0].mean(1)
  return centre, torch.nan_to_num(target[:, :, :, 0].to(centre.dtype)).mean(1)


def lane_centre_loss(lines: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
  """lines (B, 2, IDX_N, 2 (y, z), 2 (mean, log_scale)), target (B, 2, IDX_N, 2), has (B,) -> Huber loss of the
  predicted lane centre's lateral position near the car (x <= 20 m) in units of LANE_CENTRE_SCALE, masked."""
  centre, centre_tgt = (c[:, :LANE_CENTRE_X] for c in _lane_centres(lines, target))   # (B, LANE_CENTRE_X) m
  per = F.huber_loss(centre / LANE_CENTRE_SCALE, centre_tgt / LANE_CENTRE_SCALE, reduction="none").mean(-1)  # (B,)
  return _masked_mean(per, has)


# The path's own curvature, read from a target plan where it has stopped converging onto its reference: the mean
# of -yaw rate / speed over its points at least PATH_CURVATURE_T seconds ahead (a return to the reference
# takes at most a few seconds: training/onpolicy/simulator.return_plan). L1 in units of PATH_CURVATURE_UNIT.
PATH_CURVATURE_T = 6.0     # s
PATH_CURVATURE_UNIT = 1e-3  # 1/m


def path_curvature_target(plan: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """plan (B, IDX_N, PLAN_WIDTH) in the car frame, valid (B, IDX_N) -> (curvature (B,) 1/m, + left; has (B,)): the
  path's own curvature far ahead (PATH_CURVATURE_T), and whether any of those points is valid."""
  late = torch.from_numpy(T_IDXS >= PATH_CURVATURE_T).to(plan.device)
  rate = plan[:, late, PLAN_SLICES["orientation_rate"].start + 2].to(torch.float32)   # + = turning right (z down)
  vel = plan[:, late, PLAN_SLICES["velocity"].start:PLAN_SLICES["velocity"].start + 2].to(torch.float32)
  speed = torch.linalg.vector_norm(vel, dim=-1).clamp(min=1.0)                      # not vx: the path turns
  m = valid[:, late].to(torch.float32)
  n = m.sum(1)
  k = (torch.nan_to_num(-rate / speed) * m).sum(1) / n.clamp(min=1.0)
  return k, n > 0


def path_curvature_loss(kappa: torch.Tensor, plan: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """kappa (B,) the "split" curvature head's own part (TemporalPolicy.forward_parts), plan/valid the target plan
  (B, IDX_N, PLAN_WIDTH)/(B, IDX_N) -> mean |kappa - the plan's curvature far ahead| / PATH_CURVATURE_UNIT over the
  samples that have one. Holds kappa to the road, so that a return to the lane centre or a lane change can only be
  learnt by the lateral-acceleration part, whose division by v^2 makes it scale with speed (docs/experiments.md,
  2026-12-07, lane changes at 30 m/s)."""
  k, has = path_curvature_target(plan, valid)
  return _masked_mean((kappa - k).abs() / PATH_CURVATURE_UNIT, has)


def lane_heading_loss(lines: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
  """lines (B, 2, IDX_N, 2 (y, z), 2 (mean, log_scale)), target (B, 2, IDX_N, 2), has (B,) -> Huber loss of the
  predicted lane centre's mean slope (c(x) - c(0)) / x over LANE_HEADING_X, in units of LANE_HEADING_SCALE, masked."""
  x = torch.as_tensor(X_IDXS[LANE_HEADING_X], dtype=lines.dtype, device=lines.device)
  slope, slope_tgt = (((c[:, LANE_HEADING_X] - c[:, :1]) / x).mean(-1) for c in _lane_centres(lines, target))  # (B,) rad
  per = F.huber_loss(slope / LANE_HEADING_SCALE, slope_tgt / LANE_HEADING_SCALE, reduction="none")
  return _masked_mean(per, has)


def output_losses(out: torch.Tensor, layout: dict, tgt: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
  """Weighted sum of the losses of every head present in `layout`. Returns (loss, info of floats)."""
  o = split(out, layout)
  info: dict[str, float] = {}
  total = out.new_zeros(())
  plan = o["plan"]                                              # (B, K, T, W, 2)
  plan_loss, mhp_info = mhp_loss(plan[..., 0], plan[..., 1], o["plan_prob"], tgt["plan"].to(plan.dtype),
                                 tgt["plan_valid"])
  info["plan_nll"], info["plan_ce"] = float(mhp_info["nll"]), float(mhp_info["ce"])
  total = total + LOSS_WEIGHTS["plan"] * plan_loss
  terms = {   # loss name -> (the output it scores, its loss)
    "lane_lines": ("lane_lines", lambda: _laplace_per_sample(o["lane_lines"], tgt["lane_lines"], tgt["has_lanes"])),
    "lane_centre": ("lane_lines", lambda: lane_centre_loss(o["lane_lines"], tgt["lane_lines"], tgt["has_lanes"])),
    "lane_heading": ("lane_lines", lambda: lane_heading_loss(o["lane_lines"], tgt["lane_lines"], tgt["has_lanes"])),
    "road_edges": ("road_edges", lambda: _laplace_per_sample(o["road_edges"], tgt["road_edges"], tgt["has_edges"])),
    "lead": ("lead", lambda: _laplace_per_sample(o["lead"], tgt["lead"][:, 1:],
                                                 tgt["has_lead_label"] & (tgt["lead"][:, 0] > 0.5))),
    "action": ("action", lambda: _laplace_per_sample(o["action"], tgt["action"], tgt["action_valid"])),
  }
  for name, (output, fn) in terms.items():
    if output in o:
      v = fn()
      info[name] = float(v.detach())
      total = total + LOSS_WEIGHTS[name] * v
  if "lead_prob" in o:
    has = tgt["has_lead_label"].to(out.dtype)
    bce = F.binary_cross_entropy_with_logits(o["lead_prob"][:, 0], tgt["lead"][:, 0].to(out.dtype), reduction="none")
    v = (bce * has).sum() / has.sum().clamp(min=1.0)
    info["lead_prob"] = float(v.detach())
    total = total + LOSS_WEIGHTS["lead_prob"] * v
  info["loss"] = float(total.detach())
  return total, info


def best_plan(out: torch.Tensor, layout: dict) -> torch.Tensor:
  """(B, N) -> (B, IDX_N, PLAN_WIDTH): mean of the hypothesis with the highest logit (as modeld parses)."""
  o = split(out, layout)
  idx = o["plan_prob"].argmax(-1)
  return o["plan"][torch.arange(out.shape[0], device=out.device), idx, ..., 0]


def trajectory_errors(plan: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
  """Open-loop trajectory errors of predicted plans (B, T, W) vs targets over valid points (B, T).

  mae: mean |error| of the position (x, y, z) elements; ade: mean horizontal (x, y) L2 error;
  fde: horizontal L2 error at the last grid point (10 s), over samples whose full horizon is valid;
  also the sum-of-counts so callers can pool batches exactly."""
  pos = PLAN_SLICES["position"]
  err = (plan[..., pos] - target[..., pos].to(plan.dtype))           # (B, T, 3)
  v = valid.to(plan.dtype)
  n = v.sum()
  l2 = err[..., :2].norm(dim=-1)                                      # (B, T)
  full = valid.all(dim=-1)
  return {
    "mae_sum": float((err.abs().mean(-1) * v).sum()), "ade_sum": float((l2 * v).sum()), "n_points": float(n),
    "fde_sum": float(l2[full, -1].sum()), "n_full": float(full.sum()),
  }


def pool_errors(parts: list[dict[str, float]]) -> dict[str, float]:
  tot = {k: sum(p[k] for p in parts) for k in ("mae_sum", "ade_sum", "n_points", "fde_sum", "n_full")}
  nan = float("nan")
  return {"mae": tot["mae_sum"] / tot["n_points"] if tot["n_points"] else nan,
          "ade": tot["ade_sum"] / tot["n_points"] if tot["n_points"] else nan,
          "fde": tot["fde_sum"] / tot["n_full"] if tot["n_full"] else nan,
          "n_points": tot["n_points"], "n_full_horizon": tot["n_full"]}
