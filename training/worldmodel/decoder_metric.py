"""The latent error the way the frozen decoder turns it into pixel error (our addition; `decoder_weighted_loss`).

A world model is scored on decoded pixels, but the rectified-flow loss counts every latent value alike. A small
VAE's decoder is far from that: measured on our `tiny` codec (docs/worldmodel.md), a latent error in channel 2 costs
4.7x the pixels of the same error in channel 0, and an error that is smooth over 4x4 latent cells costs 2.8x a white
one (2.0x for the blocky 4x4 means this metric uses; a constant offset 4x). So the model spends its capacity where
it costs the fewest pixels.

The metric keeps the loss a quadratic form, so its minimiser is still the conditional mean of the velocity (the
rectified-flow target) and only a finite model's trade-offs move:

    m(r) = [ sum_c w_c mean(r_c^2) + beta sum_c w_c mean(lowpass(r_c)^2) ] / (C (1 + beta / p^2))

w_c (mean 1) and beta are measured once from the decoder (`measure`): w_c from white noise in one channel at a
time; beta so that the metric's ratio between block-smooth (p x p average-pooled) and white noise equals the
decoder's. A white residual scores its plain mean square (the denominator), so losses stay comparable in size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lowpass(r: torch.Tensor, pool: int) -> torch.Tensor:
  """(...,C,h,w) -> its p x p block means, repeated over each block (h, w divisible by p)."""
  shape = r.shape
  x = r.reshape(-1, *shape[-3:])
  x = F.interpolate(F.avg_pool2d(x, pool), scale_factor=pool, mode="nearest")
  return x.reshape(shape)


def weighted_mse(r: torch.Tensor, channel_weights, lowpass_weight: float, pool: int) -> torch.Tensor:
  """r (...,C,h,w) residual -> the decoder-weighted mean square m(r) above (a scalar)."""
  C = r.shape[-3]
  w = torch.as_tensor(channel_weights, dtype=r.dtype, device=r.device)
  if w.numel() != C:
    raise ValueError(f"{w.numel()} channel weights for {C} latent channels")
  w = w.view(C, 1, 1)
  m = (w * r.pow(2)).mean(dim=(-2, -1)).sum(-1).mean()
  if lowpass_weight > 0:
    m = m + lowpass_weight * (w * lowpass(r, pool).pow(2)).mean(dim=(-2, -1)).sum(-1).mean()
  return m / (C * (1 + lowpass_weight / pool ** 2))


@torch.no_grad()
def measure(decode, latents: torch.Tensor, pool: int = 4, rms: float = 0.1, seed: int = 0) -> dict:
  """decode: (N,C,h,w) latents -> images; latents: (N,C,h,w) real latents to linearise around.
  Returns {"channel_weights": [C] (mean 1), "lowpass_weight": beta, "pixel_per_latent": the measured costs}."""
  g = torch.Generator().manual_seed(seed)
  z = latents.float()
  base = decode(z).float()

  def cost(noise):   # pixel mean square per latent mean square, around z
    noise = noise / noise.pow(2).mean().sqrt() * rms
    return float((decode(z + noise).float() - base).pow(2).mean() / noise.pow(2).mean())

  C = z.shape[1]
  white = torch.randn(z.shape, generator=g)
  per_ch = []
  for c in range(C):
    only = torch.zeros_like(white)
    only[:, c] = white[:, c]
    per_ch.append(cost(only))
  c_white = cost(white)
  c_low = cost(lowpass(torch.randn(z.shape, generator=g), pool))
  if not (c_white > 0 and min(per_ch) > 0):
    raise ValueError("decoder does not respond to latent changes: cannot measure its pixel metric")
  rho = c_low / c_white                               # decoder: smooth vs white, per unit latent error
  # the metric gives (1 + beta) / (1 + beta / p^2) for that ratio; solve for beta (kept >= 0 and finite)
  p2 = pool ** 2
  beta = 0.0 if rho <= 1 else min(100.0, (rho - 1) / max(1 - rho / p2, 1e-2))
  mean = sum(per_ch) / C
  return {"channel_weights": [c / mean for c in per_ch], "lowpass_weight": beta,
          "pixel_per_latent": {"white": c_white, "lowpass": c_low, "per_channel": per_ch}}
