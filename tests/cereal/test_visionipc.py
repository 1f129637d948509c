"""VisionIPC across processes: checksums, slow readers that miss frames, late readers, buffer reuse."""
import hashlib
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from cereal import messaging
from cereal.visionipc import VisionIpcClient, VisionIpcError, VisionIpcServer, VisionStreamType, nv12_to_rgb, rgb_to_nv12

ROAD = VisionStreamType.VISION_STREAM_ROAD
W, H = 256, 128            # small NV12 frames keep the test fast; the bench uses 1928x1208
SPAWN = mp.get_context("spawn")


def frame_for(frame_id: int, size: int) -> np.ndarray:
  """Deterministic content per frame id, so the reader can recompute the expected checksum."""
  return np.random.default_rng(frame_id).integers(0, 256, size, dtype=np.uint8)


def _server(prefix: str, n_frames: int, rate_hz: float, wait_for_client: bool, progress=None) -> None:
  """Send n_frames at rate_hz (after a client registered, if asked); progress.value = last frame id sent."""
  os.environ[messaging.PREFIX_ENV] = prefix
  srv = VisionIpcServer("camerad")
  srv.create_buffers(ROAD, 4, W, H)
  srv.start_listener()
  t0 = time.monotonic()
  while wait_for_client and srv.num_clients(ROAD) == 0 and time.monotonic() - t0 < 30:
    time.sleep(0.01)
  size = W * H * 3 // 2
  t_next = time.monotonic()
  for i in range(n_frames):
    t = time.monotonic_ns()
    srv.send(ROAD, frame_for(i, size), i, t, t)
    if progress is not None:
      progress.value = i
    t_next += 1.0 / rate_hz
    time.sleep(max(0.0, t_next - time.monotonic()))
  time.sleep(0.2)
  srv.close()


def _start_server(prefix, *args):
  p = SPAWN.Process(target=_server, args=(prefix, *args))
  p.start()
  return p


def test_frames_across_processes_with_checksum(prefix):
  p = _start_server(prefix, 40, 50.0, True)
  client = VisionIpcClient("camerad", ROAD, conflate=False)
  assert client.connect(blocking=True, timeout_s=20)
  assert (client.num_buffers, client.width, client.height, client.stride, client.uv_offset) == (4, W, H, W, W * H)
  ids = []
  while True:
    buf = client.recv(1500)
    if buf is None:
      break
    got = hashlib.sha256(buf.data).hexdigest()        # reads straight from shared memory
    assert buf.still_valid(), "a reader that keeps up must never see its buffer reused"
    assert got == hashlib.sha256(frame_for(buf.frame_id, buf.data.size)).hexdigest(), buf.frame_id
    assert buf.data.base is not None and not buf.data.flags["OWNDATA"]   # a view, not a copy
    assert buf.timestamp_eof >= buf.timestamp_sof > 0
    ids.append(buf.frame_id)
  p.join(5)
  assert p.exitcode == 0
  assert ids == list(range(40))                     # every frame, in order
  assert client.frames_missed == 0 and client.frames_received == len(ids)
  client.close()


def test_slow_reader_misses_frames_and_detects_it(prefix):
  """A reader 3x slower than the camera: server never blocks, gaps are counted, data is never torn unnoticed."""
  n = 60
  p = _start_server(prefix, n, 60.0, True)
  client = VisionIpcClient("camerad", ROAD, conflate=True)
  assert client.connect(blocking=True, timeout_s=20)
  received, first = 0, None
  while True:
    buf = client.recv(1500)
    if buf is None:
      break
    if first is None:
      first = buf.frame_id
    data = bytes(buf.data)
    time.sleep(3 / 60.0)                                    # slow consumer
    if buf.still_valid():                                   # else: reused meanwhile, the copy is discarded
      assert hashlib.sha256(data).digest() == hashlib.sha256(frame_for(buf.frame_id, len(data))).digest()
    received += 1
    last = buf.frame_id
  p.join(5)
  assert p.exitcode == 0
  assert client.frames_missed > 0
  assert received + client.frames_missed == last - first + 1
  assert received < (n - first) * 0.6
  client.close()


def test_late_reader_sees_next_frames(prefix):
  progress = SPAWN.Value("i", -1)
  p = _start_server(prefix, 100, 50.0, False, progress)
  t0 = time.monotonic()
  while progress.value < 30 and time.monotonic() - t0 < 30:   # the server is already sending
    time.sleep(0.01)
  client = VisionIpcClient("camerad", ROAD)
  assert client.connect(blocking=True, timeout_s=20)
  ids = []
  while (buf := client.recv(1000)) is not None:
    ids.append(buf.frame_id)
  p.join(5)
  assert len(ids) > 10 and ids[0] > 30
  assert ids == list(range(ids[0], ids[0] + len(ids)))
  assert client.frames_missed == 0
  client.close()


