"""FastViT (Vasu et al., "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization",
ICCV 2023), written from the paper for worldpilot's feature extractor. No timm, no downloaded weights.

Architecture (paper §3):
  stem      3 MobileOne blocks: 3x3 conv s2 -> depthwise 3x3 s2 -> pointwise 1x1          (H/4, W/4)
  stages    4 stages at strides 4, 8, 16, 32. Between stages a PatchEmbed: depthwise-grouped 7x7 s2
            large-kernel conv (with a parallel 3x3 branch) + 1x1 MobileOne block.
            Block = token mixer + ConvFFN (depthwise 7x7 conv+BN, 1x1 -> GELU -> 1x1), layer scale.
            Token mixer: RepMixer (x + ls*(DWConvBN(x) - BN(x))) or, in the last stage of the SA variants,
            multi-head self-attention preceded by a conditional positional encoding (RepCPE, 7x7 dw conv).
  conv_exp  depthwise 3x3 MobileOne block with squeeze-excite expanding channels x2.

Train-time over-parameterisation: every MobileOne block sums a BN skip branch, `num_conv_branches` kxk
conv-BN branches and a 1x1 conv-BN "scale" branch; RepMixer has its skip connection and BN "norm";
RepCPE its identity; the large-kernel conv its small-kernel branch. ``model.reparameterize()`` folds
all of these into single convolutions (and BN into the preceding conv / following linear), which is what
gets exported. Outputs match to ~1e-6 before and after (tests/training/policy/test_fastvit.py).

Variants from the paper's Table (depths / widths / MLP ratios / mixers): T8, T12, SA12, plus `tiny` (CI).

Deviation from the classifier: we do not global-average-pool. A driving model must know *where* lane
lines are, so `FastViT.forward` returns the conv_exp feature map (B, C_exp, H/32, W/32); the extractor in
``training/policy/model.py`` reduces its channels and flattens it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class FastViTConfig:
  name: str
  layers: tuple[int, ...]            # blocks per stage
  embed_dims: tuple[int, ...]        # channels per stage
  mlp_ratios: tuple[float, ...]      # ConvFFN hidden = ratio * dim
  token_mixers: tuple[str, ...]      # "repmixer" | "attention" per stage
  pos_embs: tuple[bool, ...]         # RepCPE before the stage
  in_chans: int = 6                  # two RGB frames 0.2 s apart, stacked
  layer_scale_init: float = 1e-5
  cls_ratio: float = 2.0             # conv_exp expansion
  num_conv_branches: int = 1         # over-parameterised kxk branches in MobileOne blocks
  head_dim: int = 32                 # attention head width

  def to_dict(self) -> dict:
    return asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "FastViTConfig":
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


FASTVIT_PRESETS = {
  # CI-sized, but exercises every block type (RepMixer, PatchEmbed, RepCPE, attention, SE).
  "tiny": FastViTConfig("tiny", (1, 1, 1, 1), (12, 24, 48, 96), (2, 2, 2, 2),
                        ("repmixer", "repmixer", "repmixer", "attention"), (False, False, False, True), head_dim=16),
  "T8": FastViTConfig("T8", (2, 2, 4, 2), (48, 96, 192, 384), (3, 3, 3, 3), ("repmixer",) * 4, (False,) * 4),
  "T12": FastViTConfig("T12", (2, 2, 6, 2), (64, 128, 256, 512), (3, 3, 3, 3), ("repmixer",) * 4, (False,) * 4),
  "SA12": FastViTConfig("SA12", (2, 2, 6, 2), (64, 128, 256, 512), (4, 4, 4, 4),
                        ("repmixer", "repmixer", "repmixer", "attention"), (False, False, False, True)),
}


# ---------------------------------------------------------------- reparameterisation helpers

def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


def fuse_conv_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d, bias: torch.Tensor | None = None):
  """BN(conv(x)) -> single conv: returns (kernel', bias')."""
  std = (bn.running_var + bn.eps).sqrt()
  t = bn.weight / std
  b = bias if bias is not None else torch.zeros_like(bn.running_mean)
  return kernel * t.reshape(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * t


def identity_kernel(channels: int, groups: int, k: int, like: torch.Tensor) -> torch.Tensor:
  """Kernel (channels, channels/groups, k, k) of a grouped conv that is the identity."""
  in_per_group = channels // groups
  ker = torch.zeros(channels, in_per_group, k, k, dtype=like.dtype, device=like.device)
  idx = torch.arange(channels, device=like.device)
  ker[idx, idx % in_per_group, k // 2, k // 2] = 1.0
  return ker


def pad_kernel(ker: torch.Tensor, k: int) -> torch.Tensor:
  p = (k - ker.shape[-1]) // 2
  return F.pad(ker, [p, p, p, p])


# ---------------------------------------------------------------- blocks

class SqueezeExcite(nn.Module):
  def __init__(self, ch: int, rd_ratio: float = 0.0625):
    super().__init__()
    rd = max(8, int(ch * rd_ratio))
    self.reduce = nn.Conv2d(ch, rd, 1)
    self.expand = nn.Conv2d(rd, ch, 1)

  def forward(self, x):  # (B,C,H,W)
    s = x.mean(dim=(2, 3), keepdim=True)
    return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class MobileOneBlock(nn.Module):
  """sum(skip BN, n x kxk conv-BN, 1x1 conv-BN) -> [SE] -> [GELU]; reparameterize() -> one kxk conv."""

  def __init__(self, cin, cout, k, stride=1, groups=1, use_act=True, use_scale=True, num_conv_branches=1,
               use_se=False):
    super().__init__()
    self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
    self.skip = nn.BatchNorm2d(cin) if (cin == cout and stride == 1) else None
    self.convs = nn.ModuleList([conv_bn(cin, cout, k, stride, groups) for _ in range(num_conv_branches)])
    self.scale = conv_bn(cin, cout, 1, stride, groups) if (k > 1 and use_scale) else None
    self.se = SqueezeExcite(cout) if use_se else nn.Identity()
    self.act = nn.GELU() if use_act else nn.Identity()
    self.reparam: nn.Conv2d | None = None

  def forward(self, x):
    if self.reparam is not None:
      return self.act(self.se(self.reparam(x)))
    y = 0
    if self.skip is not None:
      y = self.skip(x)
    if self.scale is not None:
      y = y + self.scale(x)
    for c in self.convs:
      y = y + c(x)
    return self.act(self.se(y))

  def fused_kernel_bias(self):
    ref = next(self.parameters())
    ker = torch.zeros(self.cout, self.cin // self.groups, self.k, self.k, dtype=ref.dtype, device=ref.device)
    bias = torch.zeros(self.cout, dtype=ref.dtype, device=ref.device)
    if self.skip is not None:
      kk, bb = fuse_conv_bn(identity_kernel(self.cin, self.groups, self.k, ref), self.skip)
      ker, bias = ker + kk, bias + bb
    if self.scale is not None:
      kk, bb = fuse_conv_bn(self.scale[0].weight, self.scale[1])
      ker, bias = ker + pad_kernel(kk, self.k), bias + bb
    for c in self.convs:
      kk, bb = fuse_conv_bn(c[0].weight, c[1])
      ker, bias = ker + kk, bias + bb
    return ker, bias

  @torch.no_grad()
  def reparameterize(self):
    if self.reparam is not None:
      return
    ker, bias = self.fused_kernel_bias()
    self.reparam = nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.k // 2, groups=self.groups, bias=True)
    self.reparam.weight.copy_(ker)
    self.reparam.bias.copy_(bias)
    self.skip, self.scale, self.convs = None, None, nn.ModuleList()


class ReparamLargeKernelConv(nn.Module):
  """act(BN(conv_kxk(x)) + BN(conv_3x3(x))) -> act(conv_kxk(x)) after reparameterize()."""

  def __init__(self, cin, cout, k, stride, groups, small_k=3):
    super().__init__()
    self.cin, self.cout, self.k, self.stride, self.groups = cin, cout, k, stride, groups
    self.large = conv_bn(cin, cout, k, stride, groups)
    self.small = conv_bn(cin, cout, small_k, stride, groups)
    self.act = nn.GELU()
    self.reparam: nn.Conv2d | None = None

  def forward(self, x):
    if self.reparam is not None:
      return self.act(self.reparam(x))
    return self.act(self.large(x) + self.small(x))

  @torch.no_grad()
  def reparameterize(self):
    if self.reparam is not None:
      return
    kl, bl = fuse_conv_bn(self.large[0].weight, self.large[1])
    ks, bs = fuse_conv_bn(self.small[0].weight, self.small[1])
    self.reparam = nn.Conv2d(self.cin, self.cout, self.k, self.stride, self.k // 2, groups=self.groups, bias=True)
    self.reparam.weight.copy_(kl + pad_kernel(ks, self.k))
    self.reparam.bias.copy_(bl + bs)
    del self.large, self.small


class PatchEmbed(nn.Module):
  """Downsample x2 between stages: (B,cin,H,W) -> (B,cout,H/2,W/2)."""

  def __init__(self, cin, cout, num_conv_branches):
    super().__init__()
    self.lk = ReparamLargeKernelConv(cin, cout, 7, 2, groups=cin)
    self.pw = MobileOneBlock(cout, cout, 1, num_conv_branches=num_conv_branches)

  def forward(self, x):
    return self.pw(self.lk(x))


class RepMixer(nn.Module):
  """x + ls * (mixer(x) - norm(x)) with depthwise kxk mixer; reparameterize() -> one depthwise conv."""

  def __init__(self, dim, k=3, layer_scale_init=1e-5, num_conv_branches=1):
    super().__init__()
    self.dim, self.k = dim, k
    self.norm = MobileOneBlock(dim, dim, k, groups=dim, use_act=False, use_scale=False, num_conv_branches=0)
    self.mixer = MobileOneBlock(dim, dim, k, groups=dim, use_act=False, num_conv_branches=num_conv_branches)
    self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))
    self.reparam: nn.Conv2d | None = None

  def forward(self, x):
    if self.reparam is not None:
      return self.reparam(x)
    return x + self.layer_scale * (self.mixer(x) - self.norm(x))

  @torch.no_grad()
  def reparameterize(self):
    if self.reparam is not None:
      return
    km, bm = self.mixer.fused_kernel_bias()
    kn, bn = self.norm.fused_kernel_bias()
    ls = self.layer_scale.reshape(-1)
    ker = identity_kernel(self.dim, self.dim, self.k, km) + ls.reshape(-1, 1, 1, 1) * (km - kn)
    self.reparam = nn.Conv2d(self.dim, self.dim, self.k, 1, self.k // 2, groups=self.dim, bias=True)
    self.reparam.weight.copy_(ker)
    self.reparam.bias.copy_(ls * (bm - bn))
    del self.norm, self.mixer, self.layer_scale


class ConvFFN(nn.Module):
  """depthwise 7x7 conv + BN -> 1x1 -> GELU -> 1x1. reparameterize() folds the BN into the conv."""

  def __init__(self, dim, hidden):
    super().__init__()
    self.dw = conv_bn(dim, dim, 7, 1, dim)
    self.fc1 = nn.Conv2d(dim, hidden, 1)
    self.act = nn.GELU()
    self.fc2 = nn.Conv2d(hidden, dim, 1)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(self.dw(x))))

  @torch.no_grad()
  def reparameterize(self):
    if isinstance(self.dw, nn.Conv2d):
      return
    k, b = fuse_conv_bn(self.dw[0].weight, self.dw[1])
    conv = nn.Conv2d(self.dw[0].in_channels, self.dw[0].out_channels, 7, 1, 3, groups=self.dw[0].groups, bias=True)
    conv.weight.copy_(k)
    conv.bias.copy_(b)
    self.dw = conv


class RepCPE(nn.Module):
  """Conditional positional encoding: x + dwconv7x7(x); reparameterize() folds the identity in."""

  def __init__(self, dim, k=7):
    super().__init__()
    self.dim, self.k = dim, k
    self.pe = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim, bias=True)
    self.folded = False

  def forward(self, x):
    return self.pe(x) if self.folded else x + self.pe(x)

  @torch.no_grad()
  def reparameterize(self):
    if not self.folded:
      self.pe.weight.add_(identity_kernel(self.dim, self.dim, self.k, self.pe.weight))
      self.folded = True


class Attention(nn.Module):
  """Multi-head self-attention over the H*W tokens of a feature map. (B,C,H,W) -> (B,C,H,W)."""

  def __init__(self, dim, head_dim=32):
    super().__init__()
    if dim % head_dim:
      raise ValueError(f"attention dim {dim} is not a multiple of head_dim {head_dim}")
    self.heads, self.head_dim = dim // head_dim, head_dim
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    B, C, H, W = x.shape
    t = x.flatten(2).transpose(1, 2)                                           # (B, N, C)
    q, k, v = self.qkv(t).reshape(B, H * W, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B,h,N,d)
    att = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, H * W, C)
    return self.proj(y).transpose(1, 2).reshape(B, C, H, W)


class RepMixerBlock(nn.Module):
  def __init__(self, dim, mlp_ratio, layer_scale_init, num_conv_branches):
    super().__init__()
    self.mixer = RepMixer(dim, 3, layer_scale_init, num_conv_branches)
    self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
    self.layer_scale = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

  def forward(self, x):
    x = self.mixer(x)
    return x + self.layer_scale * self.ffn(x)


class AttentionBlock(nn.Module):
  def __init__(self, dim, mlp_ratio, layer_scale_init, head_dim):
    super().__init__()
    self.norm = nn.BatchNorm2d(dim)
    self.attn = Attention(dim, head_dim)
    self.ffn = ConvFFN(dim, int(dim * mlp_ratio))
    self.layer_scale_1 = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))
    self.layer_scale_2 = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

  def forward(self, x):
    x = x + self.layer_scale_1 * self.attn(self.norm(x))
    return x + self.layer_scale_2 * self.ffn(x)

  @torch.no_grad()
  def reparameterize(self):
    """Fold the pre-attention BN (per-channel affine) into the qkv projection."""
    if isinstance(self.norm, nn.Identity):
      return
    bn = self.norm
    a = bn.weight / (bn.running_var + bn.eps).sqrt()
    c = bn.bias - bn.running_mean * a
    qkv = self.attn.qkv
    qkv.bias.add_(qkv.weight @ c)
    qkv.weight.mul_(a.reshape(1, -1))
    self.norm = nn.Identity()


# ---------------------------------------------------------------- network

class FastViT(nn.Module):
  """(B, in_chans, H, W) float -> (B, embed_dims[-1]*cls_ratio, H/32, W/32). H, W multiples of 32."""

  def __init__(self, cfg: FastViTConfig):
    super().__init__()
    self.cfg = cfg
    d0, nb = cfg.embed_dims[0], cfg.num_conv_branches
    self.stem = nn.Sequential(
      MobileOneBlock(cfg.in_chans, d0, 3, 2, num_conv_branches=nb),
      MobileOneBlock(d0, d0, 3, 2, groups=d0, num_conv_branches=nb),
      MobileOneBlock(d0, d0, 1, 1, num_conv_branches=nb),
    )
    stages = []
    for i, (n, dim, ratio, mixer, pe) in enumerate(zip(cfg.layers, cfg.embed_dims, cfg.mlp_ratios,
                                                        cfg.token_mixers, cfg.pos_embs)):
      mods: list[nn.Module] = []
      if i > 0:
        mods.append(PatchEmbed(cfg.embed_dims[i - 1], dim, nb))
      if pe:
        mods.append(RepCPE(dim))
      for _ in range(n):
        if mixer == "repmixer":
          mods.append(RepMixerBlock(dim, ratio, cfg.layer_scale_init, nb))
        elif mixer == "attention":
          mods.append(AttentionBlock(dim, ratio, cfg.layer_scale_init, cfg.head_dim))
        else:
          raise ValueError(f"FastViTConfig.token_mixers[{i}]: unknown mixer {mixer!r}")
      stages.append(nn.Sequential(*mods))
    self.stages = nn.Sequential(*stages)
    self.out_channels = int(cfg.embed_dims[-1] * cfg.cls_ratio)
    self.conv_exp = MobileOneBlock(cfg.embed_dims[-1], self.out_channels, 3, groups=cfg.embed_dims[-1],
                                   use_se=True, num_conv_branches=nb)

  def forward(self, x):
    return self.conv_exp(self.stages(self.stem(x)))

  @torch.no_grad()
  def reparameterize(self) -> "FastViT":
    """Fold every train-time branch into single convs (in place). Call in eval mode; returns self."""
    for m in list(self.modules()):
      if m is not self and hasattr(m, "reparameterize"):
        m.reparameterize()
    return self

  @property
  def is_reparameterized(self) -> bool:
    return not any(isinstance(m, nn.BatchNorm2d) for m in self.modules())
