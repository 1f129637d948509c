"""The command-line convention every ``python -m`` tool follows: shared options, exit codes, one JSON result line.

Device side: numpy at most (no torch, nothing from training/ or tools/); training/torch_args.py applies --threads
and --device to torch.

The result: the last line a tool prints is one JSON object.

``emit_result(obj)`` prints that line (strict JSON: a non-finite float becomes ``null``) and, when the environment
names a file in ``$WORLDPILOT_RESULT``, also writes the object there atomically. The main job
(``training.pipeline``) sets that variable for each stage and reads the file, so a stage's figures never have to
be scraped from its log.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import traceback
import types
import typing
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


# ------------------------------------------------------------------------------------------ the shared command line
#
# Every `python -m` tool builds its parser with make_parser, adds the shared options it needs with add_common_args
# (one meaning each), and wraps its main in tool_main:
#
#   --threads N        N CPU threads for the tool's library (torch, onnxruntime); 0 = the library's own default
#   --device D         torch tools only: cpu, cuda, cuda:1 ...
#   --seed S           every random draw of the run starts from S
#   --set FIELD=VALUE  override a field of the tool's config dataclass (repeatable), parsed to the field's type
#   --config FILE      a recipe (config/*.py): its top-level assignments become the defaults; the command line wins
#   -v / --log-level   logging level; one format for every tool (LOG_FORMAT), set up when the arguments are parsed
#
# Exit status: 0 done; 1 a runtime error (an unusable input file or folder, bad data), reported as one line
# "error: <message>" on stderr (with the traceback under -v); 2 a usage error, one line "<prog>: usage error: ...";
# 130 interrupted. The last line printed on stdout is the JSON result (emit_result).

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error")
OMIT = object()   # add_common_args: leave this option out
# Exceptions that mean "the input is unusable" rather than "the code is wrong": one line, exit 1. Anything else
# (a bug) keeps Python's traceback.
INPUT_ERRORS = (OSError, ValueError, EOFError, ImportError)


class ToolError(Exception):
  """A runtime error a tool reports as one line (exit 1); the message names the file or argument at fault."""


_traceback_wanted = False   # set by ToolParser.parse_args from -v / --log-level debug


class ToolParser(argparse.ArgumentParser):
  """argparse with one-line usage errors (exit 2), --config recipes as defaults and logging set up at parse time."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: usage error: {message} (--help for usage)\n")

  def parse_known_args(self, args=None, namespace=None):
    args = list(sys.argv[1:] if args is None else args)
    if any(a.dest == "config" for a in self._actions):
      path = _option_value(args, "--config")
      if path is not None:
        self._apply_config(path)
    return super().parse_known_args(args, namespace)

  def parse_args(self, args=None, namespace=None):
    ns = super().parse_args(args, namespace)
    if hasattr(ns, "log_level"):
      setup_logging("debug" if ns.verbose else ns.log_level, explicit=ns.verbose or ns.log_level != "info")
    return ns

  def _apply_config(self, path: str) -> None:
    try:
      values = load_config(path)
    except (OSError, SyntaxError, ValueError) as e:
      self.error(f"--config {path}: {e}")
    actions = {a.dest: a for a in self._actions if a.dest not in ("help", "config")}
    unknown = sorted(k for k in values if k not in actions)
    if unknown:
      self.error(f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(actions))}")
    for k, v in values.items():
      action = actions[k]
      if action.nargs in ("+", "*") and isinstance(v, str):
        v = [v]                          # `data = "DIR"` for an option that takes several: a list of one
      if action.type is not None and isinstance(v, (list, tuple)):
        v = [action.type(x) if isinstance(x, str) else x for x in v]   # a scalar string is converted by argparse
      action.required = False
      self.set_defaults(**{k: v})


def _option_value(args: list[str], flag: str) -> str | None:
  """The value of the last `flag V` / `flag=V` in args (None when absent; argparse reports a missing value)."""
  value = None
  for i, a in enumerate(args):
    if a == "--":
      break
    if a == flag and i + 1 < len(args):
      value = args[i + 1]
    elif a.startswith(flag + "="):
      value = a[len(flag) + 1:]
  return value


def load_config(path: str | Path) -> dict:
  """A recipe file's settings: its top-level assignments of plain values (nanoGPT's config/*.py), names in the
  options' dest form (max_steps for --max-steps). Names starting with '_' and imports are not settings."""
  path = Path(path)
  if path.suffix != ".py":
    raise ValueError("a recipe is a Python file (config/*.py)")
  source = path.read_text()
  scope: dict = {}
  exec(compile(source, str(path), "exec"), scope)   # a recipe is code of this repository, like a module
  return {k: v for k, v in scope.items()
          if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def setup_logging(level: str = "info", explicit: bool = False) -> None:
  """The one logging set-up: LOG_FORMAT on stderr at `level`. Where logging is already set up (a test runner's
  handlers) only an explicit level is applied."""
  global _traceback_wanted
  lvl = getattr(logging, level.upper())
  _traceback_wanted = lvl <= logging.DEBUG
  root = logging.getLogger()
  if root.handlers:
    if explicit:
      root.setLevel(lvl)
    return
  logging.basicConfig(level=lvl, format=LOG_FORMAT)


def make_parser(prog: str, description: str | None = None, config: bool = True, **kwargs) -> ToolParser:
  """A tool's parser: `prog` is how it is run (python -m package.module); -v / --log-level and --config FILE are
  added here, so every tool takes a recipe. config=False for a parser with subcommands: each subcommand's parser
  takes --config instead (add_common_args(config=True)), because a recipe holds one subcommand's settings."""
  if description and "\n" in description.strip() and "formatter_class" not in kwargs:
    kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter
  ap = ToolParser(prog=prog, description=description, **kwargs)
  ap.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks of runtime errors")
  ap.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="logging level (default info)")
  if config:
    _add_config(ap)
  return ap


