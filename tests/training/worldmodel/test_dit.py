from dataclasses import replace

import pytest
import torch

from common.modelconstants import T_IDXS
from training.worldmodel.dit import (
  LOG_PRIOR_STD_RANGE,
  PRESETS,
  DiTConfig,
  DiTOutput,
  OldConfigError,
  WarpDenoiserDiT,
  WindowBatch,
  WorldModelDiT,
  build_model,
  count_params,
  euler_step,
  frame_mask,
  get_config,
  rectified_flow_loss,
  rf_interpolate,
  rf_target,
)
from training.worldmodel.plan_head import constant_velocity_plan, denormalize_plan, normalize_plan
from training.worldmodel.sample import Anchors, SampleOptions, rollout

torch.set_num_threads(1)


def small_cfg(**kw):
  d = dict(depth=2, width=64, heads=4, context_frames=3, anchor_frames=2, plan_hidden=64, plan_blocks=1)
  d.update(kw)
  return get_config("tiny", **d)


def randomized(cfg, seed=0):
  """A model whose zero-initialised (adaLN-Zero) layers are randomised, so every path carries signal."""
  torch.manual_seed(seed)
  m = build_model(cfg).eval()
  with torch.no_grad():
    for p in m.parameters():
      p.normal_(0, 0.05)
  return m


def inputs(cfg, B=2, F=4, A=2, seed=0):
  g = torch.Generator().manual_seed(seed)
  h, w = cfg.latent_h, cfg.latent_w
  return dict(frames=torch.randn(B, F, 4, h, w, generator=g), pose=torch.randn(B, F, 6, generator=g),
              tau=torch.rand(B, F, generator=g), t_world=torch.arange(F).float().repeat(B, 1) * 0.2 + 10,
              anchors=torch.randn(B, A, 4, h, w, generator=g), anchor_pose=torch.randn(B, A, 6, generator=g),
              anchor_t=torch.tensor([15.0, 15.2]).repeat(B, 1))


def test_frame_mask_layout():
  m = frame_mask(2, 4, window=2)[0]
  # anchors (0,1) see only anchors
  assert m[0].tolist() == [True, True, False, False, False, False]
  # ordinary frame 3 (index 5): anchors + frames 1..3 (itself + 2 previous)
  assert m[5].tolist() == [True, True, False, True, True, True]
  assert m[2].tolist() == [True, True, True, False, False, False]
  dropped = frame_mask(2, 4, window=3, anchor_valid=torch.tensor([True, False]))
  assert dropped[0, 3, :2].all() and not dropped[1, 3, :2].any() and dropped[1, 0, :2].all()


def test_attention_is_frame_causal_and_anchors_ignore_frames():
  cfg = small_cfg()
  m = randomized(cfg)
  x = inputs(cfg)
  out = m(**x)
  assert isinstance(out, DiTOutput) and out.plan is None
  u, hid = out.velocity, out.hidden
  x2 = dict(x)
  x2["frames"] = x["frames"].clone()
  x2["frames"][:, 2] += 1.0                     # change frame 2
  hid2 = m(**x2).hidden
  assert torch.allclose(hid[:, :2], hid2[:, :2], atol=1e-6)       # earlier frames unaffected
  assert not torch.allclose(hid[:, 2:], hid2[:, 2:], atol=1e-3)   # it and later frames affected
  x3 = dict(x)
  x3["anchors"] = x["anchors"] + 1.0
  u3 = m(**x3).velocity
  assert not torch.allclose(u, u3, atol=1e-3)                     # frames attend to anchors


def test_dropped_anchor_equals_no_anchor():
  cfg = small_cfg()
  m = randomized(cfg)
  x = inputs(cfg)
  u_drop = m(**x, anchor_valid=torch.tensor([False, True])).velocity
  u_none = m(x["frames"], x["pose"], x["tau"], x["t_world"]).velocity
  u_with = m(**x).velocity
  assert torch.allclose(u_drop[0], u_none[0], atol=1e-5)
  assert torch.allclose(u_drop[1], u_with[1], atol=1e-5)


