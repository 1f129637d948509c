"""Autoregressive sampling (paper §4.3) with and without a KV cache.

For each new frame: start from eps ~ N(0, I) at tau = 1 and take `steps` Euler steps to tau = 0 (see dit.py for
the sign convention: o_{tau_b} = o_{tau_a} + (tau_a - tau_b) * u). Context frames are told tau = 0; a finished
frame can be re-noised to a small level `ctx_noise_tau` before it becomes context (matching the §4.4
augmentation). Then the frame is appended to the history and the window slides.

Cached path: anchors are encoded once; every finished frame is encoded once (at its context noise level)
and its per-layer keys/values are kept for the next `window` frames; each Euler step only runs the tokens
of the frame being generated. Uncached path: every Euler step runs the full model over
[anchors, the whole history, the frame being generated] (exact reference; the mask limits what each frame sees).
Both paths draw random numbers in the same order, so they agree to float precision.
"""
from __future__ import annotations

import torch

from training.worldmodel.dit import WorldModelDiT, euler_step, rf_interpolate


@torch.no_grad()
def rollout(model: WorldModelDiT, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t,
            anchors=None, anchor_pose=None, anchor_t=None, steps: int = 15, ctx_noise_tau: float = 0.0,
            use_cache: bool = True, generator: torch.Generator | None = None, with_plans: bool = True,
            prefill: bool = True, temperature: float = 1.0) -> dict:
  """ctx_latents (B,C,c,h,w) ground-truth context (C >= 1), ctx_transitions (B,C,6), ctx_t (B,C) seconds;
  future_transitions (B,N,6) / future_t (B,N) for the N frames to generate; optional anchors (B,A,c,h,w) +
  anchor_pose (B,A,6) + anchor_t (B,A). Returns {"frames": (B,N,c,h,w),
  "plans": list of N+1 plan-head dicts (plan at the last context frame, then after each generated frame)}.
  `temperature` scales the starting noise eps (1 = the model's own distribution; 0 = one deterministic path)."""
  B, C = ctx_latents.shape[:2]
  N = future_transitions.shape[1]
  if ctx_transitions.shape[:2] != (B, C) or ctx_t.shape != (B, C):
    raise ValueError(f"context poses {tuple(ctx_transitions.shape)} / times {tuple(ctx_t.shape)} do not match "
                     f"context latents {tuple(ctx_latents.shape)}")
  if future_t.shape != (B, N):
    raise ValueError(f"future_t {tuple(future_t.shape)} != (B, N) = {(B, N)}")
  dev, dt = ctx_latents.device, ctx_latents.dtype
  taus = torch.linspace(1.0, 0.0, steps + 1, device=dev)
  has_anchor = anchors is not None and anchors.shape[1] > 0
  shape = ctx_latents.shape[2:]
  plans = []

  if use_cache:
    cache = model.new_cache()
    if prefill:   # anchors + context in one masked pass
      hid = model.prefill(cache, ctx_latents, ctx_transitions, ctx_t, *((anchors, anchor_pose, anchor_t) if has_anchor
                                                                        else ()))
    else:         # one frame at a time (same result; used to test prefill)
      if has_anchor:
        model.cache_anchors(cache, anchors, anchor_pose, anchor_t)
      for i in range(C):
        hid = model.cache_frame(cache, ctx_latents[:, i], ctx_transitions[:, i], ctx_t[:, i])
    if with_plans:
      plans.append(model.plan(hid, ctx_transitions[:, -1], cache.anchor, ctx_t[:, -1]))
  else:
    hist, hist_pose, hist_t = ctx_latents, ctx_transitions, ctx_t

  out = []
  for n in range(N):
    pose_n, t_n = future_transitions[:, n], future_t[:, n]
    x = temperature * torch.randn((B, *shape), generator=generator, device=dev, dtype=dt)
    for s in range(steps):
      tau = taus[s].expand(B)
      if use_cache:
        u = model.velocity_cached(cache, x, pose_n, tau, t_n)
      else:
        frames = torch.cat([hist, x.unsqueeze(1)], 1)
        told = torch.cat([torch.zeros(B, hist.shape[1], device=dev), tau[:, None]], 1)
        u_all, _ = model(frames, torch.cat([hist_pose, pose_n[:, None]], 1), told, torch.cat([hist_t, t_n[:, None]], 1),
                         anchors if has_anchor else None, anchor_pose, anchor_t)
        u = u_all[:, -1]
      x = euler_step(x, u, taus[s], taus[s + 1])
    out.append(x)
    ctx_frame = x
    if ctx_noise_tau > 0:
      noise = torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
      ctx_frame = rf_interpolate(x, noise, torch.full((B,), ctx_noise_tau, device=dev))
    if use_cache:
      hid = model.cache_frame(cache, ctx_frame, pose_n, t_n)
      if with_plans:
        plans.append(model.plan(hid, pose_n, cache.anchor, t_n))
    else:
      hist = torch.cat([hist, ctx_frame[:, None]], 1)
      hist_pose = torch.cat([hist_pose, pose_n[:, None]], 1)
      hist_t = torch.cat([hist_t, t_n[:, None]], 1)
  if not use_cache and with_plans:
    # plan at every "current" frame: the last context frame, then each generated frame (one full pass)
    _, hidden = model(hist, hist_pose, torch.zeros(hist.shape[:2], device=dev), hist_t,
                      anchors if has_anchor else None, anchor_pose, anchor_t)
    anchor = model.encode_anchors(anchors, anchor_pose, anchor_t) if has_anchor else None
    plans = [model.plan(hidden[:, C - 1 + n], hist_pose[:, C - 1 + n], anchor, hist_t[:, C - 1 + n])
             for n in range(N + 1)]
  return {"frames": torch.stack(out, 1), "plans": plans}
