"""training.worldmodel.plan_head: the anchor-reaching kinematic prior follows a logged path (straight and curved),
returns from a state off it, falls back to constant velocity without a usable anchor, and is what the world model's
Plan Head corrects when DiTConfig.plan_prior says so (configs saved before the field keep constant velocity)."""
import numpy as np
import pytest
import torch

from common.drive_helpers import action_from_plan
from common.modelconstants import PLAN_SLICES, T_IDXS
from training.worldmodel.dit import PRESETS, AnchorSummary, DiTConfig, build_model, get_config
from training.worldmodel.plan_head import anchor_reaching_plan, constant_velocity_plan, denormalize_plan

POS, VEL, YAW = PLAN_SLICES["position"], PLAN_SLICES["velocity"], PLAN_SLICES["orientation"].start + 2
RATE = PLAN_SLICES["orientation_rate"].start + 2
T = torch.tensor(T_IDXS, dtype=torch.float32)


def circle(radius, v, times):
  """Poses (N,6) along a circle (radius > 0 bends toward +y) at speed v, from the origin heading +x."""
  w = v / radius
  p = torch.zeros(len(times), 6)
  p[:, 0], p[:, 1], p[:, 5] = radius * torch.sin(w * times), radius * (1 - torch.cos(w * times)), w * times
  return p


def prior(transition, anchor_pose, anchor_dt, valid=True, fps=5.0):
  out = anchor_reaching_plan(torch.as_tensor(transition, dtype=torch.float32)[None], anchor_pose[None],
                             anchor_dt[None], torch.tensor([valid]), fps)
  return denormalize_plan(out)[0]                                           # (T,15) in metres / radians


@pytest.mark.parametrize("radius", [1e9, 150.0, -150.0])
def test_follows_the_logged_path_through_the_anchor(radius):
  """Straight or curved, a car on the path whose anchor lies on it gets the path back (the quintic is not a circle,
  so curves match to a few decimetres over 10 s, and exactly at the anchor)."""
  v, fps, j = 12.0, 5.0, 20
  dt = float(T_IDXS[j]) + 0.2 * torch.arange(5)                  # the anchor's first frame on the plan's time grid
  anchor = circle(radius, v, dt)
  trans = circle(radius, v, torch.tensor([0.2]))[0]               # the last 0.2 s, as seen from the previous frame
  plan = prior(trans, anchor, dt, fps=fps)
  truth = circle(radius, v, T)
  assert torch.allclose(plan[:, POS][:, :2], truth[:, :2], atol=0.3)
  assert torch.allclose(plan[:, YAW], truth[:, 5], atol=0.03)
  assert torch.allclose(plan[j, POS][:2], anchor[0, :2], atol=1e-3) and abs(plan[j, YAW] - anchor[0, 5]) < 1e-4
  assert torch.allclose(plan[0, VEL][:2], torch.tensor([v, 0.0]), atol=0.05)    # starts at the car's speed, forward
  assert abs(plan[0, RATE] - v / radius) < 1e-3                                  # and its yaw rate


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_returns_to_the_anchor_from_a_lateral_offset(side):
  """A car 1 m beside a straight path (the anchor at y = side in its frame) is planned smoothly onto it: at the
  anchor's time the plan is on the path, heading along it, and the action steers toward it from the start."""
  v = 10.0
  dt = 4.0 + 0.2 * torch.arange(5)
  anchor = torch.zeros(5, 6)
  anchor[:, 0], anchor[:, 1] = v * dt, side
  plan = prior([v / 5.0, 0, 0, 0, 0, 0], anchor, dt)
  at = T_IDXS >= 4.0
  assert torch.allclose(plan[at, 1], torch.full((int(at.sum()),), side), atol=1e-3)
  assert torch.allclose(plan[at, YAW], torch.zeros(int(at.sum())), atol=1e-3)
  y = plan[:, 1].numpy()
  assert np.all(np.diff(y) * side >= -1e-6)                                        # monotone: no overshoot
  curvature = action_from_plan(plan.numpy().astype(np.float64), v)[0]
  assert curvature * side < 0     # + y is to the right (z down), + curvature is left: toward +y needs curvature < 0


