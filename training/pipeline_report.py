"""The main job's report: ``report.md`` and one self-contained ``report.html`` (images and video inlined, opens
offline), every figure read from the result file of the stage that produced it and shown beside its target.

A target compares a figure with a number or with another figure (``Target("gt", "worldmodel_eval",
"psnr_5frame_copy_last")``: the world model must beat copy-last-frame), or with a multiple of one (``scale``: the
world-model policy's open-loop MAE within 15 % of behaviour cloning's). A figure that misses its target is marked
*missed*; a figure whose stage did not run is *not run*.
"""
from __future__ import annotations

import base64
import html
import json
import operator
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from common.cli import write_json_atomic
from tools.sim.scenarios import get_suite

# the convergence suites' sizes (a run with --limit reports its own totals, see evaluate_figures) and what the
# policy trained in the ground-truth simulator must pass: 90 % of lane-keep, 80 % of lane-change
LANE_KEEP_N, LANE_CHANGE_N = len(get_suite("lane-keep")), len(get_suite("lane-change"))
GT_LANE_KEEP, GT_LANE_CHANGE = round(0.9 * LANE_KEEP_N), round(0.8 * LANE_CHANGE_N)

OPS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


@dataclass(frozen=True)
class Target:
  op: str                              # gt / ge / lt / le
  stage_or_value: str | float          # a number, or the stage of the figure to compare with
  key: str | None = None               # that figure's flattened key
  scale: float = 1.0                   # compare with this multiple of that figure


@dataclass(frozen=True)
class Figure:
  label: str
  stage: str
  key: str                             # flattened key in the stage's result ("a.b" for {"a": {"b": ...}})
  unit: str = ""
  target: Target | None = None


# where the stages with world-model rollouts say which predecessor they used (training/onpolicy/sim_worldmodel.py:
# "log" = re-anchored rollouts, named in their figures' labels)
PREDECESSOR_KEY = {"fidelity": "predecessor", "expert_check_worldmodel": "wm_predecessor",
                   "onpolicy_worldmodel": "wm_predecessor"}


def _predecessor(flat: dict, f: "Figure") -> str | None:
  """The predecessor of the world-model rollouts behind figure f (None: not a world-model figure, or not recorded).
  The world-model policy's own figures (its results-table row, its export) take its on-policy run's."""
  stage = f.stage if f.stage in PREDECESSOR_KEY else None
  if stage is None and (".worldmodel." in f"{f.key}." or f.stage.endswith("_worldmodel")):
    stage = "onpolicy_worldmodel"
  return flat.get(stage, {}).get(PREDECESSOR_KEY[stage]) if stage else None