def test_adaln_zero_init_predicts_zero_output():
  cfg = small_cfg(output="velocity")
  m = build_model(cfg)
  assert type(m) is WorldModelDiT
  u = m(**inputs(cfg)).velocity
  assert u.abs().max().item() == 0.0                  # the velocity output starts at 0 (the denoiser's at prev)
  assert all(b.adaLN[-1].weight.abs().sum() == 0 for b in m.blocks)


def test_conditioning_reaches_output():
  cfg = small_cfg()
  m = randomized(cfg)
  x = inputs(cfg)
  u = m(**x).velocity
  for key in ("pose", "tau", "t_world"):
    x2 = dict(x)
    x2[key] = x[key] + 0.5
    assert not torch.allclose(m(**x2).velocity[:, -1], u[:, -1], atol=1e-4), key


def test_rectified_flow_sign_convention():
  """o_tau = tau*eps + (1-tau)*o, target u = o - eps, Euler x += (tau_a - tau_b) u. With the exact velocity an
  Euler step from any tau to 0 lands on o; the opposite sign would land on 2*x - o."""
  g = torch.Generator().manual_seed(0)
  o, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
  tau = torch.tensor([1.0, 0.7, 0.2])
  x = rf_interpolate(o, eps, tau)
  assert torch.allclose(x[0], eps[0]) and torch.allclose(rf_interpolate(o, eps, torch.zeros(3)), o)
  u = rf_target(o, eps)
  assert torch.allclose(u, o - eps)
  out = euler_step(x, u, tau.view(3, 1, 1, 1), 0.0)
  assert torch.allclose(out, o, atol=1e-6)


def test_denoiser_output_is_exact_and_starts_at_the_previous_frame():
  cfg = small_cfg()
  m = build_model(cfg)
  assert type(m) is WarpDenoiserDiT
  g = torch.Generator().manual_seed(1)
  o, eps, prev = (torch.randn(4, 4, 6, 8, generator=g) for _ in range(3))
  z = torch.zeros_like(o)          # log prior-std scale 0: the prior std is delta_std
  tau = torch.tensor([1.0, 0.6, 0.1, 0.01])
  x = rf_interpolate(o, eps, tau)
  # the output that encodes o_hat = o gives exactly the rectified-flow target u = o - eps
  t = tau.view(4, 1, 1, 1)
  s = cfg.delta_std
  D = (1 - t) ** 2 * s * s + t * t
  out = (o - prev - (1 - t) * s * s / D * (x - (1 - t) * prev)) / (s * t / D.sqrt())
  assert torch.allclose(m.velocity_from_output(out, x, prev, tau, z), rf_target(o, eps), atol=1e-4)
  # output 0: one Euler step from pure noise lands on the prior mean (the previous frame: copy-last)
  u0 = m.velocity_from_output(z, eps, prev, torch.ones(4), z)
  assert torch.allclose(euler_step(eps, u0, 1.0, 0.0), prev, atol=1e-5)
  # clean frames (tau = 0) have zero velocity, finite
  assert m.velocity_from_output(torch.randn_like(o), o, prev, torch.zeros(4), z).abs().max().item() < 1e-3
  with pytest.raises(ValueError, match="output"):
    small_cfg(output="eps")


def test_learned_prior_std_is_exact_per_value_and_gates_onto_the_previous_frame():
  cfg = small_cfg()
  m = build_model(cfg)
  g = torch.Generator().manual_seed(2)
  o, eps, prev, log_s = (torch.randn(4, 4, 6, 8, generator=g) for _ in range(4))
  tau = torch.tensor([1.0, 0.6, 0.1, 0.01])
  x = rf_interpolate(o, eps, tau)
  t = tau.view(4, 1, 1, 1)
  s = cfg.delta_std * torch.exp(LOG_PRIOR_STD_RANGE * torch.tanh(log_s / LOG_PRIOR_STD_RANGE))   # one std per value
  D = (1 - t) ** 2 * s * s + t * t
  out = (o - prev - (1 - t) * s * s / D * (x - (1 - t) * prev)) / (s * t / D.sqrt())
  assert torch.allclose(m.velocity_from_output(out, x, prev, tau, log_s), rf_target(o, eps), atol=1e-3)
  z = torch.zeros_like(o)
  # the smallest prior std: unless x_tau is nearly clean (its noise std tau near the prior std 0.025), the clean-frame
  # estimate is the previous frame whatever x_tau holds
  lo = torch.full_like(o, -100.0)
  o_hat = (x + t * m.velocity_from_output(z, x, prev, tau, lo))[:2]   # x_tau + tau u = o_hat; tau = 1 and 0.6
  assert (o_hat - prev[:2]).abs().max().item() < 0.01 * (x - prev).abs().max().item()


