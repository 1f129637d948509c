"""Gymnasium-style closed-loop environment at 20 Hz.

    env = SimEnv(camera=model_frame_camera(256, 128, 455.0))   # or camera=None: no rendering (fast)
    obs = env.reset(scenario)                                  # a tools.sim.scenarios.Scenario
    obs, info = env.step((desired_curvature, desired_accel))

The action is executed like on a car: inverse vehicle model (curvature -> steering-wheel angle at the
current speed), then the actuator delay + lag and the dynamic bicycle of tools/sim/vehicle.py.
observation = {"image": (H, W, 3) RGB uint8 or None, "v_ego": m/s, "desire": int, "steering_angle": rad,
"t": s}; info = the frame's ground truth (tools/sim/ground_truth.py) plus "off_road" / "lane_departure".
A lane change's desire ends with the first frame whose car centre is inside the target lane
(tools.sim.scenarios.lane_change_done): that frame's observation, info and `env.desire` all carry desire 0, so every
harness (the suites, the bridge, model replay) gives the policy and the log the same desire for the same frame.
"""
import numpy as np

from common.modelconstants import MODEL_FREQ
from common.transformations.camera import CameraConfig
from tools.sim.ground_truth import compute_ground_truth
from tools.sim.render import Renderer
from tools.sim.scenarios import Scenario, lane_change_done
from tools.sim.vehicle import SimVehicle, VehicleConfig
from tools.sim.world import World

DT = 1.0 / MODEL_FREQ


class SimEnv:
  def __init__(self, camera: CameraConfig | None = None, vehicle: VehicleConfig | None = None, noise: bool = True):
    self.camera, self.vehicle_cfg, self.noise = camera, vehicle, noise
    self.world: World | None = None
    self.renderer: Renderer | None = None
    self.vehicle: SimVehicle | None = None

  def reset(self, scenario: Scenario) -> dict:
    self.scenario = scenario
    self.world = World(scenario.seed, scenario.world_config(), ego_s0=scenario.s0, ego_speed=scenario.speed,
                       scenery_seed=scenario.scenery_seed)
    road = self.world.road
    s0 = scenario.s0
    d0 = float(road.lane_center_d(scenario.start_lane(road))) + scenario.lateral_offset
    p = road.frenet_to_world(s0, d0)
    psi = float(road.psi_at(s0)) + scenario.heading_error
    self.vehicle = SimVehicle(self.vehicle_cfg)
    self.vehicle.reset(float(p[0]), float(p[1]), psi, scenario.speed, float(road.kappa_at(s0)), DT)
    self.target_lane = scenario.target_lane(road)
    self.desire = scenario.desire
    self.t = 0.0
    self.s = s0
    if self.camera is not None:
      self.renderer = Renderer(road, self.world.appearance, self.camera, seed=scenario.appearance_seed,
                               noise=self.noise)
    return self._observe()

  def _observe(self) -> dict:
    st = self.vehicle.state
    gt = compute_ground_truth(self.world, st, self.t, self.desire, self.target_lane, s_guess=self.s)
    self.s = gt["road_s"]
    road = self.world.road
    el, er = road.edge_d
    gt["off_road"] = not (el <= gt["_d"] <= er)
    gt["lane_departure"] = abs(gt["_target_offset"]) > road.lane_width / 2   # car centre outside its (target) lane
    if self.scenario.lane_change and self.desire and lane_change_done(gt["_target_offset"], road.lane_width):
      self.desire = gt["desire"] = 0       # in the target lane: the lane change's desire is over from this frame
    if self.s > road.s[-1] - 240.0:
      raise ValueError(f"SimEnv: scenario {self.scenario.name} ran past the end of its road (s = {self.s:.0f} m of "
                       f"{road.s[-1]:.0f} m); make its duration shorter or its road longer")
    self.gt = gt
    img = None
    if self.renderer is not None:
      img = self.renderer.render(gt["pose_world"], self.world.car_boxes(self.s - 10, self.s + 400))
    return {"image": img, "v_ego": st.v, "desire": self.desire, "steering_angle": st.steer, "t": self.t}

  def step(self, action) -> tuple[dict, dict]:
    """action = (desired curvature 1/m + left, desired acceleration m/s^2)."""
    curv, accel = (float(a) for a in action)
    if not (np.isfinite(curv) and np.isfinite(accel)):
      raise ValueError(f"SimEnv.step: non-finite action {action}")
    return self.step_steering(self.vehicle.steer_for_curvature(curv), accel)

  def step_steering(self, steer_rad: float, accel: float) -> tuple[dict, dict]:
    """Like step() but with a steering-wheel angle (rad, + left), as carControl sends it."""
    self.vehicle.step(float(steer_rad), float(accel), DT)
    self.world.step(DT, ego=(self.s, self.gt["_d"], self.vehicle.state.v))
    self.t += DT
    obs = self._observe()
    return obs, self.gt

  @property
  def info(self) -> dict:
    return self.gt