FIGURES = [
  # world model on held-out worlds (temperature 0)
  Figure("world model 5-frame PSNR", "worldmodel_eval", "psnr_5frame_model", "dB",
         Target("gt", "worldmodel_eval", "psnr_5frame_copy_last")),
  Figure("copy-last-frame 5-frame PSNR", "worldmodel_eval", "psnr_5frame_copy_last", "dB"),
  Figure("codec floor 5-frame PSNR", "worldmodel_eval", "psnr_5frame_vae_floor", "dB"),
  # the rollout strip "not a blur": the last rollout frame keeps at least 3/4 of the image detail that the codec's own
  # reconstruction of the true frame keeps (training.worldmodel.evaluate.gradient_energy)
  Figure("world-model sharpness at the last rollout frame (image gradients / the true frame's)", "worldmodel_eval",
         "sharpness_last_model", "", Target("ge", "worldmodel_eval", "sharpness_last_vae_floor", scale=0.75)),
  Figure("codec floor sharpness at the last rollout frame", "worldmodel_eval", "sharpness_last_vae_floor", ""),
  # the frame decoder that makes the on-policy world-model simulator's frames (training/frame_decoder.py)
  Figure("frame decoder: PSNR against the codec's decode at the policy's size (held-out frames)", "frame_decoder",
         "psnr_vs_codec_db", "dB"),
  Figure("frame decoder: the codec's decode time per frame over its own", "frame_decoder", "speedup", "x"),
  Figure("frame decoder: PSNR against the codec's decode on generated latents (Fig. 9 rollouts)", "fidelity",
         "frame_decoder_vs_codec_psnr_db", "dB"),
  Figure("pose controllability (share of the geometric shift)", "worldmodel_eval",
         "controllability.fraction_of_expected", "", Target("ge", 0.25)),
  Figure("Plan Head ADE with anchor", "worldmodel_eval", "plan_ade_anchor_m", "m",
         Target("lt", "worldmodel_eval", "plan_ade_const_vel_m")),
  Figure("constant-velocity ADE", "worldmodel_eval", "plan_ade_const_vel_m", "m"),
  Figure("Fig. 9: measured / commanded lateral deviation at the peak", "fidelity", "deviation_peak_fraction", "",
         Target("ge", 0.7)),
  Figure("Fig. 9: correlation of measured and commanded deviation", "fidelity", "deviation_correlation", ""),
  Figure("Pose Net on true renders of the commanded deviation (peak share)", "fidelity", "procedural_peak_fraction", ""),
  # the experts the on-policy learner copies, each driving alone from +-1 m (expert_check: returns below half of it)
  Figure("world-model expert (Plan Head) from 1 m: mean |offset| at the end", "expert_check_worldmodel",
         "mean_abs_final_offset_m", "m", Target("lt", 0.5)),
  Figure("world-model expert: correlation of offset and correction", "expert_check_worldmodel",
         "correction_correlation", "", Target("gt", 0.0)),
  Figure("reprojective expert from 1 m: mean |offset| at the end", "expert_check_reprojective",
         "mean_abs_final_offset_m", "m", Target("lt", 0.5)),
  # each on-policy run's budget (the ground-truth run's is its own: PipelineConfig.groundtruth_steps_factor)
  Figure("on-policy (world model) learner updates", "onpolicy_worldmodel", "step"),
  Figure("on-policy (world model) Plan Head anchors: at most this far ahead", "onpolicy_worldmodel", "wm_anchor_max_s",
         "s"),
  Figure("on-policy (reprojective) learner updates", "onpolicy_reprojective", "step"),
  Figure("on-policy (ground truth) learner updates", "onpolicy_procedural", "step"),
  # the results table (paper Table 2 analogue)
  Figure("off-policy lane-keep", "results_table", "rows.bc.lane-keep_passed", f"/{LANE_KEEP_N}"),
  Figure("on-policy (world model) lane-keep", "results_table", "rows.worldmodel.lane-keep_passed", f"/{LANE_KEEP_N}",
         Target("gt", "results_table", "rows.bc.lane-keep_passed")),
  Figure("on-policy (reprojective) lane-keep", "results_table", "rows.reprojective.lane-keep_passed", f"/{LANE_KEEP_N}",
         Target("gt", "results_table", "rows.bc.lane-keep_passed")),
  Figure("on-policy (ground truth) lane-keep", "results_table", "rows.procedural.lane-keep_passed", f"/{LANE_KEEP_N}",
         Target("ge", GT_LANE_KEEP)),
  Figure("off-policy lane-change", "results_table", "rows.bc.lane-change_passed", f"/{LANE_CHANGE_N}"),
  Figure("on-policy (world model) lane-change", "results_table", "rows.worldmodel.lane-change_passed", f"/{LANE_CHANGE_N}",
         Target("gt", "results_table", "rows.bc.lane-change_passed")),
  Figure("on-policy (reprojective) lane-change", "results_table", "rows.reprojective.lane-change_passed", f"/{LANE_CHANGE_N}",
         Target("gt", "results_table", "rows.bc.lane-change_passed")),
  Figure("on-policy (ground truth) lane-change", "results_table", "rows.procedural.lane-change_passed", f"/{LANE_CHANGE_N}",
         Target("ge", GT_LANE_CHANGE)),
  Figure("off-policy open-loop MAE", "results_table", "rows.bc.open_loop_mae", "m"),
  Figure("on-policy (world model) open-loop MAE", "results_table", "rows.worldmodel.open_loop_mae", "m",
         Target("le", "results_table", "rows.bc.open_loop_mae", scale=1.15)),   # the paper: 0.361 against 0.394
  Figure("perfect controller lane-keep", "convergence_perfect", "passed", f"/{LANE_KEEP_N}"),
  Figure("ONNX vs torch max abs difference (on-policy export)", "export_onpolicy_worldmodel",
         "ort_vs_torch_max_abs", "", Target("lt", 1e-3)),
]

