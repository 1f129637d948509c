import math

import numpy as np
import pytest
import torch

from common.modelconstants import (
  DESIRE_LEN,
  IDX_N,
  PLAN_HYPOTHESES,
  PLAN_WIDTH,
  T_IDXS,
  X_IDXS,
  layout_size,
  policy_output_layout,
  vision_output_layout,
)
from training.policy.losses import (
  LANE_CENTRE_SCALE,
  LANE_CENTRE_X,
  LANE_HEADING_SCALE,
  LANE_HEADING_X,
  best_plan,
  lane_centre_loss,
  lane_heading_loss,
  output_losses,
  path_curvature_loss,
  path_curvature_target,
  pool_errors,
  split,
  trajectory_errors,
)
from training.policy.model import (
  CURVATURE_SCALE,
  CURVATURE_SPEED_FLOOR,
  LAT_ACCEL_SCALE,
  PRESETS,
  GaussianBottleneck,
  PolicyConfig,
  TemporalPolicy,
  VisionModel,
  bottleneck_noise_std,
  get_config,
  measured_capacity_bits,
)

torch.set_num_threads(1)
CFG = get_config("tiny")


def test_bottleneck_capacity_formula_and_measurement():
  for D, bits in ((64, 96.0), (512, 700.0)):
    s = bottleneck_noise_std(D, bits)
    assert D / 2 * math.log2(1 + 1 / s ** 2) == pytest.approx(bits, rel=1e-9)
  bn = GaussianBottleneck(512, 700.0)
  z = bn(torch.randn(4000, 512), noise=False)            # iid features use the whole channel
  assert measured_capacity_bits(z, bn.noise_std) == pytest.approx(700.0, rel=0.05)
  const = bn(torch.randn(1, 512).repeat(100, 1), noise=False)  # identical features carry nothing
  assert measured_capacity_bits(const, bn.noise_std) == pytest.approx(0.0, abs=1e-6)
  bn.train()
  noisy = bn(torch.zeros(2000, 512) + torch.randn(1, 512))
  assert noisy.std(0).mean().item() == pytest.approx(bn.noise_std, rel=0.05)
  with pytest.raises(ValueError, match="bottleneck_bits"):
    bottleneck_noise_std(10, 0.0)
  with pytest.raises(ValueError, match="N>=2"):
    measured_capacity_bits(torch.zeros(1, 4), 1.0)


def test_vision_shapes_and_noise_off_in_eval():
  m = VisionModel(CFG)
  img = torch.randint(0, 256, (2, 6, CFG.frame_h, CFG.frame_w), dtype=torch.uint8)
  m.train()
  z1, _ = m(img)
  z2, _ = m(img)
  assert not torch.allclose(z1, z2)                       # channel noise while training
  m.eval()
  z3, out = m(img)
  z4, _ = m(img)
  assert torch.equal(z3, z4) and z3.shape == (2, CFG.feature_dim)
  assert out.shape == (2, layout_size(vision_output_layout()))


def test_extractor_trains_on_onednn_with_a_batch_stacked_from_camera_frames():
  """A batch stacked from HWC camera frames has channels-last strides; oneDNN's convolution backward (torch's default
  CPU kernels, which the policy trainers use) corrupted the heap on such an input and aborted the process. The
  extractor takes it as NCHW. Run in a child process, since the failure is an abort."""
  import subprocess
  import sys
  code = """
import torch
from training.policy.model import VisionModel, get_config
torch.backends.mkldnn.enabled = True
torch.set_num_threads(1)
torch.manual_seed(0)
m = VisionModel(get_config("tiny")).train()
x = (torch.rand(8, 64, 128, 6) * 255).to(torch.uint8).permute(0, 3, 1, 2)   # frames (B, H, W, 6) -> (B, 6, H, W)
assert not x.is_contiguous()
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
for _ in range(3):
  z, aux = m(x)
  loss = z.pow(2).mean() + aux.pow(2).mean()
  opt.zero_grad()
  loss.backward()
  opt.step()
assert torch.isfinite(loss)
print("trained")
"""
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "trained" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_temporal_is_causal_and_conditioned():
  torch.manual_seed(0)
  t = TemporalPolicy(CFG).eval()
  f = torch.randn(1, CFG.history, CFG.feature_dim)
  v = torch.full((1, CFG.history), 20.0)
  d = torch.zeros(1, CFG.history, DESIRE_LEN)
  d[..., 0] = 1
  out = t(f, v, d)
  assert out.shape == (1, CFG.history, layout_size(policy_output_layout()))
  f2 = f.clone()
  f2[:, -1] += 1.0
  out2 = t(f2, v, d)
  assert torch.allclose(out[:, :-1], out2[:, :-1], atol=1e-6)   # the past does not see the future
  assert not torch.allclose(out[:, -1], out2[:, -1])
  d2 = d.clone()
  d2[..., 0], d2[..., 1] = 0, 1
  assert not torch.allclose(t(f, v, d2)[:, -1], out[:, -1])      # desire reaches the output
  with pytest.raises(ValueError, match="history"):
    t(torch.randn(1, CFG.history + 1, CFG.feature_dim), torch.zeros(1, CFG.history + 1),
      torch.zeros(1, CFG.history + 1, DESIRE_LEN))


