import pytest
import torch
import torch.nn as nn

from training.policy.fastvit import FASTVIT_PRESETS, FastViT, MobileOneBlock, RepMixer

torch.set_num_threads(1)


def _randomize(model: nn.Module, seed=0):
  """Non-trivial BN statistics / affine and layer scales so every folded branch matters."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
      m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in m.named_parameters(recurse=False):
      if name.startswith("layer_scale"):
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("variant", ["tiny", "T8", "T12", "SA12"])
def test_reparameterize_matches(variant):
  torch.manual_seed(0)
  cfg = FASTVIT_PRESETS[variant]
  m = FastViT(cfg).eval()
  _randomize(m)
  x = torch.randn(2, cfg.in_chans, 64, 64)
  with torch.no_grad():
    before = m(x)
    assert not m.is_reparameterized
    m.reparameterize()
    after = m(x)
  assert m.is_reparameterized
  assert before.shape == (2, int(cfg.embed_dims[-1] * cfg.cls_ratio), 2, 2)
  scale = before.abs().max().item()
  assert (before - after).abs().max().item() <= 1e-5 * max(1.0, scale)


def test_reparameterize_removes_branches_and_is_idempotent():
  m = FastViT(FASTVIT_PRESETS["tiny"]).eval()
  n_before = sum(1 for _ in m.modules())
  m.reparameterize()
  m.reparameterize()
  mobs = [b for b in m.modules() if isinstance(b, MobileOneBlock)]
  assert mobs and all(b.reparam is not None and b.skip is None and len(b.convs) == 0 for b in mobs)
  assert all(r.reparam is not None for r in m.modules() if isinstance(r, RepMixer))
  assert sum(1 for _ in m.modules()) < n_before


def test_presets_follow_paper():
  # FastViT paper, Table 2 (stage depths / widths / MLP ratio / token mixers)
  t8, t12, sa12 = FASTVIT_PRESETS["T8"], FASTVIT_PRESETS["T12"], FASTVIT_PRESETS["SA12"]
  assert (t8.layers, t8.embed_dims, t8.mlp_ratios[0]) == ((2, 2, 4, 2), (48, 96, 192, 384), 3)
  assert (t12.layers, t12.embed_dims, t12.mlp_ratios[0]) == ((2, 2, 6, 2), (64, 128, 256, 512), 3)
  assert (sa12.layers, sa12.embed_dims, sa12.mlp_ratios[0]) == ((2, 2, 6, 2), (64, 128, 256, 512), 4)
  assert sa12.token_mixers[-1] == "attention" and sa12.pos_embs[-1]
  assert "attention" in FASTVIT_PRESETS["tiny"].token_mixers  # CI covers the attention path


def test_bad_mixer_named():
  cfg = FASTVIT_PRESETS["tiny"].__class__(**{**FASTVIT_PRESETS["tiny"].to_dict(),
                                             "token_mixers": ("repmixer", "conv", "repmixer", "repmixer")})
  with pytest.raises(ValueError, match=r"token_mixers\[1\]"):
    FastViT(cfg)
