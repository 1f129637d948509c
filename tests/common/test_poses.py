from pathlib import Path

import numpy as np
import pytest

from common.calibration import estimate_calibration, velocities_in_device_frame
from common.modelconstants import IDX_N, PLAN_SLICES, PLAN_WIDTH, T_IDXS
from common.poses import compose_transitions, curvature_from_poses, downsample_indices, plan_targets, relative_poses, transitions
from common.transformations.coordinates import LocalCoord
from common.transformations.orientation import euler2rot, quat2rot, rot2quat
from tools.lib.segment import load_npy

REAL_SEG = Path(__file__).resolve().parents[2] / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


def circle_drive(n=400, dt=0.05, v=15.0, radius=100.0, calib=(0.0, 0.05, -0.02)):
  """A car turning LEFT on a level circle, logged like comma2k19 (ECEF, device quaternions)."""
  t = 1000.0 + np.arange(n) * dt
  theta = v * t / radius - v * t[0] / radius                  # angle travelled
  heading = 0.3 - theta                                        # yaw about z-down: left turn = decreasing
  # NED: start at origin heading 0.3 rad, centre of the circle to the LEFT
  c = np.array([radius * np.sin(0.3), -radius * np.cos(0.3)])  # left of heading (0.3) direction
  pos_ned = np.stack([c[0] - radius * np.sin(heading), c[1] + radius * np.cos(heading), np.zeros(n)], -1)
  vel_ned = np.stack([v * np.cos(heading), v * np.sin(heading), np.zeros(n)], -1)
  lc = LocalCoord.from_geodetic([37.0, -122.0, 50.0])
  R_ecef_car = lc.ecef_from_ned_matrix @ euler2rot(np.stack([np.zeros(n), np.zeros(n), heading], -1))
  R_ecef_dev = R_ecef_car @ euler2rot(np.asarray(calib)).T    # device = car rotated by calib^-1
  return t, lc.ned2ecef(pos_ned), rot2quat(R_ecef_dev), vel_ned @ lc.ecef_from_ned_matrix.T, np.asarray(calib)


def test_circle_fixture_is_consistent():
  t, p, q, v, calib = circle_drive()
  np.testing.assert_allclose(np.gradient(p, t, axis=0)[1:-1], v[1:-1], atol=0.02)


def test_relative_poses_and_transitions():
  t, p, q, v, calib = circle_drive(radius=50.0)
  P = relative_poses(p, q, 0, calib=calib)
  assert P.shape == (len(t), 6)
  np.testing.assert_allclose(P[0], 0, atol=1e-9)
  th = 15.0 * (t - t[0]) / 50.0
  np.testing.assert_allclose(P[:, 0], 50 * np.sin(th), atol=1e-6)
  np.testing.assert_allclose(P[:, 1], -50 * (1 - np.cos(th)), atol=1e-6)      # left = -y
  np.testing.assert_allclose(np.unwrap(P[:, 5]), -th, atol=1e-9)
  # each transition is the same small left arc
  T = transitions(P)
  np.testing.assert_allclose(T[0], 0)
  dth = 15.0 * 0.05 / 50.0
  np.testing.assert_allclose(T[1:, 0], 50 * np.sin(dth), atol=1e-6)
  np.testing.assert_allclose(T[1:, 5], -dth, atol=1e-9)
  np.testing.assert_allclose(compose_transitions(T), P, atol=1e-6)
  # the reference can be any frame; device frame (no calib) differs from the car frame
  P_dev = relative_poses(p, q, 10)
  assert np.abs(P_dev[:, 2]).max() > 0.1
  with pytest.raises(ValueError, match="quats"):
    relative_poses(p, q[:-1], 0)
  with pytest.raises(IndexError, match="ref_index"):
    relative_poses(p, q, len(p))


def test_downsample_indices():
  t = 5.0 + np.arange(1200) * 0.05 + np.random.default_rng(0).normal(0, 0.002, 1200)
  idx = downsample_indices(t, 5)
  assert np.all(np.diff(idx) == 4) and idx[0] == 0 and len(idx) == 300
  with pytest.raises(ValueError, match="increasing"):
    downsample_indices(t[::-1], 5)


