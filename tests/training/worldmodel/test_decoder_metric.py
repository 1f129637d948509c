"""The decoder-weighted rectified-flow metric: normalisation, measurement on decoders with known answers, the loss,
and the trainer measuring it once and keeping it on resume."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from training.worldmodel.decoder_metric import lowpass, measure, weighted_mse
from training.worldmodel.dit import get_config

torch.set_num_threads(1)


def test_white_residual_scores_its_mean_square():
  r = torch.randn(64, 4, 16, 32, generator=torch.Generator().manual_seed(0))
  assert torch.allclose(weighted_mse(r, [1, 1, 1, 1], 0.0, 4), r.pow(2).mean())
  for w, beta in (([0.4, 0.8, 2.2, 0.6], 1.2), ([1, 1, 1, 1], 5.0)):
    assert abs(float(weighted_mse(r, w, beta, 4) / r.pow(2).mean()) - 1) < 0.03
  # a block-smooth residual costs (1 + beta) / (1 + beta / 16) times as much
  s = lowpass(r, 4)
  assert abs(float(weighted_mse(s, [1] * 4, 2.0, 4) / s.pow(2).mean()) - 3 / (1 + 2 / 16)) < 1e-4
  # channel weights count per channel
  one = torch.zeros_like(r)
  one[:, 2] = r[:, 2]
  assert abs(float(weighted_mse(one, [0.5, 0.5, 2.5, 0.5], 0.0, 4) / one.pow(2).mean()) - 2.5) < 1e-4
  with pytest.raises(ValueError, match="channel weights"):
    weighted_mse(r, [1, 1, 1], 0.0, 4)


def test_measure_pointwise_decoder_gives_its_gains_and_no_lowpass_weight():
  gains = torch.tensor([1.0, 2.0, 3.0, 0.5])

  def decode(z):   # 1x1 "decoder": pixel = sum_c gain_c z_c, no spatial mixing
    return (z * gains.view(1, 4, 1, 1)).sum(1, keepdim=True)
  z = torch.randn(8, 4, 16, 32, generator=torch.Generator().manual_seed(1))
  m = measure(decode, z)
  want = gains ** 2 / (gains ** 2).mean()
  assert torch.allclose(torch.tensor(m["channel_weights"]), want, rtol=0.05)
  assert m["lowpass_weight"] < 0.1


def test_measure_smoothing_decoder_reproduces_its_smooth_vs_white_ratio():
  def decode(z):   # a decoder that blurs: smooth latent error passes, white error is averaged away
    return F.avg_pool2d(F.interpolate(z, scale_factor=2, mode="nearest"), 5, stride=1, padding=2)
  z = torch.randn(8, 4, 16, 32, generator=torch.Generator().manual_seed(2))
  m = measure(decode, z)
  rho = m["pixel_per_latent"]["lowpass"] / m["pixel_per_latent"]["white"]
  assert rho > 1.5 and m["lowpass_weight"] > 0.5
  g = torch.Generator().manual_seed(3)
  white, smooth = torch.randn(8, 4, 16, 32, generator=g), lowpass(torch.randn(8, 4, 16, 32, generator=g), 4)
  w, b = m["channel_weights"], m["lowpass_weight"]
  ratio = float(weighted_mse(smooth, w, b, 4) / smooth.pow(2).mean() / (weighted_mse(white, w, b, 4) / white.pow(2).mean()))
  assert abs(ratio / rho - 1) < 0.1
  with pytest.raises(ValueError, match="does not respond"):
    measure(lambda z: torch.zeros(z.shape[0], 3, 8, 8), z)


def test_loss_uses_the_metric_and_refuses_unmeasured_weights():
  from tests.training.worldmodel.test_dit import _batch
  from training.worldmodel.dit import WorldModelDiT, rectified_flow_loss
  cfg = get_config("tiny", depth=2, width=64, heads=4, context_frames=3, anchor_frames=2, plan_hidden=64,
                   plan_blocks=1, decoder_weighted_loss=True)
  m = WorldModelDiT(cfg)
  with pytest.raises(ValueError, match="not measured"):
    rectified_flow_loss(m, _batch(cfg), generator=torch.Generator().manual_seed(0))
  cfg2 = dataclasses.replace(cfg, loss_channel_weights=[0.4, 0.8, 2.2, 0.6], loss_lowpass_weight=1.2)
  m2 = WorldModelDiT(cfg2)
  loss, info = rectified_flow_loss(m2, _batch(cfg2), generator=torch.Generator().manual_seed(0))
  loss.backward()
  assert torch.isfinite(loss) and abs(float(info["rf"]) - float(info["rf_mse"])) > 1e-4
