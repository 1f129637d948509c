"""Video DiT world model (paper §4.2): a Diffusion Transformer over VAE latents of several frames.

Inputs are latent frames (B, F, 4, h, w). Every frame is cut into p x p patches; the patches of all frames are
flattened to one token sequence (B, F * P, W) with P = (h/p) * (w/p) tokens per frame. Tokens get a fixed 2D
sin-cos spatial embedding plus a frame embedding (frame kind: anchor or ordinary, plus a sin-cos embedding of
the frame's world timestep). An ordinary frame's patch embedding sees its own latent and its predecessor's,
concatenated on channels (the first frame of a sequence is its own predecessor; anchors get zeros). Every block is
a DiT block with adaLN-Zero modulation whose shift/scale/gate come from the conditioning vector of the token's FRAME:

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

Two models share the transformer: WorldModelDiT (cfg.output = "velocity", the paper's formulation: the network's
output is u itself; every preset but tiny) and its subclass WarpDenoiserDiT (cfg.output = "denoiser", tiny: a
preconditioned clean-frame residual around the pose-warped previous frame, which its `velocity` turns into u).
build_model(cfg) picks the class. The loss, the sampler and the KV cache see only u either way.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.modelconstants import CAMERA_HEIGHT_M
from training.worldmodel.plan_head import (
  PlanHead,
  PlanOutput,
  anchor_reaching_plan,
  constant_velocity_plan,
  normalize_plan,
)
from training.worldmodel.pose_warp import WARP_MODES, warp_previous

CONVERT_HINT = "python -m training.worldmodel.convert_checkpoint RUN"


class OldConfigError(ValueError):
  """A checkpoint's model config written before the current config format (convert_checkpoint.py rewrites it)."""


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
  # the kinematic path the Plan Head's hypotheses correct (plan_head.py): "anchor" = anchor_reaching_plan where the
  # sample has an anchor, constant_velocity_plan where not; "constant_velocity" = always constant_velocity_plan
  plan_prior: str = "anchor"
  # training-time choices (read by train.py, stored with the checkpoint)
  anchor_drop_prob: float = 0.3
  ctx_noise_prob: float = 0.3        # §4.4 noise-level augmentation
  ctx_noise_logit_mean: float = 0.0
  ctx_noise_logit_std: float = 0.25
  plan_loss_weight: float = 0.1      # alpha in L = L_RF + alpha * L_MHP
  # how the network's output becomes the velocity u (build_model picks the class):
  #   "velocity": the output is u itself (the paper's formulation; WorldModelDiT);
  #   "denoiser": the output is the unit-variance residual of a clean-frame estimate around the previous frame
  #               re-projected into the new view by the pose, with a learned prior std per latent value
  #               (WarpDenoiserDiT; our addition, tiny)
  output: str = "velocity"
  delta_std: float = 0.5       # "denoiser": std of (frame - previous frame) in latent units, the prior around prev
  # the road-plane + rotation-at-infinity re-projection of the previous frame (pose_warp.py): the "denoiser"'s prior
  # mean and evaluate.py's warp-last baseline
  warp_cam_height: float = CAMERA_HEIGHT_M   # m above the road
  warp_max_depth: float = 150.0   # m: road farther than this is treated as at infinity
  # how the re-projection resamples the latent grid (pose_warp.WARP_MODES). A bicubic warp keeps more detail, but tiny
  # trained with it blurs its own-frame rollouts as much as with bilinear (docs/experiments.md, session after stop 55)
  warp_mode: str = "bilinear"

  # version of the stored form (to_dict / from_dict); a checkpoint without it predates the current model code
  FORMAT = 2
  # fields added within FORMAT 2, with the value that reproduces what a config saved before them meant
  ADDED_SINCE_SAVED = {"plan_prior": "constant_velocity", "warp_mode": "bilinear"}

  @classmethod
  def from_dict(cls, d: dict, source=None) -> "DiTConfig":
    """The config stored with a checkpoint (to_dict) -> DiTConfig. An older form is refused with the command that
    converts it (source: the run or file named in the message)."""
    where = f"{source}: " if source is not None else ""
    if d.get("format") != cls.FORMAT:
      raise OldConfigError(f"{where}world-model config of an older format (format {d.get('format', 1)}, this code "
                           f"reads {cls.FORMAT}); convert the run once with `{CONVERT_HINT}`")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names - {"format"})
    if unknown:
      raise ValueError(f"{where}unknown DiTConfig field(s) {unknown}")
    d = {**cls.ADDED_SINCE_SAVED, **d}
    return cls(**{k: v for k, v in d.items() if k != "format"})

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
    return self.width + 7 * self.anchor_frames + 1

  def to_dict(self) -> dict:
    return {**asdict(self), "format": self.FORMAT}

  def __post_init__(self):
    if self.output not in ("velocity", "denoiser"):
      raise ValueError(f"DiTConfig.output must be 'velocity' or 'denoiser', got {self.output!r}")
    if self.plan_prior not in ("anchor", "constant_velocity"):
      raise ValueError(f"DiTConfig.plan_prior must be 'anchor' or 'constant_velocity', got {self.plan_prior!r}")
    if self.warp_mode not in WARP_MODES:
      raise ValueError(f"DiTConfig.warp_mode must be one of {WARP_MODES}, got {self.warp_mode!r}")


