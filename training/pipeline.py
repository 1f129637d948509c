"""The main job: simulate -> train (VAE, world model, policy) -> export -> drive, end to end.

  python -m training.pipeline --preset tiny --out runs/default

Each stage is the project's own command-line tool run as a subprocess (exactly what a user would
type), so the pipeline is also a worked example of the whole workflow. A stage that finished leaves
``<out>/stages/<name>.json`` (its command, wall time and exit code); running the pipeline again
skips finished stages, so a killed run resumes where it stopped. ``--force STAGE`` reruns one.
At the end ``<out>/report.md`` and ``<out>/report.json`` collect the figures each stage wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm


@dataclass
class PipelineConfig:
  """Sizes of every stage. `tiny` runs on 2 CPU cores; `small` wants a GPU."""
  name: str = "tiny"
  segments: int = 6
  segment_seconds: float = 30.0
  resolution: str = "292x220"          # W x H of the generated video (the EON camera scaled by 1/4)
  vae_steps: int = 300
  worldmodel_steps: int = 300
  rollout_frames: int = 10
  policy_steps: int = 300              # optimizer steps per policy stage (extractor, then temporal)
  seed: int = 0
  extra: dict = field(default_factory=dict)


PRESETS = {
  "tiny": PipelineConfig(),
  "small": PipelineConfig(name="small", segments=64, segment_seconds=60.0, resolution="512x256",
                          vae_steps=20000, worldmodel_steps=100000, rollout_frames=40,
                          policy_steps=50000),
}


class StageFailed(RuntimeError):
  pass


def run_stage(out: Path, name: str, cmd: list[str], force: bool, log_dir: Path) -> dict:
  """Run one stage's command unless it already finished; its output goes to logs/<name>.log."""
  marker = out / "stages" / f"{name}.json"
  if marker.exists() and not force:
    return json.loads(marker.read_text())
  log_path = log_dir / f"{name}.log"
  t0 = time.monotonic()
  with open(log_path, "w") as log:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
  record = {"stage": name, "cmd": cmd, "rc": rc, "seconds": round(time.monotonic() - t0, 1), "log": str(log_path)}
  if rc != 0:
    tail = log_path.read_text().splitlines()[-30:]
    raise StageFailed(f"stage '{name}' failed with exit code {rc}; last lines of {log_path}:\n" + "\n".join(tail))
  marker.parent.mkdir(parents=True, exist_ok=True)
  tmp = marker.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=2))
  os.replace(tmp, marker)
  return record


def stage_figures(log_path: Path) -> dict | None:
  """The figures a stage printed last: our CLIs end with one JSON object, on one line or pretty-printed."""
  lines = log_path.read_text().splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    return None
  last = lines[-1].strip()
  candidates = [len(lines) - 1] if last.startswith("{") else \
               [j for j in range(len(lines) - 1, -1, -1) if lines[j].rstrip() == "{"][:1] if last == "}" else []
  for j in candidates:
    try:
      obj = json.loads("\n".join(lines[j:]))
    except json.JSONDecodeError:
      return None
    return obj if isinstance(obj, dict) else None
  return None


