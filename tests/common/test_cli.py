"""The command-line convention (common/cli.py): one strict-JSON last line, also written to $WORLDPILOT_RESULT when
set; shared options with one meaning; exit 2 / 1 with one line; --set and --config; every tool on the helper."""
import ast
import dataclasses
import importlib
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.cli import (
  RESULT_ENV,
  ToolError,
  add_common_args,
  apply_sets,
  emit_result,
  jsonable,
  load_config,
  make_parser,
  parse_sets,
  tool_main,
  write_json_atomic,
)


def test_emit_prints_one_strict_json_line_and_writes_the_result_file(tmp_path, monkeypatch, capsys):
  target = tmp_path / "sub" / "result.json"
  monkeypatch.setenv(RESULT_ENV, str(target))
  res = {"psnr": np.float32(21.5), "n": np.int64(3), "bad": float("nan"), "inf": math.inf,
         "arr": np.arange(3), "path": Path("/x"), "nested": {"v": [np.float64(1.25), None]}}
  emit_result(res)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  printed = json.loads(line)               # strict: NaN/inf would not parse as standard JSON tokens
  assert "NaN" not in line and "Infinity" not in line
  assert printed == {"psnr": 21.5, "n": 3, "bad": None, "inf": None, "arr": [0, 1, 2], "path": "/x",
                     "nested": {"v": [1.25, None]}}
  assert json.loads(target.read_text()) == printed
  assert not list(target.parent.glob(".*.tmp"))


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv(RESULT_ENV, raising=False)
  monkeypatch.chdir(tmp_path)
  emit_result({"a": 1})
  assert json.loads(capsys.readouterr().out) == {"a": 1}
  assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
  p = write_json_atomic(tmp_path / "r.json", {"x": [1, 2]})
  write_json_atomic(p, {"y": 2})
  assert json.loads(p.read_text()) == {"y": 2}
  assert jsonable((np.float16(0.5),)) == [0.5]


# ------------------------------------------------------------------------------------------ the command-line convention

ROOT = Path(__file__).resolve().parents[2]
TOOL_DIRS = ("modeld", "selfdrive", "tools", "training", "bench")


def _run(*argv, timeout=120):
  env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(Path.home())}
  return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, code, needle", [
  (["-m", "tools.lib.segment_info"], 2, "segment"),                                   # a missing argument
  (["-m", "tools.lib.segment_info", "/nonexistent/seg"], 1, "/nonexistent/seg"),      # a missing input folder
  (["-m", "tools.lib.logreader", "/nonexistent/rlog"], 1, "/nonexistent/rlog"),
  (["-m", "training.export", "--run", "/nonexistent/run", "--out", "x"], 1, "/nonexistent/run"),
  (["-m", "training.pipeline", "--set", "no_such_field=1"], 2, "no_such_field"),
])
def test_tools_exit_with_one_line_naming_the_fault(argv, code, needle):
  r = _run(*argv)
  err = r.stderr.strip().splitlines()
  assert r.returncode == code, r.stderr
  assert len(err) == 1 and needle in err[0], r.stderr
  assert err[0].startswith("error: " if code == 1 else "python -m ")
  assert "Traceback" not in r.stderr


def test_verbose_adds_the_traceback():
  r = _run("-m", "tools.lib.segment_info", "-v", "/nonexistent/seg")
  assert r.returncode == 1 and "Traceback" in r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_tool_main_exit_codes(capsys):
  @tool_main
  def main(argv=None):
    kind = argv[0]
    if kind == "missing":
      raise FileNotFoundError(2, "No such file or directory", "/data/x.hevc")
    if kind == "bad":
      raise ToolError("--data d: no segment\nsecond line")
    if kind == "interrupt":
      raise KeyboardInterrupt
    if kind == "bug":
      raise AttributeError("a bug keeps its traceback")
    return None
  assert main(["ok"]) == 0
  assert main(["missing"]) == 1 and capsys.readouterr().err == "error: [Errno 2] No such file or directory: '/data/x.hevc'\n"
  assert main(["bad"]) == 1 and capsys.readouterr().err == "error: --data d: no segment second line\n"
  assert main(["interrupt"]) == 130
  with pytest.raises(AttributeError):
    main(["bug"])