@pytest.mark.parametrize("use_vel", [True, False])
def test_plan_targets_on_circle(use_vel):
  v, r = 15.0, 100.0
  t, p, q, vel, calib = circle_drive(n=300, v=v, radius=r)
  plan, valid = plan_targets(t, p, q, calib=calib, velocities_ecef=vel if use_vel else None)
  assert plan.shape == (300, IDX_N, PLAN_WIDTH) and valid.shape == (300, IDX_N)
  # frame 0 sees the whole 10 s horizon; frame 250 (2.45 s before the end) only t <= 2.45 s
  assert valid[0].all() and valid[250].sum() == np.sum(T_IDXS <= t[-1] - t[250] + 1e-9) == 16
  th = v * T_IDXS / r
  i = 5   # interior frame (np.gradient is one-sided at the ends)
  pos, vel_p = plan[i, :, PLAN_SLICES["position"]], plan[i, :, PLAN_SLICES["velocity"]]
  acc, ori = plan[i, :, PLAN_SLICES["acceleration"]], plan[i, :, PLAN_SLICES["orientation"]]
  rate = plan[i, :, PLAN_SLICES["orientation_rate"]]
  tol = 1e-6 if use_vel else 0.02
  np.testing.assert_allclose(pos[:, 0], r * np.sin(th), atol=0.05)    # linear interpolation of chords
  np.testing.assert_allclose(pos[:, 1], -r * (1 - np.cos(th)), atol=0.05)
  np.testing.assert_allclose(vel_p[:, 0], v * np.cos(th), atol=max(tol, 0.02))
  np.testing.assert_allclose(vel_p[:, 1], -v * np.sin(th), atol=max(tol, 0.02))
  # centripetal acceleration v^2/r towards the centre (left) at t=0
  np.testing.assert_allclose(acc[0], [0, -v * v / r, 0], atol=0.05)
  np.testing.assert_allclose(ori[:, 2], -th, atol=1e-6)
  np.testing.assert_allclose(rate[:, 2], -v / r, atol=1e-6)
  assert np.abs(plan[:, :, PLAN_SLICES["position"]][..., 2]).max() < 1e-6   # level road in the car frame
  k = curvature_from_poses(t, vel, q, calib=calib)
  np.testing.assert_allclose(k, 1.0 / r, rtol=1e-6)                         # + left


def test_plan_targets_bad_input():
  t, p, q, vel, calib = circle_drive(n=50)
  with pytest.raises(ValueError, match="frame_times"):
    plan_targets(t[:-1], p, q)
  with pytest.raises(ValueError, match="velocities_ecef"):
    plan_targets(t, p, q, velocities_ecef=vel[:, :2])
  p_bad = p.copy(); p_bad[3, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    plan_targets(t, p_bad, q)


@pytest.mark.skipif(not REAL_SEG.exists(), reason="comma2k19 example segment not present")
def test_real_quaternion_is_device_frame_in_ecef():
  """comma2k19's frame_orientations rotate DEVICE coordinates (x fwd, y right, z down) into ECEF:
  the velocity seen through R^T points mostly along +x; through R (the other reading) it does not."""
  load = lambda name: load_npy(REAL_SEG / "global_pose" / name)
  q, v = load("frame_orientations"), load("frame_velocities")
  R = quat2rot(q)
  fast = np.linalg.norm(v, axis=1) > 5
  d_dev = np.einsum("nji,nj->ni", R, v)[fast]
  d_dev /= np.linalg.norm(d_dev, axis=1, keepdims=True)
  assert d_dev[:, 0].min() > 0.99
  d_other = np.einsum("nij,nj->ni", R, v)[fast]
  d_other /= np.linalg.norm(d_other, axis=1, keepdims=True)
  assert np.abs(d_other[:, 0]).max() < 0.95
  # and the view-frame reading (z forward) would put the travel direction on z, which it is not
  assert np.abs(d_dev[:, 2]).max() < 0.1
  cal = estimate_calibration(velocities_in_device_frame(v, q))
  plan, valid = plan_targets(load("frame_times"), load("frame_positions"), q, calib=cal.rpy, velocities_ecef=v)
  # straight-ish highway: 10 s ahead is 100-250 m forward, well under 10 m sideways, small height change
  fwd = plan[0, -1, 0]
  assert 100 < fwd < 250 and abs(plan[0, -1, 1]) < 10 and abs(plan[0, -1, 2]) < 5
  assert (~valid[-1, 1:]).all() and valid[-1, 0]
