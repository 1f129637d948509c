"""The results table of the on-policy issue (paper Table 2 analogue): every policy evaluated the same way, through
its exported ONNX pair (modeld/model_runner.DrivingModel, what modeld runs), side by side.

  python -m training.onpolicy.report --runs bc=runs/x/model worldmodel=runs/y/model ... --data HELD_OUT --out DIR
                                     [--seed S] [--suites lane-keep lane-change] [--limit N] [--workers 2]
                                     [--controls]

--runs NAME=EXPORTED_MODEL_DIR: NAME is one of the paper's rows, bc (off-policy, behaviour cloning),
reprojective, worldmodel, procedural (on-policy in that simulator), or any other label (a row of its own, listed
after those). Rows appear in that order, whichever are given.

Columns:
  open-loop MAE       plan position MAE on every frame of the held-out segments under --data, each frame through
                      modeld's per-frame loop (training/policy/evaluate.py open_loop), and ADE / FDE at 10 s;
  lane-keep passed    tools.sim.convergence's lane-keep suite (of 24) in the procedural world, closed loop;
  lane-change passed  the lane-change suite (of 20);
  mean time to converge  over the scenarios that converged, per suite (s).
Closed loop draws every scenario's scenery from --seed (tools/sim/scenarios.get_suite: 0 = the suites' own scenery,
any other seed = worlds the policies never saw); the table states it. --controls drives the suites through
controlsd's logic as the deployed stack does (tools.sim.convergence --controls: openpilot's curvature limits, 5
control steps per frame, NV12 frames); without it the policy's curvature is executed as it is (the paper's convention).

The policies are evaluated in --workers processes at once (one policy per process, onnxruntime on one thread each):
on 2 cores the table takes about half the time of one process. Every number is the same as with --workers 1.

Writes DIR/report.md, DIR/report.json and DIR/lane_keep_offsets.png (lateral offset over time in every lane-keep
scenario, one panel per policy); the last line printed is one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from common.cli import add_common_args, emit_result, make_parser, tool_main

ROWS = {"bc": "off-policy (BC)", "reprojective": "on-policy reprojective", "worldmodel": "on-policy world model",
        "procedural": "on-policy ground truth"}
SUITES = ("lane-keep", "lane-change")


def parse_runs(items: list[str]) -> list[tuple[str, Path]]:
  """["bc=DIR", ...] -> [(name, DIR)] in the table's row order (the paper's rows first). ValueError on bad items."""
  runs = []
  for it in items:
    name, sep, path = it.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--runs {it!r}: expected NAME=EXPORTED_MODEL_DIR")
    if name in [n for n, _ in runs]:
      raise ValueError(f"--runs: {name!r} given twice")
    runs.append((name, Path(path)))
  order = list(ROWS)
  return sorted(runs, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), [n for n, _ in runs].index(r[0])))


def row_label(name: str) -> str:
  return ROWS.get(name, name)


def load_held_out(data: Path, frame_spec: dict, progress: bool = True) -> list:
  """Every segment under `data` read in the policy's frame spec (training/policy/data.load_segment)."""
  from tools.lib.route import scan_segments
  from training.policy.data import load_segment
  paths, bad = scan_segments(data, progress=False)
  if not paths:
    raise ValueError(f"{data}: no readable segments" + (f" ({len(bad)} bad: {bad[0][1]})" if bad else ""))
  spec = SimpleNamespace(frame_w=int(frame_spec["width"]), frame_h=int(frame_spec["height"]),
                         frame_focal=float(frame_spec["focal"]))
  return [load_segment(p, spec) for p in tqdm(paths, desc="held-out segments", disable=not progress, leave=False)]


def evaluate_policy(model_dir: Path, name: str, data: Path, suites=SUITES, seed: int = 0, limit: int | None = None,
                    threads: int = 1, progress: bool = True, segments_cache: dict | None = None,
                    controls: bool = False) -> dict:
  """One row: open loop on the held-out segments and the closed-loop suites, through the exported ONNX pair."""
  from modeld.model_runner import DrivingModel
  from training.policy.evaluate import closed_loop, open_loop
  runner = DrivingModel(model_dir, "onnxruntime", num_threads=threads)
  spec = runner.frame_spec
  key = (int(spec["width"]), int(spec["height"]), float(spec["focal"]))
  cache = segments_cache if segments_cache is not None else {}
  if key not in cache:
    cache[key] = load_held_out(data, spec, progress)
  ol = open_loop(runner, cache[key], progress=progress)
  cl = closed_loop(runner, name, suites, progress=progress, seed=seed, limit=limit, keep_traces=True, controls=controls)
  return {"name": name, "label": row_label(name), "model_dir": str(model_dir), "model_name": runner.model_name,
          "open_loop": {**{k: ol[k] for k in ("mae", "ade", "fde", "curvature_mae", "n_points")},
                        "n_segments": len(cache[key])},
          "closed_loop": cl}