def flatten(d: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists are dropped (per-scenario tables live in the stage's own files)."""
  flat = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      flat.update(flatten(v, key + "."))
    elif isinstance(v, (int, float, str, bool)) or v is None:
      flat[key] = v
  return flat


REAL_SEGMENT = Path(__file__).resolve().parents[1] / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


def first_segment(data: Path) -> Path:
  """The first generated segment (sorted), for the rollout video."""
  segs = sorted(p.parent for p in data.glob("*/*/global_pose"))
  if not segs:
    raise StageFailed(f"no segments under {data}")
  return segs[0]


Command = list[str] | Callable[[], list[str]]


def stages(cfg: PipelineConfig, out: Path) -> list[tuple[str, Command]]:
  """The pipeline's stages in order; a callable command is built when its stage starts."""
  py = [sys.executable, "-m"]
  data, wm, pol, model = out / "data", out / "worldmodel", out / "policy", out / "model"
  s: list[tuple[str, Command]] = []
  if REAL_SEGMENT.exists():
    s.append(("real_segment_info", py + ["tools.lib.segment_info", str(REAL_SEGMENT.resolve()),
                                         "--save-warp", str(out / "real_preview_model_frame.png")]))
  s += [
    ("simulate", py + ["tools.sim.generate", "--out", str(data), "--segments", str(cfg.segments),
                       "--seed", str(cfg.seed), "--duration", str(cfg.segment_seconds),
                       "--resolution", cfg.resolution, "--workers", "2"]),
    ("worldmodel_train", py + ["training.worldmodel.train", "--preset", cfg.name, "--data", str(data), "--out", str(wm),
                               "--vae-steps", str(cfg.vae_steps), "--max-steps", str(cfg.worldmodel_steps),
                               "--seed", str(cfg.seed), "--resume"]),
    ("worldmodel_eval", py + ["training.worldmodel.evaluate", "--run", str(wm), "--data", str(data),
                              "--frames", str(cfg.rollout_frames)]),
    ("worldmodel_rollout", lambda: py + ["training.worldmodel.rollout", "--run", str(wm),
                                         "--segment", str(first_segment(data)), "--frames", str(cfg.rollout_frames),
                                         "--out", str(out / "worldmodel_rollout.gif")]),
    ("policy_train", py + ["training.policy.train", "--preset", cfg.name, "--data", str(data), "--out", str(pol),
                           "--stage", "both", "--max-steps", str(cfg.policy_steps),
                           "--seed", str(cfg.seed), "--resume"]),
    ("export", py + ["training.export", "--run", str(pol), "--out", str(model)]),
    ("policy_eval", py + ["training.policy.evaluate", "--run", str(pol), "--model-dir", str(model),
                          "--suites", "lane-keep", "lane-change"]),
    ("convergence_perfect", py + ["tools.sim.convergence", "--policy", "perfect",
                                  "--json", str(out / "convergence_perfect.json")]),
  ]
  return s


HEADLINES = [  # (label, stage, flattened key, unit): the figures a reader wants first
  ("world model 5-frame PSNR", "worldmodel_eval", "psnr_5frame_model", "dB"),
  ("copy-last-frame 5-frame PSNR", "worldmodel_eval", "psnr_5frame_copy_last", "dB"),
  ("VAE reconstruction floor PSNR", "worldmodel_eval", "psnr_5frame_vae_floor", "dB"),
  ("copy-last through the codec 5-frame PSNR", "worldmodel_eval", "psnr_5frame_copy_last_codec", "dB"),
  ("warp-last through the codec 5-frame PSNR", "worldmodel_eval", "psnr_5frame_warp_last_codec", "dB"),
  ("pose controllability, share of the geometric shift", "worldmodel_eval", "controllability.fraction_of_expected", ""),
  ("Plan Head ADE with anchor", "worldmodel_eval", "plan_ade_anchor_m", "m"),
  ("Plan Head ADE without anchor", "worldmodel_eval", "plan_ade_no_anchor_m", "m"),
  ("constant-velocity ADE (world-model windows)", "worldmodel_eval", "plan_ade_const_vel_m", "m"),
  ("policy open-loop ADE (ONNX)", "policy_eval", "open_loop.onnx.ade", "m"),
  ("policy open-loop FDE (ONNX)", "policy_eval", "open_loop.onnx.fde", "m"),
  ("constant-velocity ADE (policy segments)", "policy_eval", "open_loop.constant-velocity baseline.ade", "m"),
  ("policy lane-keep convergence", "policy_eval", "closed_loop.onnx.lane-keep.passed", "/24"),
  ("policy lane-change convergence", "policy_eval", "closed_loop.onnx.lane-change.passed", "/20"),
  ("perfect controller lane-keep", "convergence_perfect", "passed", "/24"),
  ("ONNX vs torch max abs difference", "export", "ort_vs_torch_max_abs", ""),
]


def write_report(out: Path, cfg: PipelineConfig, records: list[dict]) -> Path:
  results = {r["stage"]: r.get("result") for r in records}
  report = {"config": asdict(cfg), "stages": records, "results": results}
  (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
  flat = {name: flatten(res) for name, res in results.items() if isinstance(res, dict)}
  lines = [f"# worldpilot pipeline report (preset {cfg.name})", "",
           "Off-policy figures side by side: a policy can have a low trajectory error and still fail the",
           "closed-loop convergence tests (paper §6). Every figure below is read from the stage's own output.", "",
           "| figure | value |", "| --- | --- |"]
  for label, stage, key, unit in HEADLINES:
    v = flat.get(stage, {}).get(key)
    if v is not None:
      lines.append(f"| {label} | {v:.4g}{unit} |" if isinstance(v, float) else f"| {label} | {v}{unit} |")
  lines += ["", "Pictures: `real_preview_model_frame.png`, `worldmodel_rollout.gif`, `worldmodel/curves.png`,",
            "`policy/curves.png`; per-scenario tables: `policy/eval_report.md`, `convergence_perfect.json`.", "",
            "| stage | seconds | log |", "| --- | --- | --- |"]
  for r in records:
    lines.append(f"| {r['stage']} | {r['seconds']} | `{Path(r['log']).relative_to(out)}` |")
  path = out / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return path


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
  ap.add_argument("--out", type=Path, default=Path("runs/default"))
  ap.add_argument("--force", nargs="*", default=[], help="rerun these stages even if finished")
  ap.add_argument("--only", nargs="*", default=None, help="run only these stages")
  args = ap.parse_args(argv)
  cfg = PRESETS[args.preset]
  known = [n for n, _ in stages(cfg, args.out.resolve())]
  for opt, names in (("--only", args.only or []), ("--force", args.force)):
    unknown = [n for n in names if n not in known]
    if unknown:
      ap.error(f"{opt}: unknown stage(s) {unknown}; stages are {known}")
  out = args.out.resolve()
  log_dir = out / "logs"
  log_dir.mkdir(parents=True, exist_ok=True)
  (out / "pipeline_config.json").write_text(json.dumps(asdict(cfg), indent=2))
  plan = [(n, c) for n, c in stages(cfg, out) if args.only is None or n in args.only]
  records = []
  bar = tqdm(plan, desc="pipeline", unit="stage")
  for name, cmd in bar:
    bar.set_postfix_str(name)
    try:
      rec = run_stage(out, name, cmd() if callable(cmd) else cmd, force=name in args.force, log_dir=log_dir)
    except StageFailed as e:
      print(f"\n[pipeline] {e}", file=sys.stderr)
      write_report(out, cfg, records)
      return 1
    if rec.get("result") is None:
      rec["result"] = stage_figures(Path(rec["log"]))
      side = out / f"{name}.json"          # stages that write their table to <out>/<stage>.json
      if rec["result"] is None and side.exists():
        rec["result"] = {k: v for k, v in json.loads(side.read_text()).items() if not isinstance(v, list)}
      marker = out / "stages" / f"{name}.json"
      tmp = marker.with_suffix(".tmp")
      tmp.write_text(json.dumps(rec, indent=2))
      os.replace(tmp, marker)
    records.append(rec)
  path = write_report(out, cfg, records)
  print(f"[pipeline] done: {path}")
  print(json.dumps({"report": str(path), "stages": {r['stage']: r['seconds'] for r in records}}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