PRESETS: dict[str, DiTConfig] = {
  # CPU / CI. 128x256 frames (4x16x32 latents) with 4x4 patches: 32 tokens per frame, the same transformer cost as
  # 64x128 frames with 2x2 patches, but a tiny VAE reconstructs 128x256 frames far better (its latent grid has 4x the
  # cells), and the codec's floor bounds every rollout metric.
  # Its 4x4 patches put 64 latent values (128 with the previous frame) into a 128-wide token, so it predicts through
  # the "denoiser" output: a velocity head would have to rebuild the 64 noise values from that token. Its prior is
  # the previous frame re-projected by the pose, because in 30 CPU-minutes the network alone does not learn to move
  # the view with the pose, with a learned prior std per value (WarpDenoiserDiT; its measured effect on rollout PSNR
  # and controllability is in docs/experiments.md).
  "tiny": DiTConfig(name="tiny", latent_h=16, latent_w=32, patch=4, depth=4, width=128, heads=4, plan_hidden=256,
                    plan_blocks=2, output="denoiser"),
  "small": DiTConfig(name="small", latent_h=16, latent_w=32, depth=8, width=384, heads=6, plan_hidden=512, plan_blocks=2),
  # the paper's three sizes, GPT-2 small / medium / large shapes
  "250M": DiTConfig(name="250M", latent_h=16, latent_w=32, depth=12, width=768, heads=12, plan_hidden=1024, plan_blocks=3),
  "500M": DiTConfig(name="500M", latent_h=16, latent_w=32, depth=24, width=1024, heads=16, plan_hidden=1024, plan_blocks=3),
  "1B": DiTConfig(name="1B", latent_h=16, latent_w=32, depth=36, width=1280, heads=20, plan_hidden=1024, plan_blocks=3),
}


def get_config(name: str, **overrides) -> DiTConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown world-model preset {name!r}; choose one of {sorted(PRESETS)}")
  names = {f.name for f in fields(DiTConfig)}
  for k in overrides:
    if k not in names:
      raise ValueError(f"unknown DiTConfig field {k!r}")
  return replace(PRESETS[name], **overrides)


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
# WarpDenoiserDiT: a value's prior std stays within delta_std * exp(+-3) (0.025 .. 10 for delta_std = 0.5)
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

def frame_mask(n_anchor: int, n_frames: int, window: int, anchor_valid: torch.Tensor | None = None) -> torch.Tensor:
  """Frame-level attention mask (B or 1, F_tot, F_tot), True = query frame may attend to key frame.
  F_tot = n_anchor + n_frames; anchor_valid (B,) bool drops the anchors of samples where it is False.
  Ordinary frame i sees the anchors, itself, and the ordinary frames i-window .. i-1."""
  Ft = n_anchor + n_frames
  idx = torch.arange(n_frames)
  d = idx[:, None] - idx[None, :]                                  # query - key
  ordinary = torch.eye(n_frames, dtype=torch.bool) | ((d >= 1) & (d <= window))
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


# ----------------------------------------------------------------------------------------------- data types

@dataclass
class WindowBatch:
  """One training batch of windows (training/data/dataset.py, collated), F = C + 1 frames: the C context frames,
  then the frame to generate; A anchor frames. The anchor fields are None for windows without anchors."""
  latents: torch.Tensor                      # (B,F,C,h,w) scaled VAE latents
  transitions: torch.Tensor                  # (B,F,6) each frame's pose relative to its predecessor
  t_world: torch.Tensor                      # (B,F) seconds since the segment's start
  plan: torch.Tensor                         # (B,T,15) trajectory from the last context frame ("now")
  plan_mask: torch.Tensor | None = None      # (B,T) bool, valid plan points
  anchors: torch.Tensor | None = None        # (B,A,C,h,w)
  anchor_pose: torch.Tensor | None = None    # (B,A,6) relative to "now"
  anchor_t: torch.Tensor | None = None       # (B,A) seconds
  anchor_valid: torch.Tensor | None = None   # (B,) bool, False = anchor dropped

  @classmethod
  def from_dict(cls, d: dict) -> "WindowBatch":
    """A collated dataset batch (a dict with more keys than these) -> WindowBatch."""
    return cls(**{f.name: d.get(f.name) for f in fields(cls)})

  def to(self, device, non_blocking: bool = False) -> "WindowBatch":
    return WindowBatch(**{f.name: None if getattr(self, f.name) is None else
                          getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})