def _fmt(x, spec=".3f") -> str:
  return "–" if x is None else format(x, spec)


def markdown(report: dict) -> str:
  suites = report["suites"]
  head = "| policy | open-loop MAE (m) | ADE (m) | FDE@10s (m) |"
  head += "".join(f" {s} passed |" for s in suites)
  head += "".join(f" {s} mean t_conv (s) |" for s in suites)
  rows = [head, "|" + "---|" * (4 + 2 * len(suites))]
  for r in report["rows"]:
    ol, cl = r["open_loop"], r["closed_loop"]
    row = f"| {r['label']} | {_fmt(ol['mae'])} | {_fmt(ol['ade'])} | {_fmt(ol['fde'])} |"
    row += "".join(f" {cl[s]['passed']}/{cl[s]['total']} |" for s in suites)
    row += "".join(f" {_fmt(cl[s]['mean_t_converged'], '.1f')} |" for s in suites)
    rows.append(row)
  limited = f", first {report['limit']} scenarios of each suite" if report.get("limit") else ""
  return "\n".join([
    "# On-policy results (paper Table 2 analogue)", "",
    f"Every policy through its exported ONNX pair (modeld's DrivingModel). Open loop: {report['held_out_segments']} "
    f"held-out segments under `{report['data']}` ({report['open_loop_points']} plan points per policy). Closed loop: "
    f"tools.sim.convergence in the procedural world, scenery seed **{report['seed']}** "
    f"({'the suites own scenery' if report['seed'] == 0 else 'worlds no policy was trained on'}){limited}; "
    + ("steered through controlsd's logic as on a car (`--controls`); " if report.get("controls") else
       "the policy's curvature executed as it is, without controlsd's limits; ")
    + "mean t_conv is over the scenarios that converged.", "",
    *rows, "",
    "| policy | exported model |", "|---|---|",
    *[f"| {r['label']} | `{r['model_dir']}` |" for r in report["rows"]], "",
    "![lateral offset in every lane-keep scenario](lane_keep_offsets.png)", ""])


