"""Drive the simulated car with the deployed stack: the procedural world's bridge, modeld, controlsd and loggerd
as processes under selfdrive/manager, closed loop through VisionIPC and cereal, in real time (20 Hz).

  python -m tools.sim.run [--scenario NAME | --seed S] [--duration 30] [--model-dir DIR] [--log-root DIR]

The bridge renders the road camera in the model's frame geometry (size, focal length and principal point of the
model's frame_spec: bridge_camera; modeld warps it with the published intrinsics and the calibration), and the
simulated camera's mounting (zero calibration) is published as liveCalibration by `calibration` (on a car,
calibrationd estimates it). While controlsd is not steering (start-up, a fault) the bridge's built-in driver keeps
the lane.
Last line: JSON with the log's path and figures read back from it (frames, share of frames controlsd steered,
final lateral offset) and, for a --scenario, its suite's verdict on the drive (suite_passed, suite_failure,
final_target_offset, t_converged: tools.sim.scenarios.evaluate, as tools.sim.convergence judges the scenario).
"""
from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.stop_signal import StopFlag

cloudlog = logging.getLogger("tools.sim.run")


def calibration() -> int:
  """The simulated camera's mounting as liveCalibration at 4 Hz (zero roll/pitch/yaw), until SIGTERM."""
  from cereal import messaging
  stop = StopFlag()
  pm = messaging.PubMaster(["liveCalibration"])
  while not stop:
    m = messaging.new_message("liveCalibration")
    m.liveCalibration.rpyCalib, m.liveCalibration.calStatus = [0.0, 0.0, 0.0], "calibrated"
    m.liveCalibration.calPerc, m.liveCalibration.validBlocks = 100, 20
    pm.send("liveCalibration", m)
    time.sleep(0.25)
  pm.close()
  return 0


def bridge_camera(spec: dict) -> str:
  """The bridge's --camera for a model's frame_spec: the model frame itself (its size, focal length and principal
  point), so the frames modeld warps are the frames the model was trained on. A centred pinhole of the same size and
  focal length puts the horizon 20 px lower in a 128x64 frame, and modeld's warp then cuts off the road nearest the
  car."""
  return f"model:{int(spec['width'])}x{int(spec['height'])}@{float(spec['focal'])}"


def scenario_verdict(scenario, frames: list[tuple[float, float, float, float]]) -> dict:
  """The suites' verdict (tools.sim.scenarios.evaluate: settled in the target lane, in time for a lane change, never
  out of the lane or off the road) on a drive's groundTruth frames (frameTime, x, y, roadS): the offsets from the
  scenario's target lane, recomputed from the logged poses on the scenario's road (groundTruth's lateralOffset is
  from the lane the car is in, which a car that changed two lanes would pass)."""
  from tools.sim.scenarios import evaluate
  from tools.sim.world import World
  road = World(scenario.seed, scenario.world_config(), ego_s0=scenario.s0, ego_speed=scenario.speed,
               scenery_seed=scenario.scenery_seed).road
  centre = float(road.lane_center_d(scenario.target_lane(road)))
  el, er = road.edge_d
  t, off, off_road = [], [], []
  for ft, x, y, s in frames:
    _, d = road.world_to_frenet(np.array([x, y]), s_guess=s)
    t.append(ft)
    off.append(float(d) - centre)
    off_road.append(not el <= float(d) <= er)
  res = evaluate(scenario, np.array(t), np.array(off), float(road.lane_width), np.array(off_road))
  return {"suite_passed": int(res["passed"]), "suite_failure": res["failure"],
          "final_target_offset": round(float(off[-1]), 4), "t_converged": res["t_converged"]}


