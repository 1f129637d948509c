"""The driving policy of paper §5: a FastViT feature extractor with auxiliary heads and an information
bottleneck (the *vision* model, run on every frame), and a small causal transformer over 2 s of those
features plus speed and desire (the *temporal* model) that outputs the plan and the action.

Inputs, and why
  Vision: the calibrated, rotation-corrected model frame (``common.transformations.camera.warp_to_model_frame``)
  as TWO RGB frames 0.2 s apart stacked on channels -> (B, 6, H, W) uint8 [frame(t-0.2s), frame(t)].
  One frame cannot tell speed, the lead's relative speed or yaw rate; the pair gives the extractor motion
  (openpilot stacks two frames for the same reason). 0.2 s (4 frames at 20 Hz) is the world model's step, so
  pixels move enough at low speed to be measurable.
  Temporal: the last ``history`` = 10 feature vectors at 5 Hz (2 s, the world model's context), with the
  speed (m/s) and one-hot desire at each of those steps. 5 Hz rather than 20 Hz: same 2 s of context with a
  4x shorter sequence, and consecutive 20 Hz features are nearly redundant.

Information bottleneck (§5.2): features are LayerNorm'ed (no affine: mean power 1 per dim) and, while
training, pass a Gaussian channel z + N(0, sigma^2) whose capacity  D/2 * log2(1 + 1/sigma^2)  equals
``bottleneck_bits``. At inference the noise is off. ``measured_capacity_bits`` reports what the features
actually use on data: sum_d 1/2 log2(1 + Var[z_d] / sigma^2) <= the configured capacity.

Outputs are flat vectors laid out by ``common.modelconstants`` (shared with modeld); every head is
followed by a fixed per-element scale so the network works in O(1) units while the exported graph speaks
metres, m/s and radians.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.modelconstants import (
  DESIRE_LEN,
  MODEL_FRAME_FOCAL,
  MODEL_FRAME_W,
  PLAN_SLICES,
  T_IDXS,
  X_IDXS,
  layout_size,
  policy_output_layout,
  vision_output_layout,
)
from training.policy.fastvit import FASTVIT_PRESETS, FastViT

FRAME_STACK = 2          # frames stacked on channels
FRAME_STACK_GAP = 4      # 20 Hz frames between them (0.2 s)
HISTORY_STRIDE = 4       # 20 Hz frames between temporal-model steps (5 Hz)

# The temporal model's desired curvature. "split": curvature = kappa + a / (v^2 + CURVATURE_SPEED_FLOOR^2), where the
# output head predicts kappa (the path's own curvature: the same at every speed) and a second head predicts a, the
# lateral acceleration (m/s^2) that brings the car back to the lane centre. Returning over a fixed TIME needs the same
# `a` at every speed but a curvature that falls as 1/v^2 (4x from 15 to 30 m/s), while following a curve needs the
# same curvature at every speed; one head that must learn the division from a speed input does neither (it predicts
# nearly the same curvature at every speed: too weak when slow, too strong when fast).
# "direct": the output head predicts the curvature alone (checkpoints written before this option).
CURVATURE_PARAMS = ("split", "direct")
CURVATURE_SPEED_FLOOR = 5.0   # m/s: keeps the division finite at standstill
LAT_ACCEL_SCALE = 1.0         # m/s^2: the lateral-acceleration head's typical magnitude (output_scale's role)


@dataclass(frozen=True)
class PolicyConfig:
  name: str
  backbone: str                 # FASTVIT_PRESETS key
  frame_h: int                  # model frame the vision net sees
  frame_w: int
  head_channels: int            # 1x1 reduction of the last feature map before flattening
  feature_dim: int              # D: bottleneck width
  bottleneck_bits: float        # capacity of the Gaussian channel (paper: ~700 bits)
  aux_hidden: int               # hidden width of the output heads
  history: int = 10             # temporal-model steps (at 5 Hz -> 2 s)
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 8
  curvature_param: str = "split"   # how the temporal model's curvature head is parametrised (CURVATURE_PARAMS)
  lat_accel_scale: float = LAT_ACCEL_SCALE   # m/s^2 per unit of the "split" lateral-acceleration head's output

  def __post_init__(self):
    if self.curvature_param not in CURVATURE_PARAMS:
      raise ValueError(f"PolicyConfig.curvature_param {self.curvature_param!r}: choose from {CURVATURE_PARAMS}")
    if not self.lat_accel_scale > 0:
      raise ValueError(f"PolicyConfig.lat_accel_scale {self.lat_accel_scale}: expected > 0 m/s^2")

  @property
  def frame_focal(self) -> float:
    return MODEL_FRAME_FOCAL * self.frame_w / MODEL_FRAME_W

  @property
  def frame_spec(self) -> dict:
    return {"width": self.frame_w, "height": self.frame_h, "focal": self.frame_focal}

  def to_dict(self) -> dict:
    return asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "PolicyConfig":
    # configs saved before curvature_param existed predicted the curvature directly
    return cls(**{"curvature_param": "direct", **d})


# tiny's bottleneck: 256 bits over 64 features (noise std 0.063), not the paper's ~1.4 bits per feature: through the
# noisier channel the extractor's few CPU steps read the car's heading in its lane shrunk and late, and the policies
# steered late with it (docs/experiments.md, 2026-12-07, session after stop 51).
PRESETS = {
  "tiny": PolicyConfig("tiny", "tiny", 64, 128, head_channels=8, feature_dim=64, bottleneck_bits=256.0,
                       aux_hidden=128, d_model=64, n_layers=2, n_heads=4),
  "T8": PolicyConfig("T8", "T8", 128, 256, head_channels=32, feature_dim=512, bottleneck_bits=700.0, aux_hidden=512),
  "T12": PolicyConfig("T12", "T12", 128, 256, head_channels=32, feature_dim=512, bottleneck_bits=700.0, aux_hidden=512),
  "SA12": PolicyConfig("SA12", "SA12", 128, 256, head_channels=32, feature_dim=512, bottleneck_bits=700.0,
                       aux_hidden=512),
}


def get_config(name: str) -> PolicyConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown policy preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]


# ---------------------------------------------------------------- output scaling

def _plan_scale() -> np.ndarray:
  """(IDX_N, PLAN_WIDTH) typical magnitude of each plan element at each time."""
  t = T_IDXS[:, None]
  cols = [1 + 25 * t, 0.5 + 0.3 * t ** 2, 0.2 + 0.1 * t,          # position x y z (m)
          25 + 0 * t, 0.5 + 0.3 * t, 0.2 + 0 * t,                   # velocity (m/s)
          1.5 + 0 * t, 0.5 + 0 * t, 0.2 + 0 * t,                    # acceleration (m/s^2)
          0.02 + 0 * t, 0.02 + 0.01 * t, 0.05 + 0.05 * t,          # roll pitch yaw (rad)
          0.02 + 0 * t, 0.02 + 0 * t, 0.05 + 0 * t]                # their rates (rad/s)
  return np.concatenate(cols, axis=1)


CURVATURE_SCALE = 0.01   # 1/m: the curvature head's typical magnitude


def output_scale(layout: dict) -> np.ndarray:
  """Per-element scale s of a flat output: mean = raw * s, log_scale = raw + log(s), logits as is."""
  x = X_IDXS[:, None]
  line = np.concatenate([1.0 + 0.02 * x, 0.2 + 0.01 * x], axis=1)  # (IDX_N, 2): y, z
  per = {
    "plan": _plan_scale()[None],                    # (1, IDX_N, W) broadcast over K
    "lane_lines": line[None], "road_edges": line[None],
    "lead": np.array([30.0, 3.0, 5.0, 1.5]),
    "action": np.array([CURVATURE_SCALE, 1.0]),
  }
  scale = np.ones(layout_size(layout), dtype=np.float64)
  for name, (a, b, shape) in layout.items():
    if name not in per:
      continue  # logits
    s = np.broadcast_to(np.asarray(per[name])[..., None], shape)  # last axis = (mean, log_scale)
    scale[a:b] = s.reshape(-1)
  return scale


class OutputHead(nn.Module):
  """in_dim -> MLP -> flat output vector in physical units (see module docstring)."""

  def __init__(self, in_dim: int, hidden: int, layout: dict):
    super().__init__()
    n = layout_size(layout)
    self.fc1 = nn.Linear(in_dim, hidden)
    self.fc2 = nn.Linear(hidden, n)
    s = output_scale(layout)
    is_log_scale = np.zeros(n, dtype=bool)
    for name, (a, b, shape) in layout.items():
      if shape[-1] == 2 and name not in ("plan_prob", "lead_prob"):
        is_log_scale[a:b] = np.tile([False, True], (b - a) // 2)
    mul = np.where(is_log_scale, 1.0, s)
    add = np.where(is_log_scale, np.log(s), 0.0)
    self.register_buffer("out_mul", torch.tensor(mul, dtype=torch.float32))
    self.register_buffer("out_add", torch.tensor(add, dtype=torch.float32))
    nn.init.zeros_(self.fc2.bias)
    nn.init.normal_(self.fc2.weight, std=0.01)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x))) * self.out_mul + self.out_add


# ---------------------------------------------------------------- bottleneck

def bottleneck_noise_std(feature_dim: int, bits: float) -> float:
  """sigma such that feature_dim/2 * log2(1 + 1/sigma^2) == bits (unit signal power per dim)."""
  if bits <= 0:
    raise ValueError(f"bottleneck_bits must be > 0, got {bits}")
  return float(1.0 / math.sqrt(2.0 ** (2.0 * bits / feature_dim) - 1.0))


def measured_capacity_bits(z: torch.Tensor | np.ndarray, noise_std: float) -> float:
  """Capacity the features use on data: sum_d 1/2 log2(1 + Var_batch[z_d] / sigma^2). z (N, D), N >= 2."""
  z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).double()
  if z.ndim != 2 or z.shape[0] < 2:
    raise ValueError(f"measured_capacity_bits needs (N>=2, D) features, got {tuple(z.shape)}")
  var = z.var(dim=0, unbiased=True)
  return float((0.5 * torch.log2(1.0 + var / noise_std ** 2)).sum())


class GaussianBottleneck(nn.Module):
  """(B, D) -> LayerNorm (no affine) -> + N(0, sigma^2) in training. Capacity = D/2 log2(1 + 1/sigma^2)."""

  def __init__(self, dim: int, bits: float):
    super().__init__()
    self.dim, self.bits = dim, bits
    self.noise_std = bottleneck_noise_std(dim, bits)

  def forward(self, h, noise: bool | None = None):
    z = F.layer_norm(h, (self.dim,))
    if (self.training if noise is None else noise):
      z = z + self.noise_std * torch.randn_like(z)
    return z


# ---------------------------------------------------------------- vision

class VisionModel(nn.Module):
  """img (B, 6, H, W) uint8 or float in [0, 255] -> (features (B, D), aux (B, N_vision))."""

  def __init__(self, cfg: PolicyConfig):
    super().__init__()
    self.cfg = cfg
    bcfg = FASTVIT_PRESETS[cfg.backbone]
    if bcfg.in_chans != 3 * FRAME_STACK:
      raise ValueError(f"backbone {bcfg.name} takes {bcfg.in_chans} channels, need {3 * FRAME_STACK}")
    if cfg.frame_h % 32 or cfg.frame_w % 32:
      raise ValueError(f"PolicyConfig {cfg.name}: frame {cfg.frame_h}x{cfg.frame_w} must be multiples of 32")
    self.backbone = FastViT(bcfg)
    self.reduce = nn.Conv2d(self.backbone.out_channels, cfg.head_channels, 1)
    n_flat = cfg.head_channels * (cfg.frame_h // 32) * (cfg.frame_w // 32)
    self.to_features = nn.Linear(n_flat, cfg.feature_dim)
    self.bottleneck = GaussianBottleneck(cfg.feature_dim, cfg.bottleneck_bits)
    self.layout = vision_output_layout()
    self.aux_head = OutputHead(cfg.feature_dim, cfg.aux_hidden, self.layout)

  def forward(self, img, noise: bool | None = None):
    # contiguous NCHW: a batch stacked from HWC frames arrives with channels-last strides, and oneDNN's convolution
    # backward on such an input corrupts the heap (torch 2.13 CPU; tests/training/policy/test_model.py)
    x = img.contiguous().float() * (1.0 / 127.5) - 1.0           # (B, 6, H, W) in [-1, 1]
    f = F.gelu(self.reduce(self.backbone(x)))                    # (B, hc, H/32, W/32)
    z = self.bottleneck(self.to_features(f.flatten(1)), noise)  # (B, D)
    return z, self.aux_head(z)

  def reparameterize(self) -> "VisionModel":
    self.backbone.reparameterize()
    return self


# ---------------------------------------------------------------- temporal

class CausalSelfAttention(nn.Module):
  def __init__(self, d, n_heads, max_len):
    super().__init__()
    self.n_heads = n_heads
    self.qkv = nn.Linear(d, 3 * d)
    self.proj = nn.Linear(d, d)
    mask = torch.full((max_len, max_len), -1e4).triu(1)  # additive; finite so every runtime agrees
    self.register_buffer("mask", mask, persistent=False)

  def forward(self, x):  # (B, T, d)
    B, T, d = x.shape
    q, k, v = self.qkv(x).reshape(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
    att = (q @ k.transpose(-2, -1)) * (d // self.n_heads) ** -0.5 + self.mask[:T, :T]
    y = (torch.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(B, T, d)
    return self.proj(y)


class Block(nn.Module):
  def __init__(self, d, n_heads, max_len):
    super().__init__()
    self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
    self.attn = CausalSelfAttention(d, n_heads, max_len)
    self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

  def forward(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.mlp(self.ln2(x))


class TemporalPolicy(nn.Module):
  """features (B,T,D), v_ego (B,T) m/s, desire (B,T,DESIRE_LEN) one-hot -> (B, T, N_policy), causal in T.

  Position t sees steps <= t only, so training supervises every position; deployment reads the last."""

  def __init__(self, cfg: PolicyConfig):
    super().__init__()
    self.cfg = cfg
    self.in_proj = nn.Linear(cfg.feature_dim, cfg.d_model)
    self.cond = nn.Linear(1 + DESIRE_LEN, cfg.d_model)
    self.pos = nn.Parameter(0.02 * torch.randn(cfg.history, cfg.d_model))
    self.blocks = nn.ModuleList([Block(cfg.d_model, cfg.n_heads, cfg.history) for _ in range(cfg.n_layers)])
    self.ln_f = nn.LayerNorm(cfg.d_model)
    self.layout = policy_output_layout()
    self.head = OutputHead(cfg.d_model, cfg.aux_hidden, self.layout)
    # Constant-speed prior: plan position x += v_ego * t and velocity x += v_ego (means of every hypothesis),
    # so the network learns the deviation from "keep going at this speed" instead of re-deriving speed * time.
    basis = np.zeros(layout_size(self.layout), dtype=np.float32)
    a, b, shape = self.layout["plan"]
    view = basis[a:b].reshape(shape)                             # (K, IDX_N, PLAN_WIDTH, 2)
    view[:, :, PLAN_SLICES["position"].start, 0] = T_IDXS
    view[:, :, PLAN_SLICES["velocity"].start, 0] = 1.0
    self.register_buffer("speed_basis", torch.from_numpy(basis), persistent=False)
    if cfg.curvature_param == "split":   # the lateral-acceleration head, added to the curvature's mean (CURVATURE_PARAMS)
      k_mean = np.zeros(layout_size(self.layout), dtype=np.float32)
      k_mean[self.layout["action"][0]] = 1.0                   # action (2, 2): [curvature, accel] x [mean, log_scale]
      self.register_buffer("curvature_mean_mask", torch.from_numpy(k_mean), persistent=False)
      self.lat_accel = nn.Sequential(nn.Linear(cfg.d_model, cfg.aux_hidden), nn.GELU(), nn.Linear(cfg.aux_hidden, 1))
      nn.init.zeros_(self.lat_accel[2].bias)
      nn.init.normal_(self.lat_accel[2].weight, std=0.01)

  def forward(self, features, v_ego, desire):
    return self.forward_parts(features, v_ego, desire)[0]

  def forward_parts(self, features, v_ego, desire) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(outputs (B, T, N_policy), path curvature (B, T) or None): with the "split" head, the second is the curvature
    mean's own part, kappa, before the lateral-acceleration part is added (the on-policy learner can hold it to the
    path's curvature: training/onpolicy/learner.py, path_curvature_weight); None with the "direct" head."""
    B, T, _ = features.shape
    if T > self.cfg.history:
      raise ValueError(f"TemporalPolicy: {T} steps > history {self.cfg.history}")
    c = torch.cat([v_ego.unsqueeze(-1) * (1.0 / 30.0), desire], dim=-1)  # (B, T, 1+DESIRE_LEN)
    x = self.in_proj(features) + self.cond(c) + self.pos[-T:]          # right-aligned: last step = now
    for b in self.blocks:
      x = b(x)
    h = self.ln_f(x)
    out = self.head(h) + v_ego.unsqueeze(-1) * self.speed_basis   # (B, T, N_policy)
    if self.cfg.curvature_param != "split":
      return out, None
    kappa = out[..., self.layout["action"][0]]                                  # (B, T) 1/m (head in physical units)
    a = self.cfg.lat_accel_scale * self.lat_accel(h)                            # (B, T, 1) m/s^2
    out = out + self.curvature_mean_mask * (a / (v_ego * v_ego + CURVATURE_SPEED_FLOOR ** 2).unsqueeze(-1))
    return out, kappa