def plot_lane_keep(report: dict, path: Path) -> None:
  """Lateral offset from the lane centre over time, every lane-keep scenario, one panel per policy."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from tools.sim.scenarios import CONVERGED_TOL, LANE_WIDTH
  rows = [r for r in report["rows"] if "lane-keep" in r["closed_loop"]]
  fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.2 * max(1, len(rows)), 3.6), sharey=True, squeeze=False)
  for ax, r in zip(axes[0], rows):
    cl = r["closed_loop"]["lane-keep"]
    for sc in cl["scenarios"]:
      tr = sc["trace"]
      ax.plot(tr["t"], tr["offset"], lw=0.9, color="C2" if sc["passed"] else "C3", alpha=0.8)
    ax.axhspan(-CONVERGED_TOL, CONVERGED_TOL, color="C2", alpha=0.12)
    for y in (-LANE_WIDTH / 2, LANE_WIDTH / 2):
      ax.axhline(y, color="k", lw=0.8, ls="--")
    ax.set_title(f"{r['label']}: {cl['passed']}/{cl['total']} passed", fontsize=9)
    ax.set_xlabel("t (s)")
    ax.set_ylim(-LANE_WIDTH, LANE_WIDTH)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("offset from the lane centre (m, + right)")
  fig.suptitle(f"lane-keep suite, scenery seed {report['seed']} (green: passed, red: failed; dashed: lane edges; "
               f"band: ±{CONVERGED_TOL} m)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _evaluate_job(job: tuple) -> dict:
  """evaluate_policy in a worker process (no progress bars: the parent shows one per finished policy)."""
  model_dir, name, data, suites, seed, limit, threads, controls = job
  return evaluate_policy(model_dir, name, data, suites, seed, limit, threads, progress=False, controls=controls)


def build_report(runs: list[tuple[str, Path]], data: Path, out: Path, seed: int = 0, suites=SUITES,
                 limit: int | None = None, threads: int = 1, progress: bool = True, workers: int = 1,
                 controls: bool = False) -> dict:
  """workers > 1: the policies are evaluated in that many processes at once (spawned, so no state is shared)."""
  t0 = time.monotonic()
  out.mkdir(parents=True, exist_ok=True)
  bar = tqdm(total=len(runs), desc="policies", unit="policy", disable=not progress)
  if workers > 1 and len(runs) > 1:
    jobs = {name: (model_dir, name, data, tuple(suites), seed, limit, threads, controls) for name, model_dir in runs}
    done: dict[str, dict] = {}
    with ProcessPoolExecutor(min(workers, len(runs)), mp_context=get_context("spawn")) as pool:
      futures = {pool.submit(_evaluate_job, job): name for name, job in jobs.items()}
      for fut in as_completed(futures):
        done[futures[fut]] = fut.result()
        bar.set_postfix_str(futures[fut])
        bar.update()
    rows = [done[name] for name, _ in runs]
  else:
    segments_cache: dict = {}
    rows = []
    for name, model_dir in runs:
      bar.set_postfix_str(name)
      rows.append(evaluate_policy(model_dir, name, data, suites, seed, limit, threads, progress, segments_cache, controls))
      bar.update()
  bar.close()
  report = {"seed": seed, "suites": list(suites), "limit": limit, "controls": controls, "data": str(data),
            "held_out_segments": rows[0]["open_loop"]["n_segments"], "open_loop_points": int(rows[0]["open_loop"]["n_points"]),
            "rows": rows, "seconds": round(time.monotonic() - t0, 1)}
  (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
  (out / "report.md").write_text(markdown(report))
  if "lane-keep" in suites:
    plot_lane_keep(report, out / "lane_keep_offsets.png")
  return report


def summary(report: dict) -> dict:
  return {"seed": report["seed"], "controls": bool(report.get("controls")), "rows": {r["name"]: {
    "open_loop_mae": r["open_loop"]["mae"],
    **{f"{s}_passed": r["closed_loop"][s]["passed"] for s in report["suites"]},
    **{f"{s}_total": r["closed_loop"][s]["total"] for s in report["suites"]},
    **{f"{s}_mean_t_converged": r["closed_loop"][s]["mean_t_converged"] for s in report["suites"]}}
    for r in report["rows"]}}


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.onpolicy.report", __doc__)
  ap.add_argument("--runs", nargs="+", required=True, metavar="NAME=EXPORTED_MODEL_DIR",
                  help=f"rows: {', '.join(ROWS)} (or any other label)")
  ap.add_argument("--data", required=True, type=Path, help="held-out segments for the open-loop column")
  ap.add_argument("--out", required=True, type=Path)
  ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
  ap.add_argument("--limit", type=int, default=None, help="only the first N scenarios of each suite (quick checks)")
  ap.add_argument("--workers", type=int, default=2, help="policies evaluated at once, one process each")
  ap.add_argument("--controls", action="store_true",
                  help="closed loop through controlsd's logic, as the deployed stack drives (tools.sim.convergence --controls)")
  add_common_args(ap, threads=1, threads_help="onnxruntime threads per policy", seed=0,
                  seed_help="scenery seed of the closed-loop suites (0: their own)")
  args = ap.parse_args(argv)
  try:
    runs = parse_runs(args.runs)
  except ValueError as e:
    ap.error(str(e))
  for name, path in runs:
    if not path.is_dir():
      ap.error(f"--runs {name}={path}: not a directory")
  if not args.data.is_dir():
    ap.error(f"--data {args.data}: not a directory")
  if args.seed < 0 or (args.limit is not None and args.limit < 1) or args.workers < 1:
    ap.error("--seed must be >= 0, --limit >= 1 and --workers >= 1")
  from modeld.model_runner import ModelLoadError
  from tools.lib.segment import SegmentError
  try:
    report = build_report(runs, args.data, args.out, args.seed, tuple(args.suites), args.limit, args.threads,
                          workers=args.workers, controls=args.controls)
  except (ModelLoadError, SegmentError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(markdown(report))
  emit_result(summary(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