def test_learned_prior_std_trains_its_head():
  """The log-std half of the final layer gets gradient from the rectified-flow loss (it starts at zero)."""
  cfg = small_cfg()
  m = build_model(cfg)
  torch.manual_seed(0)
  with torch.no_grad():   # open the adaLN-Zero gates so the final layer sees the tokens
    m.final.adaLN[-1].weight.normal_(std=0.02)
  x = inputs(cfg, F=cfg.context_frames + 1)
  u = m(x["frames"], x["pose"], x["tau"], x["t_world"]).velocity
  target = torch.randn_like(u)
  ((u - target) ** 2).mean().backward()
  half = m.final.linear.weight.grad.shape[0] // 2
  assert m.final.linear.weight.grad[:half].abs().sum() > 0      # F
  assert m.final.linear.weight.grad[half:].abs().sum() > 0      # log prior std


def test_denoiser_model_at_init_is_the_previous_frame_prior():
  """adaLN-Zero + zero final layer: the untrained 'denoiser' model is the exact flow of o ~ N(warped prev,
  delta_std^2). Standing still (zero transitions: the warp is the identity) its one-step (conditional-mean) rollout
  is copy-last; its 15-step samples scatter around the last frame by delta_std."""
  cfg = small_cfg()
  m = build_model(cfg).eval()
  x = inputs(cfg, F=3)
  still = torch.zeros(2, 2, 6)
  g = torch.Generator().manual_seed(0)
  r = rollout(m, x["frames"], x["pose"], x["t_world"], still, x["t_world"][:, :2] + 1.0,
              opts=SampleOptions(steps=1, with_plans=False), generator=g)
  for n in range(2):
    assert torch.allclose(r["frames"][:, n], x["frames"][:, -1], atol=1e-4)
  r = rollout(m, x["frames"], x["pose"], x["t_world"], still[:, :1], x["t_world"][:, :1] + 1.0,
              opts=SampleOptions(steps=15, with_plans=False), generator=g)
  d = r["frames"][:, 0] - x["frames"][:, -1]
  assert abs(d.mean().item()) < 0.05 and abs(d.std().item() - cfg.delta_std) < 0.05


def test_sampling_temperature_scales_the_spread_around_the_prior():
  """For the untrained denoiser (the flow of o ~ N(prev, s^2)) the ODE maps eps to prev + s * eps, so starting from
  T * eps gives samples whose spread around the last frame is T * s. T = 0 is one deterministic path: the same
  frames for any noise, equal to the conditional mean (copy-last here, standing still). T = 1 is the default sampler,
  draw for draw."""
  cfg = small_cfg()
  m = build_model(cfg).eval()
  x = inputs(cfg, F=3)
  args = (m, x["frames"], x["pose"], x["t_world"], torch.zeros(2, 2, 6), x["t_world"][:, :2] + 1.0)

  def frames(seed, **kw):
    opts = SampleOptions(steps=15, with_plans=False, **kw)
    return rollout(*args, opts=opts, generator=torch.Generator().manual_seed(seed))["frames"]

  # a Gaussian's flow is linear in x at every tau, and so is each Euler step: the same eps at temperature T lands
  # exactly T times as far from the prior mean as at T = 1 (about s away: Euler's discretisation, not the model)
  d1 = frames(0)[:, 0] - x["frames"][:, -1]
  assert abs(d1.std().item() - cfg.delta_std) < 0.15 * cfg.delta_std
  for T in (0.5, 0.25):
    dT = frames(0, temperature=T)[:, 0] - x["frames"][:, -1]
    assert torch.allclose(dT, T * d1, atol=1e-5)
  z0, z1 = frames(0, temperature=0.0), frames(1, temperature=0.0)
  assert torch.equal(z0, z1)
  assert torch.allclose(z0[:, 0], x["frames"][:, -1], atol=1e-4)
  assert torch.equal(frames(3, temperature=1.0), frames(3))


