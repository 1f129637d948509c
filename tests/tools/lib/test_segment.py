import shutil

import av
import numpy as np
import pytest

from tools.lib.segment import Segment, SegmentError, load_npy, scan_segments
from tools.lib.video import VideoError, VideoReader, write_hevc

W, H, N = 160, 120, 60


def pattern(i: int) -> np.ndarray:
  """Frame i: its index as 8 big black/white bit blocks on top, a moving green bar below."""
  img = np.zeros((H, W, 3), np.uint8)
  for b in range(8):
    if (i >> b) & 1:
      img[:60, b * 20:(b + 1) * 20] = 255
  x = (i * 5) % W
  img[70:, max(0, x - 10):x + 10, 1] = 220
  return img


def frame_index(img: np.ndarray) -> int:
  return sum(int(img[10:50, b * 20 + 5:b * 20 + 15].mean() > 128) << b for b in range(8))


def encode_default_x265(path, n=N):
  """libx265 defaults: open GOP (CRA + RASL), B-frames, scene-cut keyframes."""
  out = av.open(str(path), "w", format="hevc")
  s = out.add_stream("libx265", rate=20)
  s.width, s.height, s.pix_fmt = W, H, "yuv420p"
  s.options = {"x265-params": "keyint=15:log-level=error"}
  for i in range(n):
    for p in s.encode(av.VideoFrame.from_ndarray(pattern(i), format="rgb24")):
      out.mux(p)
  for p in s.encode():
    out.mux(p)
  out.close()


def save(path, arr):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as f:   # comma2k19 style: .npy without the extension
    np.save(f, arr)


def make_segment(root, name="0123456789abcdef|2020-01-01--00-00-00", num=3, encoder="write_hevc"):
  from tests.common.test_poses import circle_drive
  seg = root / name / str(num)
  t, p, q, v, _ = circle_drive(n=N)
  for k, a in dict(frame_times=t, frame_positions=p, frame_orientations=q, frame_velocities=v).items():
    save(seg / "global_pose" / k, a)
  save(seg / "processed_log/CAN/speed/t", t + 0.01)
  save(seg / "processed_log/CAN/speed/value", np.linalg.norm(v, axis=1)[:, None])
  if encoder == "write_hevc":
    write_hevc(seg / "video.hevc", (pattern(i) for i in range(N)), keyint=15)
  elif encoder == "x265_defaults":
    encode_default_x265(seg / "video.hevc")
  return seg


@pytest.fixture(scope="module")
def segs(tmp_path_factory):
  root = tmp_path_factory.mktemp("segs")
  return {enc: make_segment(root / enc, encoder=enc) for enc in ("write_hevc", "x265_defaults")}


@pytest.mark.parametrize("enc", ["write_hevc", "x265_defaults"])
def test_random_access_equals_sequential(segs, enc):
  seg = Segment(segs[enc])
  assert seg.route_name == "0123456789abcdef|2020-01-01--00-00-00" and seg.dongle_id == "0123456789abcdef"
  assert seg.segment_num == 3
  vr = seg.video
  assert len(vr) == N == seg.num_frames and (vr.width, vr.height) == (W, H) and vr.fps == 20
  np.testing.assert_allclose(vr.timestamps, seg.frame_times - seg.frame_times[0], atol=1e-9)
  seq = list(vr.frames())
  assert [frame_index(f) for f in seq] == list(range(N))
  assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in seq)
  rng = np.random.default_rng(0)
  order = list(rng.permutation(N)) + [N - 1, 0, 59, 58, 30, 31, 29, 14, 15, 16]
  fresh = VideoReader(seg.video_path)
  for i in order:
    img = fresh.frame(int(i))
    assert frame_index(img) == i
    np.testing.assert_array_equal(img, seq[i])   # bit-identical to the sequential decode
  assert frame_index(fresh.frame(-1)) == N - 1
  with pytest.raises(IndexError, match="out of range"):
    fresh.frame(N)
  if enc == "write_hevc":
    np.testing.assert_array_equal(vr.keyframes, [0, 15, 30, 45])


