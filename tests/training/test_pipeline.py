"""The main-job driver: stages run once their needs have finished, side by side where their cores allow, and report
through their result files; a stage is skipped only while its command and its upstream stages are unchanged; a
failing stage stops the run (and the stage beside it) with its name, log tail and log path; unknown stage names are
usage errors; the report marks each figure against its target."""
import importlib.util
import json
import sys
import time

import pytest

import training.pipeline as pipeline
import training.pipeline_report as report

EMIT = "from common.cli import emit_result; "


def _fake_stages(counter, psnr="21.5"):
  def stages(cfg, out, data="generated", baselines=True):
    bump = (f"import pathlib; p = pathlib.Path(r'{counter}'); "
            "p.write_text(p.read_text() + 'x') if p.exists() else p.write_text('x'); ")
    return [
      pipeline.Stage("first", [sys.executable, "-c", bump + "print('noise'); " + EMIT +
                               f"emit_result({{'psnr': {psnr}, 'name': 'a'}})"], "1. data"),
      pipeline.Stage("second", lambda: [sys.executable, "-c", "print('{\"not\": \"a result\"}')"], "2. codec"),
    ]
  return stages


def test_runs_stages_reads_result_files_writes_reports_and_resumes(tmp_path, monkeypatch, capsys):
  counter = tmp_path / "count"
  monkeypatch.setattr(pipeline, "stages", _fake_stages(counter))
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 0
  rep = json.loads((out / "report.json").read_text())
  assert rep["results"]["first"] == {"psnr": 21.5, "name": "a"}
  assert rep["results"]["second"] is None        # printed JSON is not a result: only the result file counts
  assert (out / "results" / "first.json").exists()
  md = (out / "report.md").read_text()
  assert "| first |" in md and "| second |" in md
  page = (out / "report.html").read_text()
  assert page.startswith("<!doctype html>") and "<table>" in page
  assert counter.read_text() == "x"
  assert "first" in capsys.readouterr().out                   # the stage list with times
  # a second run skips finished stages ...
  assert pipeline.main(["--out", str(out)]) == 0
  assert counter.read_text() == "x"
  assert json.loads((out / "report.json").read_text())["results"]["first"]["psnr"] == 21.5
  # ... unless forced
  assert pipeline.main(["--out", str(out), "--force", "first"]) == 0
  assert counter.read_text() == "xx"


def test_changed_command_or_rerun_upstream_reruns_the_stage(tmp_path, monkeypatch):
  counter = tmp_path / "count"
  out = tmp_path / "run"
  monkeypatch.setattr(pipeline, "stages", _fake_stages(counter))
  assert pipeline.main(["--out", str(out)]) == 0
  second_done = json.loads((out / "stages" / "second.json").read_text())["finished"]
  monkeypatch.setattr(pipeline, "stages", _fake_stages(counter, psnr="22.0"))    # its command changed
  assert pipeline.main(["--out", str(out)]) == 0
  assert counter.read_text() == "xx"
  assert json.loads((out / "report.json").read_text())["results"]["first"]["psnr"] == 22.0
  # the downstream stage reran because its upstream finished after it
  assert json.loads((out / "stages" / "second.json").read_text())["finished"] > second_done


def test_failing_stage_stops_with_name_log_tail_and_path(tmp_path, monkeypatch, capsys):
  def stages(cfg, out, data="generated", baselines=True):
    return [pipeline.Stage("ok", [sys.executable, "-c", "print(1)"], "1"),
            pipeline.Stage("broken", [sys.executable, "-c", "import sys; print('disk on fire'); sys.exit(3)"], "2"),
            pipeline.Stage("never", [sys.executable, "-c", "raise SystemExit('must not run')"], "3")]
  monkeypatch.setattr(pipeline, "stages", stages)
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert "stage 'broken' failed with exit code 3" in err and "disk on fire" in err
  assert str(out / "logs" / "broken.log") in err and "FAILED" in err
  assert (out / "stages" / "ok.json").exists()
  assert not (out / "stages" / "broken.json").exists()
  assert not (out / "stages" / "never.json").exists()
  assert (out / "report.md").exists()


@pytest.mark.parametrize("flag", ["--only", "--force"])
def test_unknown_stage_names_are_usage_errors(tmp_path, flag, capsys):
  with pytest.raises(SystemExit) as e:
    pipeline.main(["--out", str(tmp_path / "run"), "--preset", "smoke", flag, "simulate", "no_such_stage"])
  assert e.value.code == 2
  assert "no_such_stage" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", list(pipeline.PRESETS))
def test_every_stage_runs_a_real_tool(tmp_path, preset):
  plan = pipeline.stages(pipeline.PRESETS[preset], tmp_path)
  names = [st.name for st in plan]
  assert len(names) == len(set(names))
  for st in plan:
    if callable(st.cmd):
      continue
    assert st.cmd[:2] == [sys.executable, "-m"]
    assert importlib.util.find_spec(st.cmd[2]) is not None, f"stage {st.name}: no module {st.cmd[2]}"
  order = ["policy_extractor", "policy_temporal", "onpolicy_worldmodel", "results_table"]
  assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
  with pytest.raises(pipeline.StageFailed, match="no segments"):
    pipeline.first_segment(tmp_path)
  cmd = {st.name: st.cmd for st in plan}
  policy_data = cmd["policy_extractor"][cmd["policy_extractor"].index("--data") + 1:cmd["policy_extractor"].index("--out")]
  if pipeline.PRESETS[preset].policy_worlds:   # the policy trains on the main data and the extra worlds, nothing else
    assert policy_data == [str(tmp_path / "data"), str(tmp_path / "policy_worlds")]
    assert names.index("simulate_policy_worlds") < names.index("policy_extractor")
  real = [st.name for st in pipeline.stages(pipeline.PRESETS[preset], tmp_path, data=str(tmp_path))]
  assert "simulate_policy_worlds" not in real          # comma2k19 data is never mixed with generated worlds
  no_baselines = [st.name for st in pipeline.stages(pipeline.PRESETS[preset], tmp_path, baselines=False)]
  assert "onpolicy_procedural" not in no_baselines and "onpolicy_worldmodel" in no_baselines


