"""A seeded world: road + appearance + traffic. Traffic cars keep their lane and follow the car ahead in
it with the Intelligent Driver Model (they do not react to the ego car)."""
from dataclasses import dataclass, field

import numpy as np

from tools.sim.render import Appearance, CarBox, random_appearance
from tools.sim.road import Road, RoadConfig, generate_road

CAR_COLORS = ((180, 30, 30), (30, 60, 150), (220, 220, 220), (40, 40, 45), (150, 150, 155), (200, 170, 40),
              (30, 110, 60), (110, 20, 30))


@dataclass
class TrafficConfig:
  enabled: bool = True
  lead_prob: float = 0.6                   # chance of a lead car in the ego lane
  lead_gap: tuple = (25.0, 80.0)           # m ahead at the start
  cars_per_km_lane: tuple = (2.0, 12.0)    # density in the other lanes
  speed: tuple = (18.0, 32.0)              # m/s desired speeds


@dataclass
class WorldConfig:
  road: RoadConfig = field(default_factory=RoadConfig)
  traffic: TrafficConfig = field(default_factory=TrafficConfig)


@dataclass
class TrafficCar:
  lane: int
  s: float
  v: float
  v0: float         # desired speed
  a: float = 0.0
  length: float = 4.6
  width: float = 1.85
  height: float = 1.5
  color: tuple = (180, 30, 30)
  weave_phase: float = 0.0


def idm_accel(v: float, v0: float, gap: float, dv: float, a_max: float = 1.5, b: float = 2.0,
              T: float = 1.4, s0: float = 4.0) -> float:
  """Intelligent Driver Model acceleration; dv = v - v_lead (closing speed), gap = bumper-to-bumper m."""
  s_star = s0 + max(0.0, v * T + v * dv / (2 * np.sqrt(a_max * b)))
  return a_max * (1 - (v / max(v0, 0.1)) ** 4 - (s_star / max(gap, 0.1)) ** 2)


class World:
  def __init__(self, seed: int, cfg: WorldConfig | None = None, ego_s0: float = 30.0, ego_speed: float = 25.0,
               scenery_seed: int | None = None):
    """scenery_seed: draw the look (appearance, roadside objects, curbs, line colour) from this seed instead of
    `seed`; the road's geometry and the traffic stay those of `seed`."""
    self.seed, self.cfg = seed, cfg or WorldConfig()
    self.scenery_seed = seed if scenery_seed is None else scenery_seed
    self.road: Road = generate_road(seed, self.cfg.road, scenery_seed=scenery_seed)
    self.appearance: Appearance = random_appearance(self.scenery_seed)
    self.rng = np.random.default_rng([seed, 505])
    self.cars: list[TrafficCar] = []
    if self.cfg.traffic.enabled:
      self._spawn(ego_s0, ego_speed)

  def _spawn(self, ego_s0: float, ego_speed: float) -> None:
    tc, road, rng = self.cfg.traffic, self.road, self.rng
    for lane in range(road.n_lanes):
      if lane == road.ego_lane:
        if rng.random() < tc.lead_prob:
          v0 = float(np.clip(ego_speed + rng.uniform(-6, 3), 8, 35))
          self.cars.append(TrafficCar(lane, ego_s0 + rng.uniform(*tc.lead_gap), v0 * 0.95, v0,
                                      color=CAR_COLORS[rng.integers(len(CAR_COLORS))]))
        continue
      density = rng.uniform(*tc.cars_per_km_lane) / 1000.0
      s = ego_s0 - 150 + rng.exponential(1 / density)
      v0 = float(rng.uniform(*tc.speed))
      while s < road.s[-1] - 50:
        if abs(s - ego_s0) > 12:
          self.cars.append(TrafficCar(lane, s, v0, float(v0 + rng.uniform(-2, 2)),
                                      color=CAR_COLORS[rng.integers(len(CAR_COLORS))],
                                      weave_phase=float(rng.uniform(0, 2 * np.pi))))
        s += max(rng.exponential(1 / density), 15.0)

  def step(self, dt: float, ego: tuple | None = None) -> None:
    """Advance traffic by dt with IDM car following inside each lane. `ego` = (s, d, v) of the ego car:
    traffic in the ego's lane follows it instead of driving through it."""
    ego_car = None
    if ego is not None:
      ego_car = TrafficCar(int(self.road.lane_of(ego[1])), float(ego[0]), float(ego[2]), float(ego[2]))
    for lane in range(self.road.n_lanes):
      cars = sorted([c for c in self.cars if c.lane == lane] + ([ego_car] if ego_car and ego_car.lane == lane else []),
                    key=lambda c: c.s)
      for i, c in enumerate(cars):
        if c is ego_car:
          continue
        if i + 1 < len(cars):
          ahead = cars[i + 1]
          c.a = idm_accel(c.v, c.v0, ahead.s - c.s - (ahead.length + c.length) / 2, c.v - ahead.v)
        else:
          c.a = idm_accel(c.v, c.v0, 1e4, 0.0)
      for c in cars:
        if c is not ego_car:
          c.v = max(0.0, c.v + c.a * dt)
          c.s += c.v * dt
    self.cars = [c for c in self.cars if c.s < self.road.s[-1] - 5]

  def gap_free(self, lane: int, s: float, behind: float = 20.0, ahead: float = 30.0) -> bool:
    """No traffic car in `lane` between s - behind and s + ahead (lane-change check)."""
    return not any(c.lane == lane and s - behind < c.s < s + ahead for c in self.cars)

  def car_d(self, c: TrafficCar) -> float:
    return float(self.road.lane_center_d(c.lane))

  def car_boxes(self, s_min: float, s_max: float) -> list[CarBox]:
    out = []
    for c in self.cars:
      if s_min < c.s < s_max:
        center = self.road.frenet_to_world(c.s, self.car_d(c))
        out.append(CarBox(center=center, yaw=float(self.road.psi_at(c.s)), length=c.length, width=c.width,
                          height=c.height, color=c.color))
    return out