def test_truncated_video_names_file(tmp_path, segs):
  seg_dir = tmp_path / "r|1" / "0"
  shutil.copytree(segs["write_hevc"], seg_dir)
  v = seg_dir / "video.hevc"
  data = v.read_bytes()
  v.write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(SegmentError, match=r"video\.hevc.*frames but .*frame_times"):
    Segment(seg_dir).video
  v.write_bytes(data[:10])
  with pytest.raises(SegmentError, match=r"video\.hevc"):
    Segment(seg_dir).video
  v.write_bytes(b"")
  with pytest.raises(VideoError, match=r"video\.hevc"):
    VideoReader(v)
  with pytest.raises(VideoError, match="not found"):
    VideoReader(tmp_path / "nope.hevc")


def test_missing_and_corrupt_pose_files(tmp_path, segs):
  seg_dir = tmp_path / "r|1" / "0"
  shutil.copytree(segs["write_hevc"], seg_dir)
  (seg_dir / "global_pose/frame_positions").unlink()
  with pytest.raises(SegmentError, match=r"global_pose/frame_positions: missing"):
    Segment(seg_dir).positions
  f = seg_dir / "global_pose/frame_velocities"
  f.write_bytes(f.read_bytes()[:-100])
  with pytest.raises(SegmentError, match=r"frame_velocities: not a readable"):
    Segment(seg_dir).velocities
  save(seg_dir / "global_pose/frame_orientations", np.zeros((N, 3)))
  with pytest.raises(SegmentError, match=r"frame_orientations: expected shape \(N, 4\)"):
    Segment(seg_dir).orientations
  save(seg_dir / "global_pose/frame_orientations", np.ones((N, 4)))
  with pytest.raises(SegmentError, match=r"frame_orientations: quaternions are not unit"):
    Segment(seg_dir).orientations
  save(seg_dir / "global_pose/frame_positions", np.zeros((N - 1, 3)))
  with pytest.raises(SegmentError, match=r"frame_positions: 59 rows"):
    Segment(seg_dir).positions
  with pytest.raises(SegmentError, match=r"processed_log/CAN/steering_angle/t: missing"):
    Segment(seg_dir).can("steering_angle")
  t, v = Segment(seg_dir).can("speed")
  assert t.shape == v.shape == (N,)
  with pytest.raises(SegmentError, match="directory not found"):
    Segment(tmp_path / "nothing")
  # pickled object arrays are refused, not executed
  with open(tmp_path / "obj", "wb") as fh:
    np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
  with pytest.raises(SegmentError, match="obj: not a readable"):
    load_npy(tmp_path / "obj")


def test_ground_truth(tmp_path, segs):
  seg_dir = tmp_path / "r|1" / "0"
  shutil.copytree(segs["write_hevc"], seg_dir)
  assert Segment(seg_dir).ground_truth is None
  t = load_npy(seg_dir / "global_pose/frame_times")
  save(seg_dir / "ground_truth/frame_times", t)
  save(seg_dir / "ground_truth/lane_lines", np.zeros((N, 2, 33, 2)))
  save(seg_dir / "ground_truth/camera_focal", np.array(455.0))      # 0-d: a per-segment scalar
  gt = Segment(seg_dir).ground_truth
  assert set(gt) == {"frame_times", "lane_lines", "camera_focal"} and gt["lane_lines"].shape == (N, 2, 33, 2)
  save(seg_dir / "ground_truth/speed", np.zeros(N - 2))
  with pytest.raises(SegmentError, match=r"ground_truth/speed"):
    Segment(seg_dir).ground_truth
  (seg_dir / "ground_truth/speed").unlink()
  save(seg_dir / "ground_truth/frame_times", t[:-1])
  save(seg_dir / "ground_truth/lane_lines", np.zeros((N - 1, 2, 33, 2)))
  with pytest.raises(SegmentError, match=r"ground_truth/frame_times: 59 rows"):
    Segment(seg_dir).ground_truth


