import json

import numpy as np
import pytest
import torch

from tests.training.segment_fixture import make_dataset
from training.vae import images_to_tensor, load_vae, tensor_to_images, train_vae

torch.set_num_threads(1)


def test_train_save_load_and_unit_variance_latents(tmp_path):
  make_dataset(tmp_path / "data", n_routes=2, n_frames=40)
  rep = train_vae(tmp_path / "data", tmp_path / "vae", "tiny", max_steps=3)
  assert rep["steps"] == 3 and rep["scaling_factor"] > 0
  cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
  assert cfg["_class_name"] == "AutoencoderKL" and cfg["latent_channels"] == 4
  assert cfg["scaling_factor"] == pytest.approx(rep["scaling_factor"])
  vae = load_vae(tmp_path / "vae")
  assert vae.frame_hw == (128, 256) and vae.downsample == 8
  from training.data.frames import SegmentFrames
  from training.data.segments import find_segments
  fr = SegmentFrames(find_segments(tmp_path / "data")[0], (128, 256))
  x = images_to_tensor(np.stack([fr.frame(i) for i in range(0, 40, 3)]))
  z = vae.encode(x)
  assert z.shape == (len(x), 4, 16, 32)
  # scaling factor measured on training frames -> scaled latents have ~unit std
  assert 0.5 < z.std().item() < 2.0
  rec = vae.decode(z)
  assert rec.shape == x.shape
  assert tensor_to_images(rec).dtype == np.uint8


def test_finetune_decoder_keeps_the_encoder_and_improves_the_decoder(tmp_path):
  """Only the decoder trains: the copy encodes bit-for-bit like its source (same latents, same scaling factor, so a
  latent cache and a world model stay valid), decodes differently, and reconstructs better than before."""
  from training.vae import VAE_PRESETS, decoder_run_config, finetune_decoder, make_autoencoder, same_encoder

  def untrained_vae(out, seed):   # a saved codec; its training is test_train_save_load_and_unit_variance_latents'
    torch.manual_seed(seed)
    make_autoencoder(VAE_PRESETS["tiny"]).save_pretrained(str(out))

  make_dataset(tmp_path / "data", n_routes=2, n_frames=24)
  untrained_vae(tmp_path / "vae", 0)
  rep = finetune_decoder(tmp_path / "vae", tmp_path / "data", tmp_path / "ft", decoder_run_config(40, lr=2e-3),
                         degrade_prob=0.5)
  assert rep["steps"] == 40 and rep["degrade_prob"] == 0.5
  split = "val" if "val_psnr_db" in rep else "train"
  assert rep[f"{split}_psnr_db"] > rep[f"{split}_psnr_db_before"] + 0.5
  a, b = load_vae(tmp_path / "vae"), load_vae(tmp_path / "ft")
  assert b.scaling_factor == a.scaling_factor and b.frame_hw == a.frame_hw and same_encoder(a.ae, b.ae)
  x = torch.rand(2, 3, 128, 256) * 2 - 1
  za = a.encode(x)
  assert torch.equal(za, b.encode(x)) and not torch.allclose(a.decode(za), b.decode(za))
  # a VAE with another encoder is told apart; the source folder is never overwritten
  untrained_vae(tmp_path / "vae2", 1)
  assert not same_encoder(a.ae, load_vae(tmp_path / "vae2").ae)
  with pytest.raises(ValueError, match="new folder"):
    finetune_decoder(tmp_path / "vae", tmp_path / "data", tmp_path / "vae", decoder_run_config(1))


