"""The deployed stack driving the simulator: modeld + controlsd (+ loggerd) as processes under selfdrive/manager,
fed through VisionIPC and cereal exactly as on a car.

  with Stack(model_dir, log_root=...) as stack:          # starts the daemons under a fresh messaging prefix
    policy = StackPolicy(stack, camera)                  # a tools.sim policy: obs -> steering-wheel angle
    tools.sim.convergence.run_scenario(policy, scenario, camera)

StackPolicy is the bridge in lockstep: per frame it publishes carState, drivingDesire, roadCameraState +
roadCameraInfo and liveCalibration, sends the frame through VisionIPC and waits for modeld's modelV2 of that frame;
controlsd runs with `--lockstep`, one control step per carState, and the bridge sends the frame's carState 5 times
in all (once with the frame, 4 times after modelV2), each time waiting for that step's carControl, so controlsd takes
the 5 steps of 10 ms per frame a car's 100 Hz carState gives it, whatever the wall time. It returns the steering-wheel
angle of the 5th. The simulator's camera is mounted with zero calibration, which it publishes as liveCalibration (on
a car, calibrationd estimates it). Lockstep means simulated time is not wall time, so controlsd runs with longer
modelV2/carState timeouts (its limits are unchanged).
"""
from __future__ import annotations

import math
import os
import time
import uuid
from pathlib import Path

import numpy as np

VIPC_NAME = "camerad"
# How a drive through the stack compares with the same drive in-process (the stated tolerance of
# `tools.sim.convergence --through-stack`). Its in-process twin is `--controls` (tools/sim/policies.ControlsPolicy:
# controlsd's Controls, 5 steps per frame, the same carState per step); plain in-process runs skip controlsd and its
# limits (lateral jerk 5 / v^2 1/m per s, lateral acceleration 3 m/s^2, angle rate). Differences by design: the
# stack sees NV12 frames (chroma at half resolution), and the first of a frame's 5 control steps still uses the
# previous frame's modelV2 (as on a car, where the model's output arrives after the frame). Stated: on the same frames
# the same steering angle as `--controls` (float32; tests/tools/sim/test_through_stack.py), and the same pass/fail
# verdicts. Closed loop the traces part slowly (a float32 rounding becomes another rendered pixel), so compare_runs'
# trace tolerance (TRACE_ABS_TOL + TRACE_REL_TOL * |offset|) holds only in some scenarios: on the shipped model 23/24
# lane-keep verdicts agreed and 9/24 traces stayed within it (docs/experiments.md, 2026-12-04, the deployed stack).
TRACE_ABS_TOL = 0.05      # m
TRACE_REL_TOL = 0.05
LANE_HALF_WIDTH = 1.75    # m: |offset| beyond this = the car left its lane
LOCKSTEP_MODEL_TIMEOUT = 5.0      # s: controlsd's model and carState timeouts while the simulator waits for the stack
START_TIMEOUT_S = 180.0           # s: the daemons' start-up (imports, model load) on a loaded machine
WARMUP_FRAME_ID = 1_000_000       # warm-up frames count from here: far ahead of any drive's, so a drive is a restart
CONTROL_STEPS_PER_FRAME = 5       # controlsd's 100 Hz steps per 20 Hz camera frame


def stack_processes(model_dir: Path | None, log_root: Path | None, model_timeout: float | None = LOCKSTEP_MODEL_TIMEOUT,
                    runtime: str | None = None):
  from selfdrive.manager import ManagerProcess
  md_args = (["--model-dir", str(model_dir)] if model_dir else []) + (["--runtime", runtime] if runtime else [])
  ctl_args = ["--model-timeout", str(model_timeout), "--carstate-timeout", str(model_timeout), "--lockstep"] \
    if model_timeout else []
  procs = [ManagerProcess("modeld", "modeld.modeld", args=tuple(md_args), restart=False),
           ManagerProcess("controlsd", "selfdrive.controls.controlsd", args=tuple(ctl_args), restart=False)]
  if log_root is not None:
    procs.append(ManagerProcess("loggerd", "selfdrive.loggerd", args=("--root", str(log_root)), restart=False))
  return procs


