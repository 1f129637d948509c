"""convert_checkpoint: a run in the old config format (switches, legacy defaults, the world model's own resume state)
is rewritten once to the current form; a removed switch's value is refused with nothing written."""
import json
from dataclasses import replace

import pytest
import torch

from training.checkpoint import list_checkpoints, load_latest, save_checkpoint
from training.worldmodel.convert_checkpoint import ConversionError, convert_config, main
from training.worldmodel.dit import PRESETS, DiTConfig, build_model, get_config

torch.set_num_threads(1)

# PRESETS["tiny"].to_dict() and PRESETS["250M"].to_dict() before the change (commit 6f0f77b)
OLD_TINY = {"name": "tiny", "latent_channels": 4, "latent_h": 16, "latent_w": 32, "patch": 4, "depth": 4, "width": 128,
            "heads": 4, "mlp_ratio": 4.0, "context_frames": 10, "anchor_frames": 5, "fps": 5.0, "plan_hidden": 256,
            "plan_blocks": 2, "anchor_drop_prob": 0.3, "ctx_noise_prob": 0.3, "ctx_noise_logit_mean": 0.0,
            "ctx_noise_logit_std": 0.25, "plan_loss_weight": 0.1, "prev_frame_input": True, "plan_cv_prior": True,
            "gen_frames": 1, "plan_anchor_input": True, "output": "denoiser", "delta_std": 0.5, "learn_prior_std": True,
            "decoder_weighted_loss": False, "loss_channel_weights": None, "loss_lowpass_weight": 0.0,
            "loss_lowpass_pool": 4, "prev_warp": True, "warp_cam_height": 1.22, "warp_max_depth": 150.0}
OLD_250M = dict(OLD_TINY, name="250M", patch=2, depth=12, width=768, heads=12, plan_hidden=1024, plan_blocks=3,
                output="velocity", learn_prior_std=False, prev_warp=False)


def to_old_form(run, model_cfg: dict, train_seconds: float = 0.0, epoch: int = 0) -> None:
  """Rewrite a run's configs and resume state the way the trainer before the change wrote them."""
  for f in list_checkpoints(run):
    meta = json.loads(f.read_text())
    meta["config"]["model"] = model_cfg
    meta["extra"] = {"epoch": epoch, "ema_init_weight": meta["extra"].get("ema_init_weight", 0.0),
                     "train_seconds": train_seconds}
    f.write_text(json.dumps(meta))
  if (run / "config.json").exists():
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"] = model_cfg
    (run / "config.json").write_text(json.dumps(cfg))


def test_presets_convert_to_the_current_presets():
  # their Plan Heads corrected the constant-velocity path, which the converted config keeps saying
  assert DiTConfig.from_dict(convert_config(OLD_TINY)) == replace(PRESETS["tiny"], plan_prior="constant_velocity",
                                                                          warp_mode="bilinear")
  assert DiTConfig.from_dict(convert_config(OLD_250M)) == replace(PRESETS["250M"], plan_prior="constant_velocity",
                                                                          warp_mode="bilinear")
  assert convert_config(PRESETS["tiny"].to_dict()) == PRESETS["tiny"].to_dict()     # already current: unchanged
  # the first checkpoints predate the switches, and the loader filled in the values that reproduced them: a model
  # without the previous-frame input, which the current code cannot run
  first = {k: v for k, v in OLD_250M.items() if k not in ("prev_frame_input", "plan_cv_prior", "gen_frames",
                                                          "plan_anchor_input", "output", "prev_warp", "learn_prior_std",
                                                          "decoder_weighted_loss")}
  with pytest.raises(ConversionError, match="prev_frame_input=False"):
    convert_config(first)


@pytest.mark.parametrize("change,match", [({"gen_frames": 10}, "gen_frames=10"),
                                          ({"decoder_weighted_loss": True}, "decoder_weighted_loss=True"),
                                          ({"plan_anchor_input": False}, "plan_anchor_input=False"),
                                          ({"prev_warp": False}, "combination"),
                                          ({"output": "velocity"}, "combination"),
                                          ({"depht": 3}, "depht")])
def test_removed_switch_values_are_refused(change, match):
  with pytest.raises(ConversionError, match=match):
    convert_config({**OLD_TINY, **change})


def _old_run(root, model_cfg):
  cfg = DiTConfig.from_dict(convert_config(model_cfg))
  torch.manual_seed(0)
  model = build_model(cfg)
  run = root / "run"
  config = {"model": model_cfg, "args": {"ema": 0.999}, "vae": str(root / "vae"), "latent_root": str(root / "none")}
  for step in (1, 2):
    save_checkpoint(run, step, {"model": model.state_dict(), "ema": model.state_dict()}, None, config,
                    {"epoch": 1, "ema_init_weight": 0.01, "train_seconds": 30.0 * step})
  (run / "config.json").write_text(json.dumps(config))
  return run, model


def test_convert_a_run_once_then_it_loads(tmp_path, capsys):
  from tests.training.onpolicy.tiny_runs import make_vae
  from training.worldmodel.evaluate import load_worldmodel_run
  make_vae(tmp_path / "vae")
  small = dict(depth=1, width=32, heads=2, plan_hidden=32, plan_blocks=1, context_frames=3, anchor_frames=2)
  run, model = _old_run(tmp_path, {**OLD_TINY, **small})
  with pytest.raises(ValueError, match="convert_checkpoint"):   # the loader names the command
    load_worldmodel_run(run)
  assert main([str(run)]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["converted"] == 3
  assert res["runs"][str(run)]["converted"] == ["ckpt_00000001.json", "ckpt_00000002.json", "config.json"]
  loaded, _, cfg, run_cfg = load_worldmodel_run(run)
  assert cfg == get_config("tiny", **small, plan_prior="constant_velocity", warp_mode="bilinear") and run_cfg["step"] == 2
  assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
  ck = load_latest(run)
  assert ck["extra"] == {"ema_init_weight": 0.01, "elapsed_s": 60.0, "task": {"epoch": 1}}
  assert json.loads((run / "config.json").read_text())["model"]["format"] == DiTConfig.FORMAT
  assert main([str(run)]) == 0                                  # a second time: nothing to do
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert res["converted"] == 0 and len(res["runs"][str(run)]["current"]) == 3


def test_a_refused_run_is_left_as_it_was(tmp_path, capsys):
  run, _ = _old_run(tmp_path, OLD_TINY)
  bad = tmp_path / "bad"
  save_checkpoint(bad, 1, {"model": {"w": torch.zeros(1)}}, None, {"model": {**OLD_TINY, "gen_frames": 10}}, {})
  before = {p: p.read_text() for p in list(run.glob("*.json")) + list(bad.glob("*.json"))}
  assert main([str(run), str(bad)]) == 1
  assert "gen_frames=10" in capsys.readouterr().err
  assert {p: p.read_text() for p in before} == before           # neither run touched
  assert main([str(tmp_path / "nothing")]) == 1
  assert "no checkpoint" in capsys.readouterr().err
