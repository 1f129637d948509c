"""Crash-safe training checkpoints.

Layout of a run directory after a few saves::

  run/ckpt_00000100.safetensors   tensors of every state dict, keys "<name>/<param>" (e.g. "model/blocks.0.attn.qkv.weight")
  run/ckpt_00000100.optim.pt      optimizer state (torch.save of tensors/numbers/strings), optional
  run/ckpt_00000100.json          {"step", "config", "extra", "files": {name: sha-less size}, "state_names"}
  run/latest                      name of the newest complete checkpoint's json, written LAST

Every file is written to a temporary name, fsync'ed and os.replace'd into place, so a process killed at
any instant leaves either the previous checkpoint set or the new one, never a half file under a final
name. ``load_latest`` still validates what it reads (sizes recorded in the json, safetensors header) and
falls back to the previous checkpoint, logging why, if the newest one is damaged.

The optimizer state is read only when asked for (``load_optimizer=True``, i.e. when resuming training), and then
with ``torch.load(weights_only=True)``: a run directory is data, and exporting or evaluating one someone handed
over must never execute code from it (a full unpickle of a crafted ``.optim.pt`` would).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^ckpt_(\d+)\.json$")


def _fsync_dir(d: Path) -> None:
  try:
    fd = os.open(d, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _atomic_write(path: Path, write_fn) -> None:
  """write_fn(tmp_path) writes the content; then fsync + rename into place."""
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  try:
    write_fn(tmp)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  _fsync_dir(path.parent)


def _atomic_write_text(path: Path, text: str) -> None:
  _atomic_write(path, lambda p: p.write_text(text))


def save_checkpoint(run_dir, step: int, state: dict[str, dict[str, torch.Tensor]], optimizer_state: dict | None = None,
                    config: dict | None = None, extra: dict | None = None, keep: int = 3) -> Path:
  """Save state dicts (e.g. {"model": sd, "ema": sd}) + optimizer state + config at `step`; keep the last `keep`.
  Returns the path of the checkpoint's json file."""
  run_dir = Path(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  stem = f"ckpt_{int(step):08d}"
  flat: dict[str, torch.Tensor] = {}
  for name, sd in state.items():
    if "/" in name:
      raise ValueError(f"state name {name!r} may not contain '/'")
    for k, v in sd.items():
      if not isinstance(v, torch.Tensor):
        raise TypeError(f"state[{name!r}][{k!r}] is {type(v).__name__}, expected a Tensor")
      flat[f"{name}/{k}"] = v.detach().to("cpu").contiguous()
  # safetensors refuses tensors that share storage; clone those
  seen = {}
  for k, v in flat.items():
    ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), v.numel()) if v.numel() else None
    if ptr is not None and ptr in seen:
      flat[k] = v.clone()
    seen[ptr] = k
  files = {}
  st_path = run_dir / f"{stem}.safetensors"
  _atomic_write(st_path, lambda p: save_file(flat, str(p)))
  files[st_path.name] = st_path.stat().st_size
  if optimizer_state is not None:
    opt_path = run_dir / f"{stem}.optim.pt"
    _atomic_write(opt_path, lambda p: torch.save(optimizer_state, p))
    files[opt_path.name] = opt_path.stat().st_size
  meta = {"step": int(step), "config": config or {}, "extra": extra or {}, "files": files,
          "state_names": sorted(state.keys())}
  json_path = run_dir / f"{stem}.json"
  _atomic_write_text(json_path, json.dumps(meta, indent=1, default=str))
  _atomic_write_text(run_dir / "latest", json_path.name + "\n")
  _prune(run_dir, keep)
  return json_path


def list_checkpoints(run_dir) -> list[Path]:
  """Checkpoint json files in a run directory, oldest first."""
  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    return []
  found = []
  for p in run_dir.iterdir():
    m = CKPT_RE.match(p.name)
    if m:
      found.append((int(m.group(1)), p))
  return [p for _, p in sorted(found)]


def _prune(run_dir: Path, keep: int) -> None:
  ckpts = list_checkpoints(run_dir)
  for js in ckpts[:-keep] if keep > 0 else []:
    stem = js.name[:-len(".json")]
    js.unlink(missing_ok=True)  # json first: a checkpoint without json is invisible
    for suffix in (".safetensors", ".optim.pt"):
      (run_dir / f"{stem}{suffix}").unlink(missing_ok=True)


def load_checkpoint(json_path, map_location="cpu", load_optimizer: bool = False) -> dict:
  """Load one checkpoint; raises ValueError naming the file when any part is missing or damaged.
  The optimizer state ("optimizer") is None unless load_optimizer (resuming); it is never unpickled otherwise."""
  json_path = Path(json_path)
  try:
    meta = json.loads(json_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{json_path}: unreadable checkpoint metadata ({e})") from e
  for field in ("step", "files", "state_names"):
    if field not in meta:
      raise ValueError(f"{json_path}: missing field {field!r}")
  stem = json_path.name[:-len(".json")]
  opt_path = json_path.parent / f"{stem}.optim.pt"
  for fname, size in meta["files"].items():
    f = json_path.parent / fname
    if fname == opt_path.name and not load_optimizer:
      continue     # weights alone load without the optimizer state (a run copied for inference may leave it out)
    if not f.exists():
      raise ValueError(f"{f}: missing (referenced by {json_path.name})")
    if f.stat().st_size != size:
      raise ValueError(f"{f}: size {f.stat().st_size} != recorded {size} (truncated or overwritten)")
  st_path = json_path.parent / f"{stem}.safetensors"
  try:
    flat = load_file(str(st_path), device=str(map_location))
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"{st_path}: corrupt safetensors ({e})") from e
  state: dict[str, dict[str, torch.Tensor]] = {n: {} for n in meta["state_names"]}
  for k, v in flat.items():
    name, _, key = k.partition("/")
    if name not in state:
      raise ValueError(f"{st_path}: tensor {k!r} belongs to unknown state {name!r}")
    state[name][key] = v
  opt = None
  if load_optimizer and opt_path.name in meta["files"]:
    try:
      # weights_only: tensors, numbers, strings and containers only; any other pickled object is refused
      opt = torch.load(opt_path, map_location=map_location, weights_only=True)
    except Exception as e:
      raise ValueError(f"{opt_path}: corrupt or unsafe optimizer state ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from e
  return {"step": meta["step"], "state": state, "optimizer": opt, "config": meta.get("config", {}),
          "extra": meta.get("extra", {}), "path": json_path}


def load_latest(run_dir, map_location="cpu", load_optimizer: bool = False) -> dict | None:
  """Newest loadable checkpoint in run_dir (dict with step/state/optimizer/config/extra/path) or None.
  Damaged checkpoints are skipped with a warning naming the file and the reason. The optimizer state is loaded
  only with load_optimizer=True (resume)."""
  run_dir = Path(run_dir)
  # Highest step first. A json only exists once its data files were fsync'ed, so a checkpoint newer than the
  # `latest` pointer (killed between the two writes) is complete and validated like any other.
  candidates = list_checkpoints(run_dir)
  for js in reversed(candidates):
    try:
      return load_checkpoint(js, map_location, load_optimizer)
    except ValueError as e:
      log.warning("skipping checkpoint: %s", e)
  return None