def test_figures_are_marked_against_their_targets():
  results = {"worldmodel_eval": {"psnr_5frame_model": 22.5, "psnr_5frame_copy_last": 21.5,
                                 "controllability": {"fraction_of_expected": 0.1},
                                 "plan_ade_anchor_m": 2.0, "plan_ade_const_vel_m": None,
                                 "sharpness_last_model": 0.25, "sharpness_last_vae_floor": 0.6},
             "results_table": {"rows": {"bc": {"lane-keep_passed": 3, "open_loop_mae": 4.0},
                                        "worldmodel": {"lane-keep_passed": 3, "open_loop_mae": 4.7}}}}
  figs = {f["label"]: f for f in report.evaluate_figures(results)}
  mae = figs["on-policy (world model) open-loop MAE"]         # within 15 % of behaviour cloning's: 4.6 m
  assert mae["status"] == "missed" and mae["target"] == "<= 1.15 x off-policy open-loop MAE (4)"
  results["results_table"]["rows"]["worldmodel"]["open_loop_mae"] = 4.55
  assert {f["label"]: f for f in report.evaluate_figures(results)}[mae["label"]]["status"] == "met"
  assert figs["world model 5-frame PSNR"]["status"] == "met"
  sharp = figs["world-model sharpness at the last rollout frame (image gradients / the true frame's)"]
  assert sharp["status"] == "missed" and sharp["target"].startswith(">= 0.75 x codec floor sharpness")
  assert figs["pose controllability (share of the geometric shift)"]["status"] == "missed"
  assert figs["Plan Head ADE with anchor"]["status"] == ""            # its reference is missing: not judged
  assert figs["on-policy (world model) lane-keep"]["status"] == "missed"   # equal is not strictly more
  assert figs["Fig. 9: measured / commanded lateral deviation at the peak"]["status"] == "not run"


def test_a_drive_through_the_stack_is_judged_by_its_suites_criterion():
  """A drive that keeps lateral control on but ends off its target lane is marked missed (tools.sim.run's verdict)."""
  results = {"drive_change_left_straight_v15_off+0.0_hd+0": {"engaged_share": 0.95, "suite_passed": 0,
                                                             "final_target_offset": -7.6},
             "drive_keep_straight_off-1.0_hd+0_v15": {"engaged_share": 0.94, "suite_passed": 1,
                                                      "final_target_offset": -0.2}}
  figs = {f["label"]: f for f in report.evaluate_figures(results)}
  crit = "passes its suite's criterion (1 yes, 0 no; tools.sim.scenarios.evaluate)"
  assert figs[f"change_left_straight_v15_off+0.0_hd+0 through the stack: {crit}"]["status"] == "missed"
  assert figs[f"keep_straight_off-1.0_hd+0_v15 through the stack: {crit}"]["status"] == "met"
  assert figs["change_left_straight_v15_off+0.0_hd+0 through the stack: share of control cycles with lateral control "
              "on"]["status"] == "met"


def test_the_reports_time_counts_stages_side_by_side_once_against_the_presets_target(tmp_path, monkeypatch):
  records = [{"stage": "a", "seconds": 1500.0}, {"stage": "b", "seconds": 1380.0, "cached": True}]
  assert report.pipeline_result(records) == {"minutes": 48.0, "stage_minutes": 48.0, "stages": 2, "cached": 1}
  # a stage beside another counts once: 0-600 s and 300-900 s are 900 s; one from another run adds its own 100 s
  side = [{"stage": "a", "seconds": 600.0, "finished": 1600.0}, {"stage": "b", "seconds": 600.0, "finished": 1900.0},
          {"stage": "c", "seconds": 60.0, "finished": 1700.0}, {"stage": "d", "seconds": 100.0, "finished": 900.0}]
  assert report.busy_seconds(side) == 1000.0
  assert report.pipeline_result(side)["stage_minutes"] == round(1360 / 60, 2)
  results = {"pipeline": report.pipeline_result(records)}
  fig, = report.evaluate_figures(results, [report.time_figure(pipeline.PRESETS["tiny"].minutes_target)])[-1:]
  assert (fig["value"], fig["target"], fig["status"]) == (48.0, "<= 45.0", "missed")
  fig, = report.evaluate_figures(results, [report.time_figure(60.0)])[-1:]
  assert fig["status"] == "met"
  fig, = report.evaluate_figures(results, [report.time_figure(pipeline.PRESETS["paper"].minutes_target)])[-1:]
  assert (fig["target"], fig["status"]) == ("", "")                   # the GPU presets have no time target
  assert pipeline.PRESETS["smoke"].minutes_target == 10.0
  # a run's report carries it, the cached stages' seconds included
  monkeypatch.setattr(pipeline, "stages", _fake_stages(tmp_path / "count"))
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 0 and pipeline.main(["--out", str(out)]) == 0
  rep = json.loads((out / "report.json").read_text())
  assert rep["results"]["pipeline"]["cached"] == 2
  assert rep["results"]["pipeline"]["minutes"] == round(report.busy_seconds(rep["stages"]) / 60, 2)
  assert "the main job's time" in (out / "report.md").read_text()


