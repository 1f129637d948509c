"""Generated segments: comma2k19 layout read unchanged by tools/lib/segment.Segment, ECEF poses that
round-trip to the sim's world poses, calibration/speed/curvature consistent with the labels, cereal log."""
import json
from pathlib import Path

import numpy as np
import pytest

from common.calibration import estimate_calibration, velocities_in_device_frame
from common.poses import curvature_from_poses
from common.transformations.coordinates import LocalCoord
from common.transformations.orientation import euler2rot, quat2rot
from tools.lib.segment import Segment
from tools.sim.generate import main, parse_resolution
from tools.sim.ground_truth import FIELDS, load_ground_truth

REAL = Path(__file__).resolve().parents[3] / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


@pytest.fixture(scope="module")
def segment_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("gen")
  assert main(["--out", str(out), "--segments", "2", "--seed", "3", "--duration", "4", "--resolution", "256x128",
               "--workers", "2"]) == 0
  segs = sorted(out.glob("*/0"))
  assert len(segs) == 2 and all("|" in p.parent.name for p in segs)
  return segs[0]


def test_segment_reader_reads_generated_segment(segment_dir):
  seg = Segment(segment_dir)
  seg.validate()
  assert seg.num_frames == 80 and len(seg.video) == 80
  assert seg.video.width == 256 and seg.video.height == 128
  f = seg.video.frame(40)
  assert f.shape == (128, 256, 3) and f.std() > 10
  cam = json.loads((segment_dir / "camera.json").read_text())
  assert cam["width"] == 256 and cam["height"] == 128 and cam["focal"] == pytest.approx(910 * 256 / 1164)
  t, v = seg.can("speed")
  gt = seg.ground_truth
  assert set(FIELDS) <= set(gt)
  assert np.allclose(np.interp(seg.frame_times, t, v), gt["speed"], atol=0.1)
  assert np.array_equal(load_ground_truth(segment_dir / "ground_truth")["frame_times"], seg.frame_times)
  ta, acc = seg.imu("accelerometer")
  assert acc.shape[1] == 3 and np.mean(acc[:, 2]) == pytest.approx(-9.81, abs=0.3)   # like real data: z down
  if REAL.exists():   # same array layout as real comma2k19
    real = Segment(REAL)
    assert real.orientations.shape[1:] == seg.orientations.shape[1:]
    assert np.load(REAL / "processed_log/CAN/speed/value").ndim == np.load(segment_dir / "processed_log/CAN/speed/value").ndim


def test_ecef_poses_round_trip_to_world_poses(segment_dir):
  seg = Segment(segment_dir)
  gt = seg.ground_truth
  # the local NED origin is not stored; recover it from the first frame and check the whole track
  local = LocalCoord.from_ecef(seg.positions[0]
                               - (LocalCoord.from_ecef(seg.positions[0]).ecef_from_ned_matrix @ gt["pose_world"][0, :3]))
  ned = local.ecef2ned(seg.positions)
  assert np.abs(ned - gt["pose_world"][:, :3]).max() < 0.05
  R_ned_dev = local.ned_from_ecef_matrix @ quat2rot(seg.orientations)
  assert np.abs(R_ned_dev - euler2rot(gt["pose_world"][:, 3:])).max() < 1e-3
  # speed from frame_velocities, zero calibration, curvature from poses = executed curvature
  assert np.allclose(np.linalg.norm(seg.velocities, axis=1), gt["speed"], atol=1e-6)
  cal = estimate_calibration(velocities_in_device_frame(seg.velocities, seg.orientations))
  assert abs(cal.pitch_deg) < 0.2 and abs(cal.yaw_deg) < 0.5
  k = curvature_from_poses(seg.frame_times, seg.velocities, seg.orientations)
  assert np.nanmax(np.abs(k[2:-2] - gt["curvature"][2:-2])) < 1e-3


def test_rlog_has_the_drive(segment_dir):
  from tools.lib.logreader import LogReader
  counts = {}
  gts = []
  for ev in LogReader(segment_dir / "rlog.zst"):
    w = ev.which()
    counts[w] = counts.get(w, 0) + 1
    if w == "groundTruth":
      gts.append(ev.groundTruth.lateralOffset)
  assert counts["carState"] == counts["roadCameraState"] == counts["groundTruth"] == 80
  assert np.allclose(gts, Segment(segment_dir).ground_truth["lateral_offset"], atol=1e-5)


def test_determinism_per_seed(segment_dir, tmp_path):
  assert main(["--out", str(tmp_path), "--segments", "1", "--seed", "3", "--duration", "4", "--resolution", "256x128"]) == 0
  other = next(tmp_path.glob("*/0"))
  assert other.parent.name == segment_dir.parent.name
  a, b = Segment(segment_dir).ground_truth, Segment(other).ground_truth
  for k in FIELDS:
    assert np.array_equal(a[k], b[k]), k
  assert np.array_equal(Segment(segment_dir).positions, Segment(other).positions)


