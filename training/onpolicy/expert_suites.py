"""Can the on-policy expert itself pass the convergence suites? The ceiling of what the learner can copy.

  python -m training.onpolicy.expert_suites [--delay 0.2] [--return-time 0.8] [--return-speed 15|none]
                                            [--suite lane-keep lane-change] [--limit N] [--scenery-seed S] [--out DIR]

The geometric simulators label every state with `simulator.return_plan` (the smooth return to the lane centre) and
the action `common.drive_helpers.action_from_plan` derives from it (training/onpolicy/simulator.py). Here that
expert drives the suites of tools/sim/scenarios.py as the controller, at 20 Hz like modeld, from the scenario's
true lane centre (no rendering, no network): its reference is the target lane's centre line in the car frame
(`info["path"]`, what the ground-truth simulator's expert reads), driven at the car's speed along its course. `--delay` holds each
command back by that many seconds before the car gets it, which is how a policy that answers late (docs/
experiments.md measures 0.15-0.2 s for the shipped model at 30 m/s) would drive with the same labels; `--gain`
scales the command (a policy that copies only part of the correction).

If the expert fails a scenario, no policy that copies it can pass it; if it passes, the policy's failures there are
its own (perception, delay, what it learnt). Prints per suite the passes by speed; writes expert_suites.json (every
scenario's verdict and trace) when --out is given.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from common.cli import add_common_args, emit_result, make_parser, tool_main, write_json_atomic
from common.drive_helpers import curvature_from_plan
from common.modelconstants import IDX_N, MODEL_FREQ, X_IDXS
from training.onpolicy.simulator import RETURN_SPEED, RETURN_TIME, check_return, return_plan


class ExpertController:
  """The geometric expert as a tools.sim policy: (obs, info) -> (desired curvature, 0), each command delayed by
  `delay` s (whole 20 Hz frames) and scaled by `gain`."""
  name = "expert"

  def __init__(self, delay: float = 0.0, gain: float = 1.0, return_time: float = RETURN_TIME,
               return_speed: float | None = RETURN_SPEED):
    check_return(return_time, return_speed)
    if not 0.0 <= delay <= 2.0:
      raise ValueError(f"delay {delay}: expected seconds in [0, 2]")
    self.n_delay = int(round(delay * MODEL_FREQ))
    self.gain, self.return_time, self.return_speed = float(gain), float(return_time), return_speed
    self.queue: deque = deque()

  def reset(self) -> None:
    self.queue.clear()

  def command(self, path_y: np.ndarray, v: float, course: float = 0.0) -> float:
    """The expert's desired curvature (1/m, + left) now, for a reference y(X_IDXS) (car frame, y right) at speed v,
    the car moving at `course` rad from its heading (+ right)."""
    plan = return_plan(np.stack([X_IDXS, path_y], 1), np.full(IDX_N, v), None, self.return_time, self.return_speed,
                       course)
    return self.gain * float(curvature_from_plan(plan, v))

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    self.queue.append(self.command(np.asarray(info["path"])[:, 1], float(obs["v_ego"]), float(info["_course"])))
    if len(self.queue) <= self.n_delay:      # before the first command reaches the car: straight ahead
      return 0.0, 0.0
    return self.queue.popleft(), 0.0


def by_speed(scenarios: list[dict], speeds: dict[str, float]) -> dict[str, list[int]]:
  """{"15": [passed, total], ...} from run_suite's scenarios and each scenario's speed (m/s)."""
  out: dict[str, list[int]] = {}
  for sc in scenarios:
    k = f"{speeds[sc['name']]:g}"
    out.setdefault(k, [0, 0])
    out[k][0] += int(sc["passed"])
    out[k][1] += 1
  return dict(sorted(out.items(), key=lambda kv: float(kv[0])))


def run(ctrl: ExpertController, suites: list[str], limit: int | None = None, seed: int = 0) -> dict:
  from tools.sim.convergence import run_suite
  from tools.sim.scenarios import get_suite
  res = {}
  for suite in suites:
    speeds = {sc.name: sc.speed for sc in get_suite(suite, seed)}
    r = run_suite(ctrl, suite, camera=None, progress=True, limit=limit, seed=seed)
    res[suite] = {"passed": r["passed"], "total": r["total"], "by_speed": by_speed(r["scenarios"], speeds),
                  "scenarios": r["scenarios"]}
  return res


@tool_main
def main(argv=None) -> int:
  from tools.sim.scenarios import SUITES
  ap = make_parser("python -m training.onpolicy.expert_suites", __doc__.split("\n")[0])
  ap.add_argument("--suite", nargs="+", default=list(SUITES), choices=SUITES)
  ap.add_argument("--delay", type=float, default=0.0, help="s each command waits before the car gets it")
  ap.add_argument("--gain", type=float, default=1.0, help="scale on every command")
  ap.add_argument("--return-time", type=float, default=RETURN_TIME, help="the expert's return (RolloutConfig.return_time)")
  ap.add_argument("--return-speed", default=str(RETURN_SPEED),
                  help="m/s above which the return lengthens with speed, or 'none' (RolloutConfig.return_speed)")
  ap.add_argument("--limit", type=int, default=None, help="the first N scenarios of each suite")
  ap.add_argument("--scenery-seed", type=int, default=0, help="the suites' scenery seed (tools.sim.convergence --seed)")
  ap.add_argument("--out", type=Path, default=None, help="folder for expert_suites.json")
  add_common_args(ap)
  args = ap.parse_args(argv)
  try:
    return_speed = None if args.return_speed.lower() == "none" else float(args.return_speed)
    ctrl = ExpertController(args.delay, args.gain, args.return_time, return_speed)
  except ValueError as e:
    ap.error(str(e))
  if args.limit is not None and args.limit < 1:
    ap.error("--limit must be >= 1")
  t0 = time.monotonic()
  res = run(ctrl, args.suite, args.limit, args.scenery_seed)
  summary = {"delay_s": ctrl.n_delay / MODEL_FREQ, "gain": ctrl.gain, "return_time": ctrl.return_time,
             "return_speed": ctrl.return_speed, "scenery_seed": args.scenery_seed,
             **{s: {k: r[k] for k in ("passed", "total", "by_speed")} for s, r in res.items()},
             "wall_s": round(time.monotonic() - t0, 1)}
  for s, r in res.items():
    speeds = ", ".join(f"{p}/{n} at {v} m/s" for v, (p, n) in r["by_speed"].items())
    print(f"{s}: the expert passes {r['passed']}/{r['total']} ({speeds})", file=sys.stderr)
  if args.out is not None:
    write_json_atomic(args.out / "expert_suites.json", {**summary, "runs": {s: r["scenarios"] for s, r in res.items()}})
  emit_result(summary)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