def test_side_tables_render_their_markdown():
  from training.pipeline_report import _md_table_to_html, _side_table_md
  md = ("# On-policy results\n\nOpen loop: `/runs/heldout`, scenery seed **0** (<all>).\n\n"
        "| policy | model |\n|---|---|\n| BC | `/runs/model` |\n\n![offsets](lane_keep_offsets.png)\n## per scenario\n")
  page = _md_table_to_html(md)
  assert "On-policy results" not in page and "lane_keep_offsets" not in page     # title and image line dropped
  assert "<code>/runs/heldout</code>" in page and "<b>0</b>" in page and "&lt;all&gt;" in page
  assert "<td><code>/runs/model</code></td>" in page and "<h3>per scenario</h3>" in page and "`" not in page
  # report.md: the same lines dropped (the image's path is relative to the stage's folder, not the report's)
  text = _side_table_md(md)
  assert "On-policy results" not in text and "lane_keep_offsets" not in text
  assert "| BC | `/runs/model` |" in text and "## per scenario" in text and text.startswith("Open loop")


def test_lane_change_interval_reaches_the_generator_only_when_set(tmp_path):
  from dataclasses import replace
  cmd = {st.name: st.cmd for st in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path)}
  # the generator's default is not written, so runs made before the option existed keep their cached data stages
  assert all("--lane-change-every" not in cmd[n] for n in ("simulate", "simulate_policy_worlds", "simulate_heldout"))
  cfg = replace(pipeline.PRESETS["tiny"], lane_change_every=10.0, policy_world_lane_change_every=4.0)
  cmd = {st.name: st.cmd for st in pipeline.stages(cfg, tmp_path)}
  for name, every in (("simulate", "10.0"), ("simulate_policy_worlds", "4.0")):
    assert cmd[name][cmd[name].index("--lane-change-every") + 1] == every
  assert "--lane-change-every" not in cmd["simulate_heldout"]     # evaluation worlds keep the default driver


def test_generated_data_speeds_reach_every_generator_command(tmp_path):
  """A cruise range and lead-car chance set for the pipeline go to all three data sets (training, policy worlds,
  held-out); the generator's own defaults are left off the command, so runs made before the options stay cached."""
  from dataclasses import replace
  names = ("simulate", "simulate_policy_worlds", "simulate_heldout")
  cmd = {st.name: st.cmd for st in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path)}
  assert all("--cruise" not in cmd[n] and "--lead-prob" not in cmd[n] for n in names)
  cfg = replace(pipeline.PRESETS["tiny"], cruise=(14.0, 33.0), lead_prob=0.3)
  cmd = {st.name: st.cmd for st in pipeline.stages(cfg, tmp_path)}
  for name in names:
    assert cmd[name][cmd[name].index("--cruise") + 1] == "14.0,33.0"
    assert cmd[name][cmd[name].index("--lead-prob") + 1] == "0.3"


def test_the_cpu_presets_train_the_world_model_with_the_tuned_cpu_recipe(tmp_path):
  """tiny/smoke pass config/worldmodel_tiny_cpu.py's optimizer settings (tuned for short CPU runs); the GPU presets
  the trainer's own long-run defaults."""
  from common.cli import load_config
  from training.worldmodel.train import build_parser
  recipe = load_config(pipeline.ROOT / "config" / "worldmodel_tiny_cpu.py")
  defaults = build_parser().parse_args(["--data", "d", "--out", "o"])
  for preset in pipeline.PRESETS:
    cmd = {st.name: st.cmd for st in pipeline.stages(pipeline.PRESETS[preset], tmp_path)}["worldmodel_train"]
    got = {k: float(cmd[cmd.index(f"--{k.replace('_', '-')}") + 1]) for k in ("lr", "warmup", "ema", "num_workers")}
    want = recipe if preset in ("smoke", "tiny") else vars(defaults)
    assert got == {k: float(want[k]) for k in got}, (preset, got)


def test_the_codec_and_the_world_model_pool_the_policy_worlds_with_the_main_segments(tmp_path):
  cmd = {st.name: st.cmd for st in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path)}
  data = cmd["codec"][cmd["codec"].index("--data") + 1:cmd["codec"].index("--out")]
  assert data == [str(tmp_path / "data"), str(tmp_path / "policy_worlds")]
  wm = cmd["worldmodel_train"]
  assert wm[wm.index("--data") + 1:wm.index("--out")] == data
  real = {st.name: st.cmd for st in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path, data=str(tmp_path))}
  wm = real["worldmodel_train"]
  assert wm[wm.index("--data") + 1:wm.index("--out")] == [str(tmp_path.resolve())]   # comma2k19: its own segments
  assert data == cmd["policy_extractor"][cmd["policy_extractor"].index("--data") + 1:][:2]