@dataclass
class AnchorSummary:
  """What the Plan Head reads of the future anchor (WorldModelDiT.anchor_summary)."""
  hidden: torch.Tensor   # (B,W) the anchor tokens' final hidden states, averaged
  pose: torch.Tensor     # (B,A,6) anchor poses relative to "now"
  t: torch.Tensor        # (B,A) anchor world times
  valid: torch.Tensor    # (B,) bool, False = no anchor for this sample


@dataclass
class DiTOutput:
  """WorldModelDiT.forward's result."""
  velocity: torch.Tensor      # (B,F,C,h,w) u = o - eps for every ordinary frame
  hidden: torch.Tensor        # (B,F,P,W) final hidden tokens of every ordinary frame
  plan: PlanOutput | None = None   # the Plan Head's output for frame `plan_index`, when asked for


class KVCache:
  """The keys/values a rollout keeps (paper §4.3), per layer: the anchors' (encoded once) and those of the last
  `window` finished frames (a sliding window). Also what the next frame needs of the past: `last_frame`, the
  latest finished frame (its predecessor), and `anchor`, the AnchorSummary of the cached anchors (the Plan Head's
  input). WorldModelDiT.new_cache makes one; the model fills it with set_anchors / append and reads it with
  prefixes."""

  def __init__(self, layers: int, window: int, scratch: int = 0):
    self.window = window
    self.scratch = scratch                        # tokens per frame: room left after the prefix (Attention.forward)
    self._anchors: list = [None] * layers         # per layer (k, v) or None
    self._frames: list = [[] for _ in range(layers)]   # per layer: list over frames of (k, v)
    self._prefix: dict = {}                       # layer -> concatenated (k, v), rebuilt only when the cache changes
    self._seen: tuple | None = None               # (last_frame, pose, last_frame seen from pose): see seen_from
    self._last_frame: torch.Tensor | None = None
    self._anchor: AnchorSummary | None = None

  @property
  def last_frame(self) -> torch.Tensor | None:
    """The latest finished frame (B,C,h,w), or None before the first."""
    return self._last_frame

  @property
  def anchor(self) -> AnchorSummary | None:
    return self._anchor

  @property
  def num_frames(self) -> int:
    return len(self._frames[0]) if self._frames else 0

  def set_anchors(self, kvs: list, summary: AnchorSummary | None) -> None:
    """The anchors' keys/values, one (k, v) (B,H,A*P,hd) or None per layer, and their summary."""
    self._anchors = list(kvs)
    self._anchor = summary
    self._prefix.clear()

  def append(self, kvs: list, frame: torch.Tensor) -> None:
    """A finished frame (B,C,h,w) and its keys/values, one (k, v) (B,H,P,hd) per layer; the oldest frame beyond
    `window` drops out."""
    for layer, kv in enumerate(kvs):
      self._frames[layer].append(kv)
      if len(self._frames[layer]) > self.window:
        self._frames[layer].pop(0)
    self._prefix.clear()
    self._last_frame = frame

  def prefix(self, layer: int):
    """All cached keys/values of one layer in buffers (B,H,L_cached + scratch,hd), the last `scratch` positions
    free for the querying frame's own keys/values; concatenated once per cache change and reused by every Euler
    step. None when nothing is cached."""
    if layer not in self._prefix:
      parts = ([self._anchors[layer]] if self._anchors[layer] is not None else []) + self._frames[layer]
      if not parts:
        self._prefix[layer] = None
      else:
        room = parts[0][0].new_empty(*parts[0][0].shape[:2], self.scratch, parts[0][0].shape[3])
        self._prefix[layer] = tuple(torch.cat([p[j] for p in parts] + [room], 2) for j in (0, 1))
    return self._prefix[layer]

  def prefixes(self) -> list:
    """prefix(layer) for every layer (what WorldModelDiT.frame_pass attends to)."""
    return [self.prefix(i) for i in range(len(self._frames))]

  def seen_from(self, pose: torch.Tensor, view) -> torch.Tensor:
    """view(last_frame, pose): the latest finished frame as the next frame (transition pose (B,6)) sees it,
    computed once per finished frame and pose (all Euler steps of a frame share both)."""
    s = self._seen
    if s is None or s[0] is not self._last_frame or not torch.equal(s[1], pose):
      s = self._seen = (self._last_frame, pose.clone(), view(self._last_frame, pose))
    return s[2]


# ----------------------------------------------------------------------------------------------- model