# (glob under the run folder, caption), in the order a reader wants them
PICTURES = [
  ("results_table/*.png", "lateral offset in every lane-keep scenario, one panel per policy"),
  ("worldmodel_rollout.gif", "world-model rollout on a held-out world: ground truth | generated, with the Plan Head's path"),
  ("worldmodel_eval/eval_psnr.png", "rollout PSNR, SSIM and sharpness per horizon against copy-last-frame and the codec "
                                   "floor"),
  ("worldmodel_eval/controllability.png", "pose controllability: a left and a right turn from one context"),
  ("fidelity/fidelity.png", "Fig. 9 analogue: commanded vs measured lateral deviation in world-model rollouts"),
  ("fidelity/frames.png", "Fig. 9 in frames: one held-out window's world-model frames for the car moved 0.5 m right and "
                          "left, each above the procedural world's true render of the same poses"),
  ("expert_check_*/expert_check.png", "each simulator's expert driving alone from 1 m left and right of the log"),
  ("worldmodel/curves.png", "world-model training curves"),
  ("policy/curves.png", "off-policy (behaviour cloning) training curves"),
  ("onpolicy_*/curves.png", "on-policy training curves"),
  ("drive_overlay.mp4", "the final model's path, lane lines and road edges drawn on a held-out world's camera"),
  ("drive_overlay*.png", "desired vs actual curvature, steering angle and lateral error along that drive"),
  ("model_replay/*.png", "model replay: the main fields of the final model on the committed segments"),
  ("real_preview_model_frame.png", "the real comma2k19 frame warped into the model frame"),
]

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".mp4": "video/mp4"}