def test_denoiser_model_at_init_predicts_the_warped_last_frame():
  """The untrained denoiser's one-step rollout is the last frame re-projected by the new frame's transition
  (pose_warp.warp_previous), so a left and a right turn already give different frames."""
  from training.worldmodel.pose_warp import warp_previous
  cfg = small_cfg()
  m = build_model(cfg).eval()
  x = inputs(cfg, F=3)
  kw = dict(generator=torch.Generator().manual_seed(0), opts=SampleOptions(steps=1, with_plans=False))
  turn = torch.zeros(2, 1, 6)
  turn[:, 0, 0], turn[:, 0, 5] = 4.0, 0.04
  r = rollout(m, x["frames"], x["pose"], x["t_world"], turn, x["t_world"][:, :1] + 1.0, **kw)
  want = warp_previous(x["frames"][:, -1], turn[:, 0], cfg.frame_hw, mode=cfg.warp_mode)
  assert torch.allclose(r["frames"][:, 0], want, atol=1e-4)
  assert not torch.allclose(want, x["frames"][:, -1], atol=0.1)


def test_re_anchored_rollout_generates_each_frame_from_its_given_predecessor():
  """predecessors: frame n is generated from predecessors[:, n] (a logged frame re-projected to the frame's pose,
  DiT.log_predecessor), not from the model's own frame n-1. The untrained denoiser's deterministic rollout is its
  predecessor, so each frame is exactly the given one, the later ones too; the paper's rollout re-projects its own
  frames instead. Bad shapes, the uncached path and a model that does not re-project are refused."""
  cfg = small_cfg()
  m = build_model(cfg).eval()
  x = inputs(cfg, F=3)
  turn = torch.zeros(2, 3, 6)
  turn[..., 0], turn[..., 1] = 4.0, 0.3                     # forward and 0.3 m right every frame
  logged = torch.randn(2, 3, 4, cfg.latent_h, cfg.latent_w)
  preds = torch.stack([m.log_predecessor(logged[:, n], turn[:, n]) for n in range(3)], 1)
  opts = SampleOptions(steps=4, temperature=0.0, with_plans=False)
  args = (m, x["frames"], x["pose"], x["t_world"], turn, x["t_world"][:, :3] + 1.0)
  r = rollout(*args, opts=opts, predecessors=preds)["frames"]
  assert torch.allclose(r, preds, atol=1e-4)
  own = rollout(*args, opts=opts)["frames"]
  assert not torch.allclose(own[:, 1:], preds[:, 1:], atol=0.1)
  from training.worldmodel.pose_warp import warp_previous
  assert torch.allclose(preds[:, 0], warp_previous(logged[:, 0], turn[:, 0], cfg.frame_hw, mode=cfg.warp_mode),
                        atol=1e-6)
  with pytest.raises(ValueError, match="predecessors"):
    rollout(*args, opts=opts, predecessors=preds[:, :2])
  with pytest.raises(ValueError, match="cached path"):
    rollout(*args, opts=replace(opts, use_cache=False), predecessors=preds)
  with pytest.raises(ValueError, match="output='denoiser'"):
    build_model(small_cfg(output="velocity")).log_predecessor(logged[:, 0], turn[:, 0])


class OracleModel(WorldModelDiT):
  """Predicts the exact rectified-flow velocity toward a fixed target frame: u = (o - x_tau) / tau."""

  def __init__(self, cfg, target):
    super().__init__(cfg)
    self.target = target

  def velocity_from_prefix(self, x_tau, prev, pose, tau, t_world, prefixes):
    return (self.target - x_tau) / tau.view(-1, 1, 1, 1)