class WorldModelDiT(nn.Module):
  """The paper's world model: the network's output is the velocity u itself (cfg.output = "velocity"). Subclasses
  change what a frame sees of its predecessor (view_predecessors) and how the output becomes u (velocity); tiny's
  is WarpDenoiserDiT. build_model(cfg) picks the class."""
  output = "velocity"   # the cfg.output this class implements
  out_parts = 1         # final-layer outputs per latent value

  def __init__(self, cfg: DiTConfig):
    super().__init__()
    if cfg.output != self.output:
      raise ValueError(f"{type(self).__name__} implements output={self.output!r}, the config asks for "
                       f"{cfg.output!r}: build the model with build_model(cfg)")
    self.cfg = cfg
    W, p, C = cfg.width, cfg.patch, cfg.latent_channels
    if cfg.latent_h % p or cfg.latent_w % p:
      raise ValueError(f"latent size {cfg.latent_h}x{cfg.latent_w} not divisible by patch {p}")
    self.patch_embed = nn.Conv2d(2 * C, W, kernel_size=p, stride=p)    # a frame's latent + its predecessor's
    self.register_buffer("pos_spatial", sincos_2d(cfg.latent_h // p, cfg.latent_w // p, W), persistent=False)
    self.frame_kind = nn.Embedding(2, W)            # 0 ordinary frame, 1 anchor frame
    self.tau_embed = ScalarEmbed(W, scale=1000.0)
    self.time_embed = ScalarEmbed(W, scale=1.0, max_period=1000.0)   # seconds
    self.pose_embed = PoseEmbed(W, TRANSITION_SCALE)
    self.anchor_pose_embed = PoseEmbed(W, ANCHOR_POSE_SCALE)
    self.blocks = nn.ModuleList([DiTBlock(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
    self.final = FinalLayer(W, p * p * C * self.out_parts)
    self.plan_norm = nn.LayerNorm(W)
    self.anchor_norm = nn.LayerNorm(W)
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

  # ---- what varies between the output parameterisations
  def view_predecessors(self, prev: torch.Tensor, pose: torch.Tensor, skip_first: bool = False) -> torch.Tensor:
    """Predecessors (B,F,C,h,w) of frames with transitions pose (B,F,6) -> what those frames see of them (their
    prev-frame input and, in subclasses, their prior). skip_first: frame 0's "predecessor" is itself (no real one).
    Here: the predecessors as they are."""
    return prev

  def velocity(self, out: torch.Tensor, x_tau: torch.Tensor, prev: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Final-layer output (B,F*P,p*p*C*out_parts) for frames x_tau (B,F,C,h,w) told noise level tau (B,F), whose
    predecessors (as view_predecessors gave them) are prev -> velocity u (B,F,C,h,w). Here the output is u."""
    return self._unpatch(out, x_tau.shape[1])

  # ---- token helpers
  def _tokens(self, x: torch.Tensor, t_world: torch.Tensor, anchor: bool, prev: torch.Tensor | None = None) -> torch.Tensor:
    """x (B,F,C,h,w) latents -> (B,F*P,W) tokens with spatial + frame embeddings. prev (B,F,C,h,w) is each
    ordinary frame's predecessor (anchors get zeros)."""
    B, Fn = x.shape[:2]
    if prev is None:
      if not anchor:
        raise ValueError("ordinary frames need their previous frames")
      prev = torch.zeros_like(x)
    x = torch.cat([x, prev], 2)                                                  # (B,F,2C,h,w)
    tok = self.patch_embed(x.flatten(0, 1).to(self.patch_embed.weight.dtype))  # (B*F,W,h/p,w/p)
    tok = tok.flatten(2).transpose(1, 2).view(B, Fn, -1, self.cfg.width)        # (B,F,P,W)
    fe = self.frame_kind.weight[int(anchor)] + sincos_1d(t_world, self.cfg.width, 1000.0).to(tok.dtype)  # (B,F,W)
    tok = tok + self.pos_spatial.to(tok.dtype) + fe.unsqueeze(2)
    return tok.flatten(1, 2)

  def _cond(self, pose, tau, t_world, anchor: bool) -> torch.Tensor:
    """(B,F,6),(B,F),(B,F) -> per-frame conditioning c (B,F,W)."""
    pe = self.anchor_pose_embed(pose) if anchor else self.pose_embed(pose)
    return pe + self.tau_embed(tau) + self.time_embed(t_world)

  def _unpatch(self, out: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(B,F*P,p*p*C) -> (B,F,C,h,w)."""
    cfg, p = self.cfg, self.cfg.patch
    B = out.shape[0]
    gh, gw = cfg.latent_h // p, cfg.latent_w // p
    out = out.view(B, n_frames, gh, gw, p, p, cfg.latent_channels)
    return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(B, n_frames, cfg.latent_channels, cfg.latent_h, cfg.latent_w)

  def anchor_summary(self, anchor_hidden: torch.Tensor, anchor_pose: torch.Tensor, anchor_t: torch.Tensor,
                     anchor_valid: torch.Tensor | None = None) -> AnchorSummary:
    """Final hidden tokens of the anchor frames (B,A*P,W) + their poses (B,A,6) and times (B,A) -> what the Plan Head
    reads of the anchor. Anchors attend only to anchors, so this is the same whether it comes from a full forward
    pass, the KV cache or encode_anchors."""
    B = anchor_hidden.shape[0]
    valid = torch.ones(B, dtype=torch.bool, device=anchor_hidden.device) if anchor_valid is None else anchor_valid.bool()
    return AnchorSummary(anchor_hidden.mean(1), anchor_pose, anchor_t, valid)

  @torch.no_grad()
  def encode_anchors(self, anchors, anchor_pose, anchor_t, anchor_valid=None) -> AnchorSummary:
    """Run the anchor frames (B,A,C,h,w) alone (exactly their part of any full pass) -> anchor_summary."""
    cache = self.new_cache()
    self.cache_anchors(cache, anchors, anchor_pose, anchor_t)
    return cache.anchor if anchor_valid is None else replace(cache.anchor, valid=anchor_valid.bool())

  def _anchor_features(self, anchor: AnchorSummary | None, t_now: torch.Tensor | None, B: int,
                       ref: torch.Tensor) -> torch.Tensor:
    """(B, cfg.plan_anchor_dim): LayerNorm(pooled anchor hidden), anchor poses / ANCHOR_POSE_SCALE, time offsets
    (anchor time - now) / 10 s, and a has-anchor flag; all zero where there is no (valid) anchor."""
    A = self.cfg.anchor_frames
    if anchor is None:
      return torch.zeros(B, self.cfg.plan_anchor_dim, device=ref.device, dtype=ref.dtype)
    if anchor.pose.shape[1] != A:
      raise ValueError(f"plan: {anchor.pose.shape[1]} anchor frames, the model was built for {A}")
    if t_now is None:
      raise ValueError("plan: an anchor needs t_now, the current frame's world time")
    v = anchor.valid.to(ref.dtype)[:, None]                                               # (B,1)
    scale = torch.tensor(ANCHOR_POSE_SCALE, device=ref.device)
    pose = (anchor.pose.float() / scale).flatten(1)                                       # (B,6A)
    dt = (anchor.t.float() - t_now.float()[:, None]) / 10.0                               # (B,A)
    feats = torch.cat([self.anchor_norm(anchor.hidden).to(ref.dtype), pose.to(ref.dtype), dt.to(ref.dtype),
                       torch.ones_like(v)], 1)
    return feats * v

  def plan(self, frame_hidden: torch.Tensor, transition: torch.Tensor, anchor: AnchorSummary | None = None,
           t_now: torch.Tensor | None = None) -> PlanOutput:
    """Final hidden tokens of the current frame (B,P,W), its transition (B,6) (the pose input of that frame), the
    anchor (AnchorSummary or None) and the current world time t_now (B,) -> plan head outputs (plan_head.PlanHead):
    corrections to the kinematic prior of cfg.plan_prior (the path to the anchor, or constant velocity)."""
    if self.cfg.plan_prior == "anchor" and anchor is not None and t_now is not None:
      prior = anchor_reaching_plan(transition, anchor.pose, anchor.t - t_now[:, None].to(anchor.t.dtype), anchor.valid,
                                   self.cfg.fps)
    else:
      prior = constant_velocity_plan(transition, self.cfg.fps)
    feats = self.plan_norm(frame_hidden.mean(dim=1))
    feats = torch.cat([feats, self._anchor_features(anchor, t_now, feats.shape[0], feats)], 1)
    return self.plan_head(feats, prior)

  @staticmethod
  def previous_frames(frames: torch.Tensor, first_prev: torch.Tensor | None = None) -> torch.Tensor:
    """(B,F,C,h,w) -> each frame's predecessor; the first frame's is first_prev (B,C,h,w), or the frame itself."""
    first = frames[:, :1] if first_prev is None else first_prev[:, None]
    return torch.cat([first, frames[:, :-1]], 1)

  # ---- full (uncached) forward, used for training and as the reference sampler
  def forward(self, frames, pose, tau, t_world, anchors=None, anchor_pose=None, anchor_t=None, anchor_valid=None,
              window: int | None = None, plan_index: int | None = None) -> DiTOutput:
    """frames (B,F,C,h,w) ordinary frames (one causal stream: past context, and the frame being generated last),
    pose (B,F,6) transitions, tau (B,F) noise level TOLD to the model, t_world (B,F) seconds; anchors (B,A,C,h,w)
    with anchor_pose (B,A,6), anchor_t (B,A), anchor_valid (B,) bool (False = anchor dropped). window defaults to
    cfg.context_frames. The plan head runs for ordinary frame `plan_index` when it is given (inside forward so DDP
    sees every parameter)."""
    B, Fn = frames.shape[:2]
    P, W = self.cfg.tokens_per_frame, self.cfg.width
    window = self.cfg.context_frames if window is None else window
    prev = self.view_predecessors(self.previous_frames(frames), pose, skip_first=True)
    x = self._tokens(frames, t_world, anchor=False, prev=prev)
    c = self._cond(pose, tau, t_world, anchor=False)
    A = 0
    if anchors is not None and anchors.shape[1] > 0:
      A = anchors.shape[1]
      zeros = torch.zeros(B, A, device=frames.device)
      x = torch.cat([self._tokens(anchors, anchor_t, anchor=True), x], 1)
      c = torch.cat([self._cond(anchor_pose, zeros, anchor_t, anchor=True), c], 1)
    mask = token_mask(frame_mask(A, Fn, window, anchor_valid if A else None), P).to(frames.device)
    for blk in self.blocks:
      x, _ = blk(x, c, mask)
    anchor = self.anchor_summary(x[:, :A * P], anchor_pose, anchor_t, anchor_valid) if A else None
    x = x[:, A * P:]
    u = self.velocity(self.final(x, c[:, A:]), frames, prev, tau)
    hidden = x.view(B, Fn, P, W)
    plan = None
    if plan_index is not None:
      plan = self.plan(hidden[:, plan_index], pose[:, plan_index], anchor, t_world[:, plan_index])
    return DiTOutput(u, hidden, plan)

  # ---- cached inference
  def new_cache(self) -> KVCache:
    return KVCache(len(self.blocks), window=self.cfg.context_frames, scratch=self.cfg.tokens_per_frame)

  @torch.no_grad()
  def cache_anchors(self, cache: KVCache, anchors, anchor_pose, anchor_t) -> None:
    """Encode anchor frames (B,A,C,h,w) once; their keys/values are reused by every later query."""
    B, A = anchors.shape[:2]
    x = self._tokens(anchors, anchor_t, anchor=True)
    c = self._cond(anchor_pose, torch.zeros(B, A, device=anchors.device), anchor_t, anchor=True)
    kvs = []
    for blk in self.blocks:
      x, kv = blk(x, c, None)   # anchors attend to all anchors
      kvs.append(kv)
    cache.set_anchors(kvs, self.anchor_summary(x, anchor_pose, anchor_t))

  @torch.no_grad()
  def prefill(self, cache: KVCache, frames, pose, t_world, anchors=None, anchor_pose=None, anchor_t=None):
    """Encode anchors + C ground-truth context frames (B,C,c,h,w) in ONE masked forward pass (the same result as
    cache_anchors + C sequential cache_frame calls) and fill the cache. Returns the last frame's hidden (B,P,W)."""
    B, Fn = frames.shape[:2]
    P = self.cfg.tokens_per_frame
    prev = self.view_predecessors(self.previous_frames(frames, cache.last_frame), pose,
                                  skip_first=cache.last_frame is None)
    x = self._tokens(frames, t_world, anchor=False, prev=prev)
    c = self._cond(pose, torch.zeros(B, Fn, device=frames.device), t_world, anchor=False)
    A = 0
    if anchors is not None and anchors.shape[1] > 0:
      A = anchors.shape[1]
      x = torch.cat([self._tokens(anchors, anchor_t, anchor=True), x], 1)
      c = torch.cat([self._cond(anchor_pose, torch.zeros(B, A, device=frames.device), anchor_t, anchor=True), c], 1)
    mask = token_mask(frame_mask(A, Fn, cache.window), P).to(frames.device)
    kvs = []
    for blk in self.blocks:
      x, kv = blk(x, c, mask)
      kvs.append(kv)
    cache.set_anchors([(k[:, :, :A * P], v[:, :, :A * P]) if A else None for k, v in kvs],
                      self.anchor_summary(x[:, :A * P], anchor_pose, anchor_t) if A else None)
    for f in range(Fn):
      sl = slice((A + f) * P, (A + f + 1) * P)
      cache.append([(k[:, :, sl], v[:, :, sl]) for k, v in kvs], frames[:, f])
    return x[:, -P:]

  def frame_predecessor(self, cache: KVCache, frame, pose) -> torch.Tensor:
    """The predecessor (B,C,h,w) of the next ordinary frame (transition pose (B,6)) as the model sees it: the
    cache's last finished frame, or `frame` itself when the cache holds no frame yet."""
    return frame if cache.last_frame is None else cache.last_frame

  def log_predecessor(self, logged: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Re-anchored rollouts need a model whose predecessor is re-projected by the pose (WarpDenoiserDiT); this one
    sees its predecessor as it was and learns the motion from the pose alone."""
    raise ValueError(f"a re-anchored rollout (predecessor 'log') needs a world model with output='denoiser' (it "
                     f"re-projects its predecessor); this one has output={self.cfg.output!r}")

  def frame_pass(self, frame, prev, pose, tau, t_world, prefixes):
    """One ordinary frame (B,C,h,w) with its predecessor prev (B,C,h,w) attending to per-layer cached keys/values
    `prefixes` (KVCache.prefixes, entries None where nothing is cached) and to itself. Pure tensor work, no host
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
    return self.velocity(self.final(x, c), x_tau.unsqueeze(1), prev.unsqueeze(1), tau.unsqueeze(1))[:, 0]

  @torch.no_grad()
  def cache_frame(self, cache: KVCache, frame, pose, t_world, tau=None, prev=None) -> torch.Tensor:
    """Append a finished frame (B,C,h,w) to the cache (encoded once, told noise level `tau`, default 0). prev: the
    predecessor it was generated from (B,C,h,w), when that was not frame_predecessor's (log_predecessor).
    Returns its final hidden tokens (B,P,W) (input of the plan head)."""
    B = frame.shape[0]
    tau = torch.zeros(B, device=frame.device) if tau is None else tau
    prev = self.frame_predecessor(cache, frame, pose) if prev is None else prev
    x, _, new_kv = self.frame_pass(frame, prev, pose, tau, t_world, cache.prefixes())
    cache.append(new_kv, frame)
    return x

  @torch.no_grad()
  def velocity_cached(self, cache: KVCache, x_tau, pose, tau, t_world) -> torch.Tensor:
    """Velocity u (B,C,h,w) for the frame being generated at noise level tau (B,), using the cache."""
    return self.velocity_from_prefix(x_tau, self.frame_predecessor(cache, x_tau, pose), pose, tau, t_world,
                                     cache.prefixes())


class WarpDenoiserDiT(WorldModelDiT):
  """tiny's world model (cfg.output = "denoiser"; our addition): the output is a clean-frame residual around the
  previous frame re-projected into the new view, with a learned prior std per latent value. Three things differ
  from the paper's velocity output, and tiny uses all three:
    * the previous frame a frame sees (its prev-frame input and the prior below) is first re-projected into its view
      by its transition: road plane + rotation at infinity (pose_warp.py), because in 30 CPU-minutes the network
      alone does not learn to move the view with the pose;
    * the output is not u but F, the unit-variance residual of a clean-frame estimate around the best linear guess
      from x_tau and that previous frame (EDM-style preconditioning): a 4x4 patch holds 64 latent values, 128 with
      the previous frame, in a 128-wide token, too narrow to rebuild the noise part of u = o - eps;
    * the network also outputs, for every latent value, the log of its own prior std around the warped previous
      frame (a heteroscedastic Gaussian prior): where the warp is already right (sky, road) the estimate collapses
      onto it with one multiplicative gate, and where new content appears the prior widens.
  docs/experiments.md has what each of the three was measured to give."""
  output = "denoiser"
  out_parts = 2   # [F | log prior-std scale] per latent value

  def view_predecessors(self, prev: torch.Tensor, pose: torch.Tensor, skip_first: bool = False) -> torch.Tensor:
    """Predecessors (B,F,C,h,w) -> seen from their successors' views by the successors' transitions pose (B,F,6)
    (pose_warp.warp_previous). skip_first: frame 0's "predecessor" is itself (no real one), left as it is."""
    out = warp_previous(prev.flatten(0, 1), pose.flatten(0, 1), self.cfg.frame_hw, cam_height=self.cfg.warp_cam_height,
                        max_depth=self.cfg.warp_max_depth, mode=self.cfg.warp_mode).view_as(prev)
    return torch.cat([prev[:, :1], out[:, 1:]], 1) if skip_first else out

  def log_predecessor(self, logged: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """A LOGGED frame's latent (B,C,h,w) re-projected to the car's pose `pose` (B,6: the car's pose in that logged
    frame's car frame): the predecessor of a re-anchored rollout, in place of the model's own previous frame
    (training.onpolicy.sim_worldmodel, predecessor="log"). The network was trained on real previous frames seen
    through such a warp, so this is an input of the kind it knows; what it adds is the step from there to the frame."""
    return self.view_predecessors(logged.unsqueeze(1), pose.unsqueeze(1))[:, 0]

  def frame_predecessor(self, cache: KVCache, frame, pose) -> torch.Tensor:
    """The cache's last finished frame re-projected into the next frame's view (transition pose (B,6)), once per
    finished frame and pose (KVCache.seen_from), not once per Euler step; `frame` itself for an empty cache."""
    if cache.last_frame is None:
      return frame
    return cache.seen_from(pose, lambda last, p: self.view_predecessors(last.unsqueeze(1), p.unsqueeze(1))[:, 0])

  def velocity(self, out: torch.Tensor, x_tau: torch.Tensor, prev: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    out, log_s = out.chunk(2, dim=-1)
    n = x_tau.shape[1]
    return self.velocity_from_output(self._unpatch(out, n), x_tau, prev, tau, self._unpatch(log_s, n))

  def velocity_from_output(self, out: torch.Tensor, x_tau: torch.Tensor, prev: torch.Tensor, tau: torch.Tensor,
                           log_s: torch.Tensor) -> torch.Tensor:
    """Network output F and log prior-std scale log_s (B,[F,]C,h,w) -> velocity u, for frames x_tau told noise level
    tau (B,[F]) whose (warped) predecessors are prev.

    With x_tau = a o + b eps (a = 1 - tau, b = tau) and o = m + d, d of std s (m = prev,
    s = delta_std * exp(LOG_PRIOR_STD_RANGE * tanh(log_s / LOG_PRIOR_STD_RANGE)) per value), the best linear
    estimate of o is m + c_skip (x_tau - a m), c_skip = a s^2 / D, D = a^2 s^2 + b^2, with error std
    c_out = s b / sqrt(D). The network predicts that error in units of c_out: o_hat = m + c_skip (x_tau - a m) +
    c_out F, and u = (o_hat - x_tau) / tau, which is o - eps exactly when o_hat = o. At init (F = 0, log_s = 0) one
    Euler step from tau = 1 gives the previous frame; at tau = 0, u = 0."""
    t = tau.float().reshape(tau.shape + (1,) * (x_tau.ndim - tau.ndim))
    m, s = prev.float(), self.cfg.delta_std
    s = s * torch.exp(LOG_PRIOR_STD_RANGE * torch.tanh(log_s.float() / LOG_PRIOR_STD_RANGE))
    a, b = 1 - t, t
    D = a * a * s * s + b * b
    o_hat = m + (a * s * s / D) * (x_tau.float() - a * m) + (s * b / D.sqrt()) * out.float()
    return (o_hat - x_tau.float()) / t.clamp(min=1e-3)


def build_model(cfg: DiTConfig) -> WorldModelDiT:
  """The model class cfg.output names: WorldModelDiT ("velocity") or WarpDenoiserDiT ("denoiser")."""
  return (WarpDenoiserDiT if cfg.output == "denoiser" else WorldModelDiT)(cfg)


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


def rectified_flow_loss(model, batch: WindowBatch, generator: torch.Generator | None = None,
                        cfg: DiTConfig | None = None) -> tuple:
  """Rectified-flow loss on the last frame of each window (the paper's layout) + the plan head's MHP loss.

  The generated frame gets tau ~ LogitNormal(0, 1) and its own noise, and sees the F-1 context frames. The context
  gets the §4.4 noise-level augmentation and is told tau = 0; it is never a target. The plan is that of the last
  context frame ("now"). model may be wrapped (DDP); then pass cfg. Returns (total loss, dict of detached parts)."""
  from training.mhp import mhp_loss
  cfg = cfg or model.cfg
  lat = batch.latents
  B, Fn = lat.shape[:2]
  C = Fn - 1
  dev = lat.device
  o = lat[:, C:]                                                          # the frame to generate (B,1,C,h,w)
  eps = torch.randn(o.shape, generator=generator, device=dev, dtype=o.dtype)
  tau = torch.sigmoid(torch.randn(B, 1, generator=generator, device=dev))  # LogitNormal(0, 1)
  o_tau = rf_interpolate(o, eps, tau)
  # noise-level augmentation of the past context (§4.4); the model is told tau = 0 for them
  ctx = lat[:, :-1]
  aug = torch.rand(B, generator=generator, device=dev) < cfg.ctx_noise_prob
  ctx_tau = torch.sigmoid(cfg.ctx_noise_logit_mean + cfg.ctx_noise_logit_std *
                          torch.randn(B, C, generator=generator, device=dev)) * aug[:, None]
  ctx = rf_interpolate(ctx, torch.randn(ctx.shape, generator=generator, device=dev, dtype=o.dtype), ctx_tau)
  frames = torch.cat([ctx, o_tau], 1)
  told_tau = torch.cat([torch.zeros(B, C, device=dev), tau], 1)
  out = model(frames, batch.transitions, told_tau, batch.t_world, batch.anchors, batch.anchor_pose, batch.anchor_t,
              batch.anchor_valid, plan_index=C - 1)   # plan from the current frame = last context frame
  l_rf = (out.velocity[:, C:].float() - rf_target(o, eps).float()).pow(2).mean()
  l_mhp, info = mhp_loss(out.plan.mean, out.plan.log_scale, out.plan.logits, normalize_plan(batch.plan),
                         batch.plan_mask)
  loss = l_rf + cfg.plan_loss_weight * l_mhp
  return loss, {"loss": loss.detach(), "rf": l_rf.detach(), "mhp": l_mhp.detach(), "plan_nll": info["nll"],
                "plan_ce": info["ce"]}


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
