"""Plan Head (paper §4.2): residual feed-forward blocks on pooled tokens of the current frame that predict the
future trajectory on T_IDXS (10 s) as PLAN_HYPOTHESES hypotheses with Laplace scales and hypothesis logits.

With a kinematic prior (the world model passes one), each hypothesis is a correction to a path computed from the
poses alone, so the head starts where a classic baseline is and spends its training on what the images add (curves,
speed changes):
  constant_velocity_plan  the car holds the velocity of the current frame's transition for 10 s (no anchor);
  anchor_reaching_plan    with a future anchor: the minimum-jerk path (a quintic per axis) from the car's current
                          state to the first anchor frame's pose, heading, speed and centripetal acceleration at the
                          anchor's time, then through the anchor frames and on along an arc. On logged windows it
                          nearly matches the driven path; from a state off that path (the on-policy simulator's
                          deviations, never in the training data) it is a smooth return to the anchor, so the expert
                          plan inherits the return from the prior instead of having to extrapolate it from logged
                          data where "continue" and "return" always agree.

Outputs live in NORMALISED units (plan / PLAN_NORM, per plan component) so one Laplace NLL weighs metres,
m/s and radians alike; `denormalize_plan` converts back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from common.modelconstants import IDX_N, PLAN_HYPOTHESES, PLAN_SLICES, PLAN_WIDTH, T_IDXS

# typical magnitude of each plan component over the 10 s horizon
_NORM_BY_PART = {"position": (50.0, 5.0, 2.0), "velocity": (20.0, 2.0, 1.0), "acceleration": (2.0, 1.0, 1.0),
                 "orientation": (0.05, 0.05, 0.3), "orientation_rate": (0.02, 0.02, 0.1)}
PLAN_NORM = torch.zeros(PLAN_WIDTH, device="cpu")   # explicit device: may be imported under torch.device("meta")
for _part, _sl in PLAN_SLICES.items():
  PLAN_NORM[_sl] = torch.tensor(_NORM_BY_PART[_part], device="cpu")


def normalize_plan(plan: torch.Tensor) -> torch.Tensor:
  return plan / PLAN_NORM.to(plan.device, plan.dtype)


def denormalize_plan(plan: torch.Tensor) -> torch.Tensor:
  return plan * PLAN_NORM.to(plan.device, plan.dtype)


def constant_velocity_plan(transition: torch.Tensor, fps: float) -> torch.Tensor:
  """The current frame's transition (B,6) (motion from the previous frame, metres / radians) -> the NORMALISED plan
  (B,T,PLAN_WIDTH) of a car that holds that velocity for 10 s, straight ahead: position v*t, velocity v, everything
  else zero. The Plan Head predicts its hypotheses as corrections to this kinematic prior."""
  B = transition.shape[0]
  v = transition[:, :3].float() * fps                                        # (B,3) m/s in the car frame
  t = torch.as_tensor(T_IDXS, dtype=torch.float32, device=transition.device)  # (T,)
  plan = torch.zeros(B, len(T_IDXS), PLAN_WIDTH, device=transition.device)
  plan[..., PLAN_SLICES["position"]] = v[:, None, :] * t[None, :, None]
  plan[..., PLAN_SLICES["velocity"]] = v[:, None, :].expand(B, len(T_IDXS), 3)
  return normalize_plan(plan)


MIN_ANCHOR_DT = 0.5   # s: an anchor closer than this is reached along a path planned for this long (no 1/T^5 blow-up)


def anchor_reaching_plan(transition: torch.Tensor, anchor_pose: torch.Tensor, anchor_dt: torch.Tensor,
                         valid: torch.Tensor, fps: float) -> torch.Tensor:
  """The NORMALISED plan (B,T,PLAN_WIDTH) of a car that drives from where it is now to the future anchor.

  transition (B,6) the current frame's motion from the previous one (speed = its planar length * fps, along the car's
  x axis: a car does not move sideways; yaw rate = its yaw * fps); anchor_pose (B,A,6) the anchor frames' poses in
  the car frame now; anchor_dt (B,A) their times minus now (s); valid (B,) bool: rows without a usable anchor (dropped,
  or its first frame not ahead of now) get constant_velocity_plan.
  Up to the first anchor frame's time T: x(t), y(t) quintics with position 0, velocity (v0, 0), acceleration
  (0, v0 * yaw rate) at 0 and the anchor's position, velocity vA (cos yawA, sin yawA) and centripetal acceleration
  vA * rA (-sin yawA, cos yawA) at T (vA, rA from the first two anchor frames' spacing and yaw change); z linear to
  the anchor's. After T: the anchor frames' poses interpolated in time, then an arc at the last anchor segment's
  speed and the anchor frames' mean yaw rate. Velocity / acceleration are the path's derivatives in the car frame
  now, orientation its heading, orientation rate the heading's rate (plan_targets' conventions)."""
  B, A = anchor_pose.shape[:2]
  dev = transition.device
  tr, ap, adt = transition.double(), anchor_pose.double(), anchor_dt.double()
  t = torch.as_tensor(T_IDXS, dtype=torch.float64, device=dev)[None].expand(B, -1)   # (B,T)
  v0 = torch.linalg.norm(tr[:, :2], dim=1) * fps                                       # (B,)
  r0 = tr[:, 5] * fps
  yaw_a = ap[:, :, 5]                                                                  # (B,A)
  if A > 1:
    seg_dt = (adt[:, 1:] - adt[:, :-1]).clamp(min=1e-3)                               # (B,A-1)
    seg_v = (ap[:, 1:, :3] - ap[:, :-1, :3]) / seg_dt[..., None]                      # (B,A-1,3)
    va = torch.linalg.norm(seg_v[:, 0, :2], dim=1)
    ra = (yaw_a[:, 1] - yaw_a[:, 0]) / seg_dt[:, 0]                                   # yaw rate at the anchor
    v_end = seg_v[:, -1]
  else:
    va, ra = v0, torch.zeros_like(v0)
    v_end = torch.stack([va * torch.cos(yaw_a[:, 0]), va * torch.sin(yaw_a[:, 0]), torch.zeros_like(va)], 1)
  T = adt[:, 0].clamp(min=MIN_ANCHOR_DT)[:, None]                                      # (B,1)

  def quintic(p1, v0_, a0_, v1_, a1_):
    """The quintic with p(0)=0, p'(0)=v0_, p''(0)=a0_, p(T)=p1, p'(T)=v1_, p''(T)=a1_ (the minimum-jerk path between
    the two states) evaluated at min(t, T): (position, velocity, acceleration), each (B,T)."""
    p1, v0_, a0_, v1_, a1_ = p1[:, None], v0_[:, None], a0_[:, None], v1_[:, None], a1_[:, None]
    c3 = (20 * p1 - (8 * v1_ + 12 * v0_) * T - (3 * a0_ - a1_) * T ** 2) / (2 * T ** 3)
    c4 = (-30 * p1 + (14 * v1_ + 16 * v0_) * T + (3 * a0_ - 2 * a1_) * T ** 2) / (2 * T ** 4)
    c5 = (12 * p1 - 6 * (v1_ + v0_) * T - (a0_ - a1_) * T ** 2) / (2 * T ** 5)
    tt = t.clamp(max=T)
    pos = v0_ * tt + a0_ / 2 * tt ** 2 + c3 * tt ** 3 + c4 * tt ** 4 + c5 * tt ** 5
    vel = v0_ + a0_ * tt + 3 * c3 * tt ** 2 + 4 * c4 * tt ** 3 + 5 * c5 * tt ** 4
    acc = a0_ + 6 * c3 * tt + 12 * c4 * tt ** 2 + 20 * c5 * tt ** 3
    return pos, vel, acc

  zero = torch.zeros_like(v0)
  ca, sa = torch.cos(yaw_a[:, 0]), torch.sin(yaw_a[:, 0])
  x, vx, ax = quintic(ap[:, 0, 0], v0, zero, va * ca, -va * ra * sa)
  y, vy, ay = quintic(ap[:, 0, 1], zero, v0 * r0, va * sa, va * ra * ca)
  z = ap[:, :1, 2] * (t.clamp(max=T) / T)
  vz = (ap[:, :1, 2] / T).expand(B, t.shape[1])
  yaw = torch.atan2(vy, vx)
  speed2 = (vx ** 2 + vy ** 2).clamp(min=1e-2)
  yaw_rate = (vx * ay - vy * ax) / speed2
  yaw = torch.where(vx ** 2 + vy ** 2 < 1e-2, yaw_a[:, :1] * (t / T).clamp(max=1.0), yaw)   # stopped: turn in place

  # after T: through the anchor frames (times adt, shifted so the first sits at T), then along an arc (below)
  knots = adt - adt[:, :1] + T                                                         # (B,A)
  k = torch.searchsorted(knots.contiguous(), t.contiguous(), right=True).clamp(1, max(A - 1, 1)) - 1   # (B,T)
  kn = (k + 1).clamp(max=A - 1)
  t0, t1 = knots.gather(1, k), knots.gather(1, kn)
  s = ((t - t0) / (t1 - t0).clamp(min=1e-3)).clamp(0, 1)
  s = torch.where(kn == k, torch.zeros_like(s), s)
  after_pos = torch.stack([ap[:, :, i].gather(1, k) * (1 - s) + ap[:, :, i].gather(1, kn) * s for i in range(3)], -1)
  after_yaw = yaw_a.gather(1, k) * (1 - s) + yaw_a.gather(1, kn) * s
  beyond = (t - knots[:, -1:]).clamp(min=0)                                           # (B,T)
  if A > 1:
    seg_r = (yaw_a[:, 1:] - yaw_a[:, :-1]) / seg_dt                                    # (B,A-1)
    r_end = (yaw_a[:, -1] - yaw_a[:, 0]) / (adt[:, -1] - adt[:, 0]).clamp(min=1e-3)   # mean yaw rate over the anchor
    inside_vel = torch.stack([seg_v[:, :, i].gather(1, k.clamp(max=A - 2)) for i in range(3)], -1)
    inside_rate = seg_r.gather(1, k.clamp(max=A - 2))
  else:
    r_end = torch.zeros_like(v0)
    inside_vel = v_end[:, None].expand(-1, t.shape[1], -1)
    inside_rate = torch.zeros_like(t)
  # past the last anchor frame: an arc at its speed and the anchor's mean yaw rate
  # (position change v*tau*(cos, sin)(yaw + r*tau/2) * sinc(r*tau/2), exact for a circle and for r = 0)
  speed_end = torch.linalg.norm(v_end[:, :2], dim=1)[:, None]                          # (B,1)
  yaw_last, r_end = yaw_a[:, -1:], r_end[:, None]
  half = r_end * beyond / 2
  chord = speed_end * beyond * torch.sinc(half / torch.pi)
  arc = torch.stack([chord * torch.cos(yaw_last + half), chord * torch.sin(yaw_last + half), v_end[:, None, 2] * beyond], -1)
  after_pos = after_pos + arc
  arc_yaw = yaw_last + r_end * beyond
  out = beyond > 0
  after_yaw = torch.where(out, arc_yaw, after_yaw)
  arc_vel = torch.stack([speed_end * torch.cos(arc_yaw), speed_end * torch.sin(arc_yaw),
                         v_end[:, None, 2].expand_as(arc_yaw)], -1)
  after_vel = torch.where(out[..., None], arc_vel, inside_vel)
  after_rate = torch.where(out, r_end.expand_as(t), inside_rate)

  before = t <= T
  plan = torch.zeros(B, t.shape[1], PLAN_WIDTH, dtype=torch.float64, device=dev)
  plan[..., PLAN_SLICES["position"]] = torch.where(before[..., None], torch.stack([x, y, z], -1), after_pos)
  plan[..., PLAN_SLICES["velocity"]] = torch.where(before[..., None], torch.stack([vx, vy, vz], -1), after_vel)
  acc = torch.stack([ax, ay, torch.zeros_like(ax)], -1)
  plan[..., PLAN_SLICES["acceleration"]] = torch.where(before[..., None], acc, torch.zeros_like(acc))
  plan[..., PLAN_SLICES["orientation"].start + 2] = torch.where(before, yaw, after_yaw)
  plan[..., PLAN_SLICES["orientation_rate"].start + 2] = torch.where(before, yaw_rate, after_rate)
  usable = valid.bool() & (adt[:, 0] > 0)
  cv = constant_velocity_plan(transition, fps)
  return torch.where(usable[:, None, None], normalize_plan(plan.float()), cv)


class ResBlock(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

  def forward(self, x):
    return x + self.ff(self.norm(x))


@dataclass
class PlanOutput:
  """PlanHead.forward's result: K Laplace hypotheses of the plan on T_IDXS, in normalised units (normalize_plan)."""
  mean: torch.Tensor        # (B,K,T,D) each hypothesis' mean
  log_scale: torch.Tensor   # (B,K,T,D) log of its Laplace scale
  logits: torch.Tensor      # (B,K) hypothesis logits