def _targets(B, labels=True):
  g = torch.Generator().manual_seed(1)
  return {"plan": torch.randn(B, IDX_N, PLAN_WIDTH, generator=g), "plan_valid": torch.ones(B, IDX_N, dtype=torch.bool),
          "lane_lines": torch.randn(B, 2, IDX_N, 2, generator=g), "has_lanes": torch.full((B,), labels),
          "road_edges": torch.randn(B, 2, IDX_N, 2, generator=g), "has_edges": torch.full((B,), labels),
          "lead": torch.tensor([[1.0, 30, 0, -1, 0]] * B), "has_lead_label": torch.full((B,), labels),
          "action": torch.randn(B, 2, generator=g), "action_valid": torch.ones(B, dtype=torch.bool)}


def test_unlabelled_heads_are_masked_out():
  layout = policy_output_layout()
  out = torch.randn(4, layout_size(layout), requires_grad=True)
  _, info = output_losses(out, layout, _targets(4, labels=False))
  assert info["lane_lines"] == 0.0 and info["lane_centre"] == 0.0 and info["road_edges"] == 0.0
  assert info["lead"] == 0.0 and info["lead_prob"] == 0.0
  loss, _ = output_losses(out, layout, _targets(4, labels=False))
  loss.backward()
  g = split(out.grad, layout)
  assert g["lane_lines"].abs().sum() == 0 and g["lead"].abs().sum() == 0 and g["road_edges"].abs().sum() == 0
  assert g["plan"].abs().sum() > 0 and g["action"].abs().sum() > 0
  _, info_l = output_losses(out, layout, _targets(4, labels=True))
  assert info_l["lane_lines"] != 0.0 and info_l["lane_centre"] != 0.0 and info_l["lane_heading"] != 0.0
  assert info["lane_heading"] == 0.0


def test_lane_centre_loss_scores_the_near_lane_centre_only():
  """The loss sees the mean of the two lines' lateral positions up to 20 m: zero when it matches (whatever the lane
  width or the far field), quadratic in the offset below LANE_CENTRE_SCALE, linear above, masked by has_lanes."""
  tgt = torch.zeros(1, 2, IDX_N, 2)
  tgt[:, 0, :, 0], tgt[:, 1, :, 0] = -1.8, 1.8                       # the car on its lane's centre
  def lines(shift, width=3.6, far=0.0):
    d = torch.zeros(1, 2, IDX_N, 2, 2)
    d[:, 0, :, 0, 0], d[:, 1, :, 0, 0] = shift - width / 2, shift + width / 2
    d[:, :, LANE_CENTRE_X:, 0, 0] += far
    return d
  has = torch.ones(1, dtype=torch.bool)
  assert float(lane_centre_loss(lines(0.0, width=3.0, far=5.0), tgt, has)) == 0.0
  small = float(lane_centre_loss(lines(0.05), tgt, has))
  assert small == pytest.approx(0.5 * (0.05 / LANE_CENTRE_SCALE) ** 2, rel=1e-5)
  big = float(lane_centre_loss(lines(1.0), tgt, has))
  assert big == pytest.approx(1.0 / LANE_CENTRE_SCALE - 0.5, rel=1e-5)
  assert float(lane_centre_loss(lines(1.0), tgt, ~has)) == 0.0


def test_lane_heading_loss_scores_the_lane_centres_slope_only():
  """The loss sees the lane centre's mean slope from the car to 9..32 m: zero for any offset, lane width or far field
  that keeps the slope, quadratic in a heading error below LANE_HEADING_SCALE, linear above, masked by has_lanes."""
  x = torch.as_tensor(X_IDXS, dtype=torch.float32)
  tgt = torch.zeros(1, 2, IDX_N, 2)
  tgt[:, 0, :, 0], tgt[:, 1, :, 0] = -1.8 + 0.02 * x, 1.8 + 0.02 * x          # heading 0.02 rad to the left
  def lines(heading, offset=0.0, width=3.6, far=0.0):
    d = torch.zeros(1, 2, IDX_N, 2, 2)
    d[:, 0, :, 0, 0], d[:, 1, :, 0, 0] = offset - width / 2 + heading * x, offset + width / 2 + heading * x
    d[:, :, int(LANE_HEADING_X[-1]) + 1:, 0, 0] += far
    return d
  has = torch.ones(1, dtype=torch.bool)
  assert float(lane_heading_loss(lines(0.02, offset=0.7, width=3.0, far=4.0), tgt, has)) == pytest.approx(0.0, abs=1e-9)
  small = float(lane_heading_loss(lines(0.025), tgt, has))
  assert small == pytest.approx(0.5 * (0.005 / LANE_HEADING_SCALE) ** 2, rel=1e-4)
  big = float(lane_heading_loss(lines(0.07), tgt, has))
  assert big == pytest.approx(0.05 / LANE_HEADING_SCALE - 0.5, rel=1e-4)
  assert float(lane_heading_loss(lines(0.07), tgt, ~has)) == 0.0
  assert X_IDXS[LANE_HEADING_X].min() >= 9.0 and X_IDXS[LANE_HEADING_X].max() <= 32.0