def test_the_world_model_predecessor_reaches_every_world_model_rollout_stage(tmp_path, capsys):
  """worldmodel_predecessor (default: the paper's own-frame rollouts) goes to the world-model on-policy run, Fig. 9 and
  the world-model expert check (and only there); the report names re-anchored rollouts in those figures; a value
  that is not a predecessor is a usage error."""
  from dataclasses import replace

  from training.onpolicy.sim_worldmodel import PREDECESSORS
  for value in PREDECESSORS:
    cmd = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], worldmodel_predecessor=value),
                                                     tmp_path)}
    for name in ("onpolicy_worldmodel", "fidelity", "expert_check_worldmodel"):
      if value == "generated":   # the tools' default, left off (runs made before the option stay cached)
        assert "--wm-predecessor" not in cmd[name]
      else:
        assert cmd[name][cmd[name].index("--wm-predecessor") + 1] == value, name
    for name in ("onpolicy_reprojective", "onpolicy_procedural", "expert_check_reprojective"):
      assert "--wm-predecessor" not in cmd[name]
  figs = {f["label"]: f for f in report.evaluate_figures({"fidelity": {"deviation_peak_fraction": 0.9,
                                                                       "predecessor": "log"}})}
  assert figs["Fig. 9: measured / commanded lateral deviation at the peak (re-anchored rollouts)"]["status"] == "met"
  figs = {f["label"] for f in report.evaluate_figures({"fidelity": {"deviation_peak_fraction": 0.1,
                                                                    "predecessor": "generated"}})}
  assert "Fig. 9: measured / commanded lateral deviation at the peak" in figs
  figs = {f["label"] for f in report.evaluate_figures({
    "onpolicy_worldmodel": {"wm_predecessor": "log"},
    "results_table": {"rows": {"bc": {"lane-keep_passed": 3}, "worldmodel": {"lane-keep_passed": 4}}}})}
  assert "on-policy (world model) lane-keep (re-anchored rollouts)" in figs and "off-policy lane-keep" in figs
  assert "on-policy (reprojective) lane-keep" in figs
  with pytest.raises(SystemExit) as e:
    pipeline.main(["--out", str(tmp_path / "run"), "--preset", "smoke", "--set", "worldmodel_predecessor=nearest"])
  assert e.value.code == 2 and "worldmodel_predecessor" in capsys.readouterr().err


def test_log_bound_simulators_start_in_the_policy_worlds_only_when_they_are_long_enough(tmp_path):
  """The world-model and reprojective runs need LOG_BOUND_MIN_SECONDS of log around a start; 12 s policy worlds have
  none, so those runs get the main segments alone, while worlds that long join their starts like the ground truth's."""
  from dataclasses import replace

  from training.onpolicy.actor import RolloutConfig
  from training.onpolicy.simulator import SIM_DT
  assert pipeline.LOG_BOUND_MIN_SECONDS == pytest.approx(2.0 + RolloutConfig.min_steps * SIM_DT + 10.0)
  worlds = str(tmp_path / "policy_worlds")

  def starts(seconds):
    cmd = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], policy_world_seconds=seconds),
                                                     tmp_path)}
    return {sim: worlds in cmd[f"onpolicy_{sim}"] for sim in ("worldmodel", "reprojective", "procedural")}

  assert starts(12.0) == {"worldmodel": False, "reprojective": False, "procedural": True}
  assert starts(16.0) == {"worldmodel": True, "reprojective": True, "procedural": True}


def test_the_rolling_anchor_reaches_only_the_world_model_on_policy_run(tmp_path):
  """worldmodel_rolling_anchor (on in the tiny and smoke presets; when off it is left off the command) goes
  to the world-model on-policy run as --set wm_rolling_anchor=true, and nowhere else."""
  from dataclasses import replace
  for value in (False, True):
    cmd = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], worldmodel_rolling_anchor=value),
                                                     tmp_path)}
    for name, c in cmd.items():
      if not isinstance(c, list):
        continue
      has = "wm_rolling_anchor=true" in c
      assert has == (value and name == "onpolicy_worldmodel"), name
    if value:
      c = cmd["onpolicy_worldmodel"]
      assert c[c.index("wm_rolling_anchor=true") - 1] == "--set"
  # the CPU presets' tiny world model re-projects its predecessor, so they take re-anchored rollouts; the GPU presets'
  # world models cannot (output "velocity") and keep the paper's own-frame rollouts
  assert pipeline.PRESETS["tiny"].worldmodel_predecessor == pipeline.PRESETS["smoke"].worldmodel_predecessor == "log"
  assert pipeline.PRESETS["small"].worldmodel_predecessor == pipeline.PRESETS["paper"].worldmodel_predecessor == "generated"
  assert pipeline.PRESETS["tiny"].worldmodel_rolling_anchor


def test_the_world_models_speed_range_reaches_only_its_on_policy_run(tmp_path):
  """worldmodel_speed_range goes to the world-model on-policy run as wm_speed_range (beside the rolling anchor, one
  --set), and is left off every command when None."""
  from dataclasses import replace

  from training.onpolicy.actor import RolloutConfig
  cfg = replace(pipeline.PRESETS["tiny"], worldmodel_speed_range=(14.0, 32.5), worldmodel_rolling_anchor=True)
  cmd = {st.name: st.cmd for st in pipeline.stages(cfg, tmp_path) if isinstance(st.cmd, list)}
  c = cmd["onpolicy_worldmodel"]
  i = c.index("--set")
  assert c[i + 1:i + 3] == ["wm_rolling_anchor=true", "wm_speed_range=14,32.5"] and c.count("--set") == 1
  assert [n for n, cm in cmd.items() if any(str(a).startswith("wm_speed_range") for a in cm)] == ["onpolicy_worldmodel"]
  # what the on-policy trainer makes of it
  import typing

  from common.cli import parse_value
  hint = typing.get_type_hints(RolloutConfig)["wm_speed_range"]
  assert parse_value("14,32.5", hint, "wm_speed_range") == (14.0, 32.5)
  off = {st.name: st.cmd for st in pipeline.stages(replace(cfg, worldmodel_speed_range=None), tmp_path)}
  assert not any(str(a).startswith("wm_speed_range") for cm in off.values() if isinstance(cm, list) for a in cm)


