"""The result convention: one strict-JSON last line, also written to $WORLDPILOT_RESULT when set."""
import json
import math
from pathlib import Path

import numpy as np

from common.cli import RESULT_ENV, emit_result, jsonable, write_json_atomic


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
