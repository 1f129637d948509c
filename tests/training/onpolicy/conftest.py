"""Shared fixtures of the on-policy tests: one short generated segment (tools.sim.generate, rendered straight into the
tiny policy's 128x64 model frame, so frames need no warp) and a policy run with untrained tiny weights."""
import json

import pytest
import torch

from common.transformations.camera import model_frame_camera
from training.checkpoint import save_checkpoint
from training.policy.model import TemporalPolicy, VisionModel, get_config

SEGMENT_SECONDS = 15          # 10 s of plan horizon + 5 s (24 simulator steps) of rollout


@pytest.fixture(scope="session")
def policy_cfg():
  return get_config("tiny")


@pytest.fixture(scope="session")
def segment_dir(tmp_path_factory, policy_cfg):
  from tools.sim.generate import write_segment
  out = tmp_path_factory.mktemp("onpolicy_data")
  cam = model_frame_camera(policy_cfg.frame_w, policy_cfg.frame_h, policy_cfg.frame_focal)
  return write_segment(out, seed=3, index=0, duration=SEGMENT_SECONDS, camera=cam)


@pytest.fixture(scope="session")
def policy_run(tmp_path_factory, policy_cfg, segment_dir):
  """A training.policy.train-shaped run (untrained weights) whose split lists the fixture segment."""
  run = tmp_path_factory.mktemp("bc_policy")
  torch.manual_seed(0)
  vision, temporal = VisionModel(policy_cfg), TemporalPolicy(policy_cfg)
  save_checkpoint(run, 1, {"vision": vision.state_dict(), "temporal": temporal.state_dict()}, None,
                  {"policy": policy_cfg.to_dict()}, {"stage": "temporal", "stage_step": 1})
  (run / "split.json").write_text(json.dumps({"train": [str(segment_dir)], "val": []}))
  return run


@pytest.fixture(scope="session")
def logged(segment_dir, policy_cfg, tmp_path_factory):
  from training.onpolicy.simulator import load_logged_segment
  return load_logged_segment(segment_dir, policy_cfg, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def wm_run(tmp_path_factory):
  """A world-model run (untrained tiny DiT at the policy's 64x128 frame, 3 context + 2 anchor frames, a tiny VAE)
  in the layout training.worldmodel.evaluate.load_worldmodel_run reads."""
  from training.vae import VAETrainConfig, make_autoencoder
  from training.worldmodel.dit import build_model
  from training.worldmodel.dit import get_config as wm_config
  root = tmp_path_factory.mktemp("wm")
  torch.manual_seed(0)
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  ae.register_to_config(scaling_factor=2.0)
  ae.save_pretrained(str(root / "vae"))
  cfg = wm_config("tiny", latent_h=8, latent_w=16, patch=2, depth=2, width=64, heads=4, plan_hidden=64, plan_blocks=1,
                  context_frames=3, anchor_frames=2)
  model = build_model(cfg)
  save_checkpoint(root / "run", 1, {"model": model.state_dict()}, None,
                  {"model": cfg.to_dict(), "vae": str(root / "vae"), "args": {"ema": 0.999}}, {})
  return root / "run"
