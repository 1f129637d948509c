"""Video DiT world model (paper §4.2): a Diffusion Transformer over VAE latents of several frames.

Inputs are latent frames (B, F, 4, h, w). Every frame is cut into p x p patches; the patches of all frames are
flattened to one token sequence (B, F * P, W) with P = (h/p) * (w/p) tokens per frame. Tokens get a fixed 2D
sin-cos spatial embedding plus a frame embedding (frame kind: anchor or ordinary, plus a sin-cos embedding of
the frame's world timestep). With `prev_frame_input` (default) an ordinary frame's patch embedding sees its own
latent and its predecessor's, concatenated on channels (the first frame of a sequence is its own predecessor;
anchors get zeros). Every block is a DiT block with adaLN-Zero modulation whose shift/scale/gate come
from the conditioning vector of the token's FRAME:

    c_f = PoseEmbed(pose_f) + TauEmbed(tau_f) + TimeEmbed(t_f)          (B, F, W)

  pose_f  6-DOF (x, y, z, roll, pitch, yaw), car frame (x fwd, y right, z down):
            ordinary frames: the transition from the previous frame to this one (the "action");
            anchor frames:   the anchor's pose relative to the reference frame (the last context frame
                             when the anchor was taken), through a separate embedder.
  tau_f   noise level of the frame (0 = clean, 1 = pure noise).
  t_f     world timestep, seconds since the start of the segment (absolute time, so a finished frame's
          keys/values never change when the window slides; training windows start anywhere in a segment).

Sequence layout: [anchor frames (A)] [past context frames (C)] [frame being generated (1)].
Frame-wise attention mask (True = may attend):
  anchor   -> anchors only
  ordinary frame i -> anchors, itself, and the previous `window` ordinary frames (i-window .. i-1)
Inside one training window (C = window context frames) this is exactly "itself, all earlier frames and the
anchors". Bounding it by `window` is what makes the KV cache exact during long rollouts: a finished frame's
keys/values depend only on the anchors and the `window` frames before it, all of which are already cached.

Rectified flow (paper §4.2.2), ONE sign convention used everywhere in this package:
    o_tau = tau * eps + (1 - tau) * o            tau ~ LogitNormal(0, 1), tau = 1 is pure noise
    the network predicts  u = o - eps            ( = -d o_tau / d tau )
    Euler step from tau_a to tau_b < tau_a:  o_{tau_b} = o_{tau_a} + (tau_a - tau_b) * u
so that one exact step from tau = 1 gives o = eps + u.
The network's output is either u itself (cfg.output = "velocity", the paper's formulation) or a preconditioned
clean-frame residual that WorldModelDiT.velocity_from_output turns into u (cfg.output = "denoiser"); the loss, the
sampler and the KV cache see only u either way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.modelconstants import CAMERA_HEIGHT_M
from training.worldmodel.plan_head import PlanHead, constant_velocity_plan, normalize_plan
from training.worldmodel.pose_warp import warp_previous


@dataclass
class DiTConfig:
  name: str = "tiny"
  latent_channels: int = 4
  latent_h: int = 16           # 128x256 frames -> 4x16x32 latents
  latent_w: int = 32
  patch: int = 2
  depth: int = 4
  width: int = 128
  heads: int = 4
  mlp_ratio: float = 4.0
  context_frames: int = 10     # C: 2 s of context at 5 Hz
  anchor_frames: int = 5       # A: 1 s of future anchor at 5 Hz
  fps: float = 5.0
  # plan head
  plan_hidden: int = 256
  plan_blocks: int = 2
  # training-time choices (read by train.py, stored with the checkpoint)
  anchor_drop_prob: float = 0.3
  ctx_noise_prob: float = 0.3        # §4.4 noise-level augmentation
  ctx_noise_logit_mean: float = 0.0
  ctx_noise_logit_std: float = 0.25
  plan_loss_weight: float = 0.1      # alpha in L = L_RF + alpha * L_MHP
  # every ordinary frame's patches also carry the previous frame's latent (channel concat): "the next frame is the
  # last one, moved" becomes a local computation instead of something attention has to learn first
  prev_frame_input: bool = True
  # Plan Head hypotheses are corrections to the constant-velocity trajectory of the current transition
  plan_cv_prior: bool = True
  # generated (noised) frames per training window: 1 = the paper's layout (the last frame); K > 1 also trains noised
  # copies of the K-1 frames before it, each seeing only its own past (our addition, rectified_flow_loss)
  gen_frames: int = 1
  # the Plan Head also reads the future anchor: its tokens' pooled final hidden state and its poses / time offsets
  # (zeros + a flag when there is no anchor), so "where a good driver will be" reaches the plan directly
  plan_anchor_input: bool = True
  # how the network's output becomes the velocity u (WorldModelDiT.velocity_from_output):
  #   "velocity": the output is u itself (the paper's formulation);
  #   "denoiser": the output F is the unit-variance residual of a clean-frame estimate around the best linear guess
  #               from x_tau and the previous frame, o_hat = prev + c_skip(tau) (x_tau - (1 - tau) prev) + c_out(tau) F,
  #               and u = (o_hat - x_tau) / tau. The network never has to carry the noise through its tokens.
  output: str = "velocity"
  delta_std: float = 0.5       # "denoiser": std of (frame - previous frame) in latent units, the prior around prev
  # "denoiser": the network also outputs, for every latent value, the log of its own prior std around prev (starting
  # at delta_std). Where the (warped) previous frame is already right (sky, road) it can shrink the prior and the
  # estimate collapses onto prev with one multiplicative gate, instead of cancelling x_tau's noise through the token;
  # where new content appears it widens it (a heteroscedastic Gaussian prior; our addition)
  learn_prior_std: bool = False
  # the rectified-flow loss measures the velocity error the way the frozen decoder turns latent error into pixels
  # (decoder_metric.py; our addition): per-channel weights + a weight on block-smooth error, measured from the VAE by
  # train.py when the run starts (None = not measured yet) and stored here so a resumed run keeps them
  decoder_weighted_loss: bool = False
  loss_channel_weights: list | None = None
  loss_lowpass_weight: float = 0.0
  loss_lowpass_pool: int = 4
  # the previous frame a frame sees (its prev-frame input and the denoiser's prior) is first re-projected into its
  # view by its transition: road plane + rotation at infinity (pose_warp.py; our addition, a geometric prior)
  prev_warp: bool = False
  warp_cam_height: float = CAMERA_HEIGHT_M   # m above the road
  warp_max_depth: float = 150.0   # m: road farther than this is treated as at infinity

  # fields added after the first checkpoints were written, with the value that reproduces those older models
  LEGACY_DEFAULTS = {"prev_frame_input": False, "plan_cv_prior": False, "gen_frames": 1, "plan_anchor_input": False,
                     "output": "velocity", "prev_warp": False, "learn_prior_std": False,
                     "decoder_weighted_loss": False}

  @classmethod
  def from_dict(cls, d: dict) -> "DiTConfig":
    """The config stored with a checkpoint -> DiTConfig; fields the checkpoint predates take their legacy values."""
    return cls(**{**cls.LEGACY_DEFAULTS, **d})

  @property
  def tokens_per_frame(self) -> int:
    return (self.latent_h // self.patch) * (self.latent_w // self.patch)

  @property
  def frame_hw(self) -> tuple[int, int]:
    """Image size (H, W) that the VAE (8x downsampling) turns into this latent size."""
    return self.latent_h * 8, self.latent_w * 8

  @property
  def plan_anchor_dim(self) -> int:
    """Width of the Plan Head's anchor features: pooled anchor hidden (W) + per anchor frame 6 pose values and a
    time offset + a 'has anchor' flag."""
    return self.width + 7 * self.anchor_frames + 1 if self.plan_anchor_input else 0

  def to_dict(self) -> dict:
    return asdict(self)

  def __post_init__(self):
    if self.output not in ("velocity", "denoiser"):
      raise ValueError(f"DiTConfig.output must be 'velocity' or 'denoiser', got {self.output!r}")
    if self.learn_prior_std and self.output != "denoiser":
      raise ValueError("DiTConfig.learn_prior_std needs output='denoiser' (with output='velocity' set "
                       "learn_prior_std=false)")


PRESETS: dict[str, DiTConfig] = {
  # CPU / CI. 128x256 frames (4x16x32 latents) with 4x4 patches: 32 tokens per frame, the same transformer cost as
  # 64x128 frames with 2x2 patches, but a tiny VAE reconstructs 128x256 frames far better (its latent grid has 4x the
  # cells), and the codec's floor bounds every rollout metric.
  # Its 4x4 patches put 64 latent values (128 with the previous frame) into a 128-wide token, so it predicts through
  # the "denoiser" output: a velocity head would have to rebuild the 64 noise values from that token.
  # It also sees the previous frame re-projected by the pose (prev_warp), because in 30 CPU-minutes the network alone
  # does not learn to move the view with the pose. And it learns each value's prior std around that frame
  # (learn_prior_std: +0.6 dB over 5 frames and 1.5x the controllability; docs/experiments.md).
  "tiny": DiTConfig(name="tiny", latent_h=16, latent_w=32, patch=4, depth=4, width=128, heads=4, plan_hidden=256,
                    plan_blocks=2, output="denoiser", prev_warp=True, learn_prior_std=True),
  "small": DiTConfig(name="small", latent_h=16, latent_w=32, depth=8, width=384, heads=6, plan_hidden=512, plan_blocks=2),
  # the paper's three sizes, GPT-2 small / medium / large shapes
  "250M": DiTConfig(name="250M", latent_h=16, latent_w=32, depth=12, width=768, heads=12, plan_hidden=1024, plan_blocks=3),
  "500M": DiTConfig(name="500M", latent_h=16, latent_w=32, depth=24, width=1024, heads=16, plan_hidden=1024, plan_blocks=3),
  "1B": DiTConfig(name="1B", latent_h=16, latent_w=32, depth=36, width=1280, heads=20, plan_hidden=1024, plan_blocks=3),
}


def get_config(name: str, **overrides) -> DiTConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown world-model preset {name!r}; choose one of {sorted(PRESETS)}")
  d = PRESETS[name].to_dict()
  for k, v in overrides.items():
    if k not in d:
      raise ValueError(f"unknown DiTConfig field {k!r}")
    d[k] = v
  return DiTConfig(**d)


# ----------------------------------------------------------------------------------------------- embeddings

def sincos_1d(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
  """x (...,) float -> (..., dim) sinusoidal features."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
  args = x.float().unsqueeze(-1) * freqs
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
  """Fixed 2D sin-cos position embedding (h*w, dim), half the channels for rows, half for columns."""
  ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
  return torch.cat([sincos_1d(ys.flatten(), dim // 2), sincos_1d(xs.flatten(), dim // 2)], dim=-1)


class ScalarEmbed(nn.Module):
  """Scalar (noise level or time) -> sinusoid -> MLP -> (W,)."""

  def __init__(self, width: int, scale: float, freq_dim: int = 256, max_period: float = 10000.0):
    super().__init__()
    self.scale, self.freq_dim, self.max_period = scale, freq_dim, max_period
    self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,F) -> (B,F,W)
    return self.mlp(sincos_1d(x * self.scale, self.freq_dim, self.max_period).to(self.mlp[0].weight.dtype))


class PoseEmbed(nn.Module):
  """6-DOF pose -> MLP -> (W,). Inputs are divided by a fixed per-component scale so they are O(1)."""

  def __init__(self, width: int, scale: tuple[float, ...]):
    super().__init__()
    self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
    self.mlp = nn.Sequential(nn.Linear(6, width), nn.SiLU(), nn.Linear(width, width))

  def forward(self, pose: torch.Tensor) -> torch.Tensor:  # (B,F,6) -> (B,F,W)
    return self.mlp((pose.float() / self.scale).to(self.mlp[0].weight.dtype))


# 5 Hz transitions: ~6 m forward, small lateral/vertical, yaw up to ~0.1 rad
TRANSITION_SCALE = (5.0, 0.5, 0.5, 0.02, 0.02, 0.05)
# anchors: up to ~10 s ahead
ANCHOR_POSE_SCALE = (100.0, 10.0, 3.0, 0.05, 0.05, 0.5)
# learn_prior_std: a value's prior std stays within delta_std * exp(+-3) (0.025 .. 10 for delta_std = 0.5)
LOG_PRIOR_STD_RANGE = 3.0


# ----------------------------------------------------------------------------------------------- blocks

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """x (B,F,P,W) tokens of F frames, shift/scale (B,F,1,W) per frame (broadcast over the frame's P tokens)."""
  return x * (1 + scale) + shift


class Attention(nn.Module):
  def __init__(self, width: int, heads: int):
    super().__init__()
    assert width % heads == 0, f"width {width} not divisible by heads {heads}"
    self.heads, self.head_dim = heads, width // heads
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kv_prefix: tuple | None = None):
    """x (B,L,W). kv_prefix: (k, v) buffers, each (B,H,Lp+L,hd), whose first Lp positions hold cached tokens placed
    BEFORE x's own keys; x's keys/values are written into the last L positions (scratch) instead of concatenating
    the whole prefix on every call (KVCache.prefix). mask (B or 1, 1, L, Lp + L) bool or None (all visible).
    Returns (out (B,L,W), (k, v) of x)."""
    B, L, W = x.shape
    q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B,H,L,hd)
    if kv_prefix is None:
      k_all, v_all = k, v
    else:
      k_all, v_all = kv_prefix
      k_all[:, :, -L:].copy_(k)
      v_all[:, :, -L:].copy_(v)
    if kv_prefix is not None and q.is_cuda and q.dtype == torch.float32:
      # one frame's queries against a long cache in float32: the fused kernel runs few, long thread blocks here
      # (batch x heads x 2 query tiles; 66% of a graphed 250M frame on an H200); two batched matmuls and a softmax
      # fill the GPU (with the scratch buffer: 59 -> 29 ms per graphed 250M frame)
      with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
    else:
      out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B,H,L,hd)
    return self.proj(out.transpose(1, 2).reshape(B, L, W)), (k, v)


