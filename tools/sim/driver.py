"""A "human" driver for data generation: pure-pursuit lane keeping on the true lane centre plus human-like
imperfection, speed keeping with IDM lead following, and lane changes announced with openpilot's desire.

Imperfections (all parameters in HumanDriverConfig):
* slow weave: an Ornstein-Uhlenbeck process on the lateral target (std `weave_std`, time `weave_tau`);
* drift and correction: now and then (`drift_rate` per s) the driver stops correcting for `drift_dur`
  seconds while a small curvature bias accumulates an offset, then snaps back with a higher gain;
* steering noise: OU noise on the commanded curvature;
* speed changes: the cruise speed is redrawn every `speed_change_every` s; IDM follows a lead car;
* lane changes on multi-lane roads every `lane_change_every` s on average: a smooth (cosine) lateral reference
  over `lane_change_dur` s, over once the car is within `lane_change_done` m of the new lane's centre. The logged
  desire is laneChangeLeft/Right from the decision until the car's centre enters the new lane
  (tools.sim.scenarios.lane_change_done, the rule of the suites); the driver settles in it with desire none.
"""
from dataclasses import dataclass

import numpy as np

from common.modelconstants import DESIRES, X_IDXS
from tools.sim.scenarios import lane_change_done
from tools.sim.world import idm_accel

DESIRE_NONE, DESIRE_LEFT, DESIRE_RIGHT = DESIRES.index("none"), DESIRES.index("laneChangeLeft"), DESIRES.index("laneChangeRight")


@dataclass
class HumanDriverConfig:
  lookahead_time: float = 1.1        # s, pure-pursuit preview
  min_lookahead: float = 9.0         # m
  weave_std: float = 0.18            # m
  weave_tau: float = 5.0             # s
  drift_rate: float = 1 / 25.0       # drift episodes per second
  drift_dur: tuple = (1.5, 3.5)      # s
  drift_curv: float = 6e-4           # 1/m, bias while drifting
  curv_noise_std: float = 1.2e-4     # 1/m
  curv_noise_tau: float = 0.6        # s
  cruise: tuple = (17.0, 31.0)       # m/s, range of cruise speeds
  speed_change_every: float = 20.0   # s, mean
  lane_change_every: float = 25.0    # s, mean (multi-lane roads)
  lane_change_dur: tuple = (4.0, 6.5)  # s
  lane_change_done: float = 0.3      # m
  accel_gain: float = 0.4            # 1/s, speed error -> accel

  def wandering(self, factor: float) -> "HumanDriverConfig":
    """The same driver with its lateral imperfections (weave, drift bias, steering noise) scaled by `factor`: data
    with more varied ego motion for world models, which must see how the view moves when the car steers."""
    if not factor > 0:
      raise ValueError(f"wander factor must be > 0, got {factor}")
    from dataclasses import replace
    return replace(self, weave_std=self.weave_std * factor, drift_curv=self.drift_curv * factor,
                   curv_noise_std=self.curv_noise_std * factor)


def pure_pursuit_curvature(path_y: np.ndarray, lookahead: float) -> float:
  """Curvature (+ left) to reach the path point at distance `lookahead` (car frame, y right)."""
  y = float(np.interp(lookahead, X_IDXS, path_y))
  return -2.0 * y / (lookahead ** 2 + y ** 2)


class HumanDriver:
  def __init__(self, seed: int, cfg: HumanDriverConfig | None = None):
    self.cfg = cfg or HumanDriverConfig()
    self.rng = np.random.default_rng([seed, 606])
    self.weave = 0.0
    self.curv_noise = 0.0
    self.drift_left = 0.0
    self.drift_sign = 1.0
    self.v_cruise = float(self.rng.uniform(*self.cfg.cruise))
    self.desire = DESIRE_NONE        # the logged desire
    self.changing = False            # a lane change is under way (it outlasts its desire)
    self.target_lane: int | None = None
    self.lc_t = 0.0
    self.lc_dur = 5.0
    self.lc_start_offset = 0.0
    # the first change comes after a settling time (5 s, or the mean interval if that is shorter) plus an exponential wait
    self.t_next_lc = float(self.rng.exponential(self.cfg.lane_change_every)) + min(5.0, self.cfg.lane_change_every)

  def step(self, gt: dict, road, world, t: float, dt: float, v: float, a_now: float) -> tuple[float, float]:
    """One control step from the current ground truth -> (desired curvature, desired accel)."""
    c, rng = self.cfg, self.rng
    # --- noise processes ---
    k = np.exp(-dt / c.weave_tau)
    self.weave = self.weave * k + c.weave_std * np.sqrt(1 - k * k) * rng.standard_normal()
    k = np.exp(-dt / c.curv_noise_tau)
    self.curv_noise = self.curv_noise * k + c.curv_noise_std * np.sqrt(1 - k * k) * rng.standard_normal()
    if self.drift_left <= 0 and not self.changing and rng.random() < c.drift_rate * dt:
      self.drift_left = float(rng.uniform(*c.drift_dur)); self.drift_sign = float(rng.choice([-1.0, 1.0]))
    if rng.random() < dt / c.speed_change_every:
      self.v_cruise = float(rng.uniform(*c.cruise))
    # --- lane change decision ---
    lane = gt["_lane"]
    if self.target_lane is None:
      self.target_lane = lane
    if not self.changing and road.n_lanes > 1 and t >= self.t_next_lc:
      options = [l for l in (lane - 1, lane + 1) if 0 <= l < road.n_lanes and world.gap_free(l, gt["road_s"])]
      if not options:
        self.t_next_lc = t + 2.0          # the neighbouring lanes are busy: look again in a moment
      else:
        new = int(rng.choice(options))
        self.desire = DESIRE_LEFT if new < lane else DESIRE_RIGHT
        self.changing = True
        self.target_lane = new
        self.lc_t, self.lc_dur = 0.0, float(rng.uniform(*c.lane_change_dur))
        self.lc_start_offset = gt["_d"] - float(road.lane_center_d(new))
        self.drift_left = 0.0
    # --- lateral reference: offset from the target lane centre we aim for ---
    ref = self.weave
    if self.changing:
      self.lc_t += dt
      frac = min(self.lc_t / self.lc_dur, 1.0)
      ref = self.lc_start_offset * 0.5 * (1 + np.cos(np.pi * frac))
      tgt_off = gt["_d"] - float(road.lane_center_d(self.target_lane))
      if lane_change_done(tgt_off, road.lane_width):
        self.desire = DESIRE_NONE
      if frac >= 1.0 and abs(tgt_off) < c.lane_change_done:
        self.changing, self.desire = False, DESIRE_NONE
        self.t_next_lc = t + float(rng.exponential(c.lane_change_every)) + min(4.0, c.lane_change_every)
    L = max(c.min_lookahead, c.lookahead_time * v)
    # path of the target lane, shifted by the reference offset (y right)
    path_y = gt["path"][:, 1] + ref
    curv = pure_pursuit_curvature(path_y, L)
    if self.drift_left > 0:
      self.drift_left -= dt
      curv = 0.25 * curv + 0.75 * float(road.kappa_at(gt["road_s"] + L)) + self.drift_sign * c.drift_curv
    curv += self.curv_noise
    # --- longitudinal: cruise speed, IDM on a lead in the target lane ---
    lead = gt["lead"]
    a_cruise = c.accel_gain * (self.v_cruise - v)
    if lead[0] > 0.5:
      a = min(a_cruise, idm_accel(v, self.v_cruise, lead[1] - 2.0, -lead[3]))
    else:
      a = a_cruise
    return float(curv), float(np.clip(a, -4.0, 2.0))
