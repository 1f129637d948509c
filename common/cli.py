"""The result convention every ``python -m`` tool follows: the last line it prints is one JSON object.

``emit_result(obj)`` prints that line (strict JSON: a non-finite float becomes ``null``) and, when the environment
names a file in ``$WORLDPILOT_RESULT``, also writes the object there atomically. The main job
(``training.pipeline``) sets that variable for each stage and reads the file, so a stage's figures never have to
be scraped from its log.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RESULT_ENV = "WORLDPILOT_RESULT"


def jsonable(obj: Any) -> Any:
  """obj with numpy scalars/arrays turned into Python numbers/lists, Paths into strings, non-finite floats into None."""
  if isinstance(obj, dict):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, Path):
    return str(obj)
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):   # numpy scalar or array
    return jsonable(obj.tolist())
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  return obj


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
  """Write obj as strict JSON to path via a temporary file and a rename: a reader never sees half a file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
  os.replace(tmp, path)
  return path


def emit_result(result: dict) -> dict:
  """Print `result` as the tool's last line and write it to $WORLDPILOT_RESULT when that is set."""
  clean = jsonable(result)
  print(json.dumps(clean, allow_nan=False), flush=True)
  target = os.environ.get(RESULT_ENV)
  if target:
    write_json_atomic(target, clean)
  return clean
