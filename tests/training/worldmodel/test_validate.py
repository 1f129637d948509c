"""validate() scores a model without changing its train/eval mode (the trainer validates the EMA copy, kept in eval)."""
import contextlib

import pytest
import torch

from common.modelconstants import IDX_N, PLAN_WIDTH
from training.worldmodel.dit import build_model, get_config
from training.worldmodel.train import validate


def _batch(cfg, B=2, seed=0):
  g = torch.Generator().manual_seed(seed)
  F, A, h, w = cfg.context_frames + 1, cfg.anchor_frames, cfg.latent_h, cfg.latent_w
  return {"latents": torch.randn(B, F, 4, h, w, generator=g), "transitions": torch.randn(B, F, 6, generator=g) * 0.1,
          "t_world": torch.arange(F).float().repeat(B, 1) * 0.2 + 10,
          "anchors": torch.randn(B, A, 4, h, w, generator=g), "anchor_pose": torch.randn(B, A, 6, generator=g),
          "anchor_t": torch.linspace(12, 13, A).repeat(B, 1), "anchor_valid": torch.tensor([True, False]),
          "plan": torch.randn(B, IDX_N, PLAN_WIDTH, generator=g), "plan_mask": torch.ones(B, IDX_N, dtype=torch.bool)}


@pytest.mark.parametrize("training", [False, True])
def test_validate_restores_the_mode_it_found(training):
  torch.manual_seed(0)
  cfg = get_config("tiny", depth=1, width=32, heads=2, context_frames=2, anchor_frames=2, plan_hidden=32, plan_blocks=1)
  model = build_model(cfg).train(training)
  seen = []
  model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
  res = validate(model, [_batch(cfg)], "cpu", contextlib.nullcontext)
  assert seen and not any(seen), "validate must score in eval mode"
  assert model.training is training and all(m.training is training for m in model.modules())
  assert {"plan_ade_m"} <= set(res) and all(torch.isfinite(torch.tensor(v)) for v in res.values())