class Stack:
  """modeld + controlsd (+ loggerd) under the manager, on a messaging prefix of their own."""

  def __init__(self, model_dir: Path | None = None, log_root: Path | None = None, prefix: str | None = None,
               model_timeout: float | None = LOCKSTEP_MODEL_TIMEOUT, runtime: str | None = None):
    from cereal import messaging
    from selfdrive.manager import Manager
    self.prefix = prefix or f"simstack{uuid.uuid4().hex[:8]}"
    self.messaging = messaging
    os.environ[messaging.PREFIX_ENV] = self.prefix          # this process' sockets join the stack's prefix
    self.logging = log_root is not None
    self.manager = Manager(stack_processes(model_dir, log_root, model_timeout, runtime), self.prefix)

  def subscribers(self, service: str) -> int:
    """How many of the stack's daemons subscribe to `service`."""
    from cereal.services import SERVICE_LIST
    from modeld.modeld import subscribed_services
    from selfdrive.controls.controlsd import SUBSCRIBED_SERVICES
    return int(service in subscribed_services()) + int(service in SUBSCRIBED_SERVICES) + \
      int(self.logging and SERVICE_LIST[service].should_log)

  def __enter__(self) -> "Stack":
    self.manager.start_all()
    return self

  def check(self) -> None:
    """RuntimeError if a daemon has exited."""
    for p in self.manager.procs:
      if p.proc is not None and p.proc.poll() is not None:
        raise RuntimeError(f"{p.name} exited with code {p.proc.returncode}")

  def __exit__(self, *exc) -> None:
    self.manager.stop_all()
    self.messaging.cleanup_prefix(self.prefix)