def test_degrade_latents_shrinks_toward_the_local_mean_and_adds_noise():
  import torch.nn.functional as F

  from training.vae import degrade_latents
  g = torch.Generator().manual_seed(0)
  z = torch.randn(64, 4, 8, 16, generator=g)
  assert torch.equal(degrade_latents(z, 0.0, g), z)
  local = F.avg_pool2d(z, 3, stride=1, padding=1, count_include_pad=False)
  # no noise: every latent keeps its local mean and its contrast around it is scaled by one alpha in [0.5, 1]
  out = degrade_latents(z, 1.0, g, max_shrink=0.5, max_noise=0.0)
  dz, do = (z - local).flatten(1), (out - local).flatten(1)
  alpha = (do * dz).sum(1) / dz.pow(2).sum(1)          # least-squares factor per latent
  assert torch.allclose(do, alpha[:, None] * dz, atol=1e-5)
  assert alpha.min() >= 0.5 - 1e-5 and alpha.max() <= 1 + 1e-5 and alpha.std() > 0.05
  # no shrink: zero-mean noise of std up to max_noise
  d = (degrade_latents(z, 1.0, g, max_shrink=0.0, max_noise=0.3) - z).flatten(1)
  assert d.std(1).max() <= 0.33 and d.std(1).max() > 0.15 and abs(d.mean()) < 0.01
  # prob 0.5: about half the batch is left alone
  kept = (degrade_latents(z, 0.5, g) == z).flatten(1).all(1).float().mean()
  assert 0.25 < kept < 0.75


def test_colour_jitter_changes_each_frames_channels_by_a_bounded_gain_and_offset():
  from training.vae import colour_jitter
  g = torch.Generator().manual_seed(0)
  x = torch.rand(64, 3, 8, 16, generator=g) * 1.2 - 0.6      # [-0.6, 0.6]: no clipping at strength 0.1
  assert torch.equal(colour_jitter(x, 0.0, g), x)
  y = colour_jitter(x, 0.1, g)
  x01, y01 = ((x + 1) / 2).flatten(2), ((y + 1) / 2).flatten(2)   # (B,3,N)
  # per frame and channel y = gain * x + offset: recover both by least squares and check the bounds
  xm, ym = x01.mean(2, keepdim=True), y01.mean(2, keepdim=True)
  gain = ((x01 - xm) * (y01 - ym)).sum(2) / (x01 - xm).pow(2).sum(2)
  offset = ym[..., 0] - gain * xm[..., 0]
  assert torch.allclose(y01, gain[..., None] * x01 + offset[..., None], atol=1e-5)
  assert gain.min() >= 0.9 - 1e-5 and gain.max() <= 1.1 + 1e-5 and gain.std() > 0.03
  assert offset.abs().max() <= 0.05 + 1e-5 and offset.std() > 0.01
  assert (gain[:, 0] - gain[:, 1]).abs().mean() > 0.02          # channels change independently: colour, not brightness
  assert colour_jitter(torch.ones(4, 3, 2, 2), 0.5, g).max() <= 1.0   # clipped to range


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_vae(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
  with pytest.raises(ValueError, match="expected 'AutoencoderKL'"):
    load_vae(tmp_path)
  (tmp_path / "config.json").write_text("{broken")
  with pytest.raises(ValueError, match="invalid JSON"):
    load_vae(tmp_path)


def test_encode_rejects_bad_shapes(tmp_path):
  from training.vae import VAETrainConfig, make_autoencoder
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4))
  ae.save_pretrained(str(tmp_path))
  vae = load_vae(tmp_path)
  with pytest.raises(ValueError, match="multiple of 8"):
    vae.encode(torch.zeros(1, 3, 60, 128))
  with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
    vae.encode(torch.zeros(3, 64, 128))


def test_colour_weighted_mse_schedule_and_logvar_init(tmp_path):
  from training.trainer import Trainer
  from training.vae import VAE_PRESETS, VAETask, VAETrainConfig, colour_weighted_mse, make_autoencoder
  g = torch.Generator().manual_seed(0)
  a, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
  assert torch.allclose(colour_weighted_mse(a, b, 1.0), torch.nn.functional.mse_loss(a, b), atol=1e-6)
  grey = torch.full((1, 3, 4, 4), 0.1)         # a pure brightness error ...
  tint = torch.tensor([0.1, -0.1, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)   # ... and a pure colour error
  z = torch.zeros(1, 3, 4, 4)
  assert colour_weighted_mse(grey, z, 4.0) == pytest.approx(torch.nn.functional.mse_loss(grey, z).item(), rel=1e-5)
  assert colour_weighted_mse(tint, z, 4.0) == pytest.approx(4 * torch.nn.functional.mse_loss(tint, z).item(), rel=1e-5)
  # the preset's schedule on the shared loop: warm-up over warmup_steps, cosine to 0, no weight decay, no checkpoints
  rc = VAETrainConfig(lr=1e-3, warmup_steps=10).run_config(max_steps=100)
  assert rc.weight_decay == 0.0 and rc.grad_clip == 1.0 and not rc.save_checkpoints
  tr = Trainer(VAETask(torch.nn.Linear(1, 1), None, VAE_PRESETS["tiny"]), rc, tmp_path, progress=False)
  assert tr.lr_at(0, 0) == pytest.approx(1e-4)              # warm-up
  assert tr.lr_at(50, 0) == pytest.approx(1e-3 * 0.5)       # cosine, half-way
  assert tr.lr_at(100, 0) == pytest.approx(0.0, abs=1e-12)
  assert VAE_PRESETS["tiny"].run_config().max_steps == VAE_PRESETS["tiny"].max_steps
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, logvar_init=-6.0))
  post = ae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
  assert post.logvar.mean().item() < -4                     # nearly clean latents from the first step


