"""The main-job driver: stages run in order, finished stages are skipped on rerun (resume after a
kill), a failing stage stops the run with its log tail and leaves no marker, and the report collects
each stage's JSON figures."""
import json
import sys

import pytest

import training.pipeline as pipeline


def _fake_stages(counter):
  def stages(cfg, out):
    bump = f"import pathlib; p = pathlib.Path(r'{counter}'); p.write_text(p.read_text() + 'x') if p.exists() else p.write_text('x')"
    return [
      ("first", [sys.executable, "-c", bump + "; print('noise'); print('{\"psnr\": 21.5, \"name\": \"a\"}')"]),
      ("second", lambda: [sys.executable, "-c", "print('no figures here')"]),
    ]
  return stages


def test_runs_stages_writes_report_and_resumes(tmp_path, monkeypatch):
  counter = tmp_path / "count"
  monkeypatch.setattr(pipeline, "stages", _fake_stages(counter))
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["results"]["first"] == {"psnr": 21.5, "name": "a"}
  assert report["results"]["second"] is None
  md = (out / "report.md").read_text()
  assert "| first |" in md and "| second |" in md
  assert counter.read_text() == "x"
  # a second run skips finished stages ...
  assert pipeline.main(["--out", str(out)]) == 0
  assert counter.read_text() == "x"
  # ... unless forced
  assert pipeline.main(["--out", str(out), "--force", "first"]) == 0
  assert counter.read_text() == "xx"


def test_failing_stage_stops_with_log_tail_and_no_marker(tmp_path, monkeypatch, capsys):
  def stages(cfg, out):
    return [("ok", [sys.executable, "-c", "print(1)"]),
            ("broken", [sys.executable, "-c", "import sys; print('disk on fire'); sys.exit(3)"]),
            ("never", [sys.executable, "-c", "raise SystemExit('must not run')"])]
  monkeypatch.setattr(pipeline, "stages", stages)
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert "stage 'broken' failed with exit code 3" in err and "disk on fire" in err
  assert (out / "stages" / "ok.json").exists()
  assert not (out / "stages" / "broken.json").exists()
  assert not (out / "stages" / "never.json").exists()


def test_stage_list_names_real_commands(tmp_path):
  names = [n for n, _ in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path)]
  assert names[names.index("simulate"):] == ["simulate", "worldmodel_train", "worldmodel_eval", "worldmodel_rollout",
                                             "policy_train", "export", "policy_eval", "convergence_perfect"]
  with pytest.raises(pipeline.StageFailed, match="no segments"):
    pipeline.first_segment(tmp_path)


def test_stage_figures_reads_one_line_and_pretty_printed_json(tmp_path):
  log = tmp_path / "a.log"
  log.write_text("progress 10%\n{\"a\": {\"b\": 1.5, \"rows\": [1, 2]}, \"c\": \"x\"}\n\n")
  assert pipeline.stage_figures(log) == {"a": {"b": 1.5, "rows": [1, 2]}, "c": "x"}
  assert pipeline.flatten(pipeline.stage_figures(log)) == {"a.b": 1.5, "c": "x"}
  log.write_text("table\n{\n  \"passed\": 24,\n  \"nested\": {\n    \"k\": 1\n  }\n}\n")
  assert pipeline.stage_figures(log) == {"passed": 24, "nested": {"k": 1}}
  log.write_text("{broken\n")
  assert pipeline.stage_figures(log) is None
  log.write_text("done, no figures\n")
  assert pipeline.stage_figures(log) is None
