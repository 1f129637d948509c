"""Tiny world-model and policy run directories built in-process (random weights), for the on-policy tools' tests:
the same checkpoint layout the trainers write, so every loader runs for real."""
from pathlib import Path

import torch

from training.checkpoint import save_checkpoint
from training.policy.model import TemporalPolicy, VisionModel, get_config
from training.vae import VAETrainConfig, make_autoencoder
from training.worldmodel.dit import build_model
from training.worldmodel.dit import get_config as wm_config

SMALL_WM = dict(depth=1, width=32, heads=2, plan_hidden=32, plan_blocks=1, context_frames=3, anchor_frames=2)


def make_vae(out: Path) -> Path:
  torch.manual_seed(0)
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  ae.register_to_config(scaling_factor=2.0)
  ae.save_pretrained(str(out))
  return out


def make_wm_run(out: Path, vae: Path) -> Path:
  torch.manual_seed(1)
  cfg = wm_config("tiny", **SMALL_WM)
  model = build_model(cfg)
  save_checkpoint(out, 1, {"model": model.state_dict()}, None,
                  {"model": cfg.to_dict(), "args": {"ema": 0.999}, "vae": str(vae), "latent_root": str(out / "none")})
  return out


def make_policy_run(out: Path, temporal: bool = True) -> Path:
  """temporal=False: a run that finished only the extractor stage."""
  torch.manual_seed(2)
  cfg = get_config("tiny")
  state = {"vision": VisionModel(cfg).state_dict()}
  if temporal:
    state["temporal"] = TemporalPolicy(cfg).state_dict()
  save_checkpoint(out, 1, state, None, {"policy": cfg.to_dict()}, {"stage": "temporal" if temporal else "extractor"})
  return out
