"""Plan Head (paper §4.2): residual feed-forward blocks on pooled tokens of the current frame that predict the
future trajectory on T_IDXS (10 s) as PLAN_HYPOTHESES hypotheses with Laplace scales and hypothesis logits.

With a kinematic prior (the world model passes one), each hypothesis is a correction to the constant-velocity
trajectory of the current frame's transition (the world model's own pose input), so the head starts where the
classic baseline is and spends its training on what the images and the anchor add (curves, speed changes).

Outputs live in NORMALISED units (plan / PLAN_NORM, per plan component) so one Laplace NLL weighs metres,
m/s and radians alike; `denormalize_plan` converts back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from common.modelconstants import IDX_N, PLAN_HYPOTHESES, PLAN_SLICES, PLAN_WIDTH, T_IDXS

# typical magnitude of each plan component over the 10 s horizon
_NORM_BY_PART = {"position": (50.0, 5.0, 2.0), "velocity": (20.0, 2.0, 1.0), "acceleration": (2.0, 1.0, 1.0),
                 "orientation": (0.05, 0.05, 0.3), "orientation_rate": (0.02, 0.02, 0.1)}
PLAN_NORM = torch.zeros(PLAN_WIDTH, device="cpu")   # explicit device: may be imported under torch.device("meta")
for _part, _sl in PLAN_SLICES.items():
  PLAN_NORM[_sl] = torch.tensor(_NORM_BY_PART[_part], device="cpu")


def normalize_plan(plan: torch.Tensor) -> torch.Tensor:
  return plan / PLAN_NORM.to(plan.device, plan.dtype)


def denormalize_plan(plan: torch.Tensor) -> torch.Tensor:
  return plan * PLAN_NORM.to(plan.device, plan.dtype)


def constant_velocity_plan(transition: torch.Tensor, fps: float) -> torch.Tensor:
  """The current frame's transition (B,6) (motion from the previous frame, metres / radians) -> the NORMALISED plan
  (B,T,PLAN_WIDTH) of a car that holds that velocity for 10 s, straight ahead: position v*t, velocity v, everything
  else zero. The Plan Head predicts its hypotheses as corrections to this kinematic prior."""
  B = transition.shape[0]
  v = transition[:, :3].float() * fps                                        # (B,3) m/s in the car frame
  t = torch.as_tensor(T_IDXS, dtype=torch.float32, device=transition.device)  # (T,)
  plan = torch.zeros(B, len(T_IDXS), PLAN_WIDTH, device=transition.device)
  plan[..., PLAN_SLICES["position"]] = v[:, None, :] * t[None, :, None]
  plan[..., PLAN_SLICES["velocity"]] = v[:, None, :].expand(B, len(T_IDXS), 3)
  return normalize_plan(plan)


class ResBlock(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

  def forward(self, x):
    return x + self.ff(self.norm(x))


@dataclass
class PlanOutput:
  """PlanHead.forward's result: K Laplace hypotheses of the plan on T_IDXS, in normalised units (normalize_plan)."""
  mean: torch.Tensor        # (B,K,T,D) each hypothesis' mean
  log_scale: torch.Tensor   # (B,K,T,D) log of its Laplace scale
  logits: torch.Tensor      # (B,K) hypothesis logits


class PlanHead(nn.Module):
  def __init__(self, width: int, hidden: int, blocks: int, hypotheses: int = PLAN_HYPOTHESES,
               horizon: int = IDX_N, plan_width: int = PLAN_WIDTH):
    super().__init__()
    self.K, self.T, self.D = hypotheses, horizon, plan_width
    self.inp = nn.Linear(width, hidden)
    self.blocks = nn.Sequential(*[ResBlock(hidden) for _ in range(blocks)])
    self.norm = nn.LayerNorm(hidden)
    self.out = nn.Linear(hidden, hypotheses * (2 * horizon * plan_width + 1))

  def init_weights(self):
    nn.init.normal_(self.out.weight, std=1e-3)
    nn.init.zeros_(self.out.bias)

  def forward(self, pooled: torch.Tensor, prior: torch.Tensor | None = None) -> PlanOutput:
    """pooled (B,W), optional prior (B,T,D) added to every hypothesis' mean -> PlanOutput (normalised units)."""
    B = pooled.shape[0]
    h = self.norm(self.blocks(self.inp(pooled)))
    out = self.out(h).float()
    n = self.K * self.T * self.D
    mean = out[:, :n].view(B, self.K, self.T, self.D)
    if prior is not None:
      mean = mean + prior[:, None].to(mean.dtype)
    log_scale = out[:, n:2 * n].view(B, self.K, self.T, self.D)
    return PlanOutput(mean=mean, log_scale=log_scale, logits=out[:, 2 * n:])
