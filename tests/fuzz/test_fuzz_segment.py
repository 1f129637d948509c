"""Segment and video readers on damaged files: a segment's arrays truncated, bit-flipped or replaced give a
SegmentError naming a file (or a valid summary whose JSON is strict), never another exception; a damaged video
gives VideoError/CorruptFrameError or right frames, and every frame of a GOP wholly before the damage comes
back unchanged."""
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tools.lib.test_segment import make_segment
from tools.lib import segment_info
from tools.lib.segment import Segment, SegmentError
from tools.lib.video import VideoError, VideoReader

pytestmark = pytest.mark.timeout(180)

NPY_FILES = ["global_pose/frame_times", "global_pose/frame_positions", "global_pose/frame_orientations",
             "global_pose/frame_velocities", "processed_log/CAN/speed/t", "processed_log/CAN/speed/value"]


@pytest.fixture(scope="module")
def seg_src(tmp_path_factory):
  seg = make_segment(tmp_path_factory.mktemp("seg"))
  vr = VideoReader(seg / "video.hevc")
  frames = [vr.frame(i) for i in range(len(vr))]
  return seg, frames, vr._offsets, vr.keyframes


@settings(max_examples=40)
@given(st.sampled_from(NPY_FILES), st.sampled_from(["truncate", "flip", "replace"]), st.integers(0, 10 ** 6),
       st.binary(max_size=256))
def test_damaged_arrays(seg_src, tmp_path_factory, name, op, pos, junk):
  src = seg_src[0]
  seg = tmp_path_factory.mktemp("s") / "d|r" / "0"
  shutil.copytree(src, seg, ignore=shutil.ignore_patterns("video.hevc"))
  p = seg / name
  data = bytearray(p.read_bytes())
  if op == "truncate":
    data = data[: pos % (len(data) + 1)]
  elif op == "flip":
    data[pos % len(data)] ^= 0xFF
  else:
    data = bytearray(junk)
  p.write_bytes(bytes(data))
  try:
    info = segment_info.summarize(Segment(seg))
  except SegmentError as e:
    assert str(seg) in str(e)
    return
  json.dumps(segment_info.json_safe(info), allow_nan=False)


@settings(max_examples=25)
@given(st.sampled_from(["truncate", "flip", "zero_run"]), st.integers(0, 10 ** 6), st.integers(1, 64))
def test_damaged_video(seg_src, tmp_path_factory, op, pos, n):
  src, frames, offsets, keys = seg_src
  data = bytearray((src / "video.hevc").read_bytes())
  pos = pos % len(data)
  if op == "truncate":
    data = data[:pos]
  elif op == "flip":
    data[pos] ^= 0xFF
  else:
    data[pos:pos + n] = bytes(len(data[pos:pos + n]))
  path = tmp_path_factory.mktemp("v") / "video.hevc"
  path.write_bytes(bytes(data))
  # frames of GOPs whose packets (and the next seek point's) all lie before the damage are intact
  packet = int(np.searchsorted(offsets, pos, side="right")) - 1
  gop_start = max([k for k in keys if k <= packet], default=0)
  intact = gop_start if packet >= 0 else 0
  try:
    vr = VideoReader(path)
  except VideoError:
    assert intact <= 1 or op == "truncate" and pos < offsets[1]
    return
  for i in list(range(min(len(vr), len(frames)))):
    try:
      img = vr.frame(i)
    except VideoError:
      assert i >= intact, f"frame {i} before the damaged GOP (starts {intact}) was refused"
      continue
    if i < intact:
      assert np.array_equal(img, frames[i]), i
  vr.damaged_frames()