def test_a_one_step_lateral_jump_is_not_taken_for_sideways_speed():
  """The simulator's reset can put a whole injected offset into one 0.2 s transition; the prior starts forward at
  the transition's planar speed, not sideways at 5 m/s."""
  dt = 4.0 + 0.2 * torch.arange(5)
  anchor = torch.zeros(5, 6)
  anchor[:, 0] = 10.0 * dt
  plan = prior([2.0, 1.0, 0, 0, 0, 0], anchor, dt)
  assert float(plan[0, VEL][1]) == 0.0 and abs(float(plan[0, VEL][0]) - np.hypot(2.0, 1.0) * 5) < 1e-4


def test_falls_back_to_constant_velocity():
  trans = torch.tensor([[2.0, 0.1, 0.0, 0, 0, 0.01], [3.0, 0.0, 0.0, 0, 0, 0.0]])
  anchor = torch.zeros(2, 3, 6)
  anchor[..., 0] = 30.0
  dt = torch.tensor([[3.0, 3.2, 3.4], [-0.4, -0.2, 0.0]])         # row 1: the anchor is behind "now"
  out = anchor_reaching_plan(trans, anchor, dt, torch.tensor([False, True]), 5.0)
  assert torch.equal(out, constant_velocity_plan(trans, 5.0))
  near = anchor_reaching_plan(trans[:1], anchor[:1], dt[:1] - 2.9, torch.tensor([True]), 5.0)   # 0.1 s ahead
  assert torch.isfinite(near).all() and denormalize_plan(near)[0, :, 1].abs().max() < 1.0


def test_stopped_car_stays_finite():
  dt = 3.0 + 0.2 * torch.arange(3)
  out = prior([0.0, 0.0, 0.0, 0, 0, 0.0], torch.zeros(3, 6), dt)
  assert torch.isfinite(out).all() and out.abs().max() < 1e-6


def _model(plan_prior):
  cfg = get_config("tiny", depth=1, width=32, heads=2, context_frames=3, anchor_frames=2, plan_hidden=32,
                   plan_blocks=1, plan_prior=plan_prior)
  m = build_model(cfg).eval()
  torch.nn.init.zeros_(m.plan_head.out.weight)
  return cfg, m


@pytest.mark.parametrize("plan_prior", ["anchor", "constant_velocity"])
def test_the_plan_head_corrects_the_configured_prior(plan_prior):
  cfg, m = _model(plan_prior)
  hid = torch.randn(2, cfg.tokens_per_frame, cfg.width)
  trans = torch.tensor([[2.0, 0.0, 0, 0, 0, 0.0], [2.4, 0.0, 0, 0, 0, 0.004]])
  pose = torch.zeros(2, 2, 6)
  pose[..., 0], pose[0, :, 1] = torch.tensor([50.0, 52.0]), 1.5
  anchor = AnchorSummary(torch.randn(2, cfg.width), pose, torch.tensor([[15.0, 15.2], [15.0, 15.2]]),
                         torch.tensor([True, False]))
  t_now = torch.tensor([10.0, 10.0])
  out = m.plan(hid, trans, anchor, t_now).mean[:, 0]
  cv = constant_velocity_plan(trans, cfg.fps)
  if plan_prior == "anchor":
    want = anchor_reaching_plan(trans, pose, anchor.t - t_now[:, None], anchor.valid, cfg.fps)
    assert torch.allclose(out, want) and not torch.allclose(out[0], cv[0])
  else:
    assert torch.allclose(out, cv)
  assert torch.allclose(out[1], cv[1])                            # no valid anchor: constant velocity either way
  assert torch.allclose(m.plan(hid, trans).mean[:, 0], cv)       # no anchor given at all


def test_saved_configs_without_the_field_keep_constant_velocity():
  d = PRESETS["tiny"].to_dict()
  assert DiTConfig.from_dict(d).plan_prior == "anchor"
  del d["plan_prior"]
  assert DiTConfig.from_dict(d).plan_prior == "constant_velocity"
  with pytest.raises(ValueError, match="plan_prior"):
    get_config("tiny", plan_prior="straight")
