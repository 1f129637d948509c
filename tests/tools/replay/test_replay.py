"""tools.replay: loads the three segment layouts, plays them back in (loosely checked) real time through cereal and
VisionIPC with the logged frame ids/timestamps, and takes openpilot's replay keys through one function."""
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tools.replay.replay import Replay, ReplayError, load_segment

REPO = Path(__file__).resolve().parents[3]
REAL = REPO / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"


def _generate(out: Path, fmt: str) -> Path:
  r = subprocess.run([sys.executable, "-m", "tools.sim.generate", "--out", str(out), "--duration", "2",
                      "--resolution", "128x64", "--format", fmt], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  return next(p for p in out.rglob("*") if p.is_dir() and (p / "rlog.zst").is_file())


@pytest.fixture(scope="module")
def sim_segments(tmp_path_factory):
  root = tmp_path_factory.mktemp("replay_segs")
  return {"rlog": _generate(root / "ours", "comma2k19"), "openpilot": _generate(root / "op", "openpilot")}


def test_loads_our_rlog_and_openpilot_layouts(sim_segments):
  for layout, path in sim_segments.items():
    seg = load_segment(path)
    assert seg.layout == layout and seg.video_path is not None
    cams = [e for e in seg.events if e.service == "roadCameraState"]
    assert len(cams) == 40 and [e.frame for e in cams] == list(range(40))
    assert [e.frame_id for e in cams] == list(range(40))
    assert all(e.eof > e.sof > 0 for e in cams)
    assert {"carState", "roadCameraState"} <= set(seg.services) and "initData" not in seg.services
    assert all(a.t_ns <= b.t_ns for a, b in zip(seg.events, seg.events[1:]))
    assert abs(seg.duration_s - 1.95) < 0.2


def test_comma2k19_messages_are_synthesised_from_poses_and_can():
  from cereal.messaging import log_from_bytes
  from tools.lib.segment import Segment
  seg = load_segment(REAL)
  raw = Segment(REAL)
  assert seg.layout == "comma2k19" and seg.video_path is None      # this real segment ships no video
  cams = [e for e in seg.events if e.service == "roadCameraState"]
  cars = [log_from_bytes(e.data).carState for e in seg.events if e.service == "carState"]
  assert len(cams) == len(cars) == raw.num_frames
  t = raw.frame_times
  ts, vs = raw.can("speed")
  np.testing.assert_allclose([c.vEgo for c in cars], np.interp(t, ts, vs), atol=1e-4)
  ta, sa = raw.can("steering_angle")
  np.testing.assert_allclose([c.steeringAngleDeg for c in cars], np.interp(t, ta, sa), atol=1e-3)
  assert [e.frame_id for e in cams] == list(range(len(cams)))
  assert cams[5].sof == round(float(t[5]) * 1e9) and cams[5].t_ns == cams[5].sof


def test_keys_pause_seek_speed_quit_with_a_fake_clock():
  clock = [100.0]
  rp = Replay(load_segment(REAL), start_s=5.0, vipc=False, clock=lambda: clock[0])
  assert rp.position_s() == pytest.approx(5.0)
  clock[0] += 2.0
  assert rp.position_s() == pytest.approx(7.0)
  rp.handle_key(" ")                       # pause: the log clock stops
  clock[0] += 10.0
  assert rp.paused and rp.position_s() == pytest.approx(7.0)
  rp.handle_key(" ")
  clock[0] += 1.0
  assert not rp.paused and rp.position_s() == pytest.approx(8.0)
  rp.handle_key("s")
  assert rp.position_s() == pytest.approx(18.0)
  assert rp.times[rp.idx] >= rp.t0 + 18e9 and rp.times[rp.idx - 1] < rp.t0 + 18e9   # next event is the one due
  rp.handle_key("S")
  rp.handle_key("S")
  assert rp.position_s() == pytest.approx(0.0)   # clamped at the start
  rp.handle_key("m")
  assert rp.position_s() == pytest.approx(rp.end_s)   # clamped at the end (a 60 s segment)
  rp.handle_key("M")
  assert rp.position_s() == pytest.approx(0.0)
  rp.handle_key("+")
  assert rp.speed == 2.0
  clock[0] += 1.0
  assert rp.position_s() == pytest.approx(2.0)
  rp.handle_key("-")
  rp.handle_key("-")
  assert rp.speed == 0.5
  rp.handle_key("q")
  assert rp.step() is False


def test_step_publishes_what_is_due_and_loops():
  class Sink:
    def __init__(self):
      self.got = []

    def send(self, data):
      self.got.append(data)
  clock = [0.0]
  seg = load_segment(REAL)
  rp = Replay(seg, start_s=59.0, vipc=False, allow={"carState"}, clock=lambda: clock[0])
  sink = Sink()
  rp.pubs = {"carState": sink}
  rel = [(e.t_ns - rp.t0) / 1e9 for e in rp.events]
  rp.step(wait_key=lambda t: "")
  assert len(sink.got) == sum(1 for r in rel if r == 59.0)       # nothing later than now is published
  clock[0] += 0.5
  rp.step(wait_key=lambda t: "")
  assert len(sink.got) == sum(1 for r in rel if 59.0 <= r <= 59.5) == 10   # 20 Hz carState
  clock[0] += 5.0
  rp.step(wait_key=lambda t: "")              # publishes the rest
  rp.step(wait_key=lambda t: "")              # at the end: loops back to the start
  assert rp.loops == 1 and rp.idx == 1 and len(sink.got) == sum(1 for r in rel if r >= 59.0) + 1   # first one again
  rp.loop = False
  rp.idx = len(rp.events)
  assert rp.step(wait_key=lambda t: "") is False


@pytest.mark.timeout(180)
def test_replay_process_plays_messages_and_frames_in_real_time(sim_segments):
  from cereal.messaging import cleanup_prefix, drain_sock_raw, sub_sock
  from cereal.visionipc import VisionIpcClient, VisionStreamType
  seg_path = sim_segments["openpilot"]
  seg = load_segment(seg_path)
  logged = {e.frame_id: (e.sof, e.eof) for e in seg.events if e.service == "roadCameraState"}
  n_car = sum(e.service == "carState" for e in seg.events)
  prefix = f"replaytest_{uuid.uuid4().hex[:8]}"
  os.environ["WORLDPILOT_PREFIX"] = prefix
  sm = client = proc = None
  try:
    sm = sub_sock("carState", timeout=5)
    client = VisionIpcClient("camerad", VisionStreamType.VISION_STREAM_ROAD)
    proc = subprocess.Popen([sys.executable, "-m", "tools.replay.replay", str(seg_path), "--no-loop", "--playback", "1",
                             "--non-interactive", "--block", "groundTruth", "--start", "0.5"], cwd=REPO,
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    car_times, frames = [], {}
    t_end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < t_end:
      if not client.is_connected:
        client.connect(blocking=False)
      if client.is_connected:
        while (buf := client.recv(1)) is not None:
          frames[buf.frame_id] = (buf.timestamp_sof, buf.timestamp_eof, buf.width, buf.height)
      car_times += [time.monotonic()] * len(drain_sock_raw(sm, wait_for_one=False))
      time.sleep(0.002)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["layout"] == "openpilot" and result["loops"] == 0
    n_after_start = sum(1 for e in seg.events if e.service == "carState" and e.t_ns >= seg.start_ns + 0.5e9)
    assert n_after_start < n_car
    assert len(car_times) >= n_after_start - 2, (len(car_times), n_after_start)
    log_span = seg.duration_s - 0.5
    assert log_span <= result["wall_s"] <= 3 * log_span + 2.0, result          # real time, loosely
    span = car_times[-1] - car_times[0]
    assert 0.4 * log_span <= span <= 3 * log_span + 2.0, span                 # (a loaded receiver may bunch up)
    assert len(frames) >= 20
    for fid, (sof, eof, w, h) in frames.items():
      assert (sof, eof) == logged[fid] and (w, h) == (128, 64)
    assert min(frames) >= 9                    # --start 0.5 s: frames from id 10 on
  finally:
    if proc is not None and proc.poll() is None:
      proc.kill()
      proc.communicate()
    for ipc in (client, sm):
      if ipc is not None:
        ipc.close()
    cleanup_prefix(prefix)
    os.environ.pop("WORLDPILOT_PREFIX", None)


def test_cli_errors(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "tools.replay.replay", *args, "--non-interactive"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  r = run(str(REAL), "--allow", "carState,noSuchService")
  assert r.returncode == 2 and "noSuchService" in r.stderr
  r = run(str(REAL), "--playback", "0")
  assert r.returncode == 2
  r = run(str(tmp_path / "missing"))
  assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "missing" in r.stderr
  (tmp_path / "broken--0").mkdir()
  (tmp_path / "broken--0" / "rlog.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage")
  r = run(str(tmp_path / "broken--0"))
  assert r.returncode == 1 and "broken--0" in r.stderr and r.stderr.strip().count("\n") == 0
  with pytest.raises(ReplayError, match="no messages left"):
    Replay(load_segment(REAL), vipc=False, block={"carState", "roadCameraState"})
