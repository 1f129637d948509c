"""Driving policies for the closed-loop environment: `policy(observation, info) -> (desired_curvature,
desired_accel)` plus `reset()`. `observation` and `info` are what tools/sim/env.py returns (info = the
current frame's ground truth; only the reference controllers read it, a model sees only the image).

Reference controllers (used to validate the convergence suites):
* PerfectPolicy: pure pursuit on the true centre line of the target lane (ground truth `path`).
* StraightPolicy: always commands zero curvature -> cannot follow a curve.
* BiasedPolicy: a PI lane keeper on a car whose steering pulls right (a constant curvature bias): it
  recovers from offsets on the right and overshoots out of the lane (to the right) from offsets on the left.
* ModelPolicy(model_dir): an exported driving model run through modeld.model_runner.DrivingModel.

ControlsPolicy(policy) steers any of them through controlsd's logic in-process (selfdrive/controls/controlsd.Controls:
openpilot's curvature limits, the inverse vehicle model, the steering-angle rate limit), 5 steps of 10 ms per 20 Hz
frame as on a car. With ModelPolicy(model_dir, nv12=True) (the frames as VisionIPC carries them) it is the in-process
twin of driving through the stack (tools/sim/stack.py), without its processes.
"""

import numpy as np

from tools.sim.driver import pure_pursuit_curvature


class PerfectPolicy:
  name = "perfect"

  def __init__(self, lookahead_time: float = 0.9, min_lookahead: float = 10.0):
    self.lookahead_time, self.min_lookahead = lookahead_time, min_lookahead

  def reset(self) -> None:
    pass

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    L = max(self.min_lookahead, self.lookahead_time * obs["v_ego"])
    return pure_pursuit_curvature(info["path"][:, 1], L), 0.0


class StraightPolicy:
  name = "straight"

  def reset(self) -> None:
    pass

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    return 0.0, 0.0


class BiasedPolicy(PerfectPolicy):
  """A PI lane keeper (pure pursuit with a fixed 35 m preview + an integral of the lateral error, the
  integral's gain scaled with speed^2, like a lateral-acceleration PID) on a car whose steering pulls to
  the RIGHT: a constant curvature bias `bias` (1/m) is subtracted from every command, as a steering-angle
  offset would. The integrator cancels the bias in steady state, but transients that carry the car right
  are amplified: from an offset on the LEFT the integrator winds up in the bias' direction and the car
  overshoots out of the lane to the right; offsets on the right recover."""
  name = "biased"

  def __init__(self, bias_curvature: float = 3.0e-3, lookahead: float = 35.0, ki: float = 1.0e-3,
               v_ref: float = 30.0, dt: float = 0.05):
    super().__init__(0.0, lookahead)
    self.bias, self.ki, self.v_ref, self.dt = bias_curvature, ki, v_ref, dt
    self.integral = 0.0

  def reset(self) -> None:
    self.integral = 0.0

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    curv, accel = super().__call__(obs, info)
    err = -float(info["path"][0, 1])                                  # lateral error, + = car right of the path
    self.integral += err * self.dt * (obs["v_ego"] / self.v_ref) ** 2
    return curv + self.ki * self.integral - self.bias, accel


class ModelPolicy:
  """An exported model directory (driving_vision.onnx + driving_policy.onnx) through modeld's runner.
  The simulator camera has zero calibration, so the env renders straight into the model frame."""
  name = "model"

  def __init__(self, model_dir: str, nv12: bool = False):
    """nv12: each frame makes VisionIPC's NV12 round trip first (chroma at half resolution), as modeld receives it."""
    from modeld.model_runner import DrivingModel  # lazy: only this policy needs modeld
    self.model = DrivingModel(model_dir, runtime="onnxruntime")
    self.nv12 = nv12
    spec = self.model.frame_spec
    for k in ("width", "height", "focal"):
      if k not in spec:
        raise ValueError(f"ModelPolicy: {model_dir} frame_spec lacks {k!r}: {spec}")
    self.frame_spec = spec

  def camera(self):
    from common.transformations.camera import model_frame_camera
    return model_frame_camera(int(self.frame_spec["width"]), int(self.frame_spec["height"]), float(self.frame_spec["focal"]))

  def reset(self) -> None:
    self.model.reset()

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    if obs["image"] is None:
      raise ValueError("ModelPolicy needs rendered frames: create the env with the model's camera")
    img = obs["image"]
    if self.nv12:
      from cereal.visionipc import nv12_to_rgb, rgb_to_nv12
      img = nv12_to_rgb(rgb_to_nv12(img), img.shape[1], img.shape[0])
    out = self.model.run(img, float(obs["v_ego"]), int(obs["desire"]))
    act = out["action"]
    return float(act["desiredCurvature"]), float(act["desiredAcceleration"])


