import math

import pytest
import torch

from training.mhp import best_hypothesis, hypothesis_distance, laplace_nll, mhp_loss


def test_laplace_nll_matches_closed_form_and_mask():
  mean = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
  log_scale = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
  target = torch.tensor([[1.0, 1.0], [2.0, 100.0]])
  # row 0: [log2 + 1, log2 + log2 + 0]; row 1 masked out
  got = laplace_nll(mean.unsqueeze(0), log_scale.unsqueeze(0), target.unsqueeze(0), torch.tensor([[1, 0]]))
  want = (math.log(2) + 1 + 2 * math.log(2)) / 2
  assert got.item() == pytest.approx(want, rel=1e-6)
  # the masked row's huge error must not leak
  got_all = laplace_nll(mean, log_scale, target)
  assert got_all.item() > got.item() + 10


def test_winner_is_closest_and_only_winner_gets_gradient():
  B, K, T, D = 2, 3, 4, 2
  target = torch.zeros(B, T, D)
  mean = torch.stack([torch.full((B, T, D), v) for v in (5.0, 0.1, -3.0)], dim=1).requires_grad_(True)
  log_scale = torch.zeros(B, K, T, D, requires_grad=True)
  logits = torch.zeros(B, K, requires_grad=True)
  loss, info = mhp_loss(mean, log_scale, logits, target)
  assert info["winner"].tolist() == [1, 1]
  loss.backward()
  assert mean.grad[:, 1].abs().sum() > 0
  assert mean.grad[:, 0].abs().sum() == 0 and mean.grad[:, 2].abs().sum() == 0
  # CE pushes the winner's logit up
  assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()
  assert info["ce"].item() == pytest.approx(math.log(3), rel=1e-5)


def test_mask_changes_winner():
  target = torch.zeros(1, 4, 1)
  a = torch.tensor([0.0, 0.0, 0.0, 100.0]).view(1, 4, 1)   # good early, terrible at the end
  b = torch.full((1, 4, 1), 1.0)
  means = torch.stack([a, b], dim=1)
  assert hypothesis_distance(means, target).argmin().item() == 1
  mask = torch.tensor([[1, 1, 1, 0]])
  _, info = mhp_loss(means, torch.zeros_like(means), torch.zeros(1, 2), target, mask)
  assert info["winner"].item() == 0


def test_sample_without_labels_teaches_nothing():
  B, K, T, D = 3, 3, 4, 2
  torch.manual_seed(0)
  target = torch.randn(B, T, D)
  mean = torch.randn(B, K, T, D, requires_grad=True)
  log_scale = torch.zeros(B, K, T, D, requires_grad=True)
  logits = torch.randn(B, K, requires_grad=True)
  mask = torch.ones(B, T, dtype=torch.bool)
  mask[1] = False                                             # sample 1 has no label at all
  loss, _ = mhp_loss(mean, log_scale, logits, target, mask)
  loss.backward()
  assert logits.grad[1].abs().sum() == 0 and mean.grad[1].abs().sum() == 0
  assert logits.grad[0].abs().sum() > 0 and logits.grad[2].abs().sum() > 0
  keep = torch.tensor([0, 2])                                 # the same as the loss of the labelled samples alone
  ref, _ = mhp_loss(mean[keep], log_scale[keep], logits[keep], target[keep], mask[keep])
  assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
  none, info = mhp_loss(mean, log_scale, logits, target, torch.zeros(B, T, dtype=torch.bool))
  assert none.item() == 0.0 and info["ce"].item() == 0.0


def test_training_recovers_two_modes():
  torch.manual_seed(0)
  # targets are +1 or -1 trajectories at random; K=2 hypotheses should split them, probabilities ~0.5
  mean = torch.zeros(1, 2, 5, 1)
  mean[0, 0] += 0.01
  mean = mean.requires_grad_(True)
  log_scale = torch.zeros(1, 2, 5, 1, requires_grad=True)
  logits = torch.zeros(1, 2, requires_grad=True)
  opt = torch.optim.Adam([mean, log_scale, logits], lr=0.05)
  for i in range(400):
    sign = torch.where(torch.rand(16) < 0.5, 1.0, -1.0)
    target = sign.view(16, 1, 1).expand(16, 5, 1)
    loss, _ = mhp_loss(mean.expand(16, -1, -1, -1), log_scale.expand(16, -1, -1, -1), logits.expand(16, -1), target)
    opt.zero_grad(); loss.backward(); opt.step()
  m = sorted(mean[0, :, :, 0].mean(-1).tolist())
  assert m[0] == pytest.approx(-1, abs=0.1) and m[1] == pytest.approx(1, abs=0.1)
  p = logits.softmax(-1)[0]
  assert p.min().item() > 0.3
  best = best_hypothesis(logits.detach(), mean.detach())
  assert best.shape == (1, 5, 1)


def test_shape_errors_name_the_argument():
  with pytest.raises(ValueError, match="pred_mean"):
    mhp_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 4, 1))
  with pytest.raises(ValueError, match="logits"):
    mhp_loss(torch.zeros(2, 3, 4, 1), torch.zeros(2, 3, 4, 1), torch.zeros(2, 2), torch.zeros(2, 4, 1))
  with pytest.raises(ValueError, match="target"):
    mhp_loss(torch.zeros(2, 3, 4, 1), torch.zeros(2, 3, 4, 1), torch.zeros(2, 3), torch.zeros(2, 5, 1))
  with pytest.raises(ValueError, match="mask"):
    mhp_loss(torch.zeros(2, 3, 4, 1), torch.zeros(2, 3, 4, 1), torch.zeros(2, 3), torch.zeros(2, 4, 1), torch.ones(2, 3))