def test_scan_segments_counts_bad(tmp_path, segs):
  root = tmp_path / "dataset"
  good_src = segs["write_hevc"]
  for k in range(2):
    shutil.copytree(good_src, root / f"Chunk_1/abc|2020-01-0{k + 1}--00-00-00/0")
  trunc = root / "Chunk_1/abc|2020-02-01--00-00-00/1"
  shutil.copytree(good_src, trunc)
  (trunc / "video.hevc").write_bytes((trunc / "video.hevc").read_bytes()[:3000])
  missing = root / "Chunk_2/def|2020-03-01--00-00-00/7"
  shutil.copytree(good_src, missing)
  (missing / "global_pose/frame_times").unlink()
  good, bad = scan_segments(root, progress=False)
  assert len(good) == 2 and len(bad) == 2
  reasons = dict(bad)
  assert "video.hevc" in reasons[trunc] and "frame_times" in reasons[missing]
  with pytest.raises(SegmentError, match="dataset root not found"):
    scan_segments(tmp_path / "none")


def test_reader_pickles_for_worker_processes(segs):
  import pickle
  vr = VideoReader(segs["write_hevc"] / "video.hevc")
  vr.frame(40)
  vr2 = pickle.loads(pickle.dumps(vr))
  assert len(vr2) == N and frame_index(vr2.frame(33)) == 33 and frame_index(vr.frame(41)) == 41
  seg = Segment(segs["write_hevc"])
  seg.video
  seg2 = pickle.loads(pickle.dumps(seg))
  assert frame_index(seg2.video.frame(7)) == 7


def test_segment_info_on_generated_segment(segs, tmp_path):
  from tools.lib import segment_info
  seg = Segment(segs["write_hevc"])
  info = segment_info.summarize(seg)
  assert info["frames"] == N and info["video_frames"] == N and not info["has_ground_truth"]
  assert info["speed_vs_can"]["rms_m_s"] < 0.01               # CAN = |v| in the fixture
  assert "gyro_vs_pose" not in info and "curvature_vs_steer" not in info
  # the fixture's mounting (pitch 0.05, yaw -0.02 rad) is recovered
  assert info["calibration"]["pitch_deg"] == pytest.approx(np.degrees(0.05), abs=1e-6)
  assert info["calibration"]["yaw_deg"] == pytest.approx(np.degrees(-0.02), abs=1e-6)
  with pytest.raises(SegmentError, match="expected the EON's 1164x874"):
    segment_info.save_warp(seg, np.zeros(3), tmp_path / "w.png")


@pytest.mark.parametrize("enc", ["write_hevc", "x265_defaults"])
@pytest.mark.parametrize("cut", ["end50", "start200"])
def test_damaged_video_frames_are_refused_never_wrong(tmp_path, segs, enc, cut):
  from tools.lib import segment_info
  from tools.lib.video import CorruptFrameError
  seg_dir = tmp_path / "r|1" / "0"
  shutil.copytree(segs[enc], seg_dir)
  v = seg_dir / "video.hevc"
  data = v.read_bytes()
  v.write_bytes(data[:-50] if cut == "end50" else data[200:])
  vr = VideoReader(v)
  n = len(vr)
  assert n >= N - 1                                     # the frame count alone does not reveal the damage
  refused = []
  for i in list(range(n)) + [3, 40, 1]:                 # sequential, then random access
    try:
      img = vr.frame(i)
    except CorruptFrameError as e:
      assert str(v) in str(e) and f"frame {i}" in str(e)
      refused.append(i)
      continue
    assert frame_index(img) == i and np.abs(img.astype(int) - pattern(i)).mean() < 12, i   # a frame given is right
  assert refused                                        # the damage was noticed
  damaged = vr.damaged_frames()
  assert set(damaged) == set(refused)
  if n == N:
    info = segment_info.summarize(Segment(seg_dir))
    assert info["video_damaged_frames"] == len(damaged) and info["video_damaged_frame_indices"] == damaged


def test_intact_video_has_no_damaged_frames(segs):
  for enc in ("write_hevc", "x265_defaults"):
    assert VideoReader(segs[enc] / "video.hevc").damaged_frames() == []
