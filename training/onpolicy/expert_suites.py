"""Can the on-policy expert itself pass the convergence suites? The ceiling of what the learner can copy.

  python -m training.onpolicy.expert_suites [--delay 0.2] [--return-time 0.8] [--return-speed 15|none]
                                            [--lanes-from MODEL_DIR]
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
its own (perception, delay, what it learnt). `--lanes-from MODEL_DIR` separates the first: the expert then reads its
reference from rendered frames through that exported model's vision net (PerceivedExpert: the centre of its two ego
lane lines, one lane over during a lane change), so its verdicts say whether the extractor reads the lane well enough
for the expert's own control law. Prints per suite the passes by speed; writes expert_suites.json (every
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
from common.modelconstants import DESIRES, IDX_N, MODEL_FREQ, X_IDXS
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

  def reference(self, obs: dict, info: dict) -> np.ndarray:
    """The lane centre to return to, y(X_IDXS) m in the car frame: the scenario's target lane (the truth)."""
    return np.asarray(info["path"])[:, 1]

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    self.queue.append(self.command(self.reference(obs, info), float(obs["v_ego"]), float(info["_course"])))
    if len(self.queue) <= self.n_delay:      # before the first command reaches the car: straight ahead
      return 0.0, 0.0
    return self.queue.popleft(), 0.0


class PerceivedExpert(ExpertController):
  """The same expert with its reference read from the camera frames by an exported vision model (a modeld model
  directory) instead of taken from the scenario: the centre of the model's two ego lane lines, and while a lane
  change's desire is set that centre moved one lane (the lines' spacing) toward the desire. The car's speed and
  course still come from the car. Its verdicts say whether what the extractor reads of the lane suffices for the
  expert's own control law, apart from anything the temporal model learns."""
  name = "perceived-expert"

  def __init__(self, model_dir, **kw):
    super().__init__(**kw)
    from tools.sim.policies import ModelPolicy
    self.policy = ModelPolicy(str(model_dir))

  def camera(self):
    return self.policy.camera()

  def reset(self) -> None:
    super().reset()
    self.policy.reset()

  def reference(self, obs: dict, info: dict) -> np.ndarray:
    desire = int(obs["desire"])
    out = self.policy.model.run(obs["image"], float(obs["v_ego"]), desire)
    left, right = np.asarray(out["vision"]["lane_lines"], np.float64)[:2, :, 0]   # (IDX_N,) y of each line, m
    centre = 0.5 * (left + right)
    if DESIRES[desire] == "laneChangeLeft":
      centre = centre - (right - left)
    elif DESIRES[desire] == "laneChangeRight":
      centre = centre + (right - left)
    return centre


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
    camera = ctrl.camera() if hasattr(ctrl, "camera") else None     # frames only for a controller that looks
    r = run_suite(ctrl, suite, camera=camera, progress=True, limit=limit, seed=seed)
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
  ap.add_argument("--lanes-from", type=Path, default=None, metavar="MODEL_DIR",
                  help="read the lane centre from the frames with this exported model's vision net (PerceivedExpert)")
  ap.add_argument("--limit", type=int, default=None, help="the first N scenarios of each suite")
  ap.add_argument("--scenery-seed", type=int, default=0, help="the suites' scenery seed (tools.sim.convergence --seed)")
  ap.add_argument("--out", type=Path, default=None, help="folder for expert_suites.json")
  add_common_args(ap)
  args = ap.parse_args(argv)
  try:
    return_speed = None if args.return_speed.lower() == "none" else float(args.return_speed)
    kw = dict(delay=args.delay, gain=args.gain, return_time=args.return_time, return_speed=return_speed)
    ctrl = ExpertController(**kw) if args.lanes_from is None else PerceivedExpert(args.lanes_from, **kw)
  except ValueError as e:
    ap.error(str(e))
  if args.limit is not None and args.limit < 1:
    ap.error("--limit must be >= 1")
  t0 = time.monotonic()
  res = run(ctrl, args.suite, args.limit, args.scenery_seed)
  summary = {"lanes_from": None if args.lanes_from is None else str(args.lanes_from),
             "delay_s": ctrl.n_delay / MODEL_FREQ, "gain": ctrl.gain, "return_time": ctrl.return_time,
             "return_speed": ctrl.return_speed, "scenery_seed": args.scenery_seed,
             **{s: {k: r[k] for k in ("passed", "total", "by_speed")} for s, r in res.items()},
             "wall_s": round(time.monotonic() - t0, 1)}
  for s, r in res.items():
    speeds = ", ".join(f"{p}/{n} at {v} m/s" for v, (p, n) in r["by_speed"].items())
    print(f"{s}: the {ctrl.name} passes {r['passed']}/{r['total']} ({speeds})", file=sys.stderr)
  if args.out is not None:
    write_json_atomic(args.out / "expert_suites.json", {**summary, "runs": {s: r["scenarios"] for s, r in res.items()}})
  emit_result(summary)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
