import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.vae import images_to_tensor, load_vae, tensor_to_images, train_vae

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segment_fixture import make_dataset  # noqa: E402

torch.set_num_threads(1)


def test_train_save_load_and_unit_variance_latents(tmp_path):
  make_dataset(tmp_path / "data", n_routes=2, n_frames=40)
  rep = train_vae(tmp_path / "data", tmp_path / "vae", "tiny", max_steps=3)
  assert rep["steps"] == 3 and rep["scaling_factor"] > 0
  cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
  assert cfg["_class_name"] == "AutoencoderKL" and cfg["latent_channels"] == 4
  assert cfg["scaling_factor"] == pytest.approx(rep["scaling_factor"])
  vae = load_vae(tmp_path / "vae")
  assert vae.frame_hw == (64, 128) and vae.downsample == 8
  from training.data.frames import SegmentFrames
  from training.data.segments import find_segments
  fr = SegmentFrames(find_segments(tmp_path / "data")[0], (64, 128))
  x = images_to_tensor(np.stack([fr.frame(i) for i in range(0, 40, 3)]))
  z = vae.encode(x)
  assert z.shape == (len(x), 4, 8, 16)
  # scaling factor measured on training frames -> scaled latents have ~unit std
  assert 0.5 < z.std().item() < 2.0
  rec = vae.decode(z)
  assert rec.shape == x.shape
  assert tensor_to_images(rec).dtype == np.uint8


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
  from training.vae import FrozenVAE, VAETrainConfig, make_autoencoder
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=4))
  ae.save_pretrained(str(tmp_path))
  vae = load_vae(tmp_path)
  with pytest.raises(ValueError, match="multiple of 8"):
    vae.encode(torch.zeros(1, 3, 60, 128))
  with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
    vae.encode(torch.zeros(3, 64, 128))
