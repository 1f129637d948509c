"""selfdrive.loggerd: records every logged service, rotates segments, drops malformed payloads, flushes on SIGTERM."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cereal import messaging
from cereal.services import SERVICE_LIST
from selfdrive.loggerd import init_params
from tools.lib.logreader import LogReader

ROOT = Path(__file__).resolve().parents[2]


def test_loggerd_records_rotates_and_flushes_on_sigterm(tmp_path):
  prefix = f"lg{uuid.uuid4().hex[:8]}"
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix)
  proc = subprocess.Popen([sys.executable, "-m", "selfdrive.loggerd", "--root", str(tmp_path), "--segment-length", "1.0"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    pm = messaging.PubMaster(["carState", "modelV2", "controlsState"], prefix=prefix)
    raw = messaging.pub_sock("groundTruth", prefix=prefix)
    # wait until loggerd has subscribed: its first segment folder appears after the sockets exist
    t0 = time.monotonic()
    while not list(tmp_path.glob("*--0")) and time.monotonic() - t0 < 20:
      time.sleep(0.05)
    time.sleep(0.5)
    sent = {"carState": 0, "modelV2": 0, "controlsState": 0}
    t_end = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < t_end:
      m = messaging.new_message("carState")
      m.carState.vEgo = float(i)
      pm.send("carState", m)
      sent["carState"] += 1
      if i % 2 == 0:
        mv = messaging.new_message("modelV2")
        mv.modelV2.frameId = i
        mv.modelV2.position.x = [1.0] * 33
        pm.send("modelV2", mv)
        sent["modelV2"] += 1
      if i % 10 == 0:
        pm.send("controlsState", messaging.new_message("controlsState"))
        sent["controlsState"] += 1
        raw.send(b"not a capnp message")       # malformed: must be dropped, not written
      i += 1
      time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out
  assert "dropped malformed groundTruth" in out
  segs = sorted(tmp_path.glob("*--*"), key=lambda p: int(p.name.rsplit("--", 1)[1]))
  assert len(segs) >= 3, segs                       # ~3.5 s of logging at 1 s per segment
  got = {k: 0 for k in sent}
  v_last = -1.0
  for seg in segs:
    events = list(LogReader(seg / "rlog.zst"))       # strict: every segment is complete
    assert events[0].which() == "initData"
    params = init_params(events[0].initData)
    assert params["WorldpilotPrefix"] == prefix.encode()
    assert params["RouteName"] == seg.name.rsplit("--", 1)[0].encode()
    for e in events[1:]:
      w = e.which()
      assert w != "groundTruth"
      assert SERVICE_LIST[w].should_log
      if w in got:
        got[w] += 1
      if w == "carState":
        assert e.carState.vEgo > v_last             # in order across segments
        v_last = e.carState.vEgo
  assert got == sent                                # nothing lost, including the last messages before SIGTERM
  messaging.cleanup_prefix(prefix)


def test_two_loggers_in_one_second_get_their_own_routes(tmp_path):
  from selfdrive.loggerd import Logger
  a, b = Logger(tmp_path, prefix="lga"), Logger(tmp_path, prefix="lgb")   # same second, same root
  a.rotate(); b.rotate()
  assert a.route != b.route and a.segment_dir != b.segment_dir
  for i in range(200):
    for lg, v in ((a, float(i)), (b, -float(i))):
      m = messaging.new_message("carState")
      m.carState.vEgo = v
      lg.write("carState", m.to_bytes())
  a.close(); b.close()
  for lg, sign in ((a, 1.0), (b, -1.0)):
    events = list(LogReader(lg.segment_dir / "rlog.zst"))      # strict: each log complete and readable
    assert init_params(events[0].initData)["RouteName"] == lg.route.encode()
    assert [e.carState.vEgo for e in events[1:]] == [sign * i for i in range(200)]


def test_log_writer_never_opens_over_an_existing_log(tmp_path):
  import pytest

  from cereal.logwriter import LogWriter
  path = tmp_path / "rlog.zst"
  with LogWriter(path) as lw:
    lw.write(messaging.new_message("carState"))
  before = path.read_bytes()
  with pytest.raises(FileExistsError):
    LogWriter(path)
  assert path.read_bytes() == before


def test_segment_length_zero_is_a_usage_error():
  for bad in ("0", "nan", "-1"):
    r = subprocess.run([sys.executable, "-m", "selfdrive.loggerd", "--segment-length", bad], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--segment-length" in r.stderr.strip().splitlines()[-1], r.stderr