def test_bad_arguments(tmp_path):
  import argparse
  with pytest.raises(argparse.ArgumentTypeError, match="resolution"):
    parse_resolution("12x")
  with pytest.raises(argparse.ArgumentTypeError, match="even"):
    parse_resolution("255x128")
  with pytest.raises(SystemExit):
    main(["--out", str(tmp_path), "--segments", "0"])


def test_wandering_driver_varies_the_yaw_rate_more():
  from tools.sim.driver import HumanDriverConfig
  from tools.sim.generate import simulate
  from tools.sim.road import RoadConfig
  from tools.sim.world import WorldConfig
  base = HumanDriverConfig()
  w = base.wandering(6.0)
  assert (w.weave_std, w.drift_curv, w.curv_noise_std) == pytest.approx((6 * base.weave_std, 6 * base.drift_curv,
                                                                          6 * base.curv_noise_std))
  assert (w.cruise, w.lookahead_time) == (base.cruise, base.lookahead_time)
  with pytest.raises(ValueError):
    base.wandering(0.0)
  change = []
  for cfg in (base, w):   # same world, same seed: only the driver differs
    yaw = simulate(7, 12.0, None, WorldConfig(road=RoadConfig(length=900.0)), driver_cfg=cfg)["states"][:, 3]
    change.append(np.std(yaw[4:] - yaw[:-4]))   # yaw-rate change over 0.2 s
  assert change[1] > 2 * change[0], change


def test_mount_yaw_process_statistics():
  from tools.sim.generate import mount_yaw
  rng = np.random.default_rng(0)
  y = mount_yaw(40000, 0.02, 0.1, 0.05, rng)
  assert np.std(y) == pytest.approx(0.02, rel=0.05)
  assert abs(np.mean(y)) < 0.002
  lag1 = np.corrcoef(y[:-1], y[1:])[0, 1]          # 0.05 s: exp(-0.5)
  lag4 = np.corrcoef(y[:-4], y[4:])[0, 1]          # the world model's 0.2 s: exp(-2), nearly independent
  assert lag1 == pytest.approx(np.exp(-0.5), abs=0.03) and lag4 == pytest.approx(np.exp(-2.0), abs=0.03)
  assert not np.any(mount_yaw(10, 0.0, 0.1, 0.05, rng))
  with pytest.raises(ValueError):
    mount_yaw(10, 0.02, 0.0, 0.05, rng)


def test_camera_shake_turns_the_camera_not_the_car(tmp_path):
  """Same seed with and without a loose mount: the car drives the same, the logged device yaw differs by the mount
  yaw, the IMU's yaw rate follows the device, device-frame labels turn with it, and the image shifts by focal*tan."""
  import cv2

  from common.transformations.camera import CameraConfig
  from tools.sim.generate import write_segment
  cam = CameraConfig(256, 128, 910 * 256 / 1164)
  paths = [write_segment(tmp_path / name, 5, 0, 3.0, cam, camera_shake_deg=shake)
           for name, shake in (("a", 0.0), ("b", 2.0))]
  a, b = Segment(paths[0]), Segment(paths[1])
  ga, gb = a.ground_truth, b.ground_truth
  assert np.allclose(ga["pose_world"][:, :5], gb["pose_world"][:, :5]) and np.array_equal(ga["speed"], gb["speed"])
  assert np.array_equal(ga["heading_error"], gb["heading_error"])               # the car's own heading
  dyaw = gb["pose_world"][:, 5] - ga["pose_world"][:, 5]
  assert 0.01 < np.std(dyaw) < 0.06 and np.abs(dyaw).max() > 0.02                 # ~2 degrees of mount yaw
  # true velocity unchanged (ECEF), its direction in the device frame turned by the mount yaw
  assert np.allclose(a.velocities, b.velocities, atol=1e-6)
  # gyro z (down), averaged over each frame interval, is the device's NED yaw rate over that interval
  tg, gyro = b.imu("gyro")
  ft, yaw = b.frame_times, np.unwrap(gb["pose_world"][:, 5])
  rate = np.array([gyro[(tg > ft[i]) & (tg < ft[i + 1]), 2].mean() for i in range(len(ft) - 1)])
  expect = np.diff(yaw) / np.diff(ft)
  assert np.abs(expect).max() > 0.3 and np.abs(rate - expect).max() < 0.02
  # the path label (device frame) turned: y at 20 m changes by ~ -20 m * tan(dyaw)
  k = int(np.argmax(np.abs(dyaw)))
  x = ga["path"][k, :, 0]
  ya, yb = np.interp(20.0, x, ga["path"][k, :, 1]), np.interp(20.0, x, gb["path"][k, :, 1])
  assert yb - ya == pytest.approx(-20.0 * np.tan(dyaw[k]), abs=0.1)
  # the image: content moves left when the camera yaws right (+)
  fa = cv2.cvtColor(a.video.frame(k), cv2.COLOR_RGB2GRAY).astype(np.float32)
  fb = cv2.cvtColor(b.video.frame(k), cv2.COLOR_RGB2GRAY).astype(np.float32)
  shift = cv2.phaseCorrelate(fa, fb)[0][0]
  assert shift == pytest.approx(-cam.focal * np.tan(dyaw[k]), abs=1.5), (shift, dyaw[k])