def summarize_log(seg_dirs: list[Path], scenario=None) -> dict:
  """Frames, the share of controlsd's cycles with lateral control on, the final lateral offset (from the lane the car
  is in), and with a scenario its suite's verdict on the drive (scenario_verdict)."""
  from tools.lib.logreader import LogReader
  frames = engaged = cc = 0
  final_offset = None
  poses: list[tuple[float, float, float, float]] = []
  for d in seg_dirs:
    for ev in LogReader(d / "rlog.zst", strict=False):
      w = ev.which()
      if w == "groundTruth":
        frames += 1
        g = ev.groundTruth
        final_offset = float(g.lateralOffset)
        pw = list(g.poseWorld)
        if len(pw) >= 2:
          poses.append((float(g.frameTime), float(pw[0]), float(pw[1]), float(g.roadS)))
      elif w == "carControl":
        cc += 1
        engaged += bool(ev.carControl.latActive)
  out = {"frames": frames, "carControl": cc, "engaged_share": round(engaged / cc, 3) if cc else 0.0,
         "final_lateral_offset": final_offset}
  if scenario is not None and poses:
    out.update(scenario_verdict(scenario, poses))
  return out


@tool_main
def main(argv: list[str] | None = None) -> int:
  from cereal import messaging
  from selfdrive.manager import Manager, ManagerProcess
  ap = make_parser("python -m tools.sim.run", __doc__)
  ap.add_argument("--scenario", default=None, help="a scenario name from tools/sim/scenarios.py (default: random world)")
  ap.add_argument("--duration", type=float, default=30.0, help="seconds of simulated driving")
  ap.add_argument("--model-dir", type=Path, default=None, help="model pair (default: modeld's shipped model)")
  ap.add_argument("--log-root", type=Path, default=None,
                  help="loggerd root (default $WORLDPILOT_LOG_ROOT or ~/.worldpilot/realdata)")
  add_common_args(ap, seed=0, seed_help="random world seed (when no --scenario)")
  args = ap.parse_args(argv)
  if args.duration <= 0:
    ap.error("--duration must be > 0")
  from modeld.model_runner import DrivingModel, ModelLoadError
  from modeld.modeld import DEFAULT_MODEL_DIR
  from selfdrive.loggerd import default_log_root
  model_dir = args.model_dir or DEFAULT_MODEL_DIR
  try:
    spec = DrivingModel(model_dir).frame_spec
  except ModelLoadError as e:
    print(f"error: --model-dir: {e}", file=sys.stderr)
    return 1
  scenario = None
  if args.scenario is not None:
    from tools.sim.bridge import find_scenario
    try:
      scenario = find_scenario(args.scenario)
    except ValueError as e:
      ap.error(str(e))
  log_root = args.log_root or default_log_root()
  bridge_args = ["--duration", str(args.duration), "--realtime",
                 "--camera", bridge_camera(spec)]
  bridge_args += ["--scenario", args.scenario] if args.scenario else ["--seed", str(args.seed)]
  procs = [ManagerProcess("modeld", "modeld.modeld", args=("--model-dir", str(model_dir)), restart=False),
           ManagerProcess("controlsd", "selfdrive.controls.controlsd", restart=False),
           ManagerProcess("loggerd", "selfdrive.loggerd", args=("--root", str(log_root)), restart=False),
           ManagerProcess("calibration", "tools.sim.run", function="calibration", restart=False),
           ManagerProcess("bridge", "tools.sim.bridge", args=tuple(bridge_args), restart=False)]
  prefix = f"sim{uuid.uuid4().hex[:8]}"
  manager = Manager(procs, prefix)
  existing = set(log_root.glob("*--*")) if log_root.exists() else set()
  stop = StopFlag()
  manager.start_all()
  bridge = procs[-1]
  codes: dict = {}
  try:
    last_state = 0.0
    while not stop:
      manager.check()
      if time.monotonic() - last_state > 0.5:
        manager.publish_state()
        last_state = time.monotonic()
      if bridge.exit_code is not None:
        break
      dead = [p.name for p in procs[:-1] if p.exit_code is not None]
      if dead:
        cloudlog.error("tools.sim.run: %s exited; stopping", dead)
        break
      time.sleep(0.1)
  finally:
    codes = manager.stop_all()
    messaging.cleanup_prefix(prefix)
  segs = sorted(set(log_root.glob("*--*")) - existing)
  result = {"scenario": args.scenario or f"random_{args.seed}", "model_dir": str(model_dir), "exit_codes": codes,
            "log": [str(s) for s in segs], **(summarize_log(segs, scenario) if segs else {})}
  emit_result(result)
  ok = codes.get("bridge") == 0 and all(codes.get(n) == 0 for n in ("modeld", "controlsd", "loggerd"))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
