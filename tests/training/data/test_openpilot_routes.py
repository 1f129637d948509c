"""Training on what a device records: an openpilot route (rlog with livePose and carState, fcamera.hevc) reads into
the same poses, signals, camera, calibration and policy targets as the comma2k19 twin of the same simulated drive."""
from pathlib import Path

import numpy as np
import pytest

from cereal.logwriter import LogWriter
from common.poses import plan_targets, relative_poses
from tools.lib.logreader import LogReader
from tools.lib.route import OpenpilotSegment, open_segment, route_of, scan_segments
from tools.lib.segment import Segment, SegmentError
from tools.sim.generate import main as generate
from training.data.segments import find_segments, segment_calibration, segment_camera
from training.policy.data import load_segment
from training.policy.model import get_config


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
  """The same simulated drive (seed 5, 8 s) in both layouts: (openpilot segment, comma2k19 segment, root)."""
  root = tmp_path_factory.mktemp("twins")
  for fmt in ("openpilot", "comma2k19"):
    assert generate(["--out", str(root / fmt), "--seed", "5", "--duration", "8", "--resolution", "128x64",
                     "--format", fmt]) == 0
  op, ck = (open_segment(find_segments(root / fmt)[0]) for fmt in ("openpilot", "comma2k19"))
  assert isinstance(op, OpenpilotSegment) and isinstance(ck, Segment)
  return op, ck, root


def test_poses_signals_camera_and_calibration_match_the_comma2k19_twin(twins):
  op, ck, _ = twins
  assert op.num_frames == ck.num_frames == 160
  np.testing.assert_allclose(op.frame_times, ck.frame_times, atol=1e-6)
  for ref in (0, 80, 159):      # livePose integrated in NED vs the simulator's ECEF poses: only relative poses matter
    a = relative_poses(op.positions, op.orientations, ref)
    b = relative_poses(ck.positions, ck.orientations, ref)
    assert np.abs(a[:, :3] - b[:, :3]).max() < 0.05 and np.abs(a[:, 3:] - b[:, 3:]).max() < 1e-6
  pa, va = plan_targets(op.frame_times, op.positions, op.orientations, velocities_ecef=op.velocities)
  pb, vb = plan_targets(ck.frame_times, ck.positions, ck.orientations, velocities_ecef=ck.velocities)
  assert (va == vb).all() and va.sum() > 0 and np.abs(pa - pb)[va].max() < 0.05
  for name, tol in (("speed", 0.05), ("steering_angle", 0.1)):          # carState vs 100 Hz CAN (with its noise)
    ta, xa = op.can(name)
    tb, xb = ck.can(name)
    assert np.abs(np.interp(tb, ta, xa) - xb).max() < tol, name
  for name, tol in (("gyro", 0.02), ("accelerometer", 0.3)):            # livePose vs the 100 Hz IMU (with its noise)
    ta, xa = op.imu(name)
    tb, xb = ck.imu(name)
    assert np.abs(np.stack([np.interp(tb, ta, xa[:, k]) for k in range(3)], -1) - xb).max() < tol, name
  assert segment_camera(op).focal == pytest.approx(segment_camera(ck).focal, rel=1e-6)   # roadCameraInfo
  np.testing.assert_array_equal(segment_calibration(op), np.zeros(3))                    # liveCalibration
  assert op.ground_truth is None and not op.has_log("CAN", "wheel_speed")
  with pytest.raises(SegmentError, match="wheel_speed"):
    op.can("wheel_speed")


def test_both_layouts_are_found_split_by_route_and_load_for_the_policy(twins, tmp_path):
  op, ck, root = twins
  assert find_segments(root) == sorted([ck.path, op.path])
  assert route_of(op.path) == route_of(ck.path) == ck.path.parent.name     # one drive, one route, one split
  assert {len(find_segments(root, s)) for s in ("train", "val")} <= {0, 2}
  cfg = get_config("tiny")
  a, b = load_segment(op.path, cfg, tmp_path / "cache"), load_segment(ck.path, cfg, tmp_path / "cache")
  assert a.frames.shape == b.frames.shape and a.plan.shape == b.plan.shape
  assert (a.plan_valid == b.plan_valid).all() and np.abs(a.plan - b.plan)[a.plan_valid].max() < 0.05
  # the same pictures (one HEVC encode each; the frames differ by compression only)
  assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 3.0
  assert not a.has_lanes and b.has_lanes      # labels come only from the simulator's comma2k19 files


def _rewrite_without(src: Path, dst_root: Path, drop) -> Path:
  """A copy of an openpilot segment whose rlog lacks the events drop(event) selects."""
  dst = dst_root / src.name
  dst.mkdir(parents=True)
  for f in src.iterdir():
    if f.name != "rlog.zst":
      (dst / f.name).write_bytes(f.read_bytes())
  with LogWriter(dst / "rlog.zst") as w:
    for ev in LogReader(src / "rlog.zst"):
      if not drop(ev):
        w.write(ev.as_builder())
  return dst


def test_a_route_without_usable_poses_is_refused_with_the_reason(twins, tmp_path):
  op, _, _ = twins
  no_pose = _rewrite_without(op.path, tmp_path / "a", lambda ev: ev.which() == "livePose")
  seg = OpenpilotSegment(no_pose)
  seg.validate()                                  # still a good route to replay
  with pytest.raises(SegmentError, match="no valid livePose"):
    seg.positions
  good, bad = scan_segments(tmp_path / "a", progress=False)
  assert good == [] and bad[0][0] == no_pose and "livePose" in bad[0][1]
  t_mid = op.frame_times[0] + 3.0
  gap = _rewrite_without(op.path, tmp_path / "b", lambda ev: ev.which() == "livePose" and
                         t_mid < ev.logMonoTime * 1e-9 < t_mid + 1.0)
  with pytest.raises(SegmentError, match="gap"):
    OpenpilotSegment(gap).positions