class StackPolicy:
  """A tools.sim policy that asks the running stack: returns (steering-wheel angle rad, accel) -- see
  module docstring. `engaged` / `frames` count the frames on which controlsd had lateral control."""
  name = "stack"
  outputs_steering = True

  def __init__(self, stack: Stack, camera, step_timeout: float = 30.0):
    from cereal import messaging
    from cereal.visionipc import VisionIpcServer, VisionStreamType
    self.stack, self.camera, self.step_timeout = stack, camera, step_timeout
    self.m = messaging
    self.vipc = VisionIpcServer(VIPC_NAME)
    self.stream = VisionStreamType.VISION_STREAM_ROAD
    self.vipc.create_buffers(self.stream, 4, camera.width, camera.height)
    self.vipc.start_listener()
    self.pm = messaging.PubMaster(["carState", "drivingDesire", "roadCameraState", "roadCameraInfo", "liveCalibration"],
                                  track_subscribers=True)
    self.sm = messaging.SubMaster(["carControl", "controlsStateExtra", "modelV2"], track_connection=True)
    self.frame_id = 0
    self.engaged = self.frames = 0
    # per frame of the drive: the frame id of the modelV2 each of its 5 control steps used (the first step the
    # previous frame's; more of them when the daemon's socket had not yet delivered a modelV2 that the bridge already
    # had, a race on a loaded machine). ControlsPolicy.step_model_frames replays it.
    self.step_model_frames: list[list[int]] = []
    try:
      self._wait_until_listening()
    except BaseException:
      self.close()
      raise

  def _wait_until_listening(self) -> None:
    """Lockstep runs each frame once, so nothing of a frame may be lost to a connection still being set up: wait
    until modeld is registered for frames, every daemon has subscribed to what this bridge publishes, and this
    bridge is connected to controlsd; then drive warm-up frames until controlsd uses modelV2 of one (the
    modeld -> controlsd link). The first drive's reset() restarts the frame ids, which clears modeld's history."""
    deadline = time.monotonic() + START_TIMEOUT_S

    def left() -> float:
      self.stack.check()
      if time.monotonic() > deadline:
        raise RuntimeError(f"the stack did not start within {START_TIMEOUT_S:.0f} s (waiting for {waiting})")
      return deadline - time.monotonic()

    waiting = "modeld to register for camera frames"
    while self.vipc.num_clients(self.stream) == 0:
      left()
      time.sleep(0.02)
    counts = {s: self.stack.subscribers(s) for s in self.pm.sock}
    waiting = f"the daemons to subscribe to {counts}"
    while self.pm.wait_for_subscribers(min(1.0, left()), counts):
      pass
    waiting = "connections to controlsd's carControl and controlsStateExtra and modeld's modelV2"
    while self.sm.wait_connected(min(1.0, left())):
      pass
    waiting = "controlsd to use modelV2 of a warm-up frame"
    black = np.zeros((self.camera.height, self.camera.width, 3), np.uint8)
    while self.sm["controlsStateExtra"].modelFrameId < WARMUP_FRAME_ID:
      self.frame_id = max(self.frame_id + 1, WARMUP_FRAME_ID)
      self._send_frame(self.frame_id, black, v=0.0, accel=0.0, steer=0.0, yaw_rate=0.0, desire=0, enabled=False)
      t_sent = time.monotonic()
      while self.sm["controlsStateExtra"].modelFrameId < WARMUP_FRAME_ID and time.monotonic() - t_sent < 0.5:
        left()
        self.sm.update(10)

  def reset(self) -> None:
    # a new drive: frame ids restart at 1 (far behind the last drive's: modeld takes it as a camera restart and
    # clears its history); one disengaged carState makes controlsd start again from the measured steering angle
    self.frame_id = 0
    self.engaged = self.frames = 0
    self.step_model_frames = []
    self._send_car_state(0.0, 0.0, 0.0, 0.0, 0, enabled=False)
    self._wait(lambda: not self.sm["carControl"].latActive and self.sm.updated["carControl"], "a disengaged carControl")

  def _send_car_state(self, v, a, steer, yaw_rate, desire, enabled=True) -> None:
    from tools.sim.messages import car_state_message
    self.pm.send("carState", car_state_message(v, a, steer, yaw_rate, desire, v_cruise=v, cruise_enabled=enabled))

  def _wait(self, cond, what: str) -> None:
    t0 = time.monotonic()
    while True:
      self.sm.update(10)
      if cond():
        return
      if time.monotonic() - t0 > self.step_timeout:
        self.stack.check()
        raise RuntimeError(f"the stack did not answer frame {self.frame_id} within {self.step_timeout:.0f} s "
                           f"(waiting for {what})")

  def _wait_step(self, what: str, model_frame: int | None = None) -> None:
    """Wait for one control step's carControl and controlsStateExtra (and modelV2 of `model_frame`)."""
    got = {"carControl": False, "controlsStateExtra": False, "modelV2": model_frame is None}

    def done() -> bool:
      for s in ("carControl", "controlsStateExtra"):
        got[s] |= self.sm.updated[s]
      got["modelV2"] |= self.sm.updated["modelV2"] and self.sm["modelV2"].frameId == model_frame
      return all(got.values())

    self._wait(done, what)

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    if obs["image"] is None:
      raise ValueError("StackPolicy needs rendered frames: create the env with a camera")
    i = self.frame_id = self.frame_id + 1
    v = float(obs["v_ego"])
    state = (v, float(info["accel"]), float(obs["steering_angle"]), float(info["curvature"]) * v, int(obs["desire"]))
    # the carState sent with the frame is control step 1, which has the previous frame's modelV2 (as on a car); a
    # drive's first frame has none of its own drive, so it engages on the 5 steps after its modelV2 (ControlsPolicy too)
    first = i == 1
    self._send_frame(i, obs["image"], *state, enabled=not first)
    self._wait_step(f"modelV2 of frame {i} and control step 1", model_frame=i)
    used = [] if first else [int(self.sm["controlsStateExtra"].modelFrameId)]
    for k in range(1 if first else 2, CONTROL_STEPS_PER_FRAME + 1):
      self._send_car_state(*state)
      self._wait_step(f"control step {k}")
      used.append(int(self.sm["controlsStateExtra"].modelFrameId))
    self.step_model_frames.append(used)
    cc = self.sm["carControl"]
    self.frames += 1
    self.engaged += bool(cc.latActive)
    return math.radians(float(cc.actuators.steeringAngleDeg)), 0.0

  def _send_frame(self, i: int, image: np.ndarray, v: float, accel: float, steer: float, yaw_rate: float, desire: int,
                  enabled: bool = True) -> None:
    """One camera frame with the messages that belong to it, the messages first."""
    from cereal.visionipc import rgb_to_nv12
    from tools.sim.messages import camera_messages, driving_desire_message
    self._send_car_state(v, accel, steer, yaw_rate, desire, enabled=enabled)
    self.pm.send("drivingDesire", driving_desire_message(desire, "sim"))
    m = self.m.new_message("liveCalibration")
    m.liveCalibration.rpyCalib, m.liveCalibration.calStatus = [0.0, 0.0, 0.0], "calibrated"
    self.pm.send("liveCalibration", m)
    ns = time.monotonic_ns()
    cam = self.camera
    cam_msg, info_msg = camera_messages(i, ns, ns, cam.width, cam.height, cam.width, cam.intrinsics)
    self.pm.send("roadCameraInfo", info_msg)
    self.pm.send("roadCameraState", cam_msg)
    time.sleep(0.002)   # the messages above travel before the frame announcement (modeld reads them per frame)
    self.vipc.send(self.stream, rgb_to_nv12(image), i, ns, ns)

  def close(self) -> None:
    self.vipc.close()
    self.pm.close()
    self.sm.close()


