"""openpilot's route layout: tools.sim.generate --format openpilot writes it, tools/lib/route.py reads it (and
comma2k19's), camera frames are matched to log messages through the encode-index messages."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from cereal.logwriter import LogWriter
from cereal.messaging import new_message
from tools.lib.logreader import LogReader
from tools.lib.route import OpenpilotSegment, find_segments, open_segment, parse_segment_name
from tools.lib.segment import Segment, SegmentError
from tools.lib.video import VideoReader, write_hevc
from tools.sim.generate import main

REAL = Path(__file__).resolve().parents[3] / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


@pytest.fixture(scope="module")
def op_root(tmp_path_factory):
  out = tmp_path_factory.mktemp("oproute")
  assert main(["--out", str(out), "--segments", "1", "--seed", "5", "--duration", "2", "--resolution", "128x64",
               "--format", "openpilot", "--car", "TOYOTA_RAV4"]) == 0
  return out


def test_segment_names():
  assert parse_segment_name("2026-01-01--12-00-00--3") == ("", "2026-01-01--12-00-00", 3)
  assert parse_segment_name("a2a0ccea32023010|2026-01-01--12-00-00--12") == ("a2a0ccea32023010", "2026-01-01--12-00-00", 12)
  assert parse_segment_name("a2a0ccea32023010_0000002a--3e6fa9b1c2--0") == ("a2a0ccea32023010", "0000002a--3e6fa9b1c2", 0)
  assert parse_segment_name("40") is None and parse_segment_name("foo--3") is None


def test_generate_writes_the_device_layout(op_root):
  (seg_dir,) = list(op_root.iterdir())
  assert "|" in seg_dir.name and seg_dir.name.endswith("--0")
  assert {p.name for p in seg_dir.iterdir()} == {"rlog.zst", "qlog.zst", "fcamera.hevc"}
  seg = OpenpilotSegment(seg_dir)
  seg.validate()                                      # 40 frames in fcamera.hevc, 40 roadEncodeIdx
  kinds = [e.which() for e in seg.events()]
  assert kinds[:2] == ["initData", "carParams"]
  assert kinds.count("roadCameraState") == kinds.count("roadEncodeIdx") == kinds.count("carState") == 40
  assert kinds.count("liveCalibration") == 8
  assert seg.events()[1].carParams.carFingerprint == "TOYOTA_RAV4"
  # qlog: loggerd's decimation (carState every 10th, roadCameraState every 20th)
  q = [e.which() for e in LogReader(seg_dir / "qlog.zst")]
  assert q.count("carState") == 4 and q.count("roadCameraState") == 2 and q[0] == "initData"
  assert isinstance(open_segment(seg_dir), OpenpilotSegment)


def test_frames_match_messages_through_the_encode_index(op_root):
  seg = OpenpilotSegment(next(op_root.iterdir()))
  fi = seg.frame_index("fcamera")
  assert len(fi) == 40 and list(fi.segment_id) == list(range(40))
  states = seg.camera_states("fcamera")
  assert [i for i, _ in states] == [e.roadCameraState.frameId for _, e in states] == list(range(40))
  with VideoReader(seg.camera_path("fcamera")) as v:
    np.testing.assert_array_equal(seg.frame(17), v.frame(17))
    assert v.width == 128 and v.height == 64


def _synthetic_segment(root: Path, drop_from_video: int, encode=True) -> Path:
  """Camera frames 100..105; frame `drop_from_video` was never encoded, so the file holds 5 pictures whose
  brightness encodes their frame id."""
  seg = root / "a2a0ccea32023010|2026-02-03--04-05-06--7"
  seg.mkdir(parents=True)
  ids = [f for f in range(100, 106) if f != drop_from_video]
  write_hevc(seg / "fcamera.hevc", [np.full((64, 64, 3), 40 * (f - 100), np.uint8) for f in ids], crf=10)
  with LogWriter(seg / "rlog.bz2") as lw:
    lw.write(new_message("initData"))
    for f in range(100, 106):
      m = new_message("roadCameraState")
      m.roadCameraState.frameId = f
      lw.write(m)
      if encode and f != drop_from_video:
        m = new_message("roadEncodeIdx")
        e = m.roadEncodeIdx
        e.frameId, e.segmentNum, e.segmentId, e.type = f, 7, ids.index(f), "fullHEVC"
        lw.write(m)
  return seg


def test_dropped_frame_is_not_matched_to_the_next_picture(tmp_path):
  seg = OpenpilotSegment(_synthetic_segment(tmp_path, drop_from_video=103))
  assert seg.dongle_id == "a2a0ccea32023010" and seg.segment_num == 7 and seg.log_path.name == "rlog.bz2"
  states = seg.camera_states()
  assert [(i, e.roadCameraState.frameId) for i, e in states] == [(0, 100), (1, 101), (2, 102), (-1, 103), (3, 104), (4, 105)]
  assert abs(float(seg.frame(104).mean()) - 160) < 6      # the picture of frame 104, not 103's slot
  with pytest.raises(KeyError, match="103"):
    seg.frame(103)
  seg.validate()


def test_broken_segments_give_clear_errors(tmp_path, op_root):
  with pytest.raises(SegmentError, match="roadEncodeIdx"):
    OpenpilotSegment(_synthetic_segment(tmp_path / "a", 103, encode=False)).frame_index()
  # a video cut short: the log promises 40 frames
  src = next(op_root.iterdir())
  cut = tmp_path / "b" / src.name
  shutil.copytree(src, cut)
  with VideoReader(src / "fcamera.hevc") as v:
    write_hevc(cut / "fcamera.hevc", [v.frame(i) for i in range(20)])
  with pytest.raises(SegmentError, match="20 frames in the file but 40 roadEncodeIdx"):
    OpenpilotSegment(cut).validate()
  with pytest.raises(SegmentError, match="segment folder name"):
    OpenpilotSegment(tmp_path)
  empty = tmp_path / "2026-01-01--00-00-00--0"
  empty.mkdir()
  with pytest.raises(SegmentError, match="no log file"):
    OpenpilotSegment(empty)


def test_find_segments_lists_both_layouts(tmp_path, op_root):
  src = next(op_root.iterdir())
  shutil.copytree(src, tmp_path / "routes" / src.name)
  shutil.copytree(src, tmp_path / "routes" / src.name.replace("--0", "--1"))
  k2k = tmp_path / "routes" / "b0c9d2329ad1606b|2018-08-02--08-34-47" / "40"
  if REAL.exists():
    shutil.copytree(REAL, k2k)
  else:   # the minimum a comma2k19 folder has
    (k2k / "global_pose").mkdir(parents=True)
  found = find_segments(tmp_path / "routes")
  names = [p.name for p in found]
  assert names[-2:] == [src.name, src.name.replace("--0", "--1")] or names[:2] == [src.name, src.name.replace("--0", "--1")]
  assert "40" in names and len(found) == 3
  assert isinstance(open_segment(k2k), Segment)
