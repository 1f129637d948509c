"""cereal.messaging: pub/sub across processes, SubMaster health flags, malformed payloads, prefixes."""
import multiprocessing as mp
import os
import time
import uuid

import pytest

from cereal import messaging
from cereal.messaging import (
  PubMaster,
  SubMaster,
  drain_sock,
  log_from_bytes,
  new_message,
  pub_sock,
  recv_one,
  recv_one_or_none,
  sub_sock,
)

SPAWN = mp.get_context("spawn")   # children start clean (no inherited zmq context / threads)


def _publisher(prefix: str, schedule: list[tuple[float, float]], start_delay: float, invalid_at: int = -1) -> None:
  """Publish carState (vEgo = message index) following [(rate_hz, duration_s), ...], via the env prefix."""
  os.environ[messaging.PREFIX_ENV] = prefix
  pm = PubMaster(["carState"])
  time.sleep(start_delay)   # let subscribers connect (PUB/SUB drops messages sent before that)
  i = 0
  t_next = time.monotonic()
  for rate, duration in schedule:
    t_end = time.monotonic() + duration
    while time.monotonic() < t_end:
      msg = new_message("carState", valid=(i != invalid_at))
      msg.carState.vEgo = float(i)
      pm.send("carState", msg)
      i += 1
      t_next += 1.0 / rate
      time.sleep(max(0.0, t_next - time.monotonic()))
  pm.close()


def test_pubsub_across_processes(prefix):
  sm = SubMaster(["carState"])
  p = SPAWN.Process(target=_publisher, args=(prefix, [(100.0, 0.5)], 0.5))
  p.start()
  got = []
  t0 = time.monotonic()
  while time.monotonic() - t0 < 10 and p.is_alive() or sm.updated.get("carState"):
    sm.update(100)
    if sm.updated["carState"]:
      got.append(sm["carState"].vEgo)
  p.join(5)
  sm.update(0)
  assert p.exitcode == 0
  assert len(got) >= 20, got
  assert got == sorted(got)                       # in order
  assert sm.logMonoTime["carState"] > 0 and sm.recv_frame["carState"] > 0
  assert sm.malformed["carState"] == 0


def _health_flags_run(prefix):
  """20 Hz for 2.5 s, then 4 Hz for 1.5 s, then silence; sample the flags at phase ends."""
  sm = SubMaster(["carState"])
  p = SPAWN.Process(target=_publisher, args=(prefix, [(20.0, 2.5), (4.0, 1.5)], 0.3, 45))
  p.start()
  while not sm.seen["carState"]:
    sm.update(100)
  t0 = time.monotonic()
  samples = {}
  saw_invalid = False
  while time.monotonic() - t0 < 5.0:
    sm.update(20)
    if sm.updated["carState"] and not sm.valid["carState"]:
      saw_invalid = True
    t = time.monotonic() - t0
    if 2.2 < t < 2.4:
      samples["fast"] = (sm.alive["carState"], sm.freq_ok["carState"], sm.valid["carState"], sm.all_checks())
    if 3.7 < t < 3.9:
      samples["slow"] = (sm.alive["carState"], sm.freq_ok["carState"])
  samples["stopped"] = (sm.alive["carState"], sm.freq_ok["carState"], sm.all_checks())
  p.join(5)
  return samples, saw_invalid


def test_submaster_flags_with_publisher_that_slows_and_stops(prefix):
  samples, saw_invalid = _health_flags_run(prefix)
  assert saw_invalid                                   # message 45 had valid=False
  assert samples["fast"] == (True, True, True, True)   # 20 Hz, after the window filled
  assert samples["slow"] == (True, False)              # 4 Hz: still alive (10 periods = 0.5 s) but too slow
  assert samples["stopped"] == (False, False, False)   # > 0.5 s of silence


def test_submaster_flags_deterministic_times(prefix):
  """The same rules driven with synthetic receive times (no scheduling noise)."""
  sm = SubMaster(["carState", "logMessage"])
  t = 100.0
  def feed(valid=True):
    m = new_message("carState", valid=valid)
    return [("carState", m.to_bytes())]
  assert not sm.alive["carState"] and not sm.all_checks(["carState"])
  assert sm.alive["logMessage"] or True   # event service: checks apply only after the first update
  for i in range(45):
    t += 0.05
    sm.update_msgs(t, feed())
  assert sm.alive["carState"] and sm.freq_ok["carState"] and sm.all_checks()
  assert sm.alive["logMessage"] and sm.freq_ok["logMessage"]   # frequency 0: never stale
  sm.update_msgs(t + 0.05, feed(valid=False))
  assert not sm.valid["carState"] and not sm.all_checks() and sm.all_alive()
  t += 0.05
  for i in range(10):                 # 2 Hz: alive (0.5 s < 10 periods) but too slow
    t += 0.5
    sm.update_msgs(t, feed())
  assert sm.alive["carState"] and not sm.freq_ok["carState"] and sm.valid["carState"]
  sm.update_msgs(t + 0.49, [])
  assert sm.alive["carState"]
  sm.update_msgs(t + 0.51, [])
  assert not sm.alive["carState"] and not sm.updated["carState"]
  # ignore lists
  sm2 = SubMaster(["carState"], ignore_alive=["carState"], ignore_avg_freq=["carState"])
  assert sm2.all_checks()
  sm.close()
  sm2.close()