class PlanHead(nn.Module):
  def __init__(self, width: int, hidden: int, blocks: int, hypotheses: int = PLAN_HYPOTHESES,
               horizon: int = IDX_N, plan_width: int = PLAN_WIDTH):
    super().__init__()
    self.K, self.T, self.D = hypotheses, horizon, plan_width
    self.inp = nn.Linear(width, hidden)
    self.blocks = nn.Sequential(*[ResBlock(hidden) for _ in range(blocks)])
    self.norm = nn.LayerNorm(hidden)
    self.out = nn.Linear(hidden, hypotheses * (2 * horizon * plan_width + 1))

  def init_weights(self):
    nn.init.normal_(self.out.weight, std=1e-3)
    nn.init.zeros_(self.out.bias)

  def forward(self, pooled: torch.Tensor, prior: torch.Tensor | None = None) -> PlanOutput:
    """pooled (B,W), optional prior (B,T,D) added to every hypothesis' mean -> PlanOutput (normalised units)."""
    B = pooled.shape[0]
    h = self.norm(self.blocks(self.inp(pooled)))
    out = self.out(h).float()
    n = self.K * self.T * self.D
    mean = out[:, :n].view(B, self.K, self.T, self.D)
    if prior is not None:
      mean = mean + prior[:, None].to(mean.dtype)
    log_scale = out[:, n:2 * n].view(B, self.K, self.T, self.D)
    return PlanOutput(mean=mean, log_scale=log_scale, logits=out[:, 2 * n:])