def test_best_plan_and_trajectory_errors():
  layout = policy_output_layout()
  out = torch.zeros(1, layout_size(layout))
  o = split(out, layout)
  o["plan_prob"][0, 3] = 5.0
  o["plan"][0, 3, :, 0, 0] = torch.from_numpy(T_IDXS).float() * 10   # hypothesis 3: x = 10 t
  o["plan"][0, 1, :, 0, 0] = 99.0
  plan = best_plan(out, layout)
  assert torch.allclose(plan[0, :, 0], torch.from_numpy(T_IDXS).float() * 10)
  target = plan.clone()
  target[..., 1] += 3.0                                      # 3 m lateral everywhere, 4 m longitudinal at the end
  target[0, -1, 0] += 4.0
  valid = torch.ones(1, IDX_N, dtype=torch.bool)
  e = pool_errors([trajectory_errors(plan, target, valid)])
  assert e["fde"] == pytest.approx(5.0)
  assert e["ade"] == pytest.approx((3.0 * (IDX_N - 1) + 5.0) / IDX_N)
  assert e["mae"] == pytest.approx((1.0 * (IDX_N - 1) + 7 / 3) / IDX_N)
  valid[0, -3:] = False                                      # truncated horizon: no FDE sample
  assert math.isnan(pool_errors([trajectory_errors(plan, target, valid)])["fde"])


def test_presets_and_bad_preset():
  assert PRESETS["T8"].bottleneck_bits == 700.0 and PRESETS["T8"].history == 10
  with pytest.raises(ValueError, match="unknown policy preset"):
    get_config("T99")


def test_temporal_plan_starts_from_constant_speed():
  t = TemporalPolicy(CFG).eval()
  with torch.no_grad():
    for p in t.head.fc2.parameters():
      p.zero_()                                                  # head contributes nothing: the prior alone
    out = t(torch.randn(2, CFG.history, CFG.feature_dim), torch.tensor([[10.0] * CFG.history, [25.0] * CFG.history]),
            torch.zeros(2, CFG.history, DESIRE_LEN))[:, -1]
  plan = split(out, t.layout)["plan"][..., 0]                   # (B, K, T, W)
  assert torch.allclose(plan[0, :, :, 0], 10.0 * torch.from_numpy(T_IDXS).float().expand(PLAN_HYPOTHESES, -1))
  assert torch.allclose(plan[1, :, :, 3], torch.full((PLAN_HYPOTHESES, IDX_N), 25.0))
  assert torch.allclose(plan[..., 1], torch.zeros_like(plan[..., 1]))


def test_split_curvature_is_path_curvature_plus_lateral_accel_over_speed_squared():
  """curvature = kappa (output head, the same at every speed) + a / (v^2 + v0^2) (lateral-acceleration head)."""
  t = TemporalPolicy(CFG).eval()
  assert CFG.curvature_param == "split"
  k0 = t.layout["action"][0]
  f, d = torch.randn(3, CFG.history, CFG.feature_dim), torch.zeros(3, CFG.history, DESIRE_LEN)
  v = torch.tensor([0.0, 15.0, 30.0])[:, None].expand(3, CFG.history)
  with torch.no_grad():
    for p in (*t.head.fc2.parameters(), *t.lat_accel[2].parameters()):
      p.zero_()
    t.head.fc2.bias[k0] = 0.2                       # kappa = 0.2 * CURVATURE_SCALE = 0.002 1/m
    t.lat_accel[2].bias[0] = 1.5                     # a = 1.5 m/s^2
    k = t(f, v, d)[:, -1, k0]
  expect = 0.2 * CURVATURE_SCALE + 1.5 * LAT_ACCEL_SCALE / (torch.tensor([0.0, 15.0, 30.0]) ** 2 + CURVATURE_SPEED_FLOOR ** 2)
  assert torch.allclose(k, expect)
  assert k[1] > k[2] > 0.002                         # the correction's share falls with speed, kappa's does not