def test_usage_errors_are_one_line(capsys):
  ap = make_parser("python -m some.tool")
  add_common_args(ap, threads=1, seed=0)
  with pytest.raises(SystemExit) as e:
    ap.parse_args(["--threads", "-1"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and err[0].startswith("python -m some.tool: usage error: argument --threads")
  args = ap.parse_args([])
  assert (args.threads, args.seed, args.verbose, args.log_level) == (1, 0, False, "info")
  assert ap.parse_args(["--threads", "0"]).threads == 0                 # 0: the library's default


@dataclasses.dataclass(frozen=True)
class _Model:
  name: str = "tiny"
  depth: int = 4
  mlp_ratio: float = 4.0
  use_bias: bool = False
  scenarios: tuple[str, ...] = ("a",)
  minutes: float | None = None
  lr: float = 1e-3


@dataclasses.dataclass
class _Run:
  lr: float = 3e-4
  betas: tuple = (0.9, 0.999)
  keep: int = 3


def test_set_parses_each_field_to_its_type():
  m, = parse_sets(["depth=8", "mlp_ratio=2", "use_bias=true", "scenarios=x,y", "minutes=none", "name=big"], _Model())
  assert m == _Model(name="big", depth=8, mlp_ratio=2.0, use_bias=True, scenarios=("x", "y"), minutes=None)
  assert parse_sets(["minutes=1.5", "use_bias=0"], _Model())[0].minutes == 1.5
  m, r = parse_sets(["depth=2", "keep=5", "_Run.lr=0.1", "betas=0.8,0.9"], _Model(), _Run())
  assert (m.depth, m.lr, r.keep, r.lr, r.betas) == (2, 1e-3, 5, 0.1, (0.8, 0.9))
  for bad, msg in ((["depht=2"], "depht: unknown field"), (["depth=two"], "expected int"),
                   (["use_bias=maybe"], "expected true or false"), (["depth"], "FIELD=VALUE"),
                   (["lr=1"], "CLASS.lr"), (["_Run.depth=1"], "unknown field")):
    with pytest.raises(ValueError, match=msg):
      parse_sets(bad, _Model(), _Run())


def test_set_unknown_field_is_a_usage_error(capsys):
  ap = make_parser("python -m some.tool")
  add_common_args(ap, sets=_Model)
  args = ap.parse_args(["--set", "depth=3", "--set", "name=x"])
  assert apply_sets(ap, args.set, _Model()) == _Model(depth=3, name="x")
  with pytest.raises(SystemExit) as e:
    apply_sets(ap, ["widht=3"], _Model())
  assert e.value.code == 2 and "widht" in capsys.readouterr().err


def test_config_file_sets_defaults_the_command_line_overrides(tmp_path, capsys):
  cfg = tmp_path / "recipe.py"
  cfg.write_text('"""a recipe"""\nimport math\n_scratch = 1\ndata = ["d1", "d2"]\nout = "runs/x"\nlr = 2e-3\n'
                 'max_steps = 10 ** 5\naugment = True\nset = ["depth=8"]\n')
  assert load_config(cfg) == {"data": ["d1", "d2"], "out": "runs/x", "lr": 2e-3, "max_steps": 100000,
                              "augment": True, "set": ["depth=8"]}

  def parser():
    ap = make_parser("python -m some.trainer")
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--augment", action="store_true")
    add_common_args(ap, seed=0, sets=_Model)
    return ap
  a = parser().parse_args(["--config", str(cfg)])
  assert (a.data, a.out, a.lr, a.max_steps, a.augment, a.seed) == ([Path("d1"), Path("d2")], Path("runs/x"), 2e-3,
                                                                    100000, True, 0)
  a = parser().parse_args([f"--config={cfg}", "--lr", "5e-4", "--out", "o", "--set", "depth=2"])
  assert (a.lr, a.out, a.max_steps) == (5e-4, Path("o"), 100000)
  assert apply_sets(parser(), a.set, _Model()).depth == 2             # the command line's --set comes last
  assert parser().parse_args(["--data", "d", "--out", "o"]).lr == 1e-3   # without --config: the parser's defaults
  cfg.write_text('data = "d1"\nout = "o"\n')                          # one folder for an option that takes several
  assert parser().parse_args(["--config", str(cfg)]).data == [Path("d1")]
  for text, needle in (("nope = 1\n", "unknown setting(s) nope"), ("lr = (\n", "--config")):
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
      parser().parse_args(["--config", str(cfg)])
    assert e.value.code == 2 and needle in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    parser().parse_args(["--config", str(tmp_path / "missing.py")])
  assert e.value.code == 2 and "missing.py" in capsys.readouterr().err


def test_the_recipes_load_into_their_trainers(capsys):
  """Every config/*.py shows its command in its docstring and holds only settings that trainer has (the trainer's
  parser refuses an unknown one with exit 2; --help after it exits 0)."""
  recipes = sorted((ROOT / "config").glob("*.py"))
  assert len(recipes) >= 6
  for path in recipes:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = re.search(rf"-m (\S+) (?:([a-z-]+) )?--config config/{re.escape(path.name)}", doc)
    assert m and load_config(path), path
    main = importlib.import_module(m.group(1)).main
    with pytest.raises(SystemExit) as e:
      main([*([m.group(2)] if m.group(2) else []), "--config", str(path), "--help"])
    assert e.value.code == 0, (path, capsys.readouterr().err)


def _main_functions(path: Path):
  tree = ast.parse(path.read_text())
  return [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"], tree


def test_every_tool_uses_the_shared_helper():
  """A module with a main under the tool directories builds its parser with make_parser, wraps main in tool_main and
  leaves logging to the shared set-up: a new tool cannot drift from the convention."""
  offenders = []
  n = 0
  for d in TOOL_DIRS:
    for path in sorted((ROOT / d).rglob("*.py")):
      mains, tree = _main_functions(path)
      if not mains:
        continue
      n += 1
      src = path.read_text()
      rel = path.relative_to(ROOT)
      decorated = any(isinstance(dec, ast.Name) and dec.id == "tool_main" for dec in mains[0].decorator_list)
      if not decorated:
        offenders.append(f"{rel}: main is not wrapped in common.cli.tool_main")
      if "make_parser(" not in src:
        offenders.append(f"{rel}: parser not built with common.cli.make_parser")
      if "ArgumentParser(" in src or "logging.basicConfig" in src:
        offenders.append(f"{rel}: its own ArgumentParser or logging set-up")
      for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args:
          flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
          shared = {"--threads", "--device", "--seed", "--set", "--config", "--log-level"} & set(flags)
          if shared:
            offenders.append(f"{rel}:{node.lineno}: {sorted(shared)} added by hand (use add_common_args)")
  assert n >= 35 and not offenders, "\n".join(offenders)


def test_cli_stays_device_side():
  """common/cli.py imports neither torch nor anything from training/ or tools/ (it ships to the device)."""
  tree = ast.parse((ROOT / "common" / "cli.py").read_text())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
  assert not [m for m in names if m.split(".")[0] in ("torch", "training", "tools", "bench")], names
  r = _run("-c", "import sys, common.cli; assert not {'torch', 'training'} & set(sys.modules), sorted(sys.modules)")
  assert r.returncode == 0, r.stderr


def test_every_tool_takes_a_recipe(tmp_path, capsys):
  """Every tool (each subcommand of one with subcommands) reads --config FILE: a recipe with a setting the tool does
  not have is refused by name with exit 2, before the tool does anything."""
  recipe = tmp_path / "recipe.py"
  recipe.write_text('"""a recipe"""\nno_such_setting = 1\n')
  checked = []
  for d in TOOL_DIRS:
    for path in sorted((ROOT / d).rglob("*.py")):
      mains, _ = _main_functions(path)
      if not mains:
        continue
      rel = path.relative_to(ROOT)
      name = ".".join(rel.with_suffix("").parts)
      if (path.parent / "__init__.py").exists():
        mod = importlib.import_module(name)
      else:                                         # bench/*.py: scripts, not a package
        spec = importlib.util.spec_from_file_location(name, path)
        mod = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
      src = path.read_text()
      subs = re.findall(r'add_parser\(\s*"([\w-]+)"', src) if "add_subparsers" in src else [None]
      for sub in subs:
        with pytest.raises(SystemExit) as e:
          mod.main([*([sub] if sub else []), "--config", str(recipe)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "unknown setting(s) no_such_setting" in err, (str(rel), sub, err)
        checked.append((str(rel), sub))
  assert len(checked) >= 38, checked
