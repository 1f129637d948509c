"""Evaluate a trained policy: open-loop trajectory errors on held-out segments AND closed-loop convergence in
the simulator, reported side by side (run_dir/eval_report.json + eval_report.md).

  python -m training.policy.evaluate --run RUN [--data DIR] [--model-dir EXPORTED] [--no-closed-loop]

Open loop: every frame of each held-out segment (run_dir/split.json "val", or all segments under --data)
goes through the same per-frame loop modeld runs (modeld.model_runner.FrameHistoryRunner: frame stacking,
5 Hz feature history, parse of the most probable hypothesis): with --model-dir through the exported ONNX
(DrivingModel), and always through an in-process PyTorch wrapper of the same interface (TorchDrivingModel).
Metrics (training.policy.losses.trajectory_errors): MAE of the plan positions, ADE (mean horizontal L2 over
the 10 s horizon), FDE (horizontal L2 at 10 s).

Closed loop: tools.sim.convergence's scenario suites (perturbed starts: lateral offset, heading, speed, road
shape; lane-change suite with desire), run in-process with each runner wrapped as tools.sim's ModelPolicy,
so the torch model and the exported ONNX are driven by exactly the same harness
(``python -m tools.sim.convergence --policy MODEL_DIR`` gives the same numbers for the export).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.cli import add_common_args, emit_result, make_parser, tool_main
from modeld.model_runner import DrivingModel, FrameHistoryRunner
from training.policy.data import SegmentData, load_segment
from training.policy.losses import pool_errors, trajectory_errors
from training.policy.model import FRAME_STACK_GAP, HISTORY_STRIDE, TemporalPolicy, VisionModel
from training.torch_args import set_threads


class TorchDrivingModel(FrameHistoryRunner):
  """DrivingModel's interface (frame_spec / reset / run) on the PyTorch models, for evaluation and for
  closed-loop tests without an export."""

  def __init__(self, vision: VisionModel, temporal: TemporalPolicy):
    cfg = vision.cfg
    self.vision, self.temporal = vision.eval(), temporal.eval()
    self.width, self.height, self.focal = cfg.frame_w, cfg.frame_h, cfg.frame_focal
    self.stack_gap, self.history_steps, self.history_stride = FRAME_STACK_GAP, cfg.history, HISTORY_STRIDE
    self.vision_layout, self.policy_layout = vision.layout, temporal.layout
    self.model_name = f"torch-{cfg.name}"
    self.reset()

  @torch.no_grad()
  def run_vision(self, img):
    z, out = self.vision(torch.from_numpy(img), noise=False)
    return z.numpy(), out.numpy()

  @torch.no_grad()
  def run_policy(self, features, v_ego, desire):
    return self.temporal(torch.from_numpy(features), torch.from_numpy(v_ego), torch.from_numpy(desire))[:, -1].numpy()


def open_loop(runner: FrameHistoryRunner, segs: list[SegmentData], progress: bool = True) -> dict:
  """Run every frame of every segment through `runner` in order; pooled trajectory errors + per segment."""
  parts, per_seg, act_err = [], {}, []
  for s in segs:
    runner.reset()
    plans, actions = [], []
    for i in tqdm(range(len(s)), desc=f"open-loop {s.name}", disable=not progress, leave=False):
      out = runner.run(np.ascontiguousarray(s.frames[i]), float(s.v_ego[i]), int(s.desire[i]))
      plans.append(out["plan"])
      actions.append([out["action"]["desiredCurvature"], out["action"]["desiredAcceleration"]])
    e = trajectory_errors(torch.from_numpy(np.stack(plans)), torch.from_numpy(s.plan), torch.from_numpy(s.plan_valid))
    parts.append(e)
    per_seg[s.name] = pool_errors([e])
    act_err.append(np.abs(np.array(actions) - s.action)[s.action_valid])
  a = np.concatenate(act_err) if act_err else np.zeros((0, 2))
  return {**pool_errors(parts), "curvature_mae": float(a[:, 0].mean()) if len(a) else float("nan"),
          "accel_mae": float(a[:, 1].mean()) if len(a) else float("nan"), "segments": per_seg}


def constant_velocity_baseline(segs: list[SegmentData]) -> dict:
  """Reference errors of the trivial plan "keep going straight at the current speed" (x = v t, y = z = 0)."""
  from common.modelconstants import PLAN_WIDTH, T_IDXS
  parts = []
  for s in segs:
    plan = np.zeros((len(s), len(T_IDXS), PLAN_WIDTH), np.float32)
    plan[:, :, 0] = s.v_ego[:, None] * T_IDXS[None].astype(np.float32)
    parts.append(trajectory_errors(torch.from_numpy(plan), torch.from_numpy(s.plan), torch.from_numpy(s.plan_valid)))
  curv = np.concatenate([s.action[s.action_valid, 0] for s in segs])   # straight: desiredCurvature = 0
  return {**pool_errors(parts), "curvature_mae": float(np.abs(curv).mean())}


def bottleneck_report(vision: VisionModel, segs: list[SegmentData]) -> dict:
  """Configured vs measured capacity of the Gaussian channel on these segments' frames (paper §5.2)."""
  from training.policy.model import measured_capacity_bits
  from training.policy.train import compute_features
  feats, _ = compute_features(vision, segs, progress=False)
  z = np.concatenate(feats)
  return {"configured_bits": vision.cfg.bottleneck_bits, "noise_std": vision.bottleneck.noise_std,
          "measured_bits": measured_capacity_bits(z, vision.bottleneck.noise_std), "frames": int(len(z))}


