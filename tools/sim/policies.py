"""Driving policies for the closed-loop environment: `policy(observation, info) -> (desired_curvature,
desired_accel)` plus `reset()`. `observation` and `info` are what tools/sim/env.py returns (info = the
current frame's ground truth; only the reference controllers read it, a model sees only the image).

Reference controllers (used to validate the convergence suites):
* PerfectPolicy: pure pursuit on the true centre line of the target lane (ground truth `path`).
* StraightPolicy: always commands zero curvature -> cannot follow a curve.
* BiasedPolicy: a PI lane keeper on a car whose steering pulls right (a constant curvature bias): it
  recovers from offsets on the right and overshoots out of the lane (to the right) from offsets on the left.
* ModelPolicy(model_dir): an exported driving model run through modeld.model_runner.DrivingModel.
"""

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

  def __init__(self, model_dir: str):
    from modeld.model_runner import DrivingModel  # lazy: only this policy needs modeld
    self.model = DrivingModel(model_dir, runtime="onnxruntime")
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
    out = self.model.run(obs["image"], float(obs["v_ego"]), int(obs["desire"]))
    act = out["action"]
    return float(act["desiredCurvature"]), float(act["desiredAcceleration"])


def make_policy(name: str):
  if name == "perfect":
    return PerfectPolicy()
  if name == "straight":
    return StraightPolicy()
  if name == "biased":
    return BiasedPolicy()
  return ModelPolicy(name)