def test_camera_shake_argument_is_checked(tmp_path):
  with pytest.raises(SystemExit):
    main(["--out", str(tmp_path), "--camera-shake", "-1"])


@pytest.mark.parametrize("extra", [["--duration", "nan"], ["--duration", "inf"], ["--resolution", "2x2"],
                                   ["--focal", "-5"], ["--focal", "nan"], ["--wander", "nan"],
                                   ["--lane-change-every", "0.5"], ["--lane-change-every", "nan"],
                                   ["--cruise", "20,10"], ["--cruise", "25"], ["--cruise", "10,40"], ["--cruise", "0,20"],
                                   ["--lead-prob", "1.5"], ["--lead-prob", "nan"]])
def test_bad_arguments_are_usage_errors_before_simulating(tmp_path, capsys, extra):
  with pytest.raises(SystemExit) as e:
    main(["--out", str(tmp_path / "out"), *extra])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert extra[0] in err
  assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused_up_front(tmp_path, capsys):
  f = tmp_path / "afile"
  f.write_text("x")
  for out in (f, f / "sub"):
    with pytest.raises(SystemExit) as e:
      main(["--out", str(out), "--duration", "1"])
    assert e.value.code == 2
    assert "is a file" in capsys.readouterr().err


def _lane_change_drive(every: float) -> dict:
  """Labels of a 30 s drive on a free 3-lane road with the driver's mean lane-change interval `every` (s)."""
  from tools.sim.driver import HumanDriverConfig
  from tools.sim.generate import simulate
  from tools.sim.road import RoadConfig
  from tools.sim.world import TrafficConfig, WorldConfig
  world = WorldConfig(road=RoadConfig(length=2000.0, n_lanes=3, ego_lane=1), traffic=TrafficConfig(enabled=False))
  return simulate(5, 30.0, None, world, driver_cfg=HumanDriverConfig(lane_change_every=every))["gt"]


@pytest.fixture(scope="module")
def frequent_lane_changes():
  return _lane_change_drive(3.0)


def test_lane_change_interval_sets_how_often_the_driver_changes_lanes(frequent_lane_changes):
  def onsets(gt):
    lane_change = gt["desire"] != 0
    return int(np.count_nonzero(lane_change[1:] & ~lane_change[:-1]) + lane_change[0]), lane_change.mean()
  never, _ = onsets(_lane_change_drive(1e5))
  often, frac = onsets(frequent_lane_changes)
  assert never == 0
  # the desire lasts until the car enters the new lane (~half of a 4-6.5 s change), the next change comes 3 s + an
  # exponential wait after the last one settled
  assert often >= 2 and frac > 0.15, (often, frac)


def test_logged_desire_ends_when_the_car_enters_the_target_lane(frequent_lane_changes):
  gt = frequent_lane_changes
  on = gt["desire"] != 0
  target_offset = np.abs(gt["path"][:, 0, 1])      # the target lane's centre beside the car (x = 0)
  half = 0.5 * gt["lane_width"]
  assert on.any() and (~on).any()
  assert np.all(target_offset[on] >= half[on] - 0.05)   # with a desire, the car is still outside its target lane
  ends = np.flatnonzero(on[:-1] & ~on[1:]) + 1
  assert len(ends) >= 1 and np.all(target_offset[ends] < half[ends])
  # the driver carries on to the new lane's centre with desire none: it is still well off it when the desire ends
  assert np.all(target_offset[ends] > 0.8), target_offset[ends]


def test_cruise_range_and_lead_prob_reach_the_logged_drive(tmp_path):
  """--cruise 30,30 --lead-prob 0: the car starts at 0.9 x 30 m/s and speeds up to 30, with nothing ahead to slow it."""
  assert main(["--out", str(tmp_path), "--duration", "4", "--resolution", "64x32", "--cruise", "30,30",
               "--lead-prob", "0", "--seed", "4"]) == 0
  _, v = Segment(next(tmp_path.glob("*/0"))).can("speed")
  v = np.ravel(v)
  assert v.min() > 26.5 and v.max() < 30.5 and v[-10:].mean() > v[:10].mean() + 0.5, (v.min(), v.max())


def test_a_lead_car_is_drawn_around_the_ego_cars_own_start_speed():
  """The lead's desired speed is the start speed (0.9 x cruise) + U(-6, 3) m/s, also for a fast driver."""
  from tools.sim.driver import HumanDriverConfig
  from tools.sim.generate import simulate
  from tools.sim.road import RoadConfig
  from tools.sim.world import TrafficConfig, WorldConfig
  cfg = WorldConfig(road=RoadConfig(length=600.0), traffic=TrafficConfig(lead_prob=1.0))
  v_start = 0.9 * 32.0
  for seed in range(8):
    world = simulate(seed, 1.0, None, cfg, driver_cfg=HumanDriverConfig(cruise=(32.0, 32.0)))["world"]
    leads = [c for c in world.cars if c.lane == world.road.ego_lane]
    assert len(leads) == 1
    assert v_start - 6.0 <= leads[0].v0 <= v_start + 3.0, (seed, leads[0].v0)