def test_malformed_payloads_are_counted_and_dropped(prefix, caplog):
  sm = SubMaster(["carState"])
  raw = pub_sock("carState")
  time.sleep(0.3)
  good = new_message("carState")
  good.carState.vEgo = 7.5
  good = good.to_bytes()
  wrong_service = new_message("controlsState").to_bytes()
  for dat in (b"", b"junk", b"garbage!" * 3, good[:-8], wrong_service, good):
    raw.send(dat)
  t0 = time.monotonic()
  while not sm.updated["carState"] and time.monotonic() - t0 < 5:
    sm.update(100)
  assert sm.updated["carState"] and sm["carState"].vEgo == 7.5
  assert sm.malformed["carState"] == 5
  assert "malformed" in caplog.text or "dropped" in caplog.text
  # the raw socket helpers skip garbage too
  sock = sub_sock("carState", timeout=2000)
  time.sleep(0.3)
  raw.send(b"\x00" * 16)
  raw.send(good)
  msg = recv_one(sock)
  assert msg is not None and msg.carState.vEgo == 7.5 and sock.malformed == 1
  raw.send(b"x" * 24)
  time.sleep(0.1)
  assert recv_one_or_none(sock) is None and sock.malformed == 2
  raw.send(good)
  raw.send(good)
  time.sleep(0.1)
  assert len(drain_sock(sock)) == 2
  raw.close()
  sock.close()
  sm.close()