def test_the_mirror_and_lane_changes_reach_the_log_bound_runs(tmp_path):
  """By default the log-bound runs (world model, reprojective) get synthetic "shift" lane changes in half their
  episodes and mirrored states, in their one --set (the world model's after its own settings); the ground-truth run
  gets neither. onpolicy_mirror names the runs that mirror; off, each setting is left off every command, so runs made
  before the options stay cached. (Batched actors, which every run gets last, are left out here: tested below.)"""
  from dataclasses import replace
  cfg = replace(pipeline.PRESETS["tiny"], onpolicy_actor_batch=1)
  lc = ["log_lane_change_prob=0.5", "log_lane_change_mode=shift"]
  cmd = {st.name: st.cmd for st in pipeline.stages(cfg, tmp_path) if isinstance(st.cmd, list)}
  wm, rep = cmd["onpolicy_worldmodel"], cmd["onpolicy_reprojective"]
  assert wm[wm.index("--set") + 1:wm.index("--out")] == ["wm_rolling_anchor=true", "wm_anchor_max_s=3",
                                                          f"wm_frame_decoder={tmp_path / 'frame_decoder'}", *lc,
                                                          "mirror=true"]
  assert rep[rep.index("--set") + 1:rep.index("--out")] == [*lc, "mirror=true"]
  for c in (wm, rep, cmd["onpolicy_procedural"]):
    assert c.count("--set") == 1 and c[c.index("--max-steps") + 1] == "2000"
  assert [n for n, c in cmd.items() if "mirror=true" in c] == ["onpolicy_worldmodel", "onpolicy_reprojective"]
  assert [n for n, c in cmd.items() if lc[0] in c] == ["onpolicy_worldmodel", "onpolicy_reprojective"]
  every = {st.name: st.cmd for st in pipeline.stages(replace(cfg, onpolicy_mirror=("worldmodel", "reprojective",
                                                                                   "procedural")), tmp_path)}
  assert every["onpolicy_procedural"][-4] == "mirror=true" and every["onpolicy_worldmodel"] == wm
  plain = {st.name: st.cmd for st in pipeline.stages(replace(cfg, onpolicy_mirror=(), logbound_lane_change_prob=0.0),
                                                       tmp_path) if isinstance(st.cmd, list)}
  assert plain["onpolicy_reprojective"].count("--set") == 0
  assert plain["onpolicy_worldmodel"] == [a for a in wm if a not in (*lc, "mirror=true")]
  assert plain["onpolicy_procedural"] == cmd["onpolicy_procedural"]
  start = {st.name: st.cmd for st in pipeline.stages(replace(cfg, logbound_lane_change_mode="start"), tmp_path)}
  assert "log_lane_change_mode=start" in start["onpolicy_reprojective"]
  # what the on-policy trainer makes of them
  from common.cli import parse_sets
  from training.onpolicy.actor import RolloutConfig
  (rc,) = parse_sets(rep[rep.index("--set") + 1:rep.index("--out")], RolloutConfig())
  assert (rc.log_lane_change_prob, rc.log_lane_change_mode, rc.mirror) == (0.5, "shift", True)


def test_nearer_anchors_reach_the_world_models_on_policy_run_and_its_expert_check(tmp_path, capsys):
  """worldmodel_anchor_max_s (3 s in the CPU presets, None in the GPU ones) goes to the world-model on-policy run as
  --set wm_anchor_max_s=S and to its expert check as --wm-anchor-max-s S beside --wm-rolling-anchor, so that the check
  drives the learner's simulator; None leaves it off every command; the on-policy trainer parses what it gets."""
  from dataclasses import replace

  from common.cli import parse_sets
  from training.onpolicy.actor import RolloutConfig
  assert pipeline.PRESETS["tiny"].worldmodel_anchor_max_s == pipeline.PRESETS["smoke"].worldmodel_anchor_max_s == 3.0
  assert pipeline.PRESETS["small"].worldmodel_anchor_max_s is None and pipeline.PRESETS["paper"].worldmodel_anchor_max_s is None
  cmd = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], worldmodel_anchor_max_s=2.5), tmp_path)
         if isinstance(st.cmd, list)}
  assert [n for n, c in cmd.items() if "wm_anchor_max_s=2.5" in c] == ["onpolicy_worldmodel"]
  assert [n for n, c in cmd.items() if "--wm-anchor-max-s" in c] == ["expert_check_worldmodel"]
  wm = cmd["onpolicy_worldmodel"]
  (rc,) = parse_sets(wm[wm.index("--set") + 1:wm.index("--out")], RolloutConfig())
  assert rc.wm_anchor_max_s == 2.5 and rc.wm_rolling_anchor
  ec = cmd["expert_check_worldmodel"]
  assert ec[ec.index("--wm-anchor-max-s") + 1] == "2.5" and "--wm-rolling-anchor" in ec
  off = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], worldmodel_anchor_max_s=None,
                                                           worldmodel_rolling_anchor=False), tmp_path)
         if isinstance(st.cmd, list)}
  assert not any(str(a).startswith("wm_anchor_max_s") or a in ("--wm-anchor-max-s", "--wm-rolling-anchor")
                 for c in off.values() for a in c)


def test_every_on_policy_run_batches_its_actors_episodes(tmp_path):
  """onpolicy_actor_batch (4 in every preset) reaches the three on-policy runs as --set actor_batch=N, which their
  trainer parses into RolloutConfig.actor_batch; 1 leaves it off the commands (the trainer's own default)."""
  from dataclasses import replace

  from common.cli import parse_sets
  from training.onpolicy.actor import RolloutConfig
  assert {p.onpolicy_actor_batch for p in pipeline.PRESETS.values()} == {4}
  cmd = {st.name: st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], onpolicy_actor_batch=3), tmp_path)
         if isinstance(st.cmd, list)}
  assert sorted(n for n, c in cmd.items() if "actor_batch=3" in c) == \
    ["onpolicy_procedural", "onpolicy_reprojective", "onpolicy_worldmodel"]
  for name in ("onpolicy_procedural", "onpolicy_worldmodel"):
    c = cmd[name]
    (rc,) = parse_sets(c[c.index("--set") + 1:c.index("--out")], RolloutConfig())
    assert rc.actor_batch == 3
  one = [st.cmd for st in pipeline.stages(replace(pipeline.PRESETS["tiny"], onpolicy_actor_batch=1), tmp_path)
         if isinstance(st.cmd, list)]
  assert not any(str(a).startswith("actor_batch") for c in one for a in c)


