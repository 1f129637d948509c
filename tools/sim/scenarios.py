"""The closed-loop test scenarios and their pass criteria, in one place (paper §6, convergence tests).

LANE-KEEP suite (24): initial lateral offset {-1.0, -0.5, +0.5, +1.0} m x initial heading error
{0, -2, +2} deg x road {straight, left curve of radius 300 m}; speed alternates 15 / 30 m/s. The car
starts in the middle lane of a 3-lane road (lanes 3.6 m, no traffic) and runs 20 s.
  PASS: |offset from the start lane's centre| <= 0.3 m from some time on until the end of the run,
        and the car's centre never leaves that lane (|offset| <= lane_width / 2 at all times).

LANE-CHANGE suite (20): direction {left, right} x road {straight, curve R=300 m} x 5 variants of
(speed, initial offset, initial heading): (15, 0, 0), (30, 0, 0), (15, +0.4, 0), (30, -0.4, 0),
(15 for left / 30 for right, 0, +1 deg). Same 3-lane road, start in the middle lane; the desire
(laneChangeLeft / laneChangeRight) is set at t = 0 and held until the car's centre enters the target
lane (lane_change_done); from there the policy keeps the new lane on its own. Runs 15 s.
  PASS: the car is within 0.3 m of the target lane's centre from some time t <= 10 s until the end,
        and never leaves the road (the car's centre stays between the road edges).

Offsets are positive to the RIGHT, heading errors positive = pointing right (tools/sim/ground_truth.py).

SCENERY SEED. Each scenario's geometry (road shape, lanes, shoulders, start state) is fixed by the scenario; its
scenery (colours, lighting, textures, markings' colour and wear, curbs, roadside objects, sensor noise) comes from
`scenery_seed`. `get_suite(name, seed=0)` gives every suite's own scenery (the results reported so far); any other
seed draws each scenario's scenery from (seed, scenario index) instead, so a policy can be checked on worlds it
never saw with the same pass criteria.
"""
from dataclasses import dataclass, replace

import numpy as np

from common.modelconstants import DESIRES
from tools.sim.road import RoadConfig
from tools.sim.world import TrafficConfig, WorldConfig

LANE_WIDTH = 3.6
N_LANES = 3
START_LANE = 1
CURVE_RADIUS = 300.0
CONVERGED_TOL = 0.3          # m
LANE_CHANGE_DEADLINE = 10.0  # s
SUITES = ("lane-keep", "lane-change")


def lane_change_done(target_offset: float, lane_width: float) -> bool:
  """Whether a lane change's desire is over: the car's centre is inside the target lane. The same rule wherever a
  desire is dropped (the suites, the bridge, model replay, the human driver's log, the ground-truth simulator), so a
  desire always means "the target lane is the neighbour on that side" and never "settle in the lane you are in",
  which a policy could not tell from the start of a new lane change."""
  return abs(float(target_offset)) < 0.5 * float(lane_width)


@dataclass(frozen=True)
class Scenario:
  name: str
  suite: str
  road_shape: str              # "straight" | "curve"
  speed: float                 # m/s
  lateral_offset: float = 0.0  # m, + right of the start lane centre
  heading_error: float = 0.0   # rad, + pointing right
  lane_change: int = 0         # -1 left, +1 right, 0 keep lane
  duration: float = 20.0       # s
  seed: int = 0                # world seed (geometry draws; also the scenery unless scenery_seed is set)
  s0: float = 60.0             # m, start position along the road
  scenery_seed: int | None = None  # seed of the scenery only (appearance, roadside objects); None = seed

  @property
  def appearance_seed(self) -> int:
    return self.seed if self.scenery_seed is None else self.scenery_seed

  @property
  def desire(self) -> int:
    return {0: DESIRES.index("none"), -1: DESIRES.index("laneChangeLeft"), 1: DESIRES.index("laneChangeRight")}[self.lane_change]

  def start_lane(self, road) -> int:
    return START_LANE

  def target_lane(self, road) -> int:
    return START_LANE + self.lane_change

  def world_config(self) -> WorldConfig:
    length = self.s0 + self.speed * self.duration + 400.0
    if self.road_shape == "straight":
      profile = ((0.0, length + 1, 0.0, 0.0),)
    elif self.road_shape == "curve":
      k = 1.0 / CURVE_RADIUS   # left curve; it is already fully developed at s0
      profile = ((0.0, 20.0, 0.0, k), (20.0, length + 1, k, k))
    else:
      raise ValueError(f"Scenario {self.name}: unknown road_shape {self.road_shape!r}")
    road = RoadConfig(length=length, n_lanes=N_LANES, ego_lane=START_LANE, lane_width_fixed=LANE_WIDTH,
                      curvature_profile=profile, flat=True)
    return WorldConfig(road=road, traffic=TrafficConfig(enabled=False))


