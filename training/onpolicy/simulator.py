"""The simulator interface of on-policy training (paper §3, §5.1): reset from a logged window, step with the
policy's action, get the next camera frame in the policy's model frame and the expert's plan for the state
actually reached. Three implementations share it (the learner cannot tell them apart):

  sim_procedural.ProceduralSimulator    ground truth: the procedural world renders the true frame; expert = lane centre
  sim_reprojective.ReprojectiveSimulator  the logged frame re-projected to the deviated pose; expert = logged path
  sim_worldmodel.WorldModelSimulator    the DiT generates the frame; expert = its Plan Head

Conventions common to all three (stated once here):
  * Time. One simulator step is 0.2 s: the world model's 5 Hz (common.modelconstants.WORLD_MODEL_FREQ). The policy's
    action (desired curvature, desired acceleration) is HELD for the 0.2 s and executed by the simulated car in
    SUBSTEPS = 4 sub-steps at 20 Hz (the rate of modeld and controls): inverse vehicle model (curvature -> steering
    angle at the current speed), actuator delay and lag, dynamic bicycle (tools/sim/vehicle.SimVehicle on
    selfdrive/controls/vehicle_model.py, the model the controls use). Consecutive observations are therefore 0.2 s
    apart, exactly the policy's frame-stack gap and its temporal-history stride, so a rollout's observations are
    the policy's inputs without resampling.
  * Pose. The car lives in the logged segment's world frame (NED x/y, yaw + right, ground_truth/pose_world): the
    logged pose at the reset frame plus the injected deviation, then wherever the actions take it.
  * Deviations (Deviation): an initial lateral offset and heading error added to the logged pose, and noise added to
    the EXECUTED curvature (an Ornstein-Uhlenbeck process, std `curvature_noise` 1/m, time constant `noise_tau_s`),
    the paper's noise-forced rollouts; the policy's own errors add the rest. The learner never sees the noise: it
    learns from the expert's labels at the states the noisy execution reaches. Simulators that render any pose at any
    time (`any_speed`: the procedural one, and the world model, which follows the log by position then) also take an
    initial speed: the car starts at it and the expert drives the logged speed profile shifted by the difference, so
    the states cover speeds the logs rarely hold. Synthetic lane changes (Deviation.lane_change): the desire is set
    and held until the car's centre is in the target lane (tools.sim.scenarios.lane_change_done, the suites' rule).
    The procedural world makes the neighbour lane on the desire's side the target; the log-bound simulators
    (reprojective, world model), whose frames and expert follow the logged lane, either start the car one lane over
    from it on the other side, so that the logged lane is the target ("start"), or keep the car in the logged lane
    and shift the reference one lane toward the desire ("shift": the suites' start, the car centred in its lane with
    only the desire asking for the change; the world model's Plan Head gets its anchor moved one lane over).
    `lane_change_mode`; either only where the segment's ground truth shows that lane, and not while the logged
    driver changes lanes.
  * Expert. A plan (IDX_N, PLAN_WIDTH) on T_IDXS in the current car frame. For the two geometric simulators it is
    `return_plan`: a smooth return from the car's pose to a reference path (the lane centre / the logged path), a
    critically damped lateral error y_ref(x) - y(x) = (e0 + (e0' + e0/L) x) exp(-x/L) with L = T(v) * v
    (>= MIN_RETURN_DIST), T(v) = RETURN_TIME * max(1, v / RETURN_SPEED), driven at the LOGGED speed profile (the
    human's longitudinal behaviour, leads included), starting along the car's course (its velocity, which a
    cornering car's sideslip turns off its heading). The return slows with speed because the closed loop through
    the policy lags more at speed: with a fixed 0.8 s the policies learnt it and oscillated about the centre at
    30 m/s (docs/experiments.md, 2026-12-04, the expert's return at speed).
    The expert action is derived from the expert plan by common.drive_helpers.action_from_plan, the code controls
    use to turn a plan into a command.
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from common.drive_helpers import action_from_plan
from common.modelconstants import (
  DESIRES,
  IDX_N,
  MODEL_FREQ,
  PLAN_SLICES,
  PLAN_WIDTH,
  T_IDXS,
  WORLD_MODEL_FREQ,
)
from tools.sim.scenarios import lane_change_done
from tools.sim.vehicle import SimVehicle, VehicleConfig

SIM_DT = 1.0 / WORLD_MODEL_FREQ          # s per simulator step (0.2)
SUBSTEPS = MODEL_FREQ // WORLD_MODEL_FREQ  # 20 Hz vehicle sub-steps per simulator step (4)
SUB_DT = 1.0 / MODEL_FREQ
RETURN_TIME = 0.8                        # s: the expert's return distance is this many seconds of driving ...
RETURN_SPEED = 15.0                      # m/s: ... up to this speed; above it the time grows in proportion to speed
MIN_RETURN_DIST = 12.0                   # m
MAX_OFFSET = 2.5                         # m farther from the reference than at the reset: the episode ends


@dataclass
class Deviation:
  lateral: float = 0.0            # m, + = car to the RIGHT of the logged pose
  heading: float = 0.0            # rad, + = pointing right
  curvature_noise: float = 0.0    # 1/m, std of the OU noise added to the executed curvature
  noise_tau_s: float = 1.0
  lane_change: int = 0            # -1 / +1 = a lane change to that side (desire set; how: Simulator.lane_change_mode)
  speed: float | None = None      # m/s, simulators with any_speed only: the initial speed (None = the logged one)

  @staticmethod
  def sample(rng: np.random.Generator, max_lateral: float = 1.2, max_heading_deg: float = 3.0,
             curvature_noise: float = 1e-3, lane_change_prob: float = 0.0,
             speed_range: tuple[float, float] | None = None) -> Deviation:
    lc = 0
    if rng.random() < lane_change_prob:
      lc = -1 if rng.random() < 0.5 else 1
    dev = Deviation(float(rng.uniform(-max_lateral, max_lateral)),
                    float(np.radians(rng.uniform(-max_heading_deg, max_heading_deg))), curvature_noise, 1.0, lc)
    if speed_range is not None:      # drawn last, so runs without it draw what they always drew
      dev.speed = float(rng.uniform(*check_speed_range(speed_range)))
    return dev


def check_speed_range(speed_range) -> tuple[float, float]:
  """(low, high) m/s of the initial speeds Deviation.sample draws; ValueError unless 0 <= low <= high."""
  if len(speed_range) != 2 or not 0 <= speed_range[0] <= speed_range[1]:
    raise ValueError(f"speed_range {tuple(speed_range)}: expected two speeds 0 <= low <= high (m/s)")
  return float(speed_range[0]), float(speed_range[1])


@dataclass
class Observation:
  image: np.ndarray               # (H, W, 3) uint8 in the policy's model frame
  v_ego: float                    # m/s
  desire: int
  expert_plan: np.ndarray         # (IDX_N, PLAN_WIDTH) float32, current car frame
  expert_action: np.ndarray       # (2,) desired curvature (1/m, + left), desired acceleration
  lateral_offset: float           # m from the expert's reference path, + = car right of it
  t: float                        # s since reset
  done: bool = False


@dataclass
class LoggedSegment:
  """A generated segment prepared for the simulators: frames in the policy's model frame, the logged world poses,
  speeds, desires and plans (training.policy.data), its ground truth and the world seed of its camera.json."""
  path: Path
  frames: np.ndarray              # (N, H, W, 3) uint8 model frames
  pose_world: np.ndarray          # (N, 6) camera x y z roll pitch yaw (NED, rad)
  v_ego: np.ndarray               # (N,)
  desire: np.ndarray              # (N,) int
  plan: np.ndarray                # (N, IDX_N, PLAN_WIDTH) logged future in each frame's car frame
  plan_valid: np.ndarray          # (N, IDX_N)
  gt: dict = field(repr=False, default_factory=dict)
  seed: int | None = None         # world seed (tools.sim.generate), None if unknown
  camera: dict | None = None

  def __len__(self) -> int:
    return len(self.v_ego)

  @property
  def duration(self) -> float:
    return len(self) / MODEL_FREQ


def load_logged_segment(path, policy_cfg, cache_dir: Path | None = None) -> LoggedSegment:
  """Read a generated segment (video + ground_truth/ + camera.json) for simulation; ValueError naming the file when
  it lacks what the simulators need."""
  from tools.lib.segment import Segment
  from training.policy.data import load_segment
  path = Path(path)
  data = load_segment(path, policy_cfg, cache_dir)
  seg = Segment(path)
  gt = seg.ground_truth
  if gt is None or "pose_world" not in gt:
    raise ValueError(f"{path / 'ground_truth'}: missing; the simulators start from the logged world pose "
                     f"(ground_truth/pose_world of a generated segment)")
  cam_path = path / "camera.json"
  cam = json.loads(cam_path.read_text()) if cam_path.exists() else None
  seed = int(cam["seed"]) if cam is not None and "seed" in cam else None
  return LoggedSegment(path, data.frames, np.asarray(gt["pose_world"], np.float64), data.v_ego.astype(np.float64),
                       data.desire, data.plan, data.plan_valid, gt, seed, cam)


# ---------------------------------------------------------------- the expert's smooth return

def check_return(return_time: float, return_speed: float | None) -> None:
  """ValueError unless 0 < return_time < 60 s and return_speed is None or > 0 m/s."""
  if not 0 < return_time < 60:
    raise ValueError(f"return_time {return_time}: expected seconds in (0, 60)")
  if return_speed is not None and not return_speed > 0:
    raise ValueError(f"return_speed {return_speed}: expected a speed > 0 m/s, or none for a fixed return time")


def return_plan(ref_xy: np.ndarray, speeds: np.ndarray, ref_z: np.ndarray | None = None,
                return_time: float = RETURN_TIME, return_speed: float | None = RETURN_SPEED,
                course: float = 0.0) -> np.ndarray:
  """Expert plan (IDX_N, PLAN_WIDTH) in the car frame: return smoothly from the car (origin, heading 0) to the
  reference path `ref_xy` (M, 2) (car-frame x forward, y right; x increasing), driven at `speeds` (IDX_N,) m/s on
  T_IDXS. See the module docstring for the shape of the return.

  course: the direction the car moves in, from its heading (rad, + right): its sideslip (VehicleState.course). A
  cornering car does not move along its heading (about -0.2 deg at 3 m/s^2 and 30 m/s for the default car), so the
  return starts along the course, and the plan's headings are the car's (the sideslip held): a return that starts
  along the heading would hold the car off the reference by about 2 x sideslip x return distance, where that
  return's own correction cancels the course it does not see (0.25 m on the suites' 30 m/s curves)."""
  ref_xy = np.asarray(ref_xy, np.float64)
  cos_c, sin_c = np.cos(course), np.sin(course)
  if course:     # into the course frame: x along the car's velocity
    ref_xy = np.stack([ref_xy[:, 0] * cos_c + ref_xy[:, 1] * sin_c, -ref_xy[:, 0] * sin_c + ref_xy[:, 1] * cos_c], 1)
  speeds = np.maximum(np.asarray(speeds, np.float64), 0.0)
  dist = np.concatenate([[0.0], np.cumsum(0.5 * (speeds[1:] + speeds[:-1]) * np.diff(T_IDXS))])   # (IDX_N,) m
  v0 = float(speeds[0])
  T = return_time * max(1.0, v0 / return_speed) if return_speed else return_time
  L = max(MIN_RETURN_DIST, T * v0)
  order = np.argsort(ref_xy[:, 0])
  rx, ry = ref_xy[order, 0], ref_xy[order, 1]
  xs, y_ref = smooth_reference(rx, ry, dist[-1] * 1.2 + 20.0)    # padded: derivatives at x = 0 are central
  dy_ref = np.gradient(y_ref, xs)
  e0, de0 = float(np.interp(0.0, xs, y_ref)), float(np.interp(0.0, xs, dy_ref))
  xp = np.maximum(xs, 0.0)
  y = y_ref - (e0 + (de0 + e0 / L) * xp) * np.exp(-xp / L)
  y[xs < 0] = y_ref[xs < 0] - e0 - de0 * xs[xs < 0]                # the car's own straight line behind it
  dy = np.gradient(y, xs)
  ddy = np.gradient(dy, xs)
  s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(xs), np.diff(y)))])
  s -= np.interp(0.0, xs, s)
  x_t = np.interp(dist, s, xs)
  y_t = np.interp(x_t, xs, y)
  slope = np.interp(x_t, xs, dy)
  kappa_r = np.interp(x_t, xs, ddy / (1 + dy ** 2) ** 1.5)      # + = turning right (yaw about z-down grows)
  yaw = np.arctan(slope)
  accel = np.gradient(speeds, T_IDXS)
  plan = np.zeros((IDX_N, PLAN_WIDTH))
  P, V, A = PLAN_SLICES["position"].start, PLAN_SLICES["velocity"].start, PLAN_SLICES["acceleration"].start
  O, R = PLAN_SLICES["orientation"].start, PLAN_SLICES["orientation_rate"].start
  plan[:, P], plan[:, P + 1] = x_t, y_t
  if ref_z is not None:
    plan[:, P + 2] = np.interp(x_t, rx, np.asarray(ref_z, np.float64)[order])
  c, sn = np.cos(yaw), np.sin(yaw)
  plan[:, V], plan[:, V + 1] = speeds * c, speeds * sn
  a_lat = speeds ** 2 * kappa_r
  plan[:, A], plan[:, A + 1] = accel * c - a_lat * sn, accel * sn + a_lat * c
  plan[:, O + 2] = yaw
  plan[:, R + 2] = speeds * kappa_r
  if course:     # back to the car frame; the headings (course-frame tangent angles) are the car's already
    for k in (P, V, A):
      x, y = plan[:, k].copy(), plan[:, k + 1].copy()
      plan[:, k], plan[:, k + 1] = x * cos_c - y * sin_c, x * sin_c + y * cos_c
  return plan


def smooth_reference(rx: np.ndarray, ry: np.ndarray, x_max: float, dx: float = 0.5, sigma: float = 3.0):
  """Reference y(x) on a 0.5 m grid over [-2 sigma, x_max + 2 sigma], Gaussian-smoothed (sigma metres) so that its first and
  second derivatives (heading, curvature) are not the kinks of a linearly interpolated polyline. The start is extended by the
  quadratic of its first 15 m, the end linearly, before smoothing."""
  pad = 4 * sigma
  xs = np.arange(-pad, x_max + pad + dx, dx)
  y = np.interp(xs, rx, ry)
  lo, hi = xs < rx[0], xs > rx[-1]
  near = rx <= rx[0] + 15.0
  if near.sum() >= 3:       # before the start: the quadratic through the first 15 m (keeps the curvature at x = 0)
    y[lo] = np.polyval(np.polyfit(rx[near] - rx[0], ry[near], 2), xs[lo] - rx[0])
  if len(rx) >= 2:
    k_hi = (ry[-1] - ry[-2]) / max(rx[-1] - rx[-2], 1e-6)
    y[hi] = ry[-1] + k_hi * (xs[hi] - rx[-1])
  k = np.arange(-pad, pad + dx / 2, dx)
  w = np.exp(-0.5 * (k / sigma) ** 2)
  ys = np.convolve(y, w / w.sum(), mode="same")
  keep = (xs >= -pad / 2) & (xs <= x_max + pad / 2)     # away from the convolution's edges
  return xs[keep], ys[keep]


def logged_speeds(plan: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """(IDX_N,) forward speed of a logged plan, the last valid value held where the log ends."""
  v = np.hypot(plan[:, PLAN_SLICES["velocity"].start], plan[:, PLAN_SLICES["velocity"].start + 1]).astype(np.float64)
  ok = np.flatnonzero(valid)
  if len(ok) == 0:
    return np.full(IDX_N, v[0])
  v[ok[-1] + 1:] = v[ok[-1]]
  return v


# ---------------------------------------------------------------- the interface

class Simulator(abc.ABC):
  """reset(segment, frame, deviation) -> Observation; step(action) -> Observation (0.2 s later). Subclasses set up
  an episode (`_start`) and observe and label the state the shared vehicle code reaches (`_make_obs`);
  ReferencePathSimulator does the labelling for simulators that know the logged path."""
  name = "base"
  any_speed = False      # whether an episode may start at a speed of its own (Deviation.speed)
  # How a synthetic lane change (Deviation.lane_change) is made. "start": the car starts one lane over from the logged
  # lane, on the side opposite to the desire, and the desire asks for the logged lane, which the expert returns to
  # (simulators whose frames and expert come from the log: the logged lane is one they can show and label).
  # "shift": the car starts in the logged lane and the reference is the logged path shifted one lane toward the
  # desire (reprojective; the world model, whose Plan Head plans to the anchor shifted the same way). "target": the
  # simulator makes the neighbour lane on the desire's side the target (the procedural world, from its own road).
  lane_change_mode = "start"
  lane_change_modes: tuple[str, ...] = ("start",)    # the modes a simulator supports (set_lane_change_mode)

  def __init__(self, frame_spec: dict, vehicle: VehicleConfig | None = None, seed: int = 0):
    self.frame_spec = {k: frame_spec[k] for k in ("width", "height", "focal")}
    self.vehicle_cfg = vehicle
    self.rng = np.random.default_rng([seed, 1717])
    self.seg: LoggedSegment | None = None

  def set_lane_change_mode(self, mode: str) -> None:
    if mode not in self.lane_change_modes:
      raise ValueError(f"{type(self).__name__}: lane change mode {mode!r}; it supports {self.lane_change_modes}")
    self.lane_change_mode = mode

  # ---- what subclasses provide
  @abc.abstractmethod
  def _start(self) -> None:
    """Called by reset after the vehicle is placed: per-episode set-up (world, caches)."""

  @abc.abstractmethod
  def _make_obs(self) -> Observation:
    """The Observation of the current state: the image, and the expert's plan and action for it."""

  # ---- shared
  def max_steps(self, seg: LoggedSegment, frame: int) -> int:
    """Steps a rollout from `frame` can take while the log still has a full 10 s plan ahead."""
    return max(0, (len(seg) - 1 - int(T_IDXS[-1] * MODEL_FREQ) - frame) // SUBSTEPS)

  def reset(self, seg: LoggedSegment, frame: int, deviation: Deviation | None = None) -> Observation:
    dev = deviation or Deviation()
    if not 0 <= frame < len(seg):
      raise ValueError(f"{seg.path}: reset frame {frame} outside 0..{len(seg) - 1}")
    self.seg, self.frame0, self.k, self.dev = seg, int(frame), 0, dev
    x, y, _, _, _, yaw = seg.pose_world[frame]
    right = np.array([-np.sin(yaw), np.cos(yaw)])
    x, y = np.array([x, y]) + dev.lateral * right
    self.vehicle = SimVehicle(self.vehicle_cfg)
    k0 = float(seg.gt["curvature"][frame]) if "curvature" in seg.gt else 0.0
    v0 = float(seg.v_ego[frame])
    self.speed_shift = 0.0           # m/s added to the logged speed profile the expert drives
    if dev.speed is not None:
      if not self.any_speed:
        raise ValueError(f"{type(self).__name__}: frames come from the log, so episodes run at the logged speed "
                         f"(Deviation.speed is for the simulators that render any speed: procedural, world model)")
      self.speed_shift = float(dev.speed) - v0
      v0 = float(dev.speed)
    self.desire = int(seg.desire[frame])
    self.lane_change_width = None    # m: set while a lane change from the logged lane's side is under way
    self.lane_shift = 0.0            # m, + = right: the reference's offset from the logged path ("shift" mode)
    if dev.lane_change and self.lane_change_mode in ("start", "shift"):
      side = int(np.sign(dev.lane_change))
      width = neighbour_lane_width(seg, frame, -side if self.lane_change_mode == "start" else side)
      if width is None:              # this window has no lane there: the episode keeps its lane
        self.dev = dev = replace(dev, lane_change=0)
      else:
        if self.lane_change_mode == "start":
          x, y = np.array([x, y]) - side * width * right
        else:
          self.lane_shift = side * width
        self.desire = DESIRES.index("laneChangeLeft" if side < 0 else "laneChangeRight")
        self.lane_change_width = width
    self.vehicle.reset(float(x), float(y), float(yaw + dev.heading), v0, k0, SUB_DT)
    self.noise = 0.0
    self.max_offset = None
    self._start()
    obs = self._make_obs()
    self.max_offset = abs(obs.lateral_offset) + MAX_OFFSET   # a lane change starts a lane away from its reference
    obs.done = False
    return obs

  @property
  def logged_index(self) -> int:
    """The logged frame at the same time since the reset."""
    return min(self.frame0 + SUBSTEPS * self.k, len(self.seg) - 1)

  def step(self, action) -> Observation:
    """Hold (desired curvature, desired acceleration) for SIM_DT, executed in SUBSTEPS 20 Hz vehicle steps."""
    return step_batch([self], [action])[0]

  def _move(self, action) -> None:
    """The car's SIM_DT under the held action (step's first part: everything before the new frame)."""
    curv, accel = (float(a) for a in action)
    if not (np.isfinite(curv) and np.isfinite(accel)):
      raise ValueError(f"{type(self).__name__}.step: non-finite action {action}")
    a = np.exp(-SUB_DT / self.dev.noise_tau_s)
    for _ in range(SUBSTEPS):
      if self.dev.curvature_noise > 0:
        self.noise = a * self.noise + self.dev.curvature_noise * np.sqrt(1 - a * a) * self.rng.standard_normal()
      self.vehicle.step(self.vehicle.steer_for_curvature(curv + self.noise), accel, SUB_DT)
    self.k += 1

  @classmethod
  def _advance_batch(cls, sims: list) -> None:
    """_advance of several simulators of this class at once (step_batch); the world model batches its networks."""
    for s in sims:
      s._advance()

  def _end_lane_change(self, offset: float) -> None:
    """Subclasses call this with the car's offset from the reference (the logged path, shifted in "shift" mode) before
    they label a state: a synthetic lane change ends (desire none) once the car's centre is inside the target lane,
    the suites' rule (tools.sim.scenarios.lane_change_done)."""
    if self.lane_change_width is not None and lane_change_done(offset, self.lane_change_width):
      self.desire = 0
      self.lane_change_width = None

  def _advance(self) -> None:
    """Called once per step after the car moved (the world model generates its frame here)."""

  def _expert_speeds(self) -> np.ndarray:
    """(IDX_N,) the speeds every expert drives: the logged speed profile at logged_index, shifted by the episode's
    speed shift."""
    i = self.logged_index
    return logged_speeds(self.seg.plan[i], self.seg.plan_valid[i]) + self.speed_shift

  def _log_return(self, ref: np.ndarray, ref_z: np.ndarray | None = None) -> np.ndarray:
    """The geometric expert's plan: the smooth return to the reference path `ref` (car frame) at _expert_speeds,
    starting along the car's course (return_plan)."""
    return return_plan(ref, self._expert_speeds(), ref_z, self.return_time, self.return_speed,
                       self.vehicle.state.course)

  def logged_reference(self, lo: int, hi: int) -> np.ndarray:
    """(M, 2) world x/y of the logged path's frames lo..hi-1, shifted by lane_shift to the right of each logged pose
    (the target lane of a "shift" lane change; the logged path itself otherwise)."""
    pw = self.seg.pose_world[lo:hi]
    xy = pw[:, :2].copy()
    if self.lane_shift:
      yaw = pw[:, 5]
      xy += self.lane_shift * np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
    return xy

  def car_pose(self) -> np.ndarray:
    """(x, y, yaw) of the car in the segment's world frame."""
    st = self.vehicle.state
    return np.array([st.x, st.y, st.psi])


class ReferencePathSimulator(Simulator):
  """A simulator whose expert steers back to the logged path (the procedural and reprojective ones): subclasses
  render the image and give the path in the car frame (`_observe`); the plan is the return path at the logged
  speeds."""

  def __init__(self, frame_spec: dict, vehicle: VehicleConfig | None = None, seed: int = 0,
               return_time: float = RETURN_TIME, return_speed: float | None = RETURN_SPEED):
    super().__init__(frame_spec, vehicle, seed)
    check_return(return_time, return_speed)
    self.return_time, self.return_speed = float(return_time), return_speed

  @abc.abstractmethod
  def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """(image (H,W,3) uint8, reference path (M,2) car frame, reference z (M,) or None, lateral offset + right)."""

  def _make_obs(self) -> Observation:
    img, ref, ref_z, offset = self._observe()
    self._end_lane_change(offset)
    plan = self._log_return(ref, ref_z)
    v = self.vehicle.state.v
    return Observation(img, float(v), int(self.desire), plan.astype(np.float32),
                       action_from_plan(plan, v).astype(np.float32), float(offset), self.k * SIM_DT,
                       done=self.max_offset is not None and abs(offset) > self.max_offset)


def step_batch(sims: list[Simulator], actions) -> list[Observation]:
  """Simulator.step of several simulators (one episode each) at once: each car moves under its own action, then the
  new frames are made together (Simulator._advance_batch: the world model runs its DiT over all of them in one
  batch), then each state is observed and labelled. The same Observations as stepping them one by one (to float
  precision where a network is batched). All simulators must be of one class."""
  if not sims:
    return []
  cls = type(sims[0])
  if any(type(s) is not cls for s in sims):
    raise ValueError(f"step_batch: simulators of one class only, got {sorted({type(s).__name__ for s in sims})}")
  if len(actions) != len(sims):
    raise ValueError(f"step_batch: {len(actions)} actions for {len(sims)} simulators")
  for s, a in zip(sims, actions):
    s._move(a)
  cls._advance_batch(list(sims))
  return [s._make_obs() for s in sims]


def neighbour_lane_width(seg: LoggedSegment, frame: int, side: int, ahead_s: float = 10.0) -> float | None:
  """Lane width (m) if the logged road has a lane next to the logged car's lane on `side` (-1 left, +1 right) at
  `frame` and the logged driver keeps its lane for `ahead_s`; else None. From the segment's ground truth (lane
  width, the car's offset in its lane, the road edges); None without it (a real drive has no such labels)."""
  gt = seg.gt
  if not all(k in gt for k in ("lane_width", "lateral_offset", "road_edges")):
    return None
  if np.any(seg.desire[frame:frame + int(ahead_s * MODEL_FREQ)] != 0):
    return None
  width = float(gt["lane_width"][frame])
  centre = -float(gt["lateral_offset"][frame])               # the logged lane's centre, car frame (y right)
  edge = float(gt["road_edges"][frame, 0 if side < 0 else 1, 0, 0])
  outer_line = centre + side * 1.5 * width                     # the far line of the neighbour lane
  return width if side * (edge - outer_line) >= -0.05 else None


def policy_image(x, frame_spec: dict) -> np.ndarray:
  """A decoded frame (1, 3, h, w) in [-1, 1] at the codec's resolution -> (H, W, 3) uint8 in the policy's frame
  (area-resized: both are the same model frame scaled), the way a VAE's frames reach the policy."""
  from training.vae import tensor_to_images
  img = tensor_to_images(x[0])
  W, H = int(frame_spec["width"]), int(frame_spec["height"])
  return img if img.shape[:2] == (H, W) else cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)


def nearest_logged_frame(pose_world: np.ndarray, xy, start: int, search: int = 40) -> int:
  """The logged frame (index into pose_world (N, >=2)) whose position is nearest to xy, searched among the `search`
  frames from `start` on: the view follows where the car is, not the clock, and never jumps back along the path."""
  lo = int(start)
  hi = min(len(pose_world), lo + search)
  d = np.hypot(pose_world[lo:hi, 0] - xy[0], pose_world[lo:hi, 1] - xy[1])
  return lo + int(np.argmin(d))


def world_to_car(points_xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
  """(M, 2) world NED points -> car frame (x forward, y right) of pose (x, y, yaw + right)."""
  d = np.asarray(points_xy, np.float64) - pose[:2]
  c, s = np.cos(pose[2]), np.sin(pose[2])
  return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)
