"""The world-model evaluation's image metrics on frames whose answer is known."""
import torch
import torch.nn.functional as F

from training.worldmodel.evaluate import gradient_energy, psnr, ssim


def _lane_frame() -> torch.Tensor:
  """A 64x128 grey road with two bright lane lines and a dark horizon band, (3,64,128) in [0, 1]."""
  img = torch.full((3, 64, 128), 0.35)
  img[:, :20] = 0.7
  img[:, 20:, 30:33] = 0.95
  img[:, 20:, 95:98] = 0.95
  return img


def test_gradient_energy_counts_detail():
  img = _lane_frame()
  assert float(gradient_energy(torch.full((3, 8, 8), 0.4))) == 0.0
  # across x: 2 lines x 2 edges x 44 rows of 0.6 over 64 x 127 differences; across y: the horizon, 0.35 in 122
  # columns and 0.25 in the lines' 6, over 63 x 128 differences (squared)
  expect = 4 * 44 * 0.6 ** 2 / (64 * 127) + (122 * 0.35 ** 2 + 6 * 0.25 ** 2) / (63 * 128)
  assert abs(float(gradient_energy(img)) - expect) < 1e-5
  blurred = F.avg_pool2d(img[None], 5, stride=1, padding=2, count_include_pad=False)[0]
  assert float(gradient_energy(blurred)) < 0.5 * float(gradient_energy(img))
  speckle = (img + 0.1 * torch.randn(img.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
  assert float(gradient_energy(speckle)) > 2 * float(gradient_energy(img))
  batch = torch.stack([img, blurred])           # (..., C, H, W) -> (...)
  assert gradient_energy(batch).shape == (2,)


def test_psnr_and_ssim_of_identical_and_shifted_frames():
  img = _lane_frame()
  assert float(ssim(img, img)) > 0.999
  shifted = torch.roll(img, 4, dims=-1)
  assert float(ssim(shifted, img)) < 0.99
  assert 10 < float(psnr(shifted, img)) < 40
  mse = float((shifted - img).pow(2).mean())
  assert abs(float(psnr(shifted, img)) - 10 * torch.log10(torch.tensor(1 / mse)).item()) < 1e-4
