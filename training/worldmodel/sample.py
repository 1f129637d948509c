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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SampleOptions:
  """How `rollout` samples.
  steps: Euler steps per frame. temperature: scale of each frame's starting noise eps (1 = the model's own
  distribution; 0 = one deterministic path). ctx_noise_tau: re-noise each finished frame to this level before it
  becomes context (0 = clean). with_plans: also run the Plan Head at the last context frame and after each frame.
  use_cache: the KV-cache path (False: the uncached reference). prefill: the cached path encodes anchors + context in
  one masked pass (False: one frame at a time; the same result, used to test prefill). cuda_graph: replay each frame's
  Euler steps as a CUDA graph (cached path only; None = on a CUDA device)."""
  steps: int = 15
  temperature: float = 1.0
  ctx_noise_tau: float = 0.0
  with_plans: bool = True
  use_cache: bool = True
  prefill: bool = True
  cuda_graph: bool | None = None


@dataclass
class Anchors:
  """Future anchor frames a rollout is conditioned on: latents (B,A,c,h,w), poses (B,A,6), world times (B,A) s."""
  latents: torch.Tensor
  pose: torch.Tensor
  t: torch.Tensor

  def args(self) -> tuple:
    """(anchors, anchor_pose, anchor_t), in the order the model's methods take them."""
    return self.latents, self.pose, self.t


@torch.no_grad()
def rollout(model: WorldModelDiT, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t,
            anchors: Anchors | None = None, opts: SampleOptions = SampleOptions(),
            generator: torch.Generator | None = None, predecessors: torch.Tensor | None = None) -> dict:
  """ctx_latents (B,C,c,h,w) ground-truth context (C >= 1), ctx_transitions (B,C,6), ctx_t (B,C) seconds;
  future_transitions (B,N,6) / future_t (B,N) for the N frames to generate; optional anchors. predecessors
  (B,N,c,h,w): a re-anchored rollout, frame n generated from predecessors[:, n] (DiT.log_predecessor: a logged frame
  re-projected to the frame's pose) instead of from the model's own frame n-1; cached path only. Returns
  {"frames": (B,N,c,h,w), "plans": list of N+1 PlanOutputs (plan at the last context frame, then after each generated
  frame; empty without opts.with_plans)}."""
  B, C = ctx_latents.shape[:2]
  N = future_transitions.shape[1]
  if predecessors is not None:
    if predecessors.shape != (B, N, *ctx_latents.shape[2:]):
      raise ValueError(f"predecessors {tuple(predecessors.shape)} != (B, N, c, h, w) = "
                       f"{(B, N, *ctx_latents.shape[2:])}")
    if not opts.use_cache:
      raise ValueError("predecessors: re-anchored rollouts run on the cached path (use_cache=True)")
  if ctx_transitions.shape[:2] != (B, C) or ctx_t.shape != (B, C):
    raise ValueError(f"context poses {tuple(ctx_transitions.shape)} / times {tuple(ctx_t.shape)} do not match "
                     f"context latents {tuple(ctx_latents.shape)}")
  if future_t.shape != (B, N):
    raise ValueError(f"future_t {tuple(future_t.shape)} != (B, N) = {(B, N)}")
  if anchors is not None and anchors.latents.shape[1] == 0:
    anchors = None
  taus = torch.linspace(1.0, 0.0, opts.steps + 1, device=ctx_latents.device)
  sample = _rollout_cached if opts.use_cache else _rollout_uncached
  if predecessors is not None:
    return _rollout_cached(model, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t, anchors, opts,
                           generator, taus, predecessors)
  return sample(model, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t, anchors, opts, generator,
                taus)


def _noise(shape, generator, like: torch.Tensor) -> torch.Tensor:
  return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _as_context(x, opts: SampleOptions, generator, like: torch.Tensor) -> torch.Tensor:
  """A finished frame (B,c,h,w) as the later frames' context: re-noised to opts.ctx_noise_tau (as in training)."""
  if opts.ctx_noise_tau <= 0:
    return x
  tau = torch.full((x.shape[0],), opts.ctx_noise_tau, device=like.device)
  return rf_interpolate(x, _noise(x.shape, generator, like), tau)