def test_sampler_reaches_target_with_oracle_velocity():
  cfg = small_cfg(output="velocity")
  target = torch.randn(2, 4, cfg.latent_h, cfg.latent_w)
  m = OracleModel(cfg, target).eval()
  ctx = torch.randn(2, 3, 4, cfg.latent_h, cfg.latent_w)
  r = rollout(m, ctx, torch.zeros(2, 3, 6), torch.zeros(2, 3), torch.zeros(2, 2, 6), torch.ones(2, 2),
              opts=SampleOptions(steps=15, with_plans=False), generator=torch.Generator().manual_seed(0))
  assert torch.allclose(r["frames"][:, 0], target, atol=1e-5)


@pytest.mark.parametrize("with_anchor,output", [(False, "denoiser"), (True, "denoiser"), (True, "velocity")])
def test_kv_cache_matches_uncached(with_anchor, output):
  cfg = small_cfg(output=output)
  m = randomized(cfg, seed=1)
  B, h, w = 2, cfg.latent_h, cfg.latent_w
  g = torch.Generator().manual_seed(3)
  ctx = torch.randn(B, 3, 4, h, w, generator=g)
  kw = dict(ctx_transitions=torch.randn(B, 3, 6, generator=g), ctx_t=torch.arange(3.0).repeat(B, 1) * 0.2,
            future_transitions=torch.randn(B, 6, 6, generator=g), future_t=0.6 + torch.arange(6.0).repeat(B, 1) * 0.2)
  if with_anchor:
    kw.update(anchors=Anchors(torch.randn(B, 2, 4, h, w, generator=g), torch.randn(B, 2, 6, generator=g),
                              torch.tensor([[4.0, 4.2]]).repeat(B, 1)))

  def run(**opts):
    return rollout(m, ctx, opts=SampleOptions(steps=4, ctx_noise_tau=0.1, **opts),
                   generator=torch.Generator().manual_seed(7), **kw)
  # 6 generated frames with window 3: the cache slides twice over
  a, b, c = run(use_cache=True), run(use_cache=False), run(use_cache=True, prefill=False)
  assert (a["frames"] - c["frames"]).abs().max().item() < 1e-4   # batched prefill == frame-by-frame caching
  assert a["frames"].shape == (B, 6, 4, h, w)
  assert a["frames"].abs().mean() > 0.1
  assert (a["frames"] - b["frames"]).abs().max().item() < 1e-4
  assert len(a["plans"]) == 7
  for pa, pb in zip(a["plans"], b["plans"]):
    assert (pa.mean - pb.mean).abs().max().item() < 1e-4


def _batch(cfg, B=3, anchor_valid=None):
  g = torch.Generator().manual_seed(5)
  F, A, h, w = cfg.context_frames + 1, cfg.anchor_frames, cfg.latent_h, cfg.latent_w
  return WindowBatch(latents=torch.randn(B, F, 4, h, w, generator=g), transitions=torch.randn(B, F, 6, generator=g),
                     t_world=torch.arange(F).float().repeat(B, 1) * 0.2, anchors=torch.randn(B, A, 4, h, w, generator=g),
                     anchor_pose=torch.randn(B, A, 6, generator=g), anchor_t=torch.full((B, A), 5.0),
                     anchor_valid=torch.ones(B, dtype=torch.bool) if anchor_valid is None else anchor_valid,
                     plan=torch.randn(B, 33, 15, generator=g), plan_mask=torch.ones(B, 33, dtype=torch.bool))


class Spy(torch.nn.Module):
  """Wraps a model, records its inputs and can corrupt the context frames' velocity outputs."""

  def __init__(self, inner, corrupt_context=False):
    super().__init__()
    self.inner, self.cfg, self.corrupt, self.calls = inner, inner.cfg, corrupt_context, []

  def forward(self, frames, pose, tau, t_world, anchors=None, anchor_pose=None, anchor_t=None, anchor_valid=None,
              plan_index=None):
    self.calls.append(dict(frames=frames.clone(), tau=tau.clone(), anchors=anchors.clone(), pose=pose.clone(),
                           t_world=t_world.clone(), plan_index=plan_index))
    out = self.inner(frames, pose, tau, t_world, anchors, anchor_pose, anchor_t, anchor_valid, plan_index=plan_index)
    if self.corrupt:
      out = replace(out, velocity=torch.cat([out.velocity[:, :-1] + 1000.0, out.velocity[:, -1:]], 1))
    return out