def test_forward_parts_gives_the_split_heads_own_curvature_part():
  """forward_parts: the outputs of forward, and kappa = the curvature mean less a / (v^2 + v0^2); None when direct."""
  t = TemporalPolicy(CFG).eval()
  k0 = t.layout["action"][0]
  f, d = torch.randn(2, CFG.history, CFG.feature_dim), torch.zeros(2, CFG.history, DESIRE_LEN)
  v = torch.tensor([12.0, 31.0])[:, None].expand(2, CFG.history)
  with torch.no_grad():
    t.lat_accel[2].weight.zero_()
    t.lat_accel[2].bias[0] = 0.7                     # a = 0.7 m/s^2 whatever the inputs
    out, kappa = t.forward_parts(f, v, d)
    assert torch.equal(out, t(f, v, d))
  assert kappa.shape == (2, CFG.history) and kappa.std() > 0
  assert torch.allclose(out[..., k0], kappa + 0.7 / (v * v + CURVATURE_SPEED_FLOOR ** 2), atol=1e-7)
  direct = TemporalPolicy(PolicyConfig(**{**CFG.to_dict(), "curvature_param": "direct"})).eval()
  with torch.no_grad():
    out_d, none = direct.forward_parts(f, v, d)
  assert none is None and torch.equal(out_d, direct(f, v, d))


def test_lat_accel_scale_multiplies_the_lateral_acceleration_head():
  cfg = PolicyConfig(**{**CFG.to_dict(), "lat_accel_scale": 4.0})
  t1, t4 = TemporalPolicy(CFG).eval(), TemporalPolicy(cfg).eval()
  t4.load_state_dict(t1.state_dict())
  k0 = t1.layout["action"][0]
  f, d = torch.randn(1, CFG.history, CFG.feature_dim), torch.zeros(1, CFG.history, DESIRE_LEN)
  v = torch.full((1, CFG.history), 20.0)
  with torch.no_grad():
    (o1, k1), (o4, k4) = t1.forward_parts(f, v, d), t4.forward_parts(f, v, d)
  assert torch.equal(k1, k4)
  assert torch.allclose(o4[..., k0] - k4, 4.0 * (o1[..., k0] - k1), atol=1e-8)
  assert PolicyConfig.from_dict({k: x for k, x in CFG.to_dict().items() if k != "lat_accel_scale"}) == CFG
  with pytest.raises(ValueError, match="lat_accel_scale"):
    PolicyConfig(**{**CFG.to_dict(), "lat_accel_scale": 0.0})


def test_path_curvature_is_the_plans_own_curvature_far_ahead():
  """A return to a left curve of radius 300 m from 1 m off: the plan's curvature 6-10 s ahead is the curve's, 1/300
  (+ left); invalid points are left out, a plan without valid late points gives no target and no loss."""
  from training.onpolicy.simulator import return_plan
  th = np.linspace(-0.05, 1.4, 1500)
  ref = np.stack([300.0 * np.sin(th), -300.0 * (1 - np.cos(th))], 1)     # a circle bending left (y is + right)
  plans = torch.from_numpy(np.stack([return_plan(ref - [0.0, o], np.full(IDX_N, s))
                                     for o, s in ((1.0, 15.0), (-1.0, 30.0))]).astype(np.float32))
  valid = torch.ones(2, IDX_N, dtype=torch.bool)
  k, has = path_curvature_target(plans, valid)
  assert has.all()
  assert torch.allclose(k, torch.full((2,), 1 / 300.0), rtol=0.05), k
  late = torch.from_numpy(T_IDXS >= 6.0)
  none = valid.clone()
  none[1, late] = False
  k2, has2 = path_curvature_target(plans, none)
  assert has2.tolist() == [True, False] and float(k2[1]) == 0.0
  kappa = torch.tensor([1 / 300.0 + 2e-3, 123.0])
  assert abs(float(path_curvature_loss(kappa, plans, none)) - abs(float(k[0]) - float(kappa[0])) / 1e-3) < 1e-3


def test_configs_saved_before_curvature_param_load_as_direct():
  old = {k: v for k, v in CFG.to_dict().items() if k != "curvature_param"}
  cfg = PolicyConfig.from_dict(old)
  assert cfg.curvature_param == "direct"
  direct = TemporalPolicy(cfg)
  assert not hasattr(direct, "lat_accel")
  assert not any(k.startswith("lat_accel") for k in direct.state_dict())   # an old run's state dict loads strictly
  TemporalPolicy(CFG).load_state_dict(direct.state_dict(), strict=False)
  with pytest.raises(ValueError, match="curvature_param"):
    PolicyConfig.from_dict({**old, "curvature_param": "bogus"})