def runner_policy(runner: FrameHistoryRunner, name: str, nv12: bool = False):
  """tools.sim's ModelPolicy around any runner with DrivingModel's interface (ONNX or the torch wrapper)."""
  from tools.sim.policies import ModelPolicy

  class RunnerPolicy(ModelPolicy):
    def __init__(self):  # ModelPolicy's camera/reset/__call__, our runner instead of loading a directory
      self.model, self.frame_spec, self.name, self.nv12 = runner, runner.frame_spec, name, nv12
  return RunnerPolicy()


def closed_loop(runner: FrameHistoryRunner, name: str, suites=("lane-keep",), progress: bool = True, seed: int = 0,
                limit: int | None = None, keep_traces: bool = False, controls: bool = False) -> dict:
  """tools.sim.convergence's scenario suites driven by `runner` in closed loop (rendered in its frame spec).
  seed: the suites' scenery seed (0 = their own scenery); limit: only the first N scenarios of each suite;
  controls: steer through controlsd's logic, NV12 frames (tools.sim.convergence --controls, the deployed stack's twin).
  Returns {suite: {"passed", "total", "pass_rate", "mean_t_converged", "scenarios": [...], "seed"}}; the scenarios
  keep their offset traces only with keep_traces."""
  from tools.sim.convergence import run_suite
  from tools.sim.policies import ControlsPolicy
  policy = runner_policy(runner, name, nv12=controls)
  camera = policy.camera()
  if controls:
    policy = ControlsPolicy(policy)
  out = {}
  for suite in suites:
    res = run_suite(policy, suite, camera, progress=progress, limit=limit, seed=seed)
    scen = [{k: v for k, v in r.items() if keep_traces or k != "trace"} for r in res["scenarios"]]
    tconv = [r["t_converged"] for r in scen if r.get("t_converged") is not None]
    out[suite] = {"passed": res["passed"], "total": res["total"], "pass_rate": res["passed"] / max(1, res["total"]),
                  "mean_t_converged": float(np.mean(tconv)) if tconv else None, "scenarios": scen, "seed": seed}
  return out


def _fmt(x) -> str:
  return f"{x:.3f}" if isinstance(x, float) else str(x)