def test_two_stacks_with_different_prefixes_do_not_collide():
  a, b = f"stackA_{uuid.uuid4().hex[:6]}", f"stackB_{uuid.uuid4().hex[:6]}"
  try:
    pm_a, pm_b = PubMaster(["carState"], prefix=a), PubMaster(["carState"], prefix=b)
    sm_a, sm_b = SubMaster(["carState"], prefix=a), SubMaster(["carState"], prefix=b)
    assert messaging.service_address("carState", a) != messaging.service_address("carState", b)
    time.sleep(0.3)
    for pm, v in ((pm_a, 1.0), (pm_b, 2.0)):
      for _ in range(5):
        m = new_message("carState")
        m.carState.vEgo = v
        pm.send("carState", m)
    got = {"a": set(), "b": set()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
      for key, sm in (("a", sm_a), ("b", sm_b)):
        sm.update(10)
        if sm.updated["carState"]:
          got[key].add(sm["carState"].vEgo)
    assert got == {"a": {1.0}, "b": {2.0}}
    # only unix sockets, under the prefix directory
    assert messaging.service_address("carState", a).startswith("ipc://" + messaging.prefix_dir(a))
    for x in (pm_a, pm_b, sm_a, sm_b):
      x.close()
  finally:
    messaging.cleanup_prefix(a)
    messaging.cleanup_prefix(b)


def test_bad_prefix_and_service_names(monkeypatch):
  monkeypatch.setenv(messaging.PREFIX_ENV, "../etc")
  with pytest.raises(ValueError, match="WORLDPILOT_PREFIX"):
    messaging.prefix_dir()
  with pytest.raises(KeyError, match="unknownService"):
    messaging.service_address("unknownService", "ok")
  with pytest.raises(KeyError, match="does not publish"):
    PubMaster([], prefix="ok").send("carState", b"")


def test_pubmaster_accepts_builder_reader_and_bytes(prefix):
  pm = PubMaster(["carState"])
  sock = sub_sock("carState", timeout=2000)
  time.sleep(0.3)
  m = new_message("carState")
  m.carState.vEgo = 3.0
  dat = m.to_bytes()
  pm.send("carState", log_from_bytes(dat))
  pm.send("carState", dat)
  pm.send("carState", log_from_bytes(dat).as_builder())
  assert [recv_one(sock).carState.vEgo for _ in range(3)] == [3.0, 3.0, 3.0]
  pm.close()
  sock.close()


_OTHER_STACK = """
import os, signal, sys, time
from cereal import messaging
pm = messaging.PubMaster(["carState"], prefix=sys.argv[1])
print("READY", flush=True)
i = 0
while True:
  m = messaging.new_message("carState"); m.carState.vEgo = 7.0
  pm.send("carState", m)
  time.sleep(0.02)
"""


def _other_stack(prefix):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.Popen([sys.executable, "-c", _OTHER_STACK, prefix], cwd=root, text=True,
                          env=dict(os.environ, PYTHONPATH=root), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
  return proc


def test_second_publisher_on_a_prefix_fails_loudly(prefix):
  pm = PubMaster(["carState"])
  with pytest.raises(messaging.PublisherExistsError, match=f"carState.*{prefix}.*pid {os.getpid()}"):
    PubMaster(["carState"])
  pm.close()
  PubMaster(["carState"]).close()                  # once the first is closed, a restart takes the service
  other = _other_stack(prefix)                      # another stack (process) on the same prefix
  try:
    with pytest.raises(messaging.PublisherExistsError, match=f"pid {other.pid}"):
      PubMaster(["carState"])
    sock = sub_sock("carState", timeout=2000)
    assert log_from_bytes(sock.receive()).carState.vEgo == 7.0    # the first publisher still serves
    sock.close()
  finally:
    other.kill()
    other.wait()
  pm = PubMaster(["carState"])                      # a killed publisher's stale socket and lock are taken over
  pm.close()


def test_cleanup_leaves_a_running_stack_alone(prefix):
  other = _other_stack(prefix)
  try:
    d = messaging.prefix_dir(prefix)
    messaging.cleanup_prefix(prefix)                # e.g. a second manager on the prefix exiting
    assert os.path.exists(os.path.join(d, "carState"))
    sock = sub_sock("carState", timeout=2000)       # a subscriber that starts now still finds the publisher
    assert log_from_bytes(sock.receive()).carState.vEgo == 7.0
    sock.close()
  finally:
    other.kill()
    other.wait()
  messaging.cleanup_prefix(prefix)                  # its publisher is gone now: the stale socket goes
  assert not os.path.exists(d)


def test_prefix_directory_is_private_and_owner_checked(tmp_path, monkeypatch):
  monkeypatch.setenv(messaging.PREFIX_ROOT_ENV, str(tmp_path / "root"))
  old = os.umask(0)
  try:
    pm = PubMaster(["carState"], prefix="mine")
  finally:
    os.umask(old)
  for d in (tmp_path / "root", tmp_path / "root" / "mine"):
    assert os.stat(d).st_mode & 0o777 == 0o700, oct(os.stat(d).st_mode)
  pm.close()
  # a prefix directory somebody else created (to plant sockets) is refused, by publishers and subscribers
  planted = tmp_path / "root" / "planted"
  planted.mkdir(mode=0o777)
  if os.geteuid() == 0:
    os.chown(planted, 54321, 54321)
    for make in (lambda: PubMaster(["carState"], prefix="planted"), lambda: SubMaster(["carState"], prefix="planted")):
      with pytest.raises(messaging.PrefixOwnershipError, match="owned by uid 54321"):
        make()
  (tmp_path / "root" / "link").symlink_to(tmp_path)
  with pytest.raises(messaging.PrefixOwnershipError, match="not a directory"):
    PubMaster(["carState"], prefix="link")
  # our own directory left world-writable by an older version is tightened, not refused
  loose = tmp_path / "root" / "loose"
  loose.mkdir()
  os.chmod(loose, 0o777)
  PubMaster(["carState"], prefix="loose").close()
  assert os.stat(loose).st_mode & 0o777 == 0o700


def test_lockstep_handshake_tells_when_the_first_message_will_arrive(prefix):
  """track_subscribers / track_connection: a harness knows when its peer listens, so the first message is not lost
  to ZMQ's slow-joiner window (model replay and the simulator's stack run each frame once)."""
  pub = pub_sock("carState", track_subscribers=True)
  with pytest.raises(RuntimeError, match="track_subscribers"):
    pub_sock("carControl").wait_for_subscribers(1, 0.1)
  assert not pub.wait_for_subscribers(1, 0.2)            # nobody subscribed yet
  subs = [sub_sock("carState", timeout=1000, track_connection=True) for _ in range(2)]
  assert pub.wait_for_subscribers(2, 10.0) and pub.subscriptions == 2
  msg = new_message("carState")
  msg.carState.vEgo = 3.0
  pub.send(messaging.event_to_bytes(msg))                # sent at once: both subscribers get it
  assert [recv_one(s).carState.vEgo for s in subs] == [3.0, 3.0]
  assert all(s.wait_connected(1.0) for s in subs)
  for s in subs:
    s.close()
  pub.close()


def test_submaster_waits_for_its_publishers(prefix):
  sm = SubMaster(["carState", "modelV2"], track_connection=True)
  t0 = time.monotonic()
  assert sm.wait_connected(0.3) == ["carState", "modelV2"]   # no publisher yet: both reported, after the timeout
  assert time.monotonic() - t0 >= 0.3
  pm = PubMaster(["carState", "modelV2"])
  assert sm.wait_connected(10.0) == []
  pm.send("carState", new_message("carState"))           # after the settle time the subscription is in
  sm.update(1000)
  assert sm.updated["carState"]
  with pytest.raises(RuntimeError, match="track_connection"):
    sub_sock("carState").wait_connected(0.1)
  sm.close()
  pm.close()