def test_buffer_reuse_is_detected_in_process(prefix):
  srv = VisionIpcServer("cam2")
  srv.create_buffers(ROAD, 3, W, H)
  srv.start_listener()
  client = VisionIpcClient("cam2", ROAD)
  assert client.connect(blocking=False)
  time.sleep(0.2)
  size = W * H * 3 // 2
  srv.send(ROAD, frame_for(0, size), 0, 1, 2)
  buf = client.recv(1000)
  assert buf.frame_id == 0 and buf.still_valid()
  for i in range(1, 4):                       # ring of 3: frame 3 reuses buffer 0
    srv.send(ROAD, frame_for(i, size), i, 1, 2)
  assert not buf.still_valid()
  # announcements for frames 1 and 2 are still queued; 1's buffer was not reused, 2's neither
  ids = [client.recv(100).frame_id for _ in range(3)]
  assert ids == [1, 2, 3] and client.frames_missed == 0
  # queue 4 announcements on a ring of 3: the oldest's buffer is reused before we read it
  for i in range(4, 8):
    srv.send(ROAD, frame_for(i, size), i, 1, 2)
  ids = []
  while (b := client.recv(50)) is not None:
    ids.append(b.frame_id)
  assert ids == [5, 6, 7] and client.frames_overwritten == 1 and client.frames_missed == 1
  srv.close()
  client.close()


