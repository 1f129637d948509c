"""Ground-truth simulator (`--sim procedural`): the procedural world the segment was generated in (tools.sim, rebuilt
from camera.json's seed) renders the true frame at the car's deviated pose, straight into the policy's model frame
(the camera tools.sim.convergence uses for a model), and the expert is the lane-centre plan: a smooth return
(simulator.return_plan) to the centre of the target lane (tools.sim.ground_truth's `path`).

The upper bound of the three simulators and the check that the learner works: if a policy cannot learn to converge
here, the fault is in the learner, not in the world model.

Differences from the logged drive, on purpose: no traffic is simulated (the lateral task does not depend on it and
the ego car, driven by the policy, could drive through logged cars); the camera is rigid (no mount shake).
Lane changes: the desire (logged, or synthetic: Deviation.lane_change starts one towards an existing neighbour lane)
is kept until the car's centre enters the target lane (tools.sim.scenarios.lane_change_done, as in the suites); the
expert's plan goes on to the target lane's centre.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from common.modelconstants import DESIRES
from common.transformations.camera import model_frame_camera
from tools.sim.ground_truth import compute_ground_truth
from tools.sim.render import Renderer
from tools.sim.road import RoadConfig
from tools.sim.scenarios import lane_change_done
from tools.sim.world import TrafficConfig, World, WorldConfig
from training.onpolicy.simulator import RETURN_SPEED, RETURN_TIME, SUBSTEPS, ReferencePathSimulator


def generated_world(seed: int, duration_s: float) -> World:
  """The world tools.sim.generate built for a segment of this seed and duration, without traffic."""
  road = RoadConfig(length=duration_s * 35.0 + 400.0)
  return World(seed, WorldConfig(road=road, traffic=TrafficConfig(enabled=False)))


class ProceduralSimulator(ReferencePathSimulator):
  name = "procedural"
  any_speed = True       # the world renders any pose at any time; only the speed profile comes from the log
  lane_change_mode = "target"
  lane_change_modes = ("target",)

  def __init__(self, frame_spec: dict, vehicle=None, seed: int = 0, cache_worlds: int = 8,
               return_time: float = RETURN_TIME,
               return_speed: float | None = RETURN_SPEED, share: ProceduralSimulator | None = None):
    super().__init__(frame_spec, vehicle, seed, return_time, return_speed)
    fs = self.frame_spec
    self.camera = model_frame_camera(int(fs["width"]), int(fs["height"]), float(fs["focal"]))
    self.cache_worlds = cache_worlds
    # seed -> (world, renderer); building a renderer takes seconds. `share`: an actor's other episode slots use the
    # worlds this one built (their camera is the same model frame; they draw a world's sensor noise from one stream)
    if share is not None and share.frame_spec != self.frame_spec:
      raise ValueError(f"share: its frame {share.frame_spec} is not this simulator's {self.frame_spec}")
    self._worlds: OrderedDict = OrderedDict() if share is None else share._worlds

  def max_steps(self, seg, frame: int) -> int:
    """Steps to the end of the log: the world renders any pose, and the expert needs from the log only its speed
    profile, whose last value is held where the log ends (simulator.logged_speeds). So the short segments the
    extractor trains on can start episodes here, which the log-bound simulators cannot."""
    return max(0, (len(seg) - 1 - frame) // SUBSTEPS)

  def _world(self, seed: int, duration: float):
    key = (seed, round(duration))
    if key not in self._worlds:
      world = generated_world(seed, round(duration))
      self._worlds[key] = (world, Renderer(world.road, world.appearance, self.camera, seed=seed))
      while len(self._worlds) > self.cache_worlds:
        self._worlds.popitem(last=False)
    self._worlds.move_to_end(key)
    return self._worlds[key]

  def _start(self) -> None:
    seg = self.seg
    if seg.seed is None:
      raise ValueError(f"{seg.path / 'camera.json'}: no world 'seed'; the procedural simulator needs a generated segment")
    self.world, self.renderer = self._world(seg.seed, seg.duration)
    road = self.world.road
    self.s_guess = float(seg.gt["road_s"][self.frame0]) if "road_s" in seg.gt else None
    # target lane: the logged one (its centre is the logged `path` at x = 0), or a synthetic lane change
    x, y, _ = self.car_pose()
    _, d = road.world_to_frenet(np.array([[x, y]]), self.s_guess)
    d_log = float(d[0]) - self.dev.lateral
    path_y0 = float(seg.gt["path"][self.frame0, 0, 1]) if "path" in seg.gt else 0.0
    self.target_lane = int(np.clip(road.lane_of(d_log + path_y0), 0, road.n_lanes - 1))
    if self.dev.lane_change:
      lane = int(road.lane_of(float(d[0])))
      tgt = lane + self.dev.lane_change
      if 0 <= tgt < road.n_lanes:
        self.target_lane = tgt
        self.desire = DESIRES.index("laneChangeLeft" if self.dev.lane_change < 0 else "laneChangeRight")

  def _observe(self):
    st = self.vehicle.state
    gt = compute_ground_truth(self.world, st, self.k * 0.2, self.desire, self.target_lane, s_guess=self.s_guess)
    self.s_guess = gt["road_s"]
    self.gt = gt
    if self.desire and lane_change_done(gt["_target_offset"], gt["lane_width"]):
      self.desire = 0
    img = self.renderer.render(gt["pose_world"], [])
    path = gt["path"]                                    # (IDX_N, 3) target lane centre, car frame
    return img, path[:, :2], path[:, 2], float(gt["_target_offset"])