def _loss_inputs(cfg):
  """(batch, what rectified_flow_loss passed to the model) for a randomised model of cfg."""
  batch = _batch(cfg)
  spy = Spy(randomized(cfg))
  rectified_flow_loss(spy, batch, generator=torch.Generator().manual_seed(0))
  return batch, spy.calls[0]


def test_noise_augmentation_and_loss_on_generated_frame_only():
  cfg = small_cfg(ctx_noise_prob=1.0)
  batch, call = _loss_inputs(cfg)
  ctx_in, ctx_clean = call["frames"][:, :-1], batch.latents[:, :-1]
  assert not torch.allclose(ctx_in, ctx_clean, atol=1e-3)          # context was noised
  assert (call["tau"][:, :-1] == 0).all()                          # ... but the model is told tau = 0
  assert (call["tau"][:, -1] > 0).all() and (call["tau"][:, -1] < 1).all()
  assert torch.equal(call["anchors"], batch.anchors)               # anchors never noised
  assert torch.equal(call["pose"], batch.transitions) and torch.equal(call["t_world"], batch.t_world)
  assert call["plan_index"] == cfg.context_frames - 1              # the plan of "now", the last context frame
  # per-frame levels: LogitNormal(0, 0.25) -> tau in a band around 0.5, differing between frames
  cfg0 = small_cfg(ctx_noise_prob=0.0)
  spy0 = Spy(randomized(cfg0))
  rectified_flow_loss(spy0, batch, generator=torch.Generator().manual_seed(0))
  assert torch.equal(spy0.calls[0]["frames"][:, :-1], ctx_clean)
  # the loss ignores what the model predicts for context frames
  l1, _ = rectified_flow_loss(Spy(randomized(cfg0), False), batch, generator=torch.Generator().manual_seed(0))
  l2, _ = rectified_flow_loss(Spy(randomized(cfg0), True), batch, generator=torch.Generator().manual_seed(0))
  assert torch.allclose(l1, l2)


def test_training_steps_reduce_loss():
  cfg = small_cfg()
  torch.manual_seed(0)
  m = build_model(cfg)
  opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
  batch = _batch(cfg, B=4)
  losses = []
  for i in range(30):
    loss, info = rectified_flow_loss(m, batch, generator=torch.Generator().manual_seed(i % 2))
    opt.zero_grad(); loss.backward(); opt.step()
    losses.append(info["rf"].item())
  assert losses[-1] < 0.85 * losses[0], losses


def _analytic_block_params(W, mlp_ratio=4.0):
  hid = int(W * mlp_ratio)
  attn = (W * 3 * W + 3 * W) + (W * W + W)
  mlp = (W * hid + hid) + (hid * W + W)
  ada = W * 6 * W + 6 * W
  return attn + mlp + ada


@pytest.mark.parametrize("name,depth,width,heads", [("250M", 12, 768, 12), ("500M", 24, 1024, 16), ("1B", 36, 1280, 20)])
def test_paper_presets_shapes_and_param_counts(name, depth, width, heads):
  cfg = PRESETS[name]
  assert (cfg.depth, cfg.width, cfg.heads, cfg.fps, cfg.context_frames) == (depth, width, heads, 5.0, 10)
  assert (cfg.latent_h, cfg.latent_w) == (16, 32) and cfg.frame_hw == (128, 256)
  with torch.device("meta"):
    m = WorldModelDiT(cfg)
  blocks = sum(p.numel() for p in m.blocks.parameters())
  assert blocks == depth * _analytic_block_params(width)
  total = count_params(m)
  assert total > blocks


def test_config_errors():
  with pytest.raises(ValueError, match="unknown world-model preset 'huge'"):
    get_config("huge")
  with pytest.raises(ValueError, match="unknown DiTConfig field 'depht'"):
    get_config("tiny", depht=3)
  with pytest.raises(ValueError, match="not divisible by patch"):
    WorldModelDiT(DiTConfig(latent_h=7))
  with pytest.raises(ValueError, match="build_model"):   # tiny's config needs tiny's class
    WorldModelDiT(get_config("tiny"))


