"""Convergence tests (paper §6): drive a policy through a scenario suite in closed loop and report which
scenarios it passes (criteria: tools/sim/scenarios.py).

  python -m tools.sim.convergence --policy perfect [--suite lane-keep|lane-change] [--json out.json]
  python -m tools.sim.convergence --policy path/to/exported_model_dir --suite lane-change
  python -m tools.sim.convergence --policy path/to/exported_model_dir --through-stack   # modeld + controlsd
  python -m tools.sim.convergence --policy path/to/exported_model_dir --controls   # controlsd's logic, in-process
  python -m tools.sim.convergence --policy path/to/exported_model_dir --seed 7   # same scenarios, unseen scenery

Reference controllers (perfect / straight / biased) run without rendering; a model directory renders
each frame in the model's own frame spec.
"""
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.cli import add_common_args, emit_result, make_parser, tool_main
from tools.sim.env import SimEnv
from tools.sim.policies import ControlsPolicy, ModelPolicy, make_policy
from tools.sim.scenarios import SUITES, Scenario, evaluate, get_suite


def run_scenario(policy, scenario: Scenario, camera=None) -> dict:
  env = SimEnv(camera=camera)
  obs = env.reset(scenario)
  policy.reset()
  info = env.info
  n = int(round(scenario.duration * 20))
  t, off, off_road, desire = [info["frame_times"]], [info["_target_offset"]], [info["off_road"]], []
  for _ in range(n):
    desire.append(int(obs["desire"]))     # SimEnv drops a lane change's desire as the car enters the target lane
    action = policy(obs, info)   # (curvature, accel), or (steering-wheel angle, accel) from the stack
    obs, info = env.step_steering(*action) if getattr(policy, "outputs_steering", False) else env.step(action)
    t.append(info["frame_times"]); off.append(info["_target_offset"]); off_road.append(info["off_road"])
  res = evaluate(scenario, np.array(t), np.array(off), env.world.road.lane_width, np.array(off_road))
  # desire[k]: what the policy was given with the frame at t[k]
  res["trace"] = {"t": np.round(t, 3).tolist(), "offset": np.round(off, 4).tolist(), "desire": desire}
  return res


def run_suite(policy, suite: str, camera=None, progress: bool = True, limit: int | None = None, seed: int = 0) -> dict:
  """seed: scenery seed of the suite (tools/sim/scenarios.get_suite; 0 = the suite's own scenery)."""
  scenarios = get_suite(suite, seed)[:limit]
  results = [run_scenario(policy, sc, camera) for sc in tqdm(scenarios, desc=f"{suite}", disable=not progress)]
  return {"suite": suite, "seed": seed, "policy": getattr(policy, "name", str(policy)),
          "passed": sum(r["passed"] for r in results), "total": len(results), "scenarios": results}


def run_suite_through_stack(model_dir, suite: str, limit: int | None = None, log_root: Path | None = None,
                            progress: bool = True, seed: int = 0) -> dict:
  """run_suite with the model running in modeld and steering through controlsd (tools/sim/stack.py)."""
  from tools.sim.stack import Stack, StackPolicy, model_camera
  cam = model_camera(model_dir)
  with Stack(model_dir, log_root=log_root) as stack:
    policy = StackPolicy(stack, cam)
    try:
      summary = run_suite(policy, suite, cam, progress=progress, limit=limit, seed=seed)
    finally:
      policy.close()
  summary["policy"] = f"stack:{model_dir}"
  return summary


def format_table(summary: dict) -> str:
  lines = [f"{'scenario':44s} {'pass':>5s} {'max|off|':>9s} {'final':>7s} {'t_conv':>7s}  failure"]
  for r in summary["scenarios"]:
    tc = "-" if r["t_converged"] is None else f"{r['t_converged']:.1f}"
    lines.append(f"{r['name']:44s} {'yes' if r['passed'] else 'NO':>5s} {r['max_offset']:9.2f} {r['final_offset']:7.2f} "
                 f"{tc:>7s}  {r['failure'] or ''}")
  lines.append(f"{summary['policy']} on {summary['suite']}: {summary['passed']}/{summary['total']} passed "
               f"(scenery seed {summary.get('seed', 0)})")
  return "\n".join(lines)


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m tools.sim.convergence", __doc__)
  ap.add_argument("--policy", required=True, help="perfect | straight | biased | PATH to an exported model dir")
  ap.add_argument("--suite", default="lane-keep", choices=SUITES)
  ap.add_argument("--json", type=Path, default=None, help="write per-scenario results here")
  ap.add_argument("--limit", type=int, default=None, help="only the first N scenarios (quick checks)")
  ap.add_argument("--through-stack", action="store_true",
                  help="run the model directory in modeld + controlsd processes over VisionIPC/cereal (tools/sim/stack.py)")
  ap.add_argument("--controls", action="store_true",
                  help="steer through controlsd's logic in-process (openpilot's curvature limits, inverse vehicle model, "
                  "steering-rate limit; 5 x 10 ms per frame), a model seeing NV12 frames like modeld: the stack's "
                  "in-process twin")
  add_common_args(ap, seed=0, seed_help="draw every scenario's scenery (not its geometry) from this seed: worlds the "
                  "policy never saw (0: the suites' own scenery)")
  args = ap.parse_args(argv)
  if args.policy not in ("perfect", "straight", "biased") and not Path(args.policy).is_dir():
    ap.error(f"--policy {args.policy!r} is neither a reference controller nor a model directory")
  if args.limit is not None and args.limit < 1:
    ap.error("--limit must be >= 1")
  if args.seed < 0:
    ap.error("--seed must be >= 0")
  if args.json is not None:   # found now, not after the whole suite has run
    blocker = next((p for p in [args.json, *args.json.parents] if p.exists()), None)
    if args.json.is_dir() or (blocker is not None and blocker != args.json and not blocker.is_dir()):
      ap.error(f"--json {args.json}: {'is a directory' if args.json.is_dir() else f'{blocker} is a file'}")
  if args.through_stack and args.controls:
    ap.error("--through-stack already steers through controlsd; --controls is its in-process twin")
  if args.through_stack:
    if not Path(args.policy).is_dir():
      ap.error("--through-stack needs --policy to be a model directory")
    summary = run_suite_through_stack(Path(args.policy), args.suite, limit=args.limit, seed=args.seed)
  else:
    try:
      policy = make_policy(args.policy, nv12=args.controls)
    except ValueError as e:   # ModelLoadError (a ValueError) names the file and what is wrong with it
      print(f"error: --policy {args.policy}: {e}", file=sys.stderr)
      return 1
    camera = policy.camera() if isinstance(policy, ModelPolicy) else None
    if args.controls:
      policy = ControlsPolicy(policy)
    summary = run_suite(policy, args.suite, camera, limit=args.limit, seed=args.seed)
  print(format_table(summary))
  if args.json is not None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
  emit_result({k: v for k, v in summary.items() if k != "scenarios"})
  return 0


if __name__ == "__main__":
  sys.exit(main())