def flatten(d: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists of dicts with a "name" are keyed by that name, other lists dropped."""
  flat = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      flat.update(flatten(v, key + "."))
    elif isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v):
      flat.update(flatten({x["name"]: x for x in v}, key + "."))
    elif isinstance(v, (int, float, str, bool)) or v is None:
      flat[key] = v
  return flat


def _fmt(v, unit: str = "") -> str:
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.4g}{unit}"
  return f"{v}{unit}"


def time_figure(minutes_target: float | None) -> Figure:
  """The main job's time: the wall-clock time during which at least one stage ran (stages side by side count once;
  a cached stage counts the time of the run that made it), against the preset's target
  (PipelineConfig.minutes_target)."""
  return Figure("the main job's time, stages side by side counted once", "pipeline", "minutes", " min",
                None if minutes_target is None else Target("le", minutes_target))


def busy_seconds(records: list[dict]) -> float:
  """Seconds during which at least one of the stages ran: the union of their intervals (each ends at the record's
  'finished' and lasts its 'seconds'). A record without 'finished' adds its seconds."""
  spans, total = [], 0.0
  for r in records:
    seconds = float(r.get("seconds") or 0.0)
    if r.get("finished") is None:
      total += seconds
    else:
      spans.append((float(r["finished"]) - seconds, float(r["finished"])))
  end = float("-inf")
  for a, b in sorted(spans):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def pipeline_result(records: list[dict]) -> dict:
  """The report's own figures from the stage markers: the main job's time (busy_seconds), every stage's seconds
  summed, and how many stages it took from cache."""
  return {"minutes": round(busy_seconds(records) / 60.0, 2),
          "stage_minutes": round(sum(float(r.get("seconds") or 0.0) for r in records) / 60.0, 2),
          "stages": len(records), "cached": sum(1 for r in records if r.get("cached"))}


def evaluate_figures(results: dict[str, dict | None], extra: tuple[Figure, ...] | list[Figure] = ()) -> list[dict]:
  """Each figure's value, its target in words, and whether it was met ("met" / "missed" / "not run" / "").
  `extra`: figures of this run's own (the time against the preset's target) after the fixed ones."""
  flat = {name: flatten(res) for name, res in results.items() if isinstance(res, dict)}
  rows = []
  drives = [Figure(f"{name[len('drive_'):]} through the stack: {what}", name, key, unit, target)
            for name in results if name.startswith("drive_") and name != "drive_overlay"
            for what, key, unit, target in (("share of control cycles with lateral control on", "engaged_share", "",
                                              Target("ge", 0.9)),
                                             ("passes its suite's criterion (1 yes, 0 no; tools.sim.scenarios.evaluate)",
                                              "suite_passed", "", Target("ge", 1)),
                                             ("final offset from the target lane's centre (+ right)",
                                              "final_target_offset", "m", None))]
  for f in [*FIGURES, *drives, *extra]:
    value = flat.get(f.stage, {}).get(f.key)
    status, target_txt = ("not run" if f.stage not in flat else ("n/a" if value is None else "")), ""
    if f.target is not None:
      fn, sym = OPS[f.target.op]
      if f.target.key is None:
        ref, target_txt = f.target.stage_or_value, f"{sym} {f.target.stage_or_value}"
      else:
        ref = flat.get(f.target.stage_or_value, {}).get(f.target.key)
        label = next((g.label for g in FIGURES if (g.stage, g.key) == (f.target.stage_or_value, f.target.key)),
                     f.target.key)
        target_txt = f"{sym} {label} ({_fmt(ref)})"
        if f.target.scale != 1.0:
          target_txt = f"{sym} {f.target.scale:g} x {label} ({_fmt(ref)})"
          ref = f.target.scale * ref if isinstance(ref, (int, float)) else ref
      if isinstance(value, (int, float)) and isinstance(ref, (int, float)):
        status = "met" if fn(value, ref) else "missed"
    unit = f.unit
    total = flat.get(f.stage, {}).get(f.key.replace("_passed", "_total")) if f.key.endswith("_passed") else None
    if unit.startswith("/") and isinstance(total, int):    # a suite run with --limit has fewer scenarios
      unit = f"/{total}"
    label = f.label + (" (re-anchored rollouts)" if _predecessor(flat, f) == "log" else "")
    rows.append({"label": label, "stage": f.stage, "key": f.key, "value": value, "unit": unit,
                 "target": target_txt, "status": status})
  return rows


def _pictures(out: Path) -> list[tuple[Path, str]]:
  found = []
  for pattern, caption in PICTURES:
    for p in sorted(out.glob(pattern)):
      if p.suffix.lower() in MIME:
        found.append((p, caption))
  return found


def _side_tables(out: Path) -> list[tuple[str, str]]:
  """Markdown tables that stages wrote beside their results (the results table, per-scenario tables)."""
  tables = []
  for title, pattern in [("Results table (paper Table 2 analogue)", "results_table/*.md"),
                         ("Off-policy evaluation", "policy/eval_report.md")]:
    for p in sorted(out.glob(pattern)):
      tables.append((title, p.read_text()))
  return tables


def _dropped_side_line(line: str) -> bool:
  """A side table's own title (a level-1 heading: the report's section heading names it) or an image line (its path
  is relative to the stage's folder; every picture is listed under Pictures): left out of report.md and report.html."""
  s = line.strip()
  return s.startswith("![") or re.match(r"^# ", s) is not None


def _side_table_md(md: str) -> str:
  """A side table's markdown as it goes into report.md (_dropped_side_line)."""
  return "\n".join(line for line in md.strip().splitlines() if not _dropped_side_line(line)).strip()


def _inline_md(text: str) -> str:
  """Escaped HTML of one line of markdown with its `code` and **bold** spans."""
  out = html.escape(text)
  out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
  return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _md_table_to_html(md: str) -> str:
  """The side tables' markdown as HTML: pipe tables, paragraphs, `code` and **bold**, without the lines
  _dropped_side_line names (every picture is inlined under Pictures)."""
  parts, rows = [], []

  def flush():
    if rows:
      head, *body = rows
      parts.append("<table><tr>" + "".join(f"<th>{_inline_md(c)}</th>" for c in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</table>")
      rows.clear()
  for line in md.splitlines():
    s = line.strip()
    if s.startswith("|"):
      cells = [c.strip() for c in s.strip("|").split("|")]
      if not all(set(c) <= set("-: ") for c in cells):
        rows.append(cells)
      continue
    flush()
    if _dropped_side_line(s):
      continue
    if s.startswith("#"):
      parts.append(f"<h3>{_inline_md(s.lstrip('#').strip())}</h3>")
    elif s:
      parts.append(f"<p>{_inline_md(s)}</p>")
  flush()
  return "\n".join(parts)


def write_report(out: Path, cfg, records: list[dict]) -> tuple[Path, Path]:
  results = {r["stage"]: r.get("result") for r in records}
  results["pipeline"] = pipeline_result(records)
  figures = evaluate_figures(results, [time_figure(cfg.minutes_target),
                                      Figure("every stage's seconds summed", "pipeline", "stage_minutes", " min", None)])
  write_json_atomic(out / "report.json", {"config": asdict(cfg), "figures": figures, "stages": records,
                                          "results": results})
  pictures, tables = _pictures(out), _side_tables(out)
  missed = [f["label"] for f in figures if f["status"] == "missed"]

  md = [f"# worldpilot main job (preset {cfg.name})", "",
        "Every figure is read from the result file of the stage that produced it; a figure that misses its "
        "target is marked missed.", ""]
  md += ["| figure | value | target | status |", "| --- | --- | --- | --- |"]
  md += [f"| {f['label']} | {_fmt(f['value'], f['unit'])} | {f['target']} | {f['status']} |" for f in figures]
  md += ["", f"Targets missed: {', '.join(missed) if missed else 'none'}.", ""]
  for title, text in tables:
    md += [f"## {title}", "", _side_table_md(text), ""]
  md += ["## Pictures", ""]
  for p, caption in pictures:
    rel = p.relative_to(out)
    md.append(f"- [{rel}]({rel}): {caption}" if p.suffix == ".mp4" else f"![{caption}]({rel})  \n*{caption}*")
  md += ["", "## Stages", "", "| stage | step | seconds | log |", "| --- | --- | --- | --- |"]
  for r in records:
    md.append(f"| {r['stage']} | {r.get('group', '')} | {r['seconds']}{' (cached)' if r.get('cached') else ''} | "
              f"`{Path(r['log']).relative_to(out) if str(r['log']).startswith(str(out)) else r['log']}` |")
  md_path = out / "report.md"
  md_path.write_text("\n".join(md) + "\n")

  css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
         "th{background:#f3f3f3}.met{color:#0a7a2f;font-weight:600}.missed{color:#b3261e;font-weight:600}"
         "figure{margin:1.5em 0}img,video{max-width:100%;border:1px solid #ddd}figcaption{color:#555}")
  h = [f"<!doctype html><html><head><meta charset='utf-8'><title>worldpilot report ({html.escape(cfg.name)})"
       f"</title><style>{css}</style></head><body>",
       f"<h1>worldpilot main job <small>(preset {html.escape(cfg.name)})</small></h1>",
       "<p>Every figure is read from the result file of the stage that produced it; a figure that misses its "
       "target is marked <span class='missed'>missed</span>.</p>",
       "<table><tr><th>figure</th><th>value</th><th>target</th><th>status</th></tr>"]
  for f in figures:
    h.append(f"<tr><td>{html.escape(f['label'])}</td><td>{html.escape(_fmt(f['value'], f['unit']))}</td>"
             f"<td>{html.escape(f['target'])}</td><td class='{f['status']}'>{html.escape(f['status'])}</td></tr>")
  h.append("</table>")
  for title, text in tables:
    h += [f"<h2>{html.escape(title)}</h2>", _md_table_to_html(text)]
  h.append("<h2>Pictures</h2>")
  for p, caption in pictures:
    data = base64.b64encode(p.read_bytes()).decode()
    mime = MIME[p.suffix.lower()]
    media = (f"<video controls loop muted src='data:{mime};base64,{data}'></video>" if mime.startswith("video")
             else f"<img alt='{html.escape(caption)}' src='data:{mime};base64,{data}'>")
    h.append(f"<figure>{media}<figcaption>{html.escape(caption)} "
             f"(<code>{html.escape(str(p.relative_to(out)))}</code>)</figcaption></figure>")
  h.append("<h2>Stages</h2><table><tr><th>stage</th><th>step</th><th>seconds</th></tr>")
  for r in records:
    h.append(f"<tr><td>{html.escape(r['stage'])}</td><td>{html.escape(r.get('group', ''))}</td>"
             f"<td>{r['seconds']}{' (cached)' if r.get('cached') else ''}</td></tr>")
  h.append(f"</table><details><summary>configuration</summary><pre>"
           f"{html.escape(json.dumps(asdict(cfg), indent=1))}</pre></details></body></html>")
  html_path = out / "report.html"
  html_path.write_text("\n".join(h))
  return md_path, html_path