@pytest.mark.parametrize("bad", ["logbound_lane_change_prob=1.5", "logbound_lane_change_mode=sideways",
                                 "onpolicy_mirror=worldmodel,carla", "onpolicy_actor_batch=0"])
def test_bad_log_bound_settings_are_refused(tmp_path, capsys, bad):
  with pytest.raises(SystemExit) as e:
    pipeline.main(["--preset", "smoke", "--out", str(tmp_path / "run"), "--set", bad])
  assert e.value.code == 2
  assert bad.split("=")[0] in capsys.readouterr().err
  assert not (tmp_path / "run").exists()


def _training_stage(run_dir, lr):
  """A stage that resumes its run folder: it appends its learning rate to run_dir/steps.txt (and draws curves.png)."""
  code = (f"import pathlib; d = pathlib.Path(r'{run_dir}'); d.mkdir(exist_ok=True); f = d / 'steps.txt'; "
          f"f.write_text((f.read_text() if f.exists() else '') + '{lr} '); (d / 'curves.png').write_bytes(b'png')")
  return lambda cfg, out, data="generated", baselines=True: [
    pipeline.Stage("train", [sys.executable, "-c", code, "--lr", lr], "5. policy", run_dir=run_dir)]


def test_a_run_folder_made_with_another_command_is_moved_aside_not_resumed(tmp_path, monkeypatch, capsys):
  """A training stage whose command changed starts over in a fresh folder (the old one kept beside it, renamed);
  one rerun with the same command, or forced, resumes its folder."""
  out, run = tmp_path / "out", tmp_path / "out" / "onpolicy_a"
  monkeypatch.setattr(pipeline, "stages", _training_stage(run, "1e-3"))
  assert pipeline.main(["--out", str(out)]) == 0
  assert pipeline.main(["--out", str(out), "--force", "train"]) == 0      # same command: the folder is resumed
  assert (run / "steps.txt").read_text() == "1e-3 1e-3 "
  assert not list((out / "replaced").glob("onpolicy_a-*"))
  monkeypatch.setattr(pipeline, "stages", _training_stage(run, "3e-4"))
  capsys.readouterr()
  assert pipeline.main(["--out", str(out)]) == 0
  (old,) = (out / "replaced").glob("onpolicy_a-*")
  assert (old / "steps.txt").read_text() == "1e-3 1e-3 " and (run / "steps.txt").read_text() == "3e-4 "
  # the report shows the new run's curves, not the old one's
  md = (out / "report.md").read_text()
  assert "](onpolicy_a/curves.png)" in md and "replaced" not in md
  said = capsys.readouterr()
  assert "train: " in said.out + said.err and f"moved to {old}" in said.out + said.err
  # an interrupted run (started, no finished marker) with the same command resumes; the started record names it
  (out / "stages" / "train.json").unlink()
  assert pipeline.main(["--out", str(out)]) == 0
  assert (run / "steps.txt").read_text() == "3e-4 3e-4 " and len(list((out / "replaced").glob("onpolicy_a-*"))) == 1
  # a folder no record names (made by hand) is resumed, never moved
  import shutil
  shutil.rmtree(out / "stages")
  monkeypatch.setattr(pipeline, "stages", _training_stage(run, "1e-4"))
  assert pipeline.main(["--out", str(out)]) == 0
  assert (run / "steps.txt").read_text() == "3e-4 3e-4 1e-4 " and len(list((out / "replaced").glob("onpolicy_a-*"))) == 1


def test_the_ground_truth_run_gets_its_own_budget_and_label_term(tmp_path):
  """The ground-truth run alone: onpolicy_steps x groundtruth_steps_factor updates, consecutive episodes per world
  and the steady-offset label term, in its one --set; the other runs keep onpolicy_steps and no such settings. Off
  (factor 1, 1 episode, gain 0), its command is the plain one, so runs made before the options stay cached."""
  from dataclasses import replace
  cfg = replace(pipeline.PRESETS["tiny"], onpolicy_actor_batch=1)      # batched actors: tested on their own
  cmd = {st.name: st.cmd for st in pipeline.stages(cfg, tmp_path) if isinstance(st.cmd, list)}
  gt, rep = cmd["onpolicy_procedural"], cmd["onpolicy_reprojective"]
  assert gt[gt.index("--max-steps") + 1] == str(round(cfg.onpolicy_steps * cfg.groundtruth_steps_factor)) == "2000"
  assert rep[rep.index("--max-steps") + 1] == str(cfg.onpolicy_steps)
  assert gt[gt.index("--set") + 1:gt.index("--set") + 3] == ["segment_episodes=4", "steady_offset_gain=1"]
  assert not any(a.startswith(("segment_episodes", "steady_offset_gain")) for n, c in cmd.items()
                 if n != "onpolicy_procedural" for a in map(str, c))
  off = replace(cfg, groundtruth_steps_factor=1.0, groundtruth_segment_episodes=1, groundtruth_steady_offset_gain=0.0)
  plain = {st.name: st.cmd for st in pipeline.stages(off, tmp_path) if isinstance(st.cmd, list)}["onpolicy_procedural"]
  assert "--set" not in plain and plain[plain.index("--max-steps") + 1] == str(cfg.onpolicy_steps)
  i = gt.index("--set")
  expect = gt[:i] + gt[i + 3:]
  expect[expect.index("--max-steps") + 1] = str(cfg.onpolicy_steps)
  assert plain == expect