def model_camera(model_dir):
  """The camera whose frames are already the model's frame (what the in-process ModelPolicy renders)."""
  from tools.sim.policies import ModelPolicy
  return ModelPolicy(str(model_dir)).camera()


def compare_runs(in_process: dict, through_stack: dict) -> dict:
  """Scenario-by-scenario agreement of two run_suite / run_scenario summaries of the same scenarios: verdicts, the
  offset traces while the in-process car is in its lane against the stated tolerance (TRACE_ABS_TOL + TRACE_REL_TOL *
  |offset|), and the time each first left its lane (|offset| > LANE_HALF_WIDTH)."""
  a_list = in_process.get("scenarios", [in_process])
  b_list = through_stack.get("scenarios", [through_stack])
  by_name = {r["name"]: r for r in a_list}

  def departure(t, off):
    out = np.flatnonzero(np.abs(off) > LANE_HALF_WIDTH)
    return float(t[out[0]]) if out.size else None

  rows = []
  for b in b_list:
    a = by_name[b["name"]]
    ta, tb = np.array(a["trace"]["offset"]), np.array(b["trace"]["offset"])
    t = np.array(a["trace"]["t"])
    da, db = departure(t, ta), departure(t, tb)
    n = min(len(ta), len(tb))
    if da is not None:
      n = min(n, int(np.searchsorted(t, da)) + 1)
    excess = np.abs(ta[:n] - tb[:n]) - (TRACE_ABS_TOL + TRACE_REL_TOL * np.abs(ta[:n]))
    rows.append({"name": b["name"], "same_verdict": a["passed"] == b["passed"], "in_process": a["passed"],
                 "through_stack": b["passed"], "max_offset_diff_in_lane": float(np.max(np.abs(ta[:n] - tb[:n]))),
                 "within_tolerance": bool(np.all(excess <= 0)),
                 "departure_s": (da, db), "departure_diff_s": None if da is None or db is None else abs(da - db)})
  dd = [r["departure_diff_s"] for r in rows if r["departure_diff_s"] is not None]
  return {"scenarios": len(rows), "same_verdicts": sum(r["same_verdict"] for r in rows),
          "within_tolerance": sum(r["within_tolerance"] for r in rows),
          "max_departure_diff_s": max(dd) if dd else None, "rows": rows}