def test_plan_normalisation_roundtrip():
  x = torch.randn(2, 33, 15) * 10
  assert torch.allclose(denormalize_plan(normalize_plan(x)), x, atol=1e-5)


def test_previous_frame_reaches_the_next_frames_tokens_only():
  cfg = small_cfg()
  m = randomized(cfg)
  x = inputs(cfg)
  t = torch.zeros(2, 4)
  tok = m._tokens(x["frames"], t, anchor=False, prev=m.previous_frames(x["frames"]))
  f2 = x["frames"].clone()
  f2[:, 1] += 1.0
  tok2 = m._tokens(f2, t, anchor=False, prev=m.previous_frames(f2))
  P = cfg.tokens_per_frame
  changed = [(tok - tok2)[:, i * P:(i + 1) * P].abs().max().item() > 1e-4 for i in range(4)]
  assert changed == [False, True, True, False]      # frame 1 itself and its successor, through the patch embedding
  with pytest.raises(ValueError, match="previous frames"):
    m._tokens(x["frames"], t, anchor=False)
  assert m.patch_embed.in_channels == 8


def test_plan_head_starts_at_the_constant_velocity_prior():
  cfg = small_cfg()
  m = build_model(cfg).eval()
  torch.nn.init.zeros_(m.plan_head.out.weight)
  hid = torch.randn(3, cfg.tokens_per_frame, cfg.width)
  trans = torch.tensor([[5.0, 0.2, 0.0, 0, 0, 0.01], [3.0, -0.1, 0.05, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]])
  out = m.plan(hid, trans)
  plan = denormalize_plan(out.mean)                                # (B,K,T,15)
  v = trans[:, :3] * cfg.fps
  expect = v[:, None, :] * torch.tensor(T_IDXS, dtype=torch.float32)[None, :, None]
  for k in range(plan.shape[1]):
    assert torch.allclose(plan[:, k, :, 0:3], expect, atol=1e-4)     # positions v * t
    assert torch.allclose(plan[:, k, :, 3:6], v[:, None].expand(3, 33, 3), atol=1e-4)
  assert torch.allclose(out.mean[:, 0], constant_velocity_plan(trans, cfg.fps))


def test_plan_head_reads_the_anchor_the_same_way_on_every_path():
  cfg = small_cfg()
  m = randomized(cfg)
  x = inputs(cfg, F=3)
  valid = torch.tensor([True, False])
  res = m(**x, anchor_valid=valid, plan_index=-1)
  hid, out = res.hidden, res.plan
  # the anchors alone (they see only anchors) give the same summary as the full pass
  anchor = m.encode_anchors(x["anchors"], x["anchor_pose"], x["anchor_t"], valid)
  ref = m.plan(hid[:, -1], x["pose"][:, -1], anchor, x["t_world"][:, -1])
  for k in ("mean", "log_scale", "logits"):
    assert (getattr(out, k) - getattr(ref, k)).abs().max().item() < 1e-5
  # a dropped anchor is exactly "no anchor"
  noanc = {k: v for k, v in x.items() if not k.startswith("anchor")}
  out0 = m(**noanc, plan_index=-1).plan
  assert (out.mean[1] - out0.mean[1]).abs().max().item() < 1e-5
  assert (out.mean[0] - out0.mean[0]).abs().max().item() > 1e-3
  # the anchor's pose reaches the plan directly (not only through the frame tokens)
  moved = replace(anchor, pose=anchor.pose + torch.tensor([50.0, 5.0, 0, 0, 0, 0.3]))
  p2 = m.plan(hid[:, -1], x["pose"][:, -1], moved, x["t_world"][:, -1])
  assert (p2.mean[0] - ref.mean[0]).abs().max().item() > 1e-4
  assert torch.equal(p2.mean[1], ref.mean[1])                    # invalid anchor: ignored
  with pytest.raises(ValueError, match="t_now"):
    m.plan(hid[:, -1], x["pose"][:, -1], anchor)
  assert m.plan_head.inp.in_features == cfg.width + 7 * cfg.anchor_frames + 1 + cfg.width