def lane_keep_suite() -> list[Scenario]:
  out, i = [], 0
  for shape in ("straight", "curve"):
    for off in (-1.0, -0.5, 0.5, 1.0):
      for hd in (0.0, -2.0, 2.0):
        speed = 15.0 if i % 2 == 0 else 30.0
        out.append(Scenario(f"keep_{shape}_off{off:+.1f}_hd{hd:+.0f}_v{speed:.0f}", "lane-keep", shape, speed,
                            off, float(np.radians(hd)), 0, 20.0, seed=i))
        i += 1
  return out


def lane_change_suite() -> list[Scenario]:
  out, i = [], 0
  for direction, dname in ((-1, "left"), (1, "right")):
    for shape in ("straight", "curve"):
      variants = ((15.0, 0.0, 0.0), (30.0, 0.0, 0.0), (15.0, 0.4, 0.0), (30.0, -0.4, 0.0),
                  (15.0 if direction < 0 else 30.0, 0.0, 1.0))
      for speed, off, hd in variants:
        out.append(Scenario(f"change_{dname}_{shape}_v{speed:.0f}_off{off:+.1f}_hd{hd:+.0f}", "lane-change", shape,
                            speed, off, float(np.radians(hd)), direction, 15.0, seed=100 + i))
        i += 1
  return out


def scenery_seed(seed: int, suite: str, index: int) -> int:
  """Scenery seed of scenario `index` of `suite` under suite seed `seed` (seed 0 is never passed here)."""
  return int(np.random.default_rng([seed, SUITES.index(suite), index, 1717]).integers(0, 2 ** 31 - 1))


def get_suite(name: str, seed: int = 0) -> list[Scenario]:
  """The scenarios of suite `name`; seed != 0 redraws every scenario's scenery (not its geometry) from that seed."""
  if name == "lane-keep":
    suite = lane_keep_suite()
  elif name == "lane-change":
    suite = lane_change_suite()
  else:
    raise ValueError(f"unknown suite {name!r}; choose from {SUITES}")
  if seed < 0:
    raise ValueError(f"suite seed must be >= 0, got {seed}")
  if seed == 0:
    return suite
  return [replace(sc, scenery_seed=scenery_seed(seed, name, i)) for i, sc in enumerate(suite)]


def evaluate(scenario: Scenario, t: np.ndarray, target_offset: np.ndarray, lane_width: float,
             off_road: np.ndarray) -> dict:
  """Apply the pass criterion of the scenario's suite to a run's trace (offset from the target lane's
  centre, per step). Returns passed, max and final |offset| and the convergence time (None if never)."""
  t, e, off_road = np.asarray(t), np.abs(np.asarray(target_offset)), np.asarray(off_road, bool)
  outside = np.flatnonzero(e > CONVERGED_TOL)
  # first index from which the car stays within the tolerance until the end
  k = 0 if len(outside) == 0 else outside[-1] + 1
  t_conv = float(t[k]) if k < len(t) else None
  if scenario.suite == "lane-keep":
    left_lane = bool(np.any(e > lane_width / 2))
    passed = t_conv is not None and not left_lane
    fail = None if passed else ("left the lane" if left_lane else "never settled")
  else:
    left_road = bool(np.any(off_road))
    passed = t_conv is not None and t_conv <= LANE_CHANGE_DEADLINE and not left_road
    fail = None if passed else ("left the road" if left_road else "not settled within 10 s")
  return {"name": scenario.name, "passed": bool(passed), "max_offset": float(e.max()), "final_offset": float(target_offset[-1]),
          "t_converged": t_conv, "failure": fail}
