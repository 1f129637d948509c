"""training.frame_decoder: distillation from a codec, the folder it writes and what loading it checks."""
import json

import cv2
import numpy as np
import pytest
import torch

from tests.training.segment_fixture import make_dataset
from training.frame_decoder import (
  CONFIG,
  WEIGHTS,
  FrameDecoder,
  FrameDecoderConfig,
  area_resize,
  codec_decoder_hash,
  distill,
  load_frame_decoder,
  main,
)
from training.vae import VAETrainConfig, load_vae, make_autoencoder

torch.set_num_threads(1)


def small_codec(out, seed=0):
  torch.manual_seed(seed)
  make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8)).save_pretrained(str(out))
  return out


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
  root = tmp_path_factory.mktemp("frame_decoder")
  make_dataset(root / "data", n_routes=2, n_frames=24)
  small_codec(root / "vae")
  cfg = FrameDecoderConfig(widths=(16, 8, 8), blocks=(1, 1, 1), pool_frames=24, val_frames=8, batch_size=8,
                           max_steps=300, lr=3e-3, warmup=5)
  rep = distill(root / "vae", root / "data", root / "fd", cfg=cfg, seed=0)
  return root, rep


def test_distillation_learns_the_codecs_decode_at_the_policys_size(distilled):
  root, rep = distilled
  assert rep["steps"] == 300 and rep["out_hw"] == [64, 128] and rep["degraded"] == 6 and rep["pool"] == 30
  assert rep["split"] in ("val", "train")
  vae = load_vae(root / "vae")
  fd = load_frame_decoder(root / "fd", vae)
  from training.data.frames import SegmentFrames, images_to_tensor
  from training.data.segments import find_segments
  frames = SegmentFrames(find_segments(root / "data")[0], (128, 256))
  z = vae.encode(images_to_tensor(np.stack([frames.frame(i) for i in (0, 11, 23)])))
  out = fd(z)
  assert out.shape == (3, 3, 64, 128)
  img = fd.images(z)
  assert img.shape == (3, 64, 128, 3) and img.dtype == np.uint8
  # the training made it closer to the codec's decode than the same network untrained
  torch.manual_seed(0)
  untrained = FrameDecoder(fd.cfg).eval()
  with torch.no_grad():
    target = area_resize(vae.decode(z).clamp(-1, 1), (64, 128))
    err_fresh = (untrained(z).clamp(-1, 1) - target).pow(2).mean().item()
    err = (out.clamp(-1, 1) - target).pow(2).mean().item()
  assert err < 0.75 * err_fresh
  assert rep["psnr_vs_codec_db"] > 10 * np.log10(4 / err_fresh) + 1
  metrics = (root / "fd" / "metrics.csv").read_text().splitlines()
  assert len(metrics) > 3 and "loss" in metrics[0]
  assert set(rep["ms_per_frame"]) == {"codec", "frame_decoder"}


def test_area_resize_is_cv2_inter_area():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
  x = torch.from_numpy(img).float().movedim(-1, 1)
  ours = area_resize(x, (32, 64)).movedim(1, -1).numpy()
  ref = np.stack([cv2.resize(i, (64, 32), interpolation=cv2.INTER_AREA) for i in img])
  assert np.abs(ours - ref).max() <= 0.5 + 1e-4          # cv2 rounds to uint8
  with pytest.raises(ValueError, match="multiple"):
    area_resize(x, (30, 64))


def test_loading_refuses_another_codec_and_broken_folders(distilled, tmp_path):
  root, _ = distilled
  other = load_vae(small_codec(tmp_path / "other", seed=1))
  assert codec_decoder_hash(other.ae) != codec_decoder_hash(load_vae(root / "vae").ae)
  with pytest.raises(ValueError, match="distilled from the codec"):
    load_frame_decoder(root / "fd", other)
  with pytest.raises(FileNotFoundError, match="not a frame decoder folder"):
    load_frame_decoder(tmp_path)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / WEIGHTS).write_bytes((root / "fd" / WEIGHTS).read_bytes())
  (bad / CONFIG).write_text("{not json")
  with pytest.raises(ValueError, match="not a frame decoder config"):
    load_frame_decoder(bad)
  meta = json.loads((root / "fd" / CONFIG).read_text())
  meta["model"]["widths"] = [32, 8, 8]                  # shapes that do not match the weights
  (bad / CONFIG).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="could not load"):
    load_frame_decoder(bad)


def test_config_checks_and_default_sizes():
  assert FrameDecoderConfig.for_upsample(4).widths == (64, 32, 16)
  assert FrameDecoderConfig.for_upsample(8).upsample == 8 and FrameDecoderConfig.for_upsample(1).upsample == 1
  with pytest.raises(ValueError, match="1, 2, 4 or 8"):
    FrameDecoderConfig.for_upsample(3)
  with pytest.raises(ValueError, match="equally long"):
    FrameDecoderConfig(widths=(8, 8), blocks=(1,))
  with pytest.raises(ValueError, match="expects"):
    FrameDecoder(FrameDecoderConfig())(torch.zeros(1, 3, 8, 8))


def test_cli_rejects_bad_arguments(tmp_path, capsys):
  for args in (["--max-steps", "0"], ["--minutes", "0"], ["--size", "64by128"], ["--pool-frames", "0"]):
    with pytest.raises(SystemExit) as e:
      main(["--vae", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert e.value.code == 2
  small_codec(tmp_path / "vae")
  assert main(["--vae", str(tmp_path / "vae"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
               "--size", "48x128"]) == 1
  assert "must be the latent" in capsys.readouterr().err