class DiTBlock(nn.Module):
  def __init__(self, width: int, heads: int, mlp_ratio: float):
    super().__init__()
    self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
    self.attn = Attention(width, heads)
    self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
    hidden = int(width * mlp_ratio)
    self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
    self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))  # zero-initialised in DiT.init_weights

  def forward(self, x, c, mask=None, kv_prefix=None):
    """x (B,L,W) tokens of F frames in frame-major order (L = F*P), c (B,F,W) per-frame conditioning.
    Returns (x, (k, v)). The modulation is computed once per frame, not once per token: every token of a frame shares
    its frame's c, and the adaLN linear layer (6 W^2 per row) would otherwise cost a third of the block's matmuls."""
    B, L, W = x.shape
    Fn = c.shape[1]
    sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(c).unsqueeze(2).chunk(6, dim=-1)   # 6 x (B,F,1,W)
    xf = x.view(B, Fn, L // Fn, W)                                              # (B,F,P,W)
    a, kv = self.attn(modulate(self.norm1(xf), sh1, sc1).view(B, L, W), mask, kv_prefix)
    xf = xf + g1 * a.view_as(xf)
    xf = xf + g2 * self.mlp(modulate(self.norm2(xf), sh2, sc2))
    return xf.view(B, L, W), kv


class FinalLayer(nn.Module):
  def __init__(self, width: int, out_dim: int):
    super().__init__()
    self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
    self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
    self.linear = nn.Linear(width, out_dim)

  def forward(self, x, c):
    """x (B,F*P,W) frame-major tokens, c (B,F,W) -> (B,F*P,out_dim)."""
    B, L, W = x.shape
    shift, scale = self.adaLN(c).unsqueeze(2).chunk(2, dim=-1)                  # (B,F,1,W) each
    return self.linear(modulate(self.norm(x.view(B, c.shape[1], -1, W)), shift, scale)).flatten(1, 2)


# ----------------------------------------------------------------------------------------------- masks

def frame_mask(n_anchor: int, n_frames: int, window: int, anchor_valid: torch.Tensor | None = None,
               n_gen: int = 0) -> torch.Tensor:
  """Frame-level attention mask (B or 1, F_tot, F_tot), True = query frame may attend to key frame.
  F_tot = n_anchor + n_frames; anchor_valid (B,) bool drops the anchors of samples where it is False.

  The n_frames ordinary frames are Fc = n_frames - n_gen frames of one causal stream (window indices 0..Fc-1),
  followed by n_gen GENERATED copies of window frames Fc-n_gen+1 .. Fc (noised targets). A query with window index i
  sees the anchors, itself, and the stream frames i-window .. i-1; generated copies are visible to themselves only.
  n_gen = 0 and n_gen = 1 give the same mask (the last frame is seen by no later frame)."""
  Ft = n_anchor + n_frames
  Fc = n_frames - n_gen
  if n_gen < 0 or Fc < n_gen:   # every generated frame needs its predecessor in the stream
    raise ValueError(f"frame_mask: {n_gen} generated frames need at least {n_gen} stream frames, got {Fc}")
  idx = torch.cat([torch.arange(Fc), torch.arange(Fc - n_gen + 1, Fc + 1)])   # window index of every frame
  stream = torch.arange(n_frames) < Fc
  d = idx[:, None] - idx[None, :]                                  # query - key
  ordinary = torch.eye(n_frames, dtype=torch.bool) | (stream[None, :] & (d >= 1) & (d <= window))
  m = torch.zeros(Ft, Ft, dtype=torch.bool)
  m[:n_anchor, :n_anchor] = True                                   # anchors -> anchors
  m[n_anchor:, :n_anchor] = True                                   # frames -> anchors
  m[n_anchor:, n_anchor:] = ordinary
  m = m.unsqueeze(0)
  if anchor_valid is not None and n_anchor > 0:
    m = m.repeat(anchor_valid.shape[0], 1, 1)
    drop = ~anchor_valid.bool().cpu()
    m[drop, n_anchor:, :n_anchor] = False
  return m


def token_mask(fmask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
  """(B,F,F) frame mask -> (B,1,F*P,F*P) token mask for scaled_dot_product_attention."""
  P = tokens_per_frame
  return fmask.repeat_interleave(P, 1).repeat_interleave(P, 2).unsqueeze(1)


# ----------------------------------------------------------------------------------------------- model

@dataclass
class KVCache:
  """Per layer: anchor keys/values (B,H,A*P,hd) and the last `window` finished frames' keys/values."""
  window: int
  scratch: int = 0                                # tokens per frame: room left after the prefix (Attention.forward)
  anchors: list = field(default_factory=list)   # per layer (k, v) or None
  frames: list = field(default_factory=list)    # per layer: list over frames of (k, v)
  last_frame: torch.Tensor | None = None         # latest finished frame (B,C,h,w): the next frame's predecessor
  anchor: dict | None = None                     # WorldModelDiT.anchor_summary of the cached anchors (Plan Head input)

  _prefix: dict = field(default_factory=dict)   # layer -> concatenated (k, v), rebuilt only when the cache changes
  _warped: tuple | None = None                   # (last_frame, pose, warped last_frame): prev_warp once per frame

  def prefix(self, layer: int):
    """All cached keys/values of one layer in buffers (B,H,L_cached + scratch,hd), the last `scratch` positions
    free for the querying frame's own keys/values; concatenated once per cache change and reused by every Euler
    step. None when nothing is cached."""
    if layer not in self._prefix:
      parts = ([self.anchors[layer]] if self.anchors and self.anchors[layer] is not None else []) + self.frames[layer]
      if not parts:
        self._prefix[layer] = None
      else:
        room = parts[0][0].new_empty(*parts[0][0].shape[:2], self.scratch, parts[0][0].shape[3])
        self._prefix[layer] = tuple(torch.cat([p[j] for p in parts] + [room], 2) for j in (0, 1))
    return self._prefix[layer]

  def push(self, layer: int, kv) -> None:
    self.frames[layer].append(kv)
    if len(self.frames[layer]) > self.window:
      self.frames[layer].pop(0)
    self._prefix.pop(layer, None)

  @property
  def num_frames(self) -> int:
    return len(self.frames[0]) if self.frames else 0


class WorldModelDiT(nn.Module):
  def __init__(self, cfg: DiTConfig):
    super().__init__()
    self.cfg = cfg
    W, p, C = cfg.width, cfg.patch, cfg.latent_channels
    if cfg.latent_h % p or cfg.latent_w % p:
      raise ValueError(f"latent size {cfg.latent_h}x{cfg.latent_w} not divisible by patch {p}")
    self.patch_embed = nn.Conv2d(2 * C if cfg.prev_frame_input else C, W, kernel_size=p, stride=p)
    self.register_buffer("pos_spatial", sincos_2d(cfg.latent_h // p, cfg.latent_w // p, W), persistent=False)
    self.frame_kind = nn.Embedding(2, W)            # 0 ordinary frame, 1 anchor frame
    self.tau_embed = ScalarEmbed(W, scale=1000.0)
    self.time_embed = ScalarEmbed(W, scale=1.0, max_period=1000.0)   # seconds
    self.pose_embed = PoseEmbed(W, TRANSITION_SCALE)
    self.anchor_pose_embed = PoseEmbed(W, ANCHOR_POSE_SCALE)
    self.blocks = nn.ModuleList([DiTBlock(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
    self.final = FinalLayer(W, p * p * C * (2 if cfg.learn_prior_std else 1))   # [F | log prior-std scale]
    self.plan_norm = nn.LayerNorm(W)
    self.anchor_norm = nn.LayerNorm(W) if cfg.plan_anchor_input else None
    self.plan_head = PlanHead(W + cfg.plan_anchor_dim, cfg.plan_hidden, cfg.plan_blocks)
    self.init_weights()

  def init_weights(self):
    def _basic(m):
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
          nn.init.zeros_(m.bias)
    self.apply(_basic)
    w = self.patch_embed.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(self.patch_embed.bias)
    nn.init.normal_(self.frame_kind.weight, std=0.02)
    for emb in (self.tau_embed, self.time_embed, self.pose_embed, self.anchor_pose_embed):
      nn.init.normal_(emb.mlp[0].weight, std=0.02)
      nn.init.normal_(emb.mlp[2].weight, std=0.02)
    for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
      nn.init.zeros_(blk.adaLN[-1].weight)
      nn.init.zeros_(blk.adaLN[-1].bias)
    nn.init.zeros_(self.final.adaLN[-1].weight)
    nn.init.zeros_(self.final.adaLN[-1].bias)
    nn.init.zeros_(self.final.linear.weight)
    nn.init.zeros_(self.final.linear.bias)
    self.plan_head.init_weights()

  # ---- token helpers
  def _tokens(self, x: torch.Tensor, t_world: torch.Tensor, anchor: bool, prev: torch.Tensor | None = None) -> torch.Tensor:
    """x (B,F,C,h,w) latents -> (B,F*P,W) tokens with spatial + frame embeddings. With cfg.prev_frame_input, prev
    (B,F,C,h,w) is each frame's predecessor (ordinary frames; anchors get zeros)."""
    B, Fn = x.shape[:2]
    if self.cfg.prev_frame_input:
      if prev is None:
        if not anchor:
          raise ValueError("prev_frame_input: ordinary frames need their previous frames")
        prev = torch.zeros_like(x)
      x = torch.cat([x, prev], 2)                                                # (B,F,2C,h,w)
    tok = self.patch_embed(x.flatten(0, 1).to(self.patch_embed.weight.dtype))  # (B*F,W,h/p,w/p)
    tok = tok.flatten(2).transpose(1, 2).view(B, Fn, -1, self.cfg.width)        # (B,F,P,W)
    fe = self.frame_kind.weight[int(anchor)] + sincos_1d(t_world, self.cfg.width, 1000.0).to(tok.dtype)  # (B,F,W)
    tok = tok + self.pos_spatial.to(tok.dtype) + fe.unsqueeze(2)
    return tok.flatten(1, 2)

  def _cond(self, pose, tau, t_world, anchor: bool) -> torch.Tensor:
    """(B,F,6),(B,F),(B,F) -> per-frame conditioning c (B,F,W)."""
    pe = self.anchor_pose_embed(pose) if anchor else self.pose_embed(pose)
    return pe + self.tau_embed(tau) + self.time_embed(t_world)

  def _head(self, x: torch.Tensor, c: torch.Tensor, n_frames: int) -> tuple:
    """Final hidden tokens (B,F*P,W), per-frame conditioning c (B,F,W) -> (network output (B,F,C,h,w), log prior-std
    scale (B,F,C,h,w) with cfg.learn_prior_std, else None)."""
    out = self.final(x, c)
    if not self.cfg.learn_prior_std:
      return self._unpatch(out, n_frames), None
    out, log_s = out.chunk(2, dim=-1)
    return self._unpatch(out, n_frames), self._unpatch(log_s, n_frames)

  def _unpatch(self, out: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B,F*P,p*p*C) -> (B,F,C,h,w)."""
    cfg, p = self.cfg, self.cfg.patch
    B = out.shape[0]
    gh, gw = cfg.latent_h // p, cfg.latent_w // p
    out = out.view(B, n_frames, gh, gw, p, p, cfg.latent_channels)
    return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, n_frames, cfg.latent_channels, cfg.latent_h, cfg.latent_w)

  def anchor_summary(self, anchor_hidden: torch.Tensor, anchor_pose: torch.Tensor, anchor_t: torch.Tensor,
                     anchor_valid: torch.Tensor | None = None) -> dict:
    """Final hidden tokens of the anchor frames (B,A*P,W) + their poses (B,A,6) and times (B,A) -> what the Plan Head
    reads of the anchor. Anchors attend only to anchors, so this is the same whether it comes from a full forward
    pass, the KV cache or encode_anchors."""
    B = anchor_hidden.shape[0]
    valid = torch.ones(B, dtype=torch.bool, device=anchor_hidden.device) if anchor_valid is None else anchor_valid.bool()
    return {"hidden": anchor_hidden.mean(1), "pose": anchor_pose, "t": anchor_t, "valid": valid}

  @torch.no_grad()
  def encode_anchors(self, anchors, anchor_pose, anchor_t, anchor_valid=None) -> dict:
    """Run the anchor frames (B,A,C,h,w) alone (exactly their part of any full pass) -> anchor_summary."""
    cache = self.new_cache()
    self.cache_anchors(cache, anchors, anchor_pose, anchor_t)
    return cache.anchor if anchor_valid is None else dict(cache.anchor, valid=anchor_valid.bool())

  def _anchor_features(self, anchor: dict | None, t_now: torch.Tensor | None, B: int, ref: torch.Tensor) -> torch.Tensor:
    """(B, cfg.plan_anchor_dim): LayerNorm(pooled anchor hidden), anchor poses / ANCHOR_POSE_SCALE, time offsets
    (anchor time - now) / 10 s, and a has-anchor flag; all zero where there is no (valid) anchor."""
    A = self.cfg.anchor_frames
    if anchor is None:
      return torch.zeros(B, self.cfg.plan_anchor_dim, device=ref.device, dtype=ref.dtype)
    if anchor["pose"].shape[1] != A:
      raise ValueError(f"plan: {anchor['pose'].shape[1]} anchor frames, the model was built for {A}")
    if t_now is None:
      raise ValueError("plan: an anchor needs t_now, the current frame's world time")
    v = anchor["valid"].to(ref.dtype)[:, None]                                            # (B,1)
    scale = torch.tensor(ANCHOR_POSE_SCALE, device=ref.device)
    pose = (anchor["pose"].float() / scale).flatten(1)                                    # (B,6A)
    dt = (anchor["t"].float() - t_now.float()[:, None]) / 10.0                            # (B,A)
    feats = torch.cat([self.anchor_norm(anchor["hidden"]).to(ref.dtype), pose.to(ref.dtype), dt.to(ref.dtype),
                       torch.ones_like(v)], 1)
    return feats * v

  def plan(self, frame_hidden: torch.Tensor, transition: torch.Tensor, anchor: dict | None = None,
           t_now: torch.Tensor | None = None) -> dict:
    """Final hidden tokens of the current frame (B,P,W), its transition (B,6) (the pose input of that frame), and,
    with cfg.plan_anchor_input, the anchor (anchor_summary or None) and the current world time t_now (B,) ->
    plan head outputs (see plan_head.PlanHead)."""
    prior = constant_velocity_plan(transition, self.cfg.fps) if self.cfg.plan_cv_prior else None
    feats = self.plan_norm(frame_hidden.mean(dim=1))
    if self.cfg.plan_anchor_input:
      feats = torch.cat([feats, self._anchor_features(anchor, t_now, feats.shape[0], feats)], 1)
    return self.plan_head(feats, prior)

  def velocity_from_output(self, out: torch.Tensor, x_tau: torch.Tensor, prev: torch.Tensor,
                           tau: torch.Tensor, log_s: torch.Tensor | None = None) -> torch.Tensor:
    """Network output (B,[F,]C,h,w) -> velocity u, for frames x_tau told noise level tau (B,[F]) with predecessors prev.

    cfg.output == "velocity": u = out. "denoiser" (EDM-style preconditioning around the previous frame): with
    x_tau = a o + b eps (a = 1 - tau, b = tau) and o = m + d, d of std s (m = prev, s = delta_std; m = 0, s = 1
    without prev_frame_input), the best linear estimate of o is m + c_skip (x_tau - a m), c_skip = a s^2 / D,
    D = a^2 s^2 + b^2, with error std c_out = s b / sqrt(D). The network predicts that error in units of c_out:
    o_hat = m + c_skip (x_tau - a m) + c_out out, and u = (o_hat - x_tau) / tau, which is o - eps exactly when
    o_hat = o. At init (out = 0) one Euler step from tau = 1 gives the previous frame; at tau = 0, u = 0.
    With cfg.learn_prior_std, log_s (same shape, network output, 0 at init) sets each value's own prior std
    s = s0 * exp(LOG_PRIOR_STD_RANGE * tanh(log_s / LOG_PRIOR_STD_RANGE)); the same formulas then hold per value."""
    if self.cfg.output == "velocity":
      return out
    t = tau.float().reshape(tau.shape + (1,) * (x_tau.ndim - tau.ndim))
    if self.cfg.prev_frame_input:
      m, s = prev.float(), self.cfg.delta_std
    else:
      m, s = torch.zeros_like(x_tau, dtype=torch.float32), 1.0
    if log_s is not None:
      s = s * torch.exp(LOG_PRIOR_STD_RANGE * torch.tanh(log_s.float() / LOG_PRIOR_STD_RANGE))
    a, b = 1 - t, t
    D = a * a * s * s + b * b
    o_hat = m + (a * s * s / D) * (x_tau.float() - a * m) + (s * b / D.sqrt()) * out.float()
    return (o_hat - x_tau.float()) / t.clamp(min=1e-3)

  @staticmethod
  def previous_frames(frames: torch.Tensor, first_prev: torch.Tensor | None = None) -> torch.Tensor:
    """(B,F,C,h,w) -> each frame's predecessor; the first frame's is first_prev (B,C,h,w), or the frame itself."""
    first = frames[:, :1] if first_prev is None else first_prev[:, None]
    return torch.cat([first, frames[:, :-1]], 1)

  def _warp_prev(self, prev: torch.Tensor, pose: torch.Tensor, skip_first: bool = False) -> torch.Tensor:
    """Predecessors (B,F,C,h,w) -> seen from their successors' views (cfg.prev_warp) by the successors' transitions
    pose (B,F,6). skip_first: frame 0's "predecessor" is itself (no real one), left as it is."""
    if not self.cfg.prev_warp:
      return prev
    B, Fn = prev.shape[:2]
    out = warp_previous(prev.flatten(0, 1), pose.flatten(0, 1), self.cfg.frame_hw,
                        cam_height=self.cfg.warp_cam_height, max_depth=self.cfg.warp_max_depth).view_as(prev)
    return torch.cat([prev[:, :1], out[:, 1:]], 1) if skip_first else out

  # ---- full (uncached) forward, used for training and as the reference sampler
  def forward(self, frames, pose, tau, t_world, anchors=None, anchor_pose=None, anchor_t=None, anchor_valid=None,
              window: int | None = None, plan_index: int | None = None, n_gen: int = 0):
    """frames (B,F,C,h,w) ordinary frames, pose (B,F,6) transitions, tau (B,F) noise level TOLD to the model,
    t_world (B,F) seconds; anchors (B,A,C,h,w) with anchor_pose (B,A,6), anchor_t (B,A), anchor_valid (B,) bool
    (False = anchor dropped). window defaults to cfg.context_frames.
    n_gen = 0: the F frames are one causal stream (past context, and the frame being generated last).
    n_gen = K: the first F-K frames are the stream (window frames 0..F-K-1) and the last K are generated copies of
    window frames F-2K+1 .. F-K, each seeing exactly what the sampler shows it: the anchors, the stream frames before
    it and itself (frame_mask); its prev-frame input is its stream predecessor.
    Returns (velocity u = o - eps for every ordinary frame (B,F,C,h,w), final hidden (B,F,P,W)), plus the plan head's
    output for ordinary frame `plan_index` when it is given (inside forward so DDP sees every parameter)."""
    B, Fn = frames.shape[:2]
    P, W = self.cfg.tokens_per_frame, self.cfg.width
    window = self.cfg.context_frames if window is None else window
    Fc = Fn - n_gen
    prev = self._warp_prev(self.previous_frames(frames[:, :Fc]), pose[:, :Fc], skip_first=True)
    if n_gen:   # generated copy's stream predecessor
      prev = torch.cat([prev, self._warp_prev(frames[:, Fc - n_gen:Fc], pose[:, Fc:])], 1)
    x = self._tokens(frames, t_world, anchor=False, prev=prev)
    c = self._cond(pose, tau, t_world, anchor=False)
    A = 0
    if anchors is not None and anchors.shape[1] > 0:
      A = anchors.shape[1]
      zeros = torch.zeros(B, A, device=frames.device)
      x = torch.cat([self._tokens(anchors, anchor_t, anchor=True), x], 1)
      c = torch.cat([self._cond(anchor_pose, zeros, anchor_t, anchor=True), c], 1)
    mask = token_mask(frame_mask(A, Fn, window, anchor_valid if A else None, n_gen), P).to(frames.device)
    for blk in self.blocks:
      x, _ = blk(x, c, mask)
    anchor = self.anchor_summary(x[:, :A * P], anchor_pose, anchor_t, anchor_valid) if A else None
    x = x[:, A * P:]
    out, log_s = self._head(x, c[:, A:], Fn)
    u = self.velocity_from_output(out, frames, prev, tau, log_s)
    hidden = x.view(B, Fn, P, W)
    if plan_index is not None:
      return u, hidden, self.plan(hidden[:, plan_index], pose[:, plan_index], anchor, t_world[:, plan_index])
    return u, hidden

  # ---- cached inference
  def new_cache(self) -> KVCache:
    return KVCache(window=self.cfg.context_frames, scratch=self.cfg.tokens_per_frame, anchors=[None] * len(self.blocks),
                   frames=[[] for _ in self.blocks])

  @torch.no_grad()
  def cache_anchors(self, cache: KVCache, anchors, anchor_pose, anchor_t) -> None:
    """Encode anchor frames (B,A,C,h,w) once; their keys/values are reused by every later query."""
    B, A = anchors.shape[:2]
    x = self._tokens(anchors, anchor_t, anchor=True)
    c = self._cond(anchor_pose, torch.zeros(B, A, device=anchors.device), anchor_t, anchor=True)
    for i, blk in enumerate(self.blocks):
      x, kv = blk(x, c, None)   # anchors attend to all anchors
      cache.anchors[i] = kv
    cache.anchor = self.anchor_summary(x, anchor_pose, anchor_t)
    cache._prefix.clear()

  @torch.no_grad()
  def prefill(self, cache: KVCache, frames, pose, t_world, anchors=None, anchor_pose=None, anchor_t=None):
    """Encode anchors + C ground-truth context frames (B,C,c,h,w) in ONE masked forward pass (the same result as
    cache_anchors + C sequential cache_frame calls) and fill the cache. Returns the last frame's hidden (B,P,W)."""
    B, Fn = frames.shape[:2]
    P = self.cfg.tokens_per_frame
    prev = self._warp_prev(self.previous_frames(frames, cache.last_frame), pose, skip_first=cache.last_frame is None)
    x = self._tokens(frames, t_world, anchor=False, prev=prev)
    c = self._cond(pose, torch.zeros(B, Fn, device=frames.device), t_world, anchor=False)
    A = 0
    if anchors is not None and anchors.shape[1] > 0:
      A = anchors.shape[1]
      x = torch.cat([self._tokens(anchors, anchor_t, anchor=True), x], 1)
      c = torch.cat([self._cond(anchor_pose, torch.zeros(B, A, device=frames.device), anchor_t, anchor=True), c], 1)
    mask = token_mask(frame_mask(A, Fn, cache.window), P).to(frames.device)
    for i, blk in enumerate(self.blocks):
      x, (k, v) = blk(x, c, mask)
      cache.anchors[i] = (k[:, :, :A * P], v[:, :, :A * P]) if A else None
      for f in range(Fn):
        sl = slice((A + f) * P, (A + f + 1) * P)
        cache.push(i, (k[:, :, sl], v[:, :, sl]))
    cache._prefix.clear()
    cache.anchor = self.anchor_summary(x[:, :A * P], anchor_pose, anchor_t) if A else None
    cache.last_frame = frames[:, -1]
    return x[:, -P:]

  def frame_predecessor(self, cache: KVCache, frame, pose) -> torch.Tensor:
    """The predecessor (B,C,h,w) of the next ordinary frame as the model sees it: the cache's last finished frame
    (re-projected into the new view with cfg.prev_warp, once per frame and pose), or `frame` itself when the cache
    holds no frame yet."""
    if cache.last_frame is None:
      return frame
    if not self.cfg.prev_warp:
      return cache.last_frame
    w = cache._warped   # the same predecessor and pose for all Euler steps of a frame: re-project once
    if w is None or w[0] is not cache.last_frame or not torch.equal(w[1], pose):
      w = cache._warped = (cache.last_frame, pose.clone(),
                           self._warp_prev(cache.last_frame.unsqueeze(1), pose.unsqueeze(1))[:, 0])
    return w[2]

  def frame_pass(self, frame, prev, pose, tau, t_world, prefixes):
    """One ordinary frame (B,C,h,w) with its predecessor prev (B,C,h,w) attending to per-layer cached keys/values
    `prefixes` (list over layers of KVCache.prefix buffers, or None) and to itself. Pure tensor work, no host
    synchronisation (a CUDA graph can capture it). Returns (final hidden (B,P,W), c (B,1,W), new (k, v) per layer)."""
    x = self._tokens(frame.unsqueeze(1), t_world.unsqueeze(1), anchor=False, prev=prev.unsqueeze(1))
    c = self._cond(pose.unsqueeze(1), tau.unsqueeze(1), t_world.unsqueeze(1), anchor=False)
    new_kv = []
    for blk, prefix in zip(self.blocks, prefixes):
      x, kv = blk(x, c, None, prefix)   # every cached token is visible to the newest frame
      new_kv.append(kv)
    return x, c, new_kv

  def velocity_from_prefix(self, x_tau, prev, pose, tau, t_world, prefixes) -> torch.Tensor:
    """Velocity u (B,C,h,w) of the frame being generated at noise level tau (B,), given its predecessor and the
    cached keys/values explicitly (see frame_pass)."""
    x, c, _ = self.frame_pass(x_tau, prev, pose, tau, t_world, prefixes)
    out, log_s = self._head(x, c, 1)
    return self.velocity_from_output(out[:, 0], x_tau, prev, tau, None if log_s is None else log_s[:, 0])

  def cache_prefixes(self, cache: KVCache) -> list:
    return [cache.prefix(i) for i in range(len(self.blocks))]

  @torch.no_grad()
  def cache_frame(self, cache: KVCache, frame, pose, t_world, tau=None) -> torch.Tensor:
    """Append a finished frame (B,C,h,w) to the cache (encoded once, told noise level `tau`, default 0).
    Returns its final hidden tokens (B,P,W) (input of the plan head)."""
    B = frame.shape[0]
    tau = torch.zeros(B, device=frame.device) if tau is None else tau
    prev = self.frame_predecessor(cache, frame, pose)
    x, _, new_kv = self.frame_pass(frame, prev, pose, tau, t_world, self.cache_prefixes(cache))
    for i, kv in enumerate(new_kv):
      cache.push(i, kv)
    cache.last_frame = frame
    return x

  @torch.no_grad()
  def velocity_cached(self, cache: KVCache, x_tau, pose, tau, t_world) -> torch.Tensor:
    """Velocity u (B,C,h,w) for the frame being generated at noise level tau (B,), using the cache."""
    return self.velocity_from_prefix(x_tau, self.frame_predecessor(cache, x_tau, pose), pose, tau, t_world,
                                     self.cache_prefixes(cache))


def rf_interpolate(o: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
  """o_tau = tau * eps + (1 - tau) * o; tau broadcast from (B,) over the trailing dims."""
  t = tau.reshape(tau.shape + (1,) * (o.ndim - tau.ndim)).to(o.dtype)
  return t * eps + (1 - t) * o


def rf_target(o: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
  """The velocity the network is trained to predict: u = o - eps."""
  return o - eps


def euler_step(x: torch.Tensor, u: torch.Tensor, tau_from, tau_to) -> torch.Tensor:
  """One Euler step of the sampler from noise level tau_from down to tau_to (< tau_from)."""
  return x + (tau_from - tau_to) * u


def rectified_flow_loss(model, batch: dict, generator: torch.Generator | None = None, cfg: DiTConfig | None = None) -> tuple:
  """Rectified-flow loss on the generated frames of each window + the plan head's MHP loss.

  batch: latents (B,F,C,h,w) [past context (F-1) then the frame to generate], transitions (B,F,6), t_world (B,F),
         anchors (B,A,C,h,w), anchor_pose (B,A,6), anchor_t (B,A), anchor_valid (B,) bool,
         plan (B,T,15), plan_mask (B,T) (trajectory from the last context frame).
  The generated frames are the last K = cfg.gen_frames frames of the window. K = 1 is the paper's layout (the last
  frame, seeing the F-1 context frames). K > 1 adds noised copies of earlier window frames, each seeing only the
  context before it (frame_mask with n_gen), so one window trains K next-frame predictions for ~(F-1+K)/F the cost.
  Every generated frame gets its own tau ~ LogitNormal(0, 1) and noise; the loss is their mean. The context stream
  gets the §4.4 noise-level augmentation and is told tau = 0; it is never a target.
  model may be wrapped (DDP); then pass cfg. Returns (total loss, dict of detached parts)."""
  from training.mhp import mhp_loss
  cfg = cfg or model.cfg
  lat = batch["latents"]
  B, Fn = lat.shape[:2]
  C = Fn - 1
  K = max(1, min(cfg.gen_frames, C))
  dev = lat.device
  o = lat[:, Fn - K:]                                                     # frames to generate (B,K,C,h,w)
  eps = torch.randn(o.shape, generator=generator, device=dev, dtype=o.dtype)
  tau = torch.sigmoid(torch.randn(B, K, generator=generator, device=dev))  # LogitNormal(0, 1), per generated frame
  o_tau = rf_interpolate(o, eps, tau)
  # noise-level augmentation of the past context (§4.4); the model is told tau = 0 for them
  ctx = lat[:, :-1]
  aug = torch.rand(B, generator=generator, device=dev) < cfg.ctx_noise_prob
  ctx_tau = torch.sigmoid(cfg.ctx_noise_logit_mean + cfg.ctx_noise_logit_std *
                          torch.randn(B, C, generator=generator, device=dev)) * aug[:, None]
  ctx = rf_interpolate(ctx, torch.randn(ctx.shape, generator=generator, device=dev, dtype=o.dtype), ctx_tau)
  frames = torch.cat([ctx, o_tau], 1)                                     # (B, C + K, ...)
  told_tau = torch.cat([torch.zeros(B, C, device=dev), tau], 1)
  tr, tw = batch["transitions"], batch["t_world"]
  pose = torch.cat([tr[:, :C], tr[:, Fn - K:]], 1)
  t_world = torch.cat([tw[:, :C], tw[:, Fn - K:]], 1)
  u, _, plan_out = model(frames, pose, told_tau, t_world, batch.get("anchors"), batch.get("anchor_pose"),
                         batch.get("anchor_t"), batch.get("anchor_valid"),
                         plan_index=C - 1, n_gen=K)   # plan from the current frame = last context frame
  target_u = rf_target(o, eps)
  r = u[:, C:].float() - target_u.float()
  l_mse = r.pow(2).mean()
  l_rf = l_mse
  if cfg.decoder_weighted_loss:
    if cfg.loss_channel_weights is None:
      raise ValueError("decoder_weighted_loss: the decoder's metric was not measured (train.py does it at start)")
    from training.worldmodel.decoder_metric import weighted_mse
    l_rf = weighted_mse(r, cfg.loss_channel_weights, cfg.loss_lowpass_weight, cfg.loss_lowpass_pool)
  l_mhp, info = mhp_loss(plan_out["mean"], plan_out["log_scale"], plan_out["logits"], normalize_plan(batch["plan"]),
                         batch.get("plan_mask"))
  loss = l_rf + cfg.plan_loss_weight * l_mhp
  return loss, {"loss": loss.detach(), "rf": l_rf.detach(), "rf_mse": l_mse.detach(), "mhp": l_mhp.detach(),
                "plan_nll": info["nll"],
                "plan_ce": info["ce"]}


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