def _add_config(ap: argparse.ArgumentParser) -> None:
  ap.add_argument("--config", default=None, metavar="FILE",
                  help="a recipe (config/*.py) whose settings are the defaults; options given here win")


def add_common_args(ap: argparse.ArgumentParser, *, threads=OMIT, threads_help: str = "CPU threads",
                    device=OMIT, seed=OMIT, seed_help: str = "random seed of the run", sets=(),
                    config: bool = False) -> argparse.ArgumentParser:
  """Add the shared options with their one meaning; each given value is that option's default for this tool.

  threads: int (0 = the library's default); device: str or None (None = cuda when available); seed: int;
  sets: the config dataclass(es) --set FIELD=VALUE overrides (parse_sets); config: add --config FILE (only for a
  subcommand's parser: make_parser adds it to every other)."""
  if threads is not OMIT:
    ap.add_argument("--threads", type=_non_negative_int, default=threads, metavar="N",
                    help=f"{threads_help} (0 = the library's default; default {threads})")
  if device is not OMIT:
    ap.add_argument("--device", default=device, help=f"torch device: cpu, cuda, cuda:N (default "
                                                      f"{device or 'cuda when available, else cpu'})")
  if seed is not OMIT:
    ap.add_argument("--seed", type=int, default=seed, help=f"{seed_help} (default {seed})")
  if sets:
    names = ", ".join(c.__name__ for c in (sets if isinstance(sets, (list, tuple)) else (sets,)))
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                    help=f"override {names} fields (repeatable; CLASS.FIELD where a name is in several)")
  if config:
    _add_config(ap)
  return ap


def _non_negative_int(s: str) -> int:
  n = int(s)
  if n < 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
  return n


# ------------------------------------------------------------------------------------------ --set FIELD=VALUE

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_value(text: str, hint: Any, field: str, current: Any = None) -> Any:
  """text parsed as the type `hint` (int, float, bool, str, tuple[...], X | None); a bare `tuple` takes the type of
  the field's current items (`current`). Tuples are comma-separated. ValueError names the field."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if text.lower() == "none" and type(None) in args:
      return None
    rest = [a for a in args if a is not type(None)]
    return parse_value(text, rest[0], field, current) if len(rest) == 1 else text
  if hint is tuple or origin is tuple:
    item = args[0] if args else (type(current[0]) if current else str)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(parse_value(p, item, field) for p in parts)
  if hint is bool:
    if text.lower() in _TRUE:
      return True
    if text.lower() in _FALSE:
      return False
    raise ValueError(f"{field}={text}: expected true or false")
  if hint in (int, float):
    try:
      return hint(text)
    except ValueError:
      raise ValueError(f"{field}={text}: expected {hint.__name__}") from None
  return text


def parse_sets(pairs: list[str], *configs) -> tuple:
  """Apply FIELD=VALUE (or CLASS.FIELD=VALUE) overrides to the dataclass instances `configs` with
  dataclasses.replace; returns them in order. ValueError (a usage error) on an unknown or ambiguous field."""
  by_class = {type(c).__name__: i for i, c in enumerate(configs)}
  hints = [typing.get_type_hints(type(c)) for c in configs]
  owners = [{f.name for f in dataclasses.fields(c)} for c in configs]
  changes: list[dict] = [{} for _ in configs]
  for p in pairs:
    if "=" not in p:
      raise ValueError(f"--set {p!r}: expected FIELD=VALUE")
    name, text = p.split("=", 1)
    cls_name, _, field = name.rpartition(".")
    if cls_name:
      if cls_name not in by_class or field not in owners[by_class[cls_name]]:
        raise ValueError(f"--set {name}: unknown field")
      idx = [by_class[cls_name]]
    else:
      idx = [i for i, names in enumerate(owners) if field in names]
    known = ", ".join(type(c).__name__ for c in configs)
    if not idx:
      raise ValueError(f"--set {field}: unknown field of {known}")
    if len(idx) > 1:
      raise ValueError(f"--set {field}: a field of several configs ({known}); write CLASS.{field}")
    i = idx[0]
    changes[i][field] = parse_value(text, hints[i][field], f"--set {name}", getattr(configs[i], field))
  return tuple(dataclasses.replace(c, **ch) if ch else c for c, ch in zip(configs, changes))


def apply_sets(ap: argparse.ArgumentParser, pairs: list[str], *configs):
  """parse_sets with its errors as usage errors (exit 2); one config in, one out."""
  try:
    out = parse_sets(pairs, *configs)
  except ValueError as e:
    ap.error(str(e))
  return out[0] if len(out) == 1 else out


# ------------------------------------------------------------------------------------------ the exit convention


def report_error(exc: BaseException) -> None:
  """One line on stderr naming what is at fault (the traceback first under -v)."""
  if _traceback_wanted:
    traceback.print_exception(exc)
  msg = " ".join(str(exc).split()) or type(exc).__name__
  print(f"error: {msg}", file=sys.stderr, flush=True)


def tool_main(main):
  """Decorate a tool's main(argv=None) -> int | None: None is exit 0; an input error (INPUT_ERRORS, ToolError) is
  one line on stderr and 1; Ctrl-C is 130; usage errors (SystemExit 2 from the parser) pass through."""
  @functools.wraps(main)
  def wrapper(argv=None):
    try:
      rc = main(argv)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      return 130
    except (ToolError, *INPUT_ERRORS) as e:
      report_error(e)
      return 1
    return 0 if rc is None else rc
  wrapper.__tool_main__ = True
  return wrapper
