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

CUDA graphs (cached path on a GPU): a frame's Euler steps are small kernels, thousands of them per frame, and
launching them one by one from Python costs more than running them (without graphs a `tiny` cached frame takes as
long on an H200 as on 2 CPU cores, 46 ms). `FrameGraphs` records a frame's whole Euler loop once per shape as a CUDA graph and
replays it for every later frame with new inputs copied into its buffers. The noise is still drawn outside the graph,
in the same order, so graphed and eager sampling agree to float precision.
"""
from __future__ import annotations

import weakref

import torch

from training.worldmodel.dit import WorldModelDiT, euler_step, rf_interpolate


def euler_frame(model: WorldModelDiT, x, prev, pose, t_world, prefixes, taus) -> torch.Tensor:
  """All Euler steps of one frame: x (B,C,h,w) at tau = taus[0] -> the frame at taus[-1] (= 0), with the predecessor
  prev (B,C,h,w), pose (B,6), t_world (B,) and the cached keys/values `prefixes` fixed (DiT.frame_pass).
  prev None: no finished frame yet, so (as in training) the frame is its own predecessor at every step."""
  B = x.shape[0]
  for s in range(len(taus) - 1):
    u = model.velocity_from_prefix(x, x if prev is None else prev, pose, taus[s].expand(B), t_world, prefixes)
    x = euler_step(x, u, taus[s], taus[s + 1])
  return x


class FrameGraphs:
  """CUDA graphs of `euler_frame`, one per input shape (the KV prefix grows until the context window is full, then
  keeps one shape), sharing one memory pool. __call__ copies the inputs into the graph's static buffers, replays it
  and returns a copy of its output. The graphs read the model's parameters in place, so they stay valid while the
  parameters keep their storage; a model moved to another device gets new graphs (see `frame_graphs`)."""

  def __init__(self, model: WorldModelDiT, taus: torch.Tensor):
    self.model = weakref.ref(model)   # weak: frame_graphs keeps this object in a WeakKeyDictionary keyed by the model
    self.taus = taus
    self.pool = torch.cuda.graph_pool_handle()
    self.graphs: dict = {}

  @staticmethod
  def _flat(x, prev, pose, t_world, prefixes) -> list:
    return [x, prev, pose, t_world] + [t for kv in prefixes if kv is not None for t in kv]

  def _capture(self, x, prev, pose, t_world, prefixes):
    static = [t.clone() for t in self._flat(x, prev, pose, t_world, prefixes)]
    it = iter(static[4:])
    s_prefixes = [None if kv is None else (next(it), next(it)) for kv in prefixes]

    model = self.model()

    def run():
      return euler_frame(model, static[0], static[1], static[2], static[3], s_prefixes, self.taus)

    side = torch.cuda.Stream()   # warm up (allocator, cuBLAS handles) off the capture stream, as CUDA graphs require
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
      for _ in range(2):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=self.pool):
      out = run()
    return graph, static, out

  def __call__(self, x, prev, pose, t_world, prefixes) -> torch.Tensor:
    key = (tuple(x.shape), x.dtype, tuple(None if kv is None else tuple(kv[0].shape) for kv in prefixes))
    if key not in self.graphs:
      self.graphs[key] = self._capture(x, prev, pose, t_world, prefixes)
    graph, static, out = self.graphs[key]
    for dst, src in zip(static, self._flat(x, prev, pose, t_world, prefixes)):
      dst.copy_(src)
    graph.replay()
    return out.clone()


_GRAPHS: "weakref.WeakKeyDictionary[WorldModelDiT, dict]" = weakref.WeakKeyDictionary()


def frame_graphs(model: WorldModelDiT, taus: torch.Tensor) -> FrameGraphs:
  """The model's FrameGraphs for this Euler schedule, kept across rollouts (an evaluation's windows reuse one graph);
  rebuilt when the parameters moved (new storage) or the schedule changed."""
  per_model = _GRAPHS.setdefault(model, {})
  key = (next(model.parameters()).data_ptr(), tuple(taus.tolist()), str(taus.device))
  if key not in per_model:
    per_model.clear()
    per_model[key] = FrameGraphs(model, taus)
  return per_model[key]


@torch.no_grad()
def rollout(model: WorldModelDiT, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t,
            anchors=None, anchor_pose=None, anchor_t=None, steps: int = 15, ctx_noise_tau: float = 0.0,
            use_cache: bool = True, generator: torch.Generator | None = None, with_plans: bool = True,
            prefill: bool = True, temperature: float = 1.0, cuda_graph: bool | None = None) -> dict:
  """ctx_latents (B,C,c,h,w) ground-truth context (C >= 1), ctx_transitions (B,C,6), ctx_t (B,C) seconds;
  future_transitions (B,N,6) / future_t (B,N) for the N frames to generate; optional anchors (B,A,c,h,w) +
  anchor_pose (B,A,6) + anchor_t (B,A). Returns {"frames": (B,N,c,h,w),
  "plans": list of N+1 PlanOutputs (plan at the last context frame, then after each generated frame)}.
  `temperature` scales the starting noise eps (1 = the model's own distribution; 0 = one deterministic path).
  cuda_graph: replay each frame's Euler steps as a CUDA graph (cached path only; None = on a CUDA device)."""
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
  graphs = None
  if use_cache and (dev.type == "cuda" if cuda_graph is None else cuda_graph):
    if dev.type != "cuda":
      raise ValueError(f"cuda_graph=True needs a CUDA device, not {dev}")
    graphs = frame_graphs(model, taus)

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
    if use_cache:   # the predecessor and the cached keys/values are the same for all of this frame's Euler steps
      prev, prefixes = model.frame_predecessor(cache, x, pose_n), cache.prefixes()
      if cache.last_frame is not None and graphs is not None:
        x = graphs(x, prev, pose_n, t_n, prefixes)
      else:   # eager (also the very first frame of an empty cache, whose predecessor is the noisy frame itself)
        x = euler_frame(model, x, None if cache.last_frame is None else prev, pose_n, t_n, prefixes, taus)
    else:           # the full model over [anchors, history, this frame] at every step
      for s in range(steps):
        tau = taus[s].expand(B)
        frames = torch.cat([hist, x.unsqueeze(1)], 1)
        told = torch.cat([torch.zeros(B, hist.shape[1], device=dev), tau[:, None]], 1)
        u_all = model(frames, torch.cat([hist_pose, pose_n[:, None]], 1), told, torch.cat([hist_t, t_n[:, None]], 1),
                      anchors if has_anchor else None, anchor_pose, anchor_t).velocity
        x = euler_step(x, u_all[:, -1], taus[s], taus[s + 1])
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
    hidden = model(hist, hist_pose, torch.zeros(hist.shape[:2], device=dev), hist_t,
                   anchors if has_anchor else None, anchor_pose, anchor_t).hidden
    anchor = model.encode_anchors(anchors, anchor_pose, anchor_t) if has_anchor else None
    plans = [model.plan(hidden[:, C - 1 + n], hist_pose[:, C - 1 + n], anchor, hist_t[:, C - 1 + n])
             for n in range(N + 1)]
  return {"frames": torch.stack(out, 1), "plans": plans}