def test_train_vae_stops_at_its_time_limit(tmp_path):
  make_dataset(tmp_path / "data", n_routes=2, n_frames=24)
  rep = train_vae(tmp_path / "data", tmp_path / "vae", "tiny", max_steps=100000, minutes=0.05)
  assert 0 < rep["steps"] < 100000 and rep["seconds"] < 60


def test_frame_pool_draws_from_every_data_folder(tmp_path):
  from training.vae import _frame_pool
  make_dataset(tmp_path / "a", n_routes=2, n_frames=20)
  make_dataset(tmp_path / "b", n_routes=3, n_frames=20)
  one = _frame_pool(tmp_path / "a", (64, 128), None, 10_000)
  both = _frame_pool([tmp_path / "a", tmp_path / "b"], (64, 128), None, 10_000)
  assert len(one) == 40 and len(both) == 100 and (both[:40] == one).all()
  assert len(_frame_pool([tmp_path / "a", tmp_path / "b"], (64, 128), None, 25)) == 25   # every 4th of the 100
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no usable segments"):
    _frame_pool([tmp_path / "empty"], (64, 128), None, 10)


def test_codec_runs_a_few_frames_at_a_time_on_onednn_and_gives_the_whole_batchs_result(tmp_path):
  """On a CPU FrozenVAE splits a batch into CPU_CHUNK frames and runs them on oneDNN's kernels even where the process
  turned them off, then gives the process its setting back; the result is the whole batch's. With `onednn` False it
  runs them on the native kernels whatever the process chose."""
  from training.vae import VAETrainConfig, make_autoencoder
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4))
  ae.save_pretrained(str(tmp_path))
  vae = load_vae(tmp_path)
  imgs = torch.rand(7, 3, 64, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
  with torch.no_grad():
    whole_lat = vae.ae.encode(imgs).latent_dist.mean * vae.scaling_factor
    whole_rec = vae.ae.decode(whole_lat / vae.scaling_factor).sample
  sizes, kernels = [], []
  def seen(_module, args):
    sizes.append(args[0].shape[0])
    kernels.append(torch.backends.mkldnn.enabled)
  hooks = [m.register_forward_pre_hook(seen) for m in (vae.ae.encoder, vae.ae.decoder)]
  with torch.backends.mkldnn.flags(enabled=False):
    lat, rec = vae.encode(imgs), vae.decode(whole_lat)
    assert not torch.backends.mkldnn.enabled
  for h in hooks:
    h.remove()
  assert sizes == [4, 3, 2, 2, 2, 1] and all(kernels)
  kernels.clear()
  hook = vae.ae.encoder.register_forward_pre_hook(seen)
  vae.onednn = False                                  # an instance attribute: the class keeps oneDNN
  with torch.backends.mkldnn.flags(enabled=True):
    native = vae.encode(imgs)
    assert torch.backends.mkldnn.enabled
  hook.remove()
  assert kernels == [False, False]
  torch.testing.assert_close(native, whole_lat, rtol=1e-4, atol=1e-5)
  assert lat.shape == (7, 4, 8, 16) and rec.shape == (7, 3, 64, 128)
  torch.testing.assert_close(lat, whole_lat, rtol=1e-4, atol=1e-5)
  torch.testing.assert_close(rec, whole_rec, rtol=1e-4, atol=1e-5)