class _FrameMessages:
  """The two messages controlsd reads, as a SubMaster holds them (seen / recv_time / valid / [service])."""

  def __init__(self, car_state, model, now: float):
    self.data = {"carState": car_state, "modelV2": model}
    self.seen = {"carState": True, "modelV2": True}
    self.recv_time = {"carState": now, "modelV2": now}
    self.valid = {"carState": True, "modelV2": True}

  def __getitem__(self, service: str):
    return self.data[service]


class ControlsPolicy:
  """Wraps a policy (obs, info) -> (desired curvature, accel): each frame its curvature goes out as modelV2's action
  and controlsd's Controls.update turns it into a steering-wheel angle over `steps` control steps of 10 ms (engaged,
  fed the frame's carState). Returns (steering-wheel angle rad, accel): the env executes it like the stack's
  carControl (env.step_steering)."""
  outputs_steering = True

  def __init__(self, policy, car: str | None = None, steps: int = 5):
    from selfdrive.controls.vehicle_model import DEFAULT_CAR
    if steps < 1:
      raise ValueError(f"ControlsPolicy: steps must be >= 1, got {steps}")
    self.policy, self.car, self.steps = policy, car or DEFAULT_CAR, int(steps)
    # None: a frame's first control step uses the previous frame's model output, the other 4 its own, as on a car; a
    # harness replaying a drive through the stack sets it per frame to the frame ids its steps used
    # (StackPolicy.step_model_frames)
    self.step_model_frames: list[int] | None = None
    self.name = f"{getattr(policy, 'name', 'policy')}+controlsd"
    self.controls = None

  def camera(self):
    return self.policy.camera()

  def reset(self) -> None:
    from selfdrive.controls.controlsd import Controls
    from selfdrive.controls.vehicle_model import get_car_params
    self.policy.reset()
    self.controls = Controls(get_car_params(self.car))
    self.now, self.frame_id = 0.0, 0
    self.models: dict = {}                       # frame id -> this drive's modelV2 messages, the last 8
    self.desired_curvature: list[float] = []     # after controlsd's limits, the last control step of each frame

  def __call__(self, obs: dict, info: dict) -> tuple[float, float]:
    from cereal.messaging import new_message
    from selfdrive.controls.controlsd import DT_CTRL
    from tools.sim.messages import car_state_message
    if self.controls is None:
      raise RuntimeError("ControlsPolicy: call reset() before the first frame")
    curv, accel = self.policy(obs, info)
    v = float(obs["v_ego"])
    self.frame_id += 1
    cs = car_state_message(v, float(info["accel"]), float(obs["steering_angle"]), float(info["curvature"]) * v,
                           int(obs["desire"]), v_cruise=v, cruise_enabled=True)
    model = new_message("modelV2", valid=True)
    model.modelV2.frameId = self.frame_id
    model.modelV2.action.desiredCurvature = float(curv)
    self.models[self.frame_id] = model
    self.models.pop(self.frame_id - 8, None)
    replay = self.step_model_frames
    for k in range(self.steps):
      if replay is not None:       # the frame id whose model output this step uses, as a stack drive reported it
        m = self.models[replay[k]]
      else:                        # the frame's first step still has the previous frame's output, as on a car
        m = self.models.get(self.frame_id - 1, model) if k == 0 else model
      out = self.controls.update(self.now, _FrameMessages(cs.carState, m.modelV2, self.now))
      self.now += DT_CTRL
    self.desired_curvature.append(out.desired_curvature)
    # carControl carries the angle as a float32 (disengaged: the measured angle, as carControl holds it)
    return float(np.radians(np.float32(out.steer_angle_deg))), accel


def make_policy(name: str, nv12: bool = False):
  """A reference controller by name, or the model directory `name` (nv12: see ModelPolicy)."""
  if name == "perfect":
    return PerfectPolicy()
  if name == "straight":
    return StraightPolicy()
  if name == "biased":
    return BiasedPolicy()
  return ModelPolicy(name, nv12=nv12)
