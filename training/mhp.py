"""Multi-hypothesis Laplace loss (openpilot's MHP / the paper's plan loss).

The network predicts K hypotheses of a trajectory, each with a mean and a per-element Laplace scale, and
one logit per hypothesis. Training:

  winner  = argmin_k  masked distance(mean_k, target)          (no gradient through the choice)
  L_MHP   = Laplace NLL(mean_winner, scale_winner; target)  +  CE(logits, winner)

A sample whose mask is all zero (no label, e.g. a yaw-augmented frame) adds nothing to either term.

Laplace NLL per element: log(2 b) + |x - mu| / b with b = exp(log_scale).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(pred_mean, pred_log_scale, logits, target, mask):
  if pred_mean.ndim != 4:
    raise ValueError(f"pred_mean must be (B,K,T,D), got {tuple(pred_mean.shape)}")
  B, K, T, D = pred_mean.shape
  if pred_log_scale.shape != pred_mean.shape:
    raise ValueError(f"pred_log_scale {tuple(pred_log_scale.shape)} != pred_mean {tuple(pred_mean.shape)}")
  if logits.shape != (B, K):
    raise ValueError(f"logits must be (B,K)=({B},{K}), got {tuple(logits.shape)}")
  if target.shape != (B, T, D):
    raise ValueError(f"target must be (B,T,D)=({B},{T},{D}), got {tuple(target.shape)}")
  if mask is not None and mask.shape != (B, T):
    raise ValueError(f"mask must be (B,T)=({B},{T}), got {tuple(mask.shape)}")


def laplace_nll(mean: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                min_log_scale: float = -7.0) -> torch.Tensor:
  """Mean Laplace NLL over valid elements. mean/log_scale/target (..., T, D); mask (..., T) of 0/1 or None."""
  log_scale = log_scale.clamp(min=min_log_scale)
  nll = math.log(2.0) + log_scale + (target - mean).abs() * torch.exp(-log_scale)
  if mask is None:
    return nll.mean()
  m = mask.to(nll.dtype).unsqueeze(-1).expand_as(nll)
  return (nll * m).sum() / m.sum().clamp(min=1.0)


def hypothesis_distance(means: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
  """Masked mean L2 distance of each hypothesis to the target: means (B,K,T,D), target (B,T,D) -> (B,K)."""
  d = (means - target.unsqueeze(1)).norm(dim=-1)  # (B,K,T)
  if mask is None:
    return d.mean(-1)
  m = mask.to(d.dtype).unsqueeze(1)  # (B,1,T)
  return (d * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def best_hypothesis(logits: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
  """At inference: the most probable hypothesis' mean. logits (B,K), means (B,K,T,D) -> (B,T,D)."""
  idx = logits.argmax(dim=-1)
  return means[torch.arange(means.shape[0], device=means.device), idx]


def mhp_loss(pred_mean: torch.Tensor, pred_log_scale: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
             mask: torch.Tensor | None = None, ce_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
  """Winner-takes-all Laplace NLL + cross-entropy toward the winner. Returns (loss, info) where info has
  'nll', 'ce', 'winner' (B,) and 'winner_dist' (B,) (all detached)."""
  _check(pred_mean, pred_log_scale, logits, target, mask)
  B = pred_mean.shape[0]
  with torch.no_grad():
    dist = hypothesis_distance(pred_mean.detach(), target, mask)  # (B,K)
    winner = dist.argmin(dim=-1)  # (B,)
  ar = torch.arange(B, device=pred_mean.device)
  nll = laplace_nll(pred_mean[ar, winner], pred_log_scale[ar, winner], target, mask)
  # a sample with no valid target element has no winner: it must not teach the logits to prefer hypothesis 0
  # (argmin of all-zero distances), which its regression never trained
  ce_each = F.cross_entropy(logits.float(), winner, reduction="none")
  if mask is None:
    ce = ce_each.mean()
  else:
    scored = mask.any(-1).to(ce_each.dtype)
    ce = (ce_each * scored).sum() / scored.sum().clamp(min=1.0)
  loss = nll + ce_weight * ce
  return loss, {"nll": nll.detach(), "ce": ce.detach(), "winner": winner, "winner_dist": dist[ar, winner]}