def write_report(run_dir: Path, report: dict) -> tuple[Path, Path]:
  """eval_report.json + eval_report.md: open-loop errors and closed-loop convergence side by side."""
  js = run_dir / "eval_report.json"
  js.write_text(json.dumps(report, indent=1, default=float))
  suites = sorted({s for cl in report.get("closed_loop", {}).values() for s in cl})
  head = ("| model | open-loop MAE (m) | ADE (m) | FDE@10s (m) | curvature MAE (1/m) | points |"
          + "".join(f" {s} passed | {s} mean t_conv (s) |" for s in suites))
  rows = [head, "|" + "---|" * (6 + 2 * len(suites))]
  for name, ol in report["open_loop"].items():
    row = (f"| {name} | {_fmt(ol['mae'])} | {_fmt(ol['ade'])} | {_fmt(ol['fde'])} | "
           f"{ol.get('curvature_mae', float('nan')):.5f} | {int(ol['n_points'])} |")
    for s in suites:
      cl = report.get("closed_loop", {}).get(name, {}).get(s)
      if cl is not None:
        row += f" {cl['passed']}/{cl['total']} | {_fmt(cl['mean_t_converged'])} |"
      else:
        row += " n/a | - |" if "baseline" in name else " not run | - |"
    rows.append(row)
  md = run_dir / "eval_report.md"
  md.write_text(f"# Policy evaluation: {report['model_name']} (checkpoint step {report['step']})\n\n"
                f"Held-out segments ({len(report['segments'])}): {', '.join(report['segments'])}\n\n"
                "Open loop: every frame of the held-out segments through modeld's per-frame loop; ADE = mean "
                "horizontal error over the 10 s plan, FDE = at 10 s. Closed loop: tools.sim.convergence suites.\n\n"
                + "\n".join(rows) + "\n")
  if "bottleneck" in report:
    b = report["bottleneck"]
    md.write_text(md.read_text() + f"\nInformation bottleneck: configured {b['configured_bits']:.0f} bits, measured "
                  f"{b['measured_bits']:.1f} bits on {b['frames']} held-out frames (noise std {b['noise_std']:.3f}).\n")
  return js, md


@tool_main
def main(argv=None) -> int:
  from training.policy.model import load_policy_run
  ap = make_parser("python -m training.policy.evaluate", __doc__)
  ap.add_argument("--run", type=Path, required=True)
  ap.add_argument("--data", type=Path, default=None, help="evaluate every segment under DIR instead of split.json val")
  ap.add_argument("--model-dir", type=Path, default=None, help="exported model dir (also used for closed loop)")
  ap.add_argument("--no-closed-loop", action="store_true")
  ap.add_argument("--suites", nargs="+", default=["lane-keep"], help="tools.sim.convergence suites")
  add_common_args(ap, threads=1, threads_help="torch / onnxruntime threads (per-frame batch 1: more threads barely "
                  "help and oversubscribed OpenMP spin-waits are very slow on a busy machine)")
  args = ap.parse_args(argv)
  set_threads(args.threads)
  try:
    vision, temporal, ck = load_policy_run(args.run)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.data is not None:
    from tools.lib.route import scan_segments
    paths, _ = scan_segments(args.data, progress=False)
  else:
    split = args.run / "split.json"
    if not split.exists():
      print(f"error: {split}: missing; pass --data", file=sys.stderr)
      return 1
    paths = [Path(p) for p in json.loads(split.read_text())["val"]]
  if not paths:
    print(f"error: {args.data or args.run}: no held-out segments to evaluate", file=sys.stderr)
    return 1
  segs = [load_segment(p, vision.cfg, args.run / "cache") for p in paths]
  report = {"model_name": vision.cfg.name, "step": ck["step"], "segments": [s.name for s in segs], "open_loop": {},
            "bottleneck": bottleneck_report(vision, segs)}
  runners = {"torch": TorchDrivingModel(vision, temporal)}
  if args.model_dir is not None:
    runners["onnx"] = DrivingModel(args.model_dir, "onnxruntime", num_threads=args.threads)
  report["closed_loop"] = {}
  for name, runner in runners.items():
    report["open_loop"][name] = open_loop(runner, segs)
  report["open_loop"]["constant-velocity baseline"] = constant_velocity_baseline(segs)
  if not args.no_closed_loop:  # the deployed artifact when there is one (torch and ONNX agree to 1e-4 open loop)
    name = "onnx" if "onnx" in runners else "torch"
    report["closed_loop"][name] = closed_loop(runners[name], name, args.suites)
  js, md = write_report(args.run, report)
  print(md.read_text())
  emit_result({"open_loop": {k: {m: v[m] for m in ("mae", "ade", "fde", "curvature_mae")}
                             for k, v in report["open_loop"].items()},
               "closed_loop": {k: {s: {m: r[m] for m in ("passed", "total", "mean_t_converged")} for s, r in v.items()}
                               for k, v in report["closed_loop"].items()}})
  return 0


if __name__ == "__main__":
  sys.exit(main())