def test_bad_ground_truth_settings_are_refused(tmp_path, capsys):
  for bad in ("groundtruth_steps_factor=0", "groundtruth_segment_episodes=0", "groundtruth_steady_offset_gain=-1"):
    with pytest.raises(SystemExit) as e:
      pipeline.main(["--preset", "smoke", "--out", str(tmp_path / "run"), "--set", bad])
    assert e.value.code == 2
    assert bad.split("=")[0] in capsys.readouterr().err


def _timed(log, name, seconds, needs=None, cores="alone", fail=False):
  """A stage that sleeps, then appends [name, start, end, OMP_WAIT_POLICY] to `log` (or fails at once)."""
  code = ("import json, os, sys, time; t0 = time.time(); " + ("sys.exit(3); " if fail else "") +
          f"time.sleep({seconds}); open(r'{log}', 'a').write(json.dumps(['{name}', t0, time.time(), "
          "os.environ.get('OMP_WAIT_POLICY')]) + chr(10))")
  return pipeline.Stage(name, [sys.executable, "-c", code], "g", needs=needs, cores=cores)


def _intervals(log):
  return {n: (a, b, omp) for n, a, b, omp in map(json.loads, log.read_text().splitlines())}


def _overlap(x, y):
  return x[0] < y[1] and y[0] < x[1]


def plan_cores(plan, name):
  return next(st.cores for st in plan if st.name == name)


def test_stages_run_side_by_side_where_their_needs_and_cores_allow(tmp_path, monkeypatch):
  log = tmp_path / "times.jsonl"
  plan = [_timed(log, "data", 0.5, needs=(), cores="all"),
          _timed(log, "codec", 1.0, needs=("data",), cores="all"),
          _timed(log, "wm", 1.0, needs=("codec",), cores="all"),
          _timed(log, "policy", 2.0, needs=("data",), cores="one"),
          _timed(log, "onpolicy", 0.5, needs=("wm", "policy"), cores="alone"),
          _timed(log, "fidelity", 1.0, needs=("wm", "policy"), cores="one"),
          _timed(log, "check", 1.0, needs=("wm", "policy"), cores="one"),
          _timed(log, "table", 0.3, needs=("onpolicy",), cores="all")]
  monkeypatch.setattr(pipeline, "stages", lambda cfg, out, data="generated", baselines=True: plan)
  monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
  assert pipeline.PRESETS["tiny"].parallel_stages == 2
  assert pipeline.main(["--out", str(tmp_path / "run")]) == 0
  t = _intervals(log)
  for st in plan:                                   # each starts after everything it needs has ended
    assert all(t[n][1] <= t[st.name][0] for n in st.needs), st.name
  assert _overlap(t["policy"], t["codec"]) or _overlap(t["policy"], t["wm"])    # the one-core trainer beside
  assert _overlap(t["fidelity"], t["check"])
  assert not _overlap(t["codec"], t["wm"])
  for name in ("onpolicy", "table"):                # an "alone" stage has nothing beside it; two "all" never meet
    assert not any(_overlap(t[name], t[o]) for o in t if o != name and (name == "onpolicy" or plan_cores(plan, o) == "all"))
  # an all-core stage that starts with company waits passively in OpenMP; one that starts alone keeps the default
  assert t["codec"][2] == "PASSIVE" and t["wm"][2] == "PASSIVE"
  assert t["table"][2] is None and t["onpolicy"][2] is None and t["policy"][2] is None
  rep = json.loads((tmp_path / "run" / "report.json").read_text())
  assert [r["stage"] for r in rep["stages"]] == [st.name for st in plan]    # the report lists them in plan order
  assert rep["results"]["pipeline"]["minutes"] < rep["results"]["pipeline"]["stage_minutes"]
  # one stage at a time when asked
  log.unlink()
  assert pipeline.main(["--out", str(tmp_path / "one"), "--set", "parallel_stages=1"]) == 0
  t = _intervals(log)
  assert not any(_overlap(t[a], t[b]) for a in t for b in t if a < b)
  assert all(v[2] is None for v in t.values())


def test_a_users_own_openmp_policy_is_kept_and_decides_whether_all_core_stages_share(tmp_path, monkeypatch):
  log = tmp_path / "times.jsonl"
  plan = [_timed(log, "codec", 1.0, needs=(), cores="all"), _timed(log, "policy", 1.0, needs=(), cores="one"),
          _timed(log, "check", 1.0, needs=(), cores="one")]
  monkeypatch.setattr(pipeline, "stages", lambda cfg, out, data="generated", baselines=True: plan)
  monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")           # spinning threads: nothing beside an all-core stage
  assert pipeline.main(["--out", str(tmp_path / "active")]) == 0
  t = _intervals(log)
  assert not any(_overlap(t["codec"], t[o]) for o in ("policy", "check")) and _overlap(t["policy"], t["check"])
  assert {v[2] for v in t.values()} == {"ACTIVE"}
  log.unlink()
  monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
  assert pipeline.main(["--out", str(tmp_path / "passive")]) == 0
  t = _intervals(log)
  assert _overlap(t["codec"], t["policy"]) and {v[2] for v in t.values()} == {"passive"}