def test_render_in_place_and_rgb_stream(prefix):
  srv = VisionIpcServer("sim")
  srv.create_buffers(VisionStreamType.VISION_STREAM_WIDE_ROAD, 2, 64, 32, rgb=True)
  srv.start_listener()
  client = VisionIpcClient("sim", VisionStreamType.VISION_STREAM_WIDE_ROAD)
  assert client.connect(blocking=False) and client.rgb
  assert VisionIpcClient.available_streams("sim") == {VisionStreamType.VISION_STREAM_WIDE_ROAD}
  time.sleep(0.2)
  target = srv.get_buffer(VisionStreamType.VISION_STREAM_WIDE_ROAD)   # render directly into shared memory
  img = np.arange(64 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(32, 64, 3)
  target[:] = img.reshape(-1)
  srv.send(VisionStreamType.VISION_STREAM_WIDE_ROAD, None, 7)
  buf = client.recv(1000)
  assert buf.frame_id == 7 and buf.stride == 64 * 3
  np.testing.assert_array_equal(buf.as_array(), img)
  np.testing.assert_array_equal(buf.to_rgb(), img)
  srv.close()
  client.close()


def test_color_conversion_round_trip():
  y, x = np.mgrid[0:64, 0:128]
  img = np.stack([x * 2, y * 4, x + y], -1).astype(np.uint8)   # smooth: chroma subsampling is lossless enough
  nv12 = rgb_to_nv12(img)
  assert nv12.shape == (128 * 64 * 3 // 2,)
  back = nv12_to_rgb(nv12, 128, 64)
  assert np.abs(back.astype(int) - img).max() <= 6
  with pytest.raises(ValueError, match="even"):
    rgb_to_nv12(img[:63])
  with pytest.raises(ValueError, match="needs"):
    nv12_to_rgb(nv12[:-2], 128, 64)


def test_bad_usage_gives_clear_errors(prefix):
  with pytest.raises(ValueError, match="invalid VisionIPC server name"):
    VisionIpcServer("bad/name")
  srv = VisionIpcServer("errs")
  with pytest.raises(VisionIpcError, match="create_buffers"):
    srv.start_listener()
  with pytest.raises(ValueError, match="even"):
    srv.create_buffers(ROAD, 2, 33, 20)
  with pytest.raises(ValueError, match="at least 2"):
    srv.create_buffers(ROAD, 1, 32, 20)
  srv.create_buffers(ROAD, 2, 32, 20)
  with pytest.raises(VisionIpcError, match="start_listener"):
    srv.send(ROAD, np.zeros(32 * 30, np.uint8), 0)
  srv.start_listener()
  with pytest.raises(ValueError, match="960 uint8"):
    srv.send(ROAD, np.zeros(100, np.uint8), 0)
  client = VisionIpcClient("errs", VisionStreamType.VISION_STREAM_DRIVER)
  assert not client.connect(blocking=False)
  with pytest.raises(VisionIpcError, match="before connect"):
    client.recv(10)
  srv.close()
  # a file that is not a VisionIPC buffer
  from cereal.visionipc.visionipc import shm_path
  path = shm_path("junk", ROAD)
  with open(path, "wb") as f:
    f.write(b"x" * 100)
  try:
    with pytest.raises(VisionIpcError, match="bad magic"):
      VisionIpcClient("junk", ROAD).connect(blocking=False)
  finally:
    os.unlink(path)


def test_server_restart_clients_and_duplicate_server(prefix):
  size = W * H * 3 // 2
  srv = VisionIpcServer("cam3")
  srv.create_buffers(ROAD, 2, W, H)
  srv.start_listener()
  client = VisionIpcClient("cam3", ROAD)
  assert client.connect(blocking=False)
  assert srv.num_clients(ROAD) == 1
  srv.send(ROAD, frame_for(0, size), 0)
  assert client.recv(500).frame_id == 0
  # a second server with the same name and prefix is refused
  other = VisionIpcServer("cam3")
  with pytest.raises(VisionIpcError, match="already running"):
    other.create_buffers(ROAD, 2, W, H)
  other.close()
  srv.send(ROAD, frame_for(1, size), 1)          # the running server's buffers are untouched
  buf = client.recv(500)
  assert buf.frame_id == 1 and buf.still_valid()
  np.testing.assert_array_equal(buf.data, frame_for(1, size))
  # the server restarts with a different frame size: the client re-registers and remaps
  srv.close()
  srv = VisionIpcServer("cam3")
  srv.create_buffers(ROAD, 2, W // 2, H // 2)
  srv.start_listener()
  t0 = time.monotonic()
  buf = None
  while buf is None and time.monotonic() - t0 < 5:
    srv.send(ROAD, frame_for(100, size // 4), 100)
    buf = client.recv(200)
  assert buf is not None and buf.frame_id == 100 and (buf.width, buf.height) == (W // 2, H // 2)
  np.testing.assert_array_equal(buf.data, frame_for(100, size // 4))
  client.close()
  assert srv.num_clients(ROAD) == 0          # the client said bye
  srv.close()


_FORGER = """
import socket, sys
from cereal.visionipc.visionipc import ANNOUNCE
gen, addr, uid = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
import os
if uid != os.geteuid():
  os.setuid(uid)                                   # another local user (test runs as root)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b"\\0worldpilot-test-forger-%d" % os.getpid())      # an address the server could send frames to
s.sendto(ANNOUNCE.pack(gen, 0, 2, 424242, 1, 2), addr)     # buffer 0 holds seq 2 after the first frame
s.sendto(b"hello", bytes.fromhex(sys.argv[4]))             # and try to register with the server
print("SENT", flush=True)
"""


def _forge(client, server_addr: bytes, uid: int) -> None:
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run([sys.executable, "-c", _FORGER, str(client.smap.generation), client.addr.hex(), str(uid),
                      server_addr.hex()], cwd=root, env=dict(os.environ, PYTHONPATH=root), capture_output=True,
                     text=True, timeout=30)
  assert "SENT" in r.stdout, r.stderr


def test_forged_announcements_and_registrations_are_ignored(prefix):
  from cereal.visionipc.visionipc import announce_address
  srv = VisionIpcServer("cam3")
  srv.create_buffers(ROAD, 3, W, H)
  srv.start_listener()
  client = VisionIpcClient("cam3", ROAD)
  assert client.connect(blocking=False)
  size = W * H * 3 // 2
  srv.send(ROAD, frame_for(0, size), 0, 1, 2)
  assert client.recv(1000).frame_id == 0
  users = [os.geteuid()] + ([65534] if os.geteuid() == 0 else [])
  for uid in users:                                  # another process of this user, and of another user
    _forge(client, announce_address("cam3", ROAD), uid)
  assert client.recv(200) is None                    # frame 424242 was not accepted
  assert client.rejected == len(users) and client.last_frame_id == 0
  assert srv.num_clients(ROAD) == 2                  # the client + this user's forger; the other user's is refused
  assert srv.rejected == len(users) - 1
  srv.send(ROAD, frame_for(1, size), 1, 1, 2)
  assert client.recv(1000).frame_id == 1 and client.frames_missed == 0
  srv.close()
  client.close()


def test_recv_zero_returns_a_waiting_frame(prefix):
  srv = VisionIpcServer("cam4")
  srv.create_buffers(ROAD, 3, W, H)
  srv.start_listener()
  client = VisionIpcClient("cam4", ROAD)
  assert client.connect(blocking=False)
  assert client.recv(0) is None                      # nothing waiting: returns at once
  srv.send(ROAD, frame_for(0, W * H * 3 // 2), 0, 1, 2)
  time.sleep(0.05)
  buf = client.recv(0)
  assert buf is not None and buf.frame_id == 0
  srv.close()
  client.close()