def test_config_round_trip_and_old_forms_are_refused_with_the_conversion_command():
  for cfg in PRESETS.values():
    assert DiTConfig.from_dict(cfg.to_dict()) == cfg
  old = {k: v for k, v in PRESETS["tiny"].to_dict().items() if k != "format"}
  old.update(prev_warp=True, learn_prior_std=True)
  with pytest.raises(OldConfigError, match="runs/wm: .*python -m training.worldmodel.convert_checkpoint"):
    DiTConfig.from_dict(old, source="runs/wm")
  with pytest.raises(ValueError, match="unknown DiTConfig field"):
    DiTConfig.from_dict({**PRESETS["tiny"].to_dict(), "gen_frames": 1})


def test_block_modulation_is_per_frame_over_frame_major_tokens():
  """DiTBlock computes adaLN once per frame and broadcasts it over the frame's tokens; the result must equal the
  per-token formulation (every token modulated by its own frame's c) on frame-major token order."""
  from training.worldmodel.dit import DiTBlock
  torch.manual_seed(0)
  blk = DiTBlock(32, 4, 4.0).eval()
  with torch.no_grad():
    for p in blk.parameters():
      p.normal_(0, 0.1)
  B, Fn, P, W = 2, 3, 5, 32
  x, c = torch.randn(B, Fn * P, W), torch.randn(B, Fn, W)
  out, _ = blk(x, c)
  c_tok = c.repeat_interleave(P, dim=1)                       # token i belongs to frame i // P
  sh1, sc1, g1, sh2, sc2, g2 = blk.adaLN(c_tok).chunk(6, dim=-1)
  ref = x + g1 * blk.attn(blk.norm1(x) * (1 + sc1) + sh1)[0]
  ref = ref + g2 * blk.mlp(blk.norm2(ref) * (1 + sc2) + sh2)
  assert torch.allclose(out, ref, atol=1e-5)


def test_cuda_graph_needs_a_cuda_device():
  cfg = small_cfg()
  m = randomized(cfg)
  ctx = torch.randn(1, 3, 4, cfg.latent_h, cfg.latent_w)
  with pytest.raises(ValueError, match="CUDA"):
    rollout(m, ctx, torch.zeros(1, 3, 6), torch.zeros(1, 3), torch.zeros(1, 1, 6), torch.ones(1, 1),
            opts=SampleOptions(steps=2, cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("with_anchor", [False, True])
def test_cuda_graph_rollout_matches_eager_and_uncached(with_anchor):
  cfg = small_cfg()
  m = randomized(cfg, seed=1).cuda()
  B, h, w, dev = 2, cfg.latent_h, cfg.latent_w, "cuda"
  g = torch.Generator().manual_seed(3)
  ctx = torch.randn(B, 3, 4, h, w, generator=g).to(dev)
  kw = dict(ctx_transitions=torch.randn(B, 3, 6, generator=g).to(dev), ctx_t=torch.arange(3.0).repeat(B, 1).to(dev),
            future_transitions=torch.randn(B, 6, 6, generator=g).to(dev),
            future_t=(3 + torch.arange(6.0)).repeat(B, 1).to(dev) * 0.2)
  if with_anchor:
    kw.update(anchors=Anchors(torch.randn(B, 2, 4, h, w, generator=g).to(dev), torch.randn(B, 2, 6, generator=g).to(dev),
                              torch.tensor([[4.0, 4.2]] * B).to(dev)))

  def frames(**opts):
    return rollout(m, ctx, opts=SampleOptions(steps=4, ctx_noise_tau=0.1, **opts),
                   generator=torch.Generator(device=dev).manual_seed(7), **kw)["frames"]
  run = {mode: frames(use_cache=mode != "uncached", cuda_graph=mode == "graph") for mode in ("graph", "eager", "uncached")}
  again = frames(cuda_graph=True)   # replays the graphs captured above
  assert (run["graph"] - run["eager"]).abs().max().item() < 1e-4
  assert (run["graph"] - run["uncached"]).abs().max().item() < 1e-4
  assert torch.equal(again, run["graph"])