def test_a_failing_stage_stops_the_one_beside_it(tmp_path, monkeypatch, capsys):
  log = tmp_path / "times.jsonl"
  plan = [_timed(log, "long", 60, needs=(), cores="all"), _timed(log, "broken", 0, needs=(), cores="one", fail=True),
          _timed(log, "after", 0, needs=("long",), cores="one")]
  monkeypatch.setattr(pipeline, "stages", lambda cfg, out, data="generated", baselines=True: plan)
  out = tmp_path / "run"
  t0 = time.monotonic()
  assert pipeline.main(["--out", str(out)]) == 1
  assert time.monotonic() - t0 < 30                 # the 60-s stage beside it was stopped, not waited for
  err = capsys.readouterr().err
  assert "stage 'broken' failed with exit code 3" in err and "FAILED" in err
  assert not (out / "stages" / "long.json").exists() and not log.exists()   # stopped: no marker, it reruns next time
  assert (out / "stages" / "long.started.json").exists()


def test_a_rerun_stage_reruns_what_needs_it_and_nothing_else(tmp_path, monkeypatch):
  log = tmp_path / "times.jsonl"
  plan = [_timed(log, "x", 0, needs=(), cores="one"), _timed(log, "y", 0, needs=("x",), cores="one"),
          _timed(log, "z", 0, needs=(), cores="one"), _timed(log, "w", 0, needs=("y",), cores="one")]
  monkeypatch.setattr(pipeline, "stages", lambda cfg, out, data="generated", baselines=True: plan)
  out = tmp_path / "run"
  assert pipeline.main(["--out", str(out)]) == 0 and len(_intervals(log)) == 4
  log.unlink()
  assert pipeline.main(["--out", str(out), "--force", "x"]) == 0
  assert sorted(_intervals(log)) == ["w", "x", "y"]     # z does not read x: still fresh


def test_needs_name_earlier_stages_of_the_plan(tmp_path):
  st = lambda name, needs: pipeline.Stage(name, ["true"], "g", needs=needs, cores="one")   # noqa: E731
  with pytest.raises(ValueError, match="b needs c"):
    pipeline.resolve_needs([st("a", ()), st("b", ("c",)), st("c", ())])
  with pytest.raises(ValueError, match="b needs typo"):
    pipeline.resolve_needs([st("a", ()), st("b", ("typo",))], optional={"other"})
  assert pipeline.resolve_needs([st("a", ()), st("b", ("a", "gone"))], optional={"gone"})[1].needs == ("a",)
  with pytest.raises(ValueError, match="cores"):
    pipeline.resolve_needs([pipeline.Stage("a", ["true"], "g", needs=(), cores="two")])
  for preset in pipeline.PRESETS.values():          # every real plan resolves, with generated data or a folder
    for data in ("generated", str(tmp_path)):
      for baselines in (True, False):
        plan = pipeline.stages(preset, tmp_path / "run", data, baselines)
        assert all(s.needs is not None for s in plan)
  plan = {s.name: s for s in pipeline.stages(pipeline.PRESETS["tiny"], tmp_path / "run")}
  # the off-policy policy trains beside the codec and the world model, on one core
  assert "worldmodel_train" not in pipeline.upstream(list(plan.values()), list(plan).index("policy_temporal"))
  assert plan["policy_extractor"].cores == "one" and plan["worldmodel_train"].cores == "all"
  assert "worldmodel_train" in plan["onpolicy_worldmodel"].needs
  assert "worldmodel_train" not in plan["onpolicy_reprojective"].needs          # it does not read the world model
  assert all(plan[n].cores == "alone" for n in plan if n.startswith(("onpolicy_", "drive_keep", "drive_change")))
  assert {"export_offpolicy", "export_onpolicy_worldmodel", "export_onpolicy_procedural"} <= set(
    plan["results_table"].needs)
  gpu = {s.name: s for s in pipeline.stages(pipeline.PRESETS["paper"], tmp_path / "run")}
  assert gpu["policy_extractor"].cores == "all" and pipeline.PRESETS["paper"].parallel_stages == 1


def test_the_frame_decoder_makes_the_world_model_runs_frames_on_the_cpu_presets(tmp_path):
  """smoke and tiny distil a frame decoder from the codec at the policy's frame size (training/frame_decoder.py), and
  the world-model on-policy run waits for it and makes its frames with it; the GPU presets (frame_decoder_steps 0)
  have no such stage and their runs decode with the codec."""
  from dataclasses import replace
  for name in ("smoke", "tiny"):
    plan = {st.name: st for st in pipeline.stages(pipeline.PRESETS[name], tmp_path)}
    fd = plan["frame_decoder"]
    assert fd.needs == ("codec", "simulate", "simulate_policy_worlds") and fd.cores == "all"
    assert fd.cmd[fd.cmd.index("--size") + 1] == "64x128" and fd.cmd[fd.cmd.index("--vae") + 1] == str(
      tmp_path / "worldmodel" / "vae")
    assert fd.cmd[fd.cmd.index("--max-steps") + 1] == str(pipeline.PRESETS[name].frame_decoder_steps)
    wm = plan["onpolicy_worldmodel"]
    assert "frame_decoder" in wm.needs and f"wm_frame_decoder={tmp_path / 'frame_decoder'}" in wm.cmd
    assert not any(str(a).startswith("wm_frame_decoder") for a in plan["onpolicy_reprojective"].cmd)
    fid = plan["fidelity"]                 # the Fig. 9 check looks at the frames the world-model run's policy sees
    assert "frame_decoder" in fid.needs and fid.cmd[fid.cmd.index("--frame-decoder") + 1] == str(tmp_path / "frame_decoder")
  for cfg in (pipeline.PRESETS["small"], pipeline.PRESETS["paper"], replace(pipeline.PRESETS["tiny"], frame_decoder_steps=0)):
    plan = pipeline.stages(cfg, tmp_path)
    assert "frame_decoder" not in [st.name for st in plan]
    assert not any(str(a).startswith("wm_frame_decoder") or a in ("training.frame_decoder", "--frame-decoder")
                   for st in plan if isinstance(st.cmd, list) for a in st.cmd)