# ---------------------------------------------------------------- export wrappers (what the ONNX files hold)

class VisionExport(nn.Module):
  """img (1, 6, H, W) uint8 -> hidden_state (1, D), outputs (1, N_vision). Noise off."""

  def __init__(self, vision: VisionModel):
    super().__init__()
    self.vision = vision

  def forward(self, img):
    return self.vision(img, noise=False)


class PolicyExport(nn.Module):
  """features (1, T, D), v_ego (1, T), desire (1, T, DESIRE_LEN) -> outputs (1, N_policy) of the last step."""

  def __init__(self, temporal: TemporalPolicy):
    super().__init__()
    self.temporal = temporal

  def forward(self, features, v_ego, desire):
    return self.temporal(features, v_ego, desire)[:, -1]


# ---------------------------------------------------------------- runs (checkpoints of training.policy.train)

def checkpoint_stage(ck: dict) -> tuple[str, int]:
  """(stage, step within that stage) of a policy run's checkpoint (training.checkpoint.load_latest's dict). The
  training.trainer loop keeps them in extra["task"]; checkpoints written before it (and hand-made test runs) at the
  top of extra; a checkpoint with neither (an on-policy run) is "temporal" when it holds a temporal model."""
  extra = ck.get("extra", {})
  info = extra.get("task", extra)
  stage = info.get("stage") or ("temporal" if "temporal" in ck.get("state", {}) else "extractor")
  return stage, int(info.get("stage_step", ck["step"]))


