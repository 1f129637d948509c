"""VisionIPC announcements: random datagrams (any length; well-formed ones with random generation, buffer index,
sequence and frame id) reach the client from the server's own socket, so they pass the peer check and exercise
the parsing. The client never crashes, never returns a buffer the server did not announce, and the next real
frame still arrives intact."""
import os
import socket
import time
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cereal.visionipc import VisionIpcClient, VisionIpcServer, VisionStreamType
from cereal.visionipc.visionipc import ANNOUNCE

pytestmark = pytest.mark.timeout(120)
ROAD = VisionStreamType.VISION_STREAM_ROAD
W, H = 64, 32


@pytest.fixture(scope="module")
def pair():
  prefix = f"fz{os.getpid()}_{uuid.uuid4().hex[:6]}"
  srv = VisionIpcServer("fuzzcam", prefix=prefix)
  srv.create_buffers(ROAD, 3, W, H)
  srv.start_listener()
  client = VisionIpcClient("fuzzcam", ROAD, prefix=prefix)
  assert client.connect(blocking=True, timeout_s=5)
  t0 = time.monotonic()
  while srv.num_clients(ROAD) == 0 and time.monotonic() - t0 < 5:
    time.sleep(0.01)
  state = {"frame_id": 0}
  yield srv, client, state
  client.close()
  srv.close()


def _frame(i: int) -> np.ndarray:
  return np.random.default_rng(i).integers(0, 256, W * H * 3 // 2, dtype=np.uint8)


# (generation or None = the server's real one, buffer index, sequence, frame id, sof, eof)
ANNOUNCEMENT = st.tuples(st.one_of(st.none(), st.integers(0, 2 ** 64 - 1)),
                         st.one_of(st.integers(0, 4), st.integers(0, 2 ** 32 - 1)),
                         st.one_of(st.integers(0, 12), st.integers(0, 2 ** 64 - 1)),
                         st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1))


@settings(max_examples=40)
@given(st.lists(st.one_of(st.binary(max_size=80), ANNOUNCEMENT), min_size=1, max_size=6))
def test_random_announcements(pair, datagrams):
  srv, client, state = pair
  sock = srv.socks[ROAD]
  for d in datagrams:
    if isinstance(d, tuple):
      d = ANNOUNCE.pack(client.smap.generation if d[0] is None else d[0], *d[1:])
    sock.sendto(d, socket.MSG_DONTWAIT, client.addr)
  while (buf := client.recv(0)) is not None:             # only announcements of a current, stable buffer pass
    assert buf.idx < 3 and buf.still_valid() and buf.data.size == W * H * 3 // 2
  state["frame_id"] += 1
  fid = state["frame_id"]
  srv.send(ROAD, _frame(fid), fid, 1, 2)
  buf = client.recv(1000)
  while buf is not None and buf.frame_id != fid:        # a forged copy of an older real announcement may come first
    buf = client.recv(1000)
  assert buf is not None and np.array_equal(buf.data, _frame(fid)) and buf.still_valid()