def _rollout_cached(model, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t, anchors, opts, generator,
                    taus, predecessors=None) -> dict:
  """Anchors + context encoded once; each finished frame encoded once; Euler steps run only the new frame's tokens.
  predecessors (B,N,c,h,w): each frame's predecessor given (re-anchored rollout, see `rollout`)."""
  dev = ctx_latents.device
  graphs = None
  if (dev.type == "cuda") if opts.cuda_graph is None else opts.cuda_graph:
    if dev.type != "cuda":
      raise ValueError(f"cuda_graph=True needs a CUDA device, not {dev}")
    graphs = frame_graphs(model, taus)
  cache = model.new_cache()
  if opts.prefill:   # anchors + context in one masked pass
    hid = model.prefill(cache, ctx_latents, ctx_transitions, ctx_t, *(anchors.args() if anchors else ()))
  else:              # one frame at a time
    if anchors is not None:
      model.cache_anchors(cache, *anchors.args())
    for i in range(ctx_latents.shape[1]):
      hid = model.cache_frame(cache, ctx_latents[:, i], ctx_transitions[:, i], ctx_t[:, i])
  plans = [model.plan(hid, ctx_transitions[:, -1], cache.anchor, ctx_t[:, -1])] if opts.with_plans else []
  out = []
  for n in range(future_transitions.shape[1]):
    pose_n, t_n = future_transitions[:, n], future_t[:, n]
    x = opts.temperature * _noise(ctx_latents[:, 0].shape, generator, ctx_latents)
    # the predecessor and the cached keys/values are the same for all of this frame's Euler steps
    given = predecessors is not None
    prev = predecessors[:, n] if given else model.frame_predecessor(cache, x, pose_n)
    prefixes = cache.prefixes()
    if cache.last_frame is not None and graphs is not None:
      x = graphs(x, prev, pose_n, t_n, prefixes)
    else:   # eager (also the very first frame of an empty cache, whose predecessor is the noisy frame itself)
      x = euler_frame(model, x, None if cache.last_frame is None and not given else prev, pose_n, t_n, prefixes, taus)
    out.append(x)
    hid = model.cache_frame(cache, _as_context(x, opts, generator, ctx_latents), pose_n, t_n,
                            prev=prev if given else None)
    if opts.with_plans:
      plans.append(model.plan(hid, pose_n, cache.anchor, t_n))
  return {"frames": torch.stack(out, 1), "plans": plans}


def _rollout_uncached(model, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t, anchors, opts,
                      generator, taus) -> dict:
  """The exact reference: the full model over [anchors, the whole history, the frame being generated] at every step."""
  B, C = ctx_latents.shape[:2]
  N, dev = future_transitions.shape[1], ctx_latents.device
  anchor_args = anchors.args() if anchors is not None else (None, None, None)
  hist, hist_pose, hist_t = ctx_latents, ctx_transitions, ctx_t
  out = []
  for n in range(N):
    pose_n, t_n = future_transitions[:, n], future_t[:, n]
    x = opts.temperature * _noise(ctx_latents[:, 0].shape, generator, ctx_latents)
    for s in range(opts.steps):
      frames = torch.cat([hist, x.unsqueeze(1)], 1)
      told = torch.cat([torch.zeros(B, hist.shape[1], device=dev), taus[s].expand(B)[:, None]], 1)
      u_all = model(frames, torch.cat([hist_pose, pose_n[:, None]], 1), told, torch.cat([hist_t, t_n[:, None]], 1),
                    *anchor_args).velocity
      x = euler_step(x, u_all[:, -1], taus[s], taus[s + 1])
    out.append(x)
    hist = torch.cat([hist, _as_context(x, opts, generator, ctx_latents)[:, None]], 1)
    hist_pose = torch.cat([hist_pose, pose_n[:, None]], 1)
    hist_t = torch.cat([hist_t, t_n[:, None]], 1)
  plans = []
  if opts.with_plans:   # plan at every "current" frame: the last context frame, then each generated one (one pass)
    hidden = model(hist, hist_pose, torch.zeros(hist.shape[:2], device=dev), hist_t, *anchor_args).hidden
    anchor = model.encode_anchors(*anchor_args) if anchors is not None else None
    plans = [model.plan(hidden[:, C - 1 + n], hist_pose[:, C - 1 + n], anchor, hist_t[:, C - 1 + n])
             for n in range(N + 1)]
  return {"frames": torch.stack(out, 1), "plans": plans}