def load_policy_run(run_dir, need_temporal: bool = True) -> tuple[VisionModel, TemporalPolicy | None, dict]:
  """Models (eval mode) of the newest checkpoint of a policy run (training.policy.train, or an on-policy run: same
  layout) and that checkpoint; ValueError naming the run when it has none or, with need_temporal, no temporal model
  yet. need_temporal=False also takes a run that has only finished the extractor stage: temporal is then None."""
  from training.checkpoint import load_latest
  ck = load_latest(run_dir)
  if ck is None:
    raise ValueError(f"{run_dir}: no loadable checkpoint (ckpt_*.json) found")
  if "policy" not in ck["config"] or "vision" not in ck["state"]:
    raise ValueError(f"{ck['path']}: not a training.policy.train run (no policy config / vision state)")
  if need_temporal and "temporal" not in ck["state"]:
    raise ValueError(f"{ck['path']}: checkpoint has no temporal model yet (stage {checkpoint_stage(ck)[0]!r}); "
                     f"train --stage temporal first")
  cfg = PolicyConfig.from_dict(ck["config"]["policy"])
  vision = VisionModel(cfg)
  vision.load_state_dict(ck["state"]["vision"])
  temporal = None
  if "temporal" in ck["state"]:
    temporal = TemporalPolicy(cfg)
    temporal.load_state_dict(ck["state"]["temporal"])
    temporal.eval()
  return vision.eval(), temporal, ck
