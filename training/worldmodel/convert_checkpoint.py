"""Convert a world-model run written before the current config format, once, in place.

  python -m training.worldmodel.convert_checkpoint RUN [RUN ...]

Rewrites the model config in every checkpoint json of RUN (ckpt_*.json) and in RUN/config.json to the current form
(DiTConfig.FORMAT), so that evaluate / rollout / sample / the on-policy simulator / --resume read it; the tensors are
not touched (their names and shapes did not change). Prints one JSON line: the files converted and those already in
the current form, per run. Exit status 1, and no file of any run changed, when a run cannot be converted.

What the old form held and how it maps:
  * fields added after the first checkpoints take the values that reproduced those older models (the loader used to
    fill them in: the table LEGACY_DEFAULTS below);
  * the switches every preset had on became the only code path: prev_frame_input, plan_cv_prior and
    plan_anchor_input must be true;
  * the switches no preset used were removed: gen_frames must be 1 and decoder_weighted_loss false (their
    measurements are in docs/experiments.md);
  * output / prev_warp / learn_prior_std: ("velocity", false, false) stays output "velocity" (the paper's sizes);
    ("denoiser", true, true) becomes output "denoiser" (tiny's model, dit.WarpDenoiserDiT); other combinations
    were experiments and are refused;
  * the checkpoint's resume state (train_seconds, epoch) moves to where the shared training loop keeps it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common.cli import emit_result, make_parser, tool_main, write_json_atomic
from training.checkpoint import list_checkpoints
from training.worldmodel.dit import DiTConfig

# what the loader filled in for fields a checkpoint predated (DiTConfig.LEGACY_DEFAULTS until format 2)
LEGACY_DEFAULTS = {"prev_frame_input": False, "plan_cv_prior": False, "gen_frames": 1, "plan_anchor_input": False,
                   "output": "velocity", "prev_warp": False, "learn_prior_std": False, "decoder_weighted_loss": False}
# switches that are now the only code path or gone, with the one value the current code implements
FIXED = {"prev_frame_input": True, "plan_cv_prior": True, "plan_anchor_input": True, "gen_frames": 1,
         "decoder_weighted_loss": False}
OUTPUTS = {("velocity", False, False): "velocity", ("denoiser", True, True): "denoiser"}
DROPPED = ("loss_channel_weights", "loss_lowpass_weight", "loss_lowpass_pool")   # decoder_weighted_loss's numbers


class ConversionError(ValueError):
  pass


def convert_config(old: dict) -> dict:
  """An old model config dict -> the current DiTConfig.to_dict(); ConversionError for a removed switch's value."""
  if old.get("format") == DiTConfig.FORMAT:
    return dict(old)
  d = {**LEGACY_DEFAULTS, **old}
  for k, keep in FIXED.items():
    v = d.pop(k)
    if v != keep:
      raise ConversionError(f"{k}={v!r}: this switch was removed (only {k}={keep!r} remains, see "
                            f"docs/experiments.md); the model cannot be run by the current code")
  combo = (d.pop("output"), bool(d.pop("prev_warp")), bool(d.pop("learn_prior_std")))
  if combo not in OUTPUTS:
    raise ConversionError(f"output={combo[0]!r}, prev_warp={combo[1]}, learn_prior_std={combo[2]}: a removed "
                          f"combination (the current code has output 'velocity' = no warp, no learned std, and "
                          f"'denoiser' = both)")
  d["output"] = OUTPUTS[combo]
  for k in DROPPED:
    d.pop(k, None)
  d.pop("format", None)
  try:
    return DiTConfig.from_dict({**d, "format": DiTConfig.FORMAT}).to_dict()
  except (TypeError, ValueError) as e:
    raise ConversionError(str(e)) from e


def convert_extra(extra: dict) -> dict:
  """A checkpoint's resume state from the world model's own loop -> the shared loop's (training/trainer.py)."""
  if "elapsed_s" in extra:
    return extra
  out = {k: v for k, v in extra.items() if k not in ("train_seconds", "epoch")}
  out["elapsed_s"] = float(extra.get("train_seconds", 0.0))
  out["task"] = {"epoch": int(extra.get("epoch", 0))}
  return out


def plan_run(run) -> tuple[dict, list]:
  """The converted json of every file of one run directory that needs it ({path: dict}) and the names of those
  already current; ConversionError (nothing written) when one cannot be converted."""
  run = Path(run)
  files = list_checkpoints(run) + ([run / "config.json"] if (run / "config.json").exists() else [])
  if not files:
    raise ConversionError(f"{run}: no checkpoint json and no config.json")
  new, current = {}, []
  for f in files:   # everything is checked before anything is written
    try:
      meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ConversionError(f"{f}: unreadable ({e})") from e
    cfg = meta.get("config", {}) if f.name != "config.json" else meta
    if not isinstance(cfg, dict) or "model" not in cfg:
      raise ConversionError(f"{f}: no world-model config (no 'model' entry): not a world-model run")
    if cfg["model"].get("format") == DiTConfig.FORMAT:
      current.append(f.name)
      continue
    try:
      cfg["model"] = convert_config(cfg["model"])
    except ConversionError as e:
      raise ConversionError(f"{f}: {e}") from e
    if f.name != "config.json":
      meta["extra"] = convert_extra(meta.get("extra", {}))
    new[f] = meta
  return new, current


def convert_run(run) -> dict:
  """Convert every config of one run directory in place; returns {"converted": [...], "current": [...]} (names)."""
  new, current = plan_run(run)
  for f, meta in new.items():
    write_json_atomic(f, meta)
  return {"converted": sorted(f.name for f in new), "current": current}


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.worldmodel.convert_checkpoint", __doc__.split("\n")[0])
  ap.add_argument("runs", nargs="+", type=Path, help="world-model run directories")
  args = ap.parse_args(argv)
  try:
    plans = {run: plan_run(run) for run in args.runs}   # every run checked before any file is written
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  res = {}
  for run, (new, current) in plans.items():
    for f, meta in new.items():
      write_json_atomic(f, meta)
    res[str(run)] = {"converted": sorted(f.name for f in new), "current": current}
  emit_result({"runs": res, "converted": sum(len(r["converted"]) for r in res.values())})
  return 0


if __name__ == "__main__":
  sys.exit(main())
