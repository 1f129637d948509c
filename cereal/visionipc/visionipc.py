"""VisionIPC: zero-copy camera frames between processes (openpilot's msgq/visionipc, in Python).

The server owns, per stream, a ring of `count` frame buffers in one shared-memory file
(/dev/shm/worldpilot.<prefix>.<name>.<stream>) and announces every frame -- (generation, buffer
index, sequence, frameId, timestampSof, timestampEof), 44 bytes -- with one non-blocking unix
datagram per client.  A client maps the same file and hands out numpy views on it, so the pixels
are never copied between processes.  Clients register by sending "hello" to the server's
abstract-namespace unix socket "\0worldpilot/<prefix>/vipc/<name>/<stream>" (no files, nothing
on a network interface); the server sends straight from its own thread to each client's socket,
so an announcement costs one syscall per client and one wake-up of the client (ZMQ would add
two I/O-thread hops).

  server = VisionIpcServer("camerad")
  server.create_buffers(VisionStreamType.VISION_STREAM_ROAD, 4, 1928, 1208)     # NV12
  server.start_listener()
  server.send(VisionStreamType.VISION_STREAM_ROAD, nv12_frame, frame_id, t_sof, t_eof)

  client = VisionIpcClient("camerad", VisionStreamType.VISION_STREAM_ROAD, conflate=True)
  client.connect(blocking=True)
  buf = client.recv(100)      # VisionBuf | None; buf.data is a uint8 view on shared memory

Peers are checked: both sockets set SO_PASSCRED, so the kernel attaches the sender's pid/uid to every datagram.
The server takes registrations only from processes of its own user; a client takes announcements only from the
server process whose pid is recorded in the buffer file's header (a file it opens only if this user owns it).
Anything else (a forged announcement from another local process) is counted in `rejected` and ignored.

Guarantees:
  * a slow client never blocks the server (sends are MSG_DONTWAIT; a full client queue drops);
  * frameId gaps are counted in client.frames_missed;
  * a client that starts late gets the next frames;
  * buffer reuse is detected: each buffer carries a sequence number (a seqlock: odd while being
    written).  recv() skips an announcement whose buffer was already overwritten, and
    VisionBuf.still_valid() tells, after reading, whether the server reused the buffer meanwhile
    (then the data may be torn and must be discarded).  With `count` buffers a reader has
    count-1 frame periods before its buffer is reused.

Layout of the shared-memory file:  [stream header 64 B][count x slot header 32 B][pad to 4096]
[count x buffer of buf_size bytes, each 4096-aligned].  NV12: Y plane (stride x height) then the
interleaved UV plane (stride x height/2) at uv_offset; RGB: height x width x 3, stride = 3*width.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import select
import socket
import struct
import time
from enum import IntEnum

import numpy as np

from cereal.messaging import get_prefix, prefix_dir

MAGIC = b"WPVIPC02"
HEADER = struct.Struct("<8sQIIIIIQIQI")  # magic, generation, format, width, height, stride, uv_offset, buf_size, count,
                                         # data_offset, server pid
HEADER_SIZE = 64
SLOT_HEADER_SIZE = 32                    # seq, frame_id, timestamp_sof, timestamp_eof (uint64 each)
ANNOUNCE = struct.Struct("<QIQQQQ")      # generation, buffer index, seq, frame_id, timestamp_sof, timestamp_eof
PAGE = 4096
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")


class VisionStreamType(IntEnum):
  VISION_STREAM_ROAD = 0
  VISION_STREAM_DRIVER = 1
  VISION_STREAM_WIDE_ROAD = 2
  VISION_STREAM_MAP = 3


class PixelFormat(IntEnum):
  NV12 = 0
  RGB = 1


class VisionIpcError(RuntimeError):
  pass


_CREDS = struct.Struct("iII")   # struct ucred: pid, uid, gid


def _enable_peer_creds(sock: socket.socket) -> None:
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def _recv_with_creds(sock: socket.socket, flags: int = 0) -> tuple[bytes, bytes, int, int]:
  """(data, sender address, sender pid, sender uid) of one datagram; pid/uid -1 when the kernel attached none."""
  data, anc, _, addr = sock.recvmsg(64, socket.CMSG_SPACE(_CREDS.size), flags)
  pid = uid = -1
  for level, kind, payload in anc:
    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size:
      pid, uid, _ = _CREDS.unpack_from(payload)
  return data, addr or b"", pid, uid


def _check_name(name: str) -> str:
  if not _NAME_RE.match(name):
    raise ValueError(f"invalid VisionIPC server name {name!r}: use 1-32 characters of [A-Za-z0-9_-]")
  return name


def _shm_dir() -> str:
  return "/dev/shm" if os.path.isdir("/dev/shm") else prefix_dir()


def shm_path(name: str, stream_type: int, prefix: str | None = None) -> str:
  return os.path.join(_shm_dir(), f"worldpilot.{get_prefix(prefix)}.{_check_name(name)}.{int(stream_type)}")


def announce_address(name: str, stream_type: int, prefix: str | None = None) -> bytes:
  """Abstract unix socket address (leading NUL: no file) where the server takes registrations."""
  return f"\0worldpilot/{get_prefix(prefix)}/vipc/{_check_name(name)}/{int(stream_type)}".encode()


def frame_geometry(fmt: PixelFormat, width: int, height: int) -> tuple[int, int, int]:
  """(stride, uv_offset, buf_size) for a frame; rows are tightly packed."""
  if width <= 0 or height <= 0:
    raise ValueError(f"frame size must be positive, got {width}x{height}")
  if fmt == PixelFormat.NV12:
    if width % 2 or height % 2:
      raise ValueError(f"NV12 frames need an even width and height, got {width}x{height}")
    return width, width * height, width * height * 3 // 2
  return 3 * width, 0, 3 * width * height


class _StreamMap:
  """A mapped shared-memory file: header fields, slot headers (uint64 view) and buffer views."""

  def __init__(self, path: str, create: dict | None = None):
    if create is not None:
      fmt, width, height, count = create["fmt"], create["width"], create["height"], create["count"]
      stride, uv_offset, buf_size = frame_geometry(fmt, width, height)
      aligned = (buf_size + PAGE - 1) // PAGE * PAGE
      data_offset = (HEADER_SIZE + count * SLOT_HEADER_SIZE + PAGE - 1) // PAGE * PAGE
      total = data_offset + count * aligned
      tmp = f"{path}.tmp{os.getpid()}"
      fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
      try:
        os.ftruncate(fd, total)
        self.mm = mmap.mmap(fd, total)
      finally:
        os.close(fd)
      generation = secrets.randbits(63) | 1
      self.mm[:HEADER.size] = HEADER.pack(MAGIC, generation, int(fmt), width, height, stride, uv_offset, buf_size, count,
                                          data_offset, os.getpid())
      os.replace(tmp, path)   # clients never see a half-initialised file
    else:
      fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
      try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
          raise VisionIpcError(f"{path}: owned by uid {st.st_uid}, not this user; refusing a buffer file that "
                               f"another user may have planted")
        size = st.st_size
        if size < HEADER_SIZE:
          raise VisionIpcError(f"{path}: not a VisionIPC buffer file ({size} bytes)")
        self.mm = mmap.mmap(fd, size)
      finally:
        os.close(fd)
    magic, self.generation, fmt, self.width, self.height, self.stride, self.uv_offset, self.buf_size, self.count, \
      self.data_offset, self.server_pid = HEADER.unpack_from(self.mm, 0)
    if magic != MAGIC:
      raise VisionIpcError(f"{path}: bad magic {magic!r} (not a VisionIPC buffer file)")
    self.fmt = PixelFormat(fmt)
    self.path = path
    self.aligned = (self.buf_size + PAGE - 1) // PAGE * PAGE
    if len(self.mm) < self.data_offset + self.count * self.aligned:
      raise VisionIpcError(f"{path}: file is {len(self.mm)} bytes, header needs {self.data_offset + self.count * self.aligned}")
    self.slots = np.ndarray((self.count, 4), dtype=np.uint64, buffer=self.mm,
                            offset=HEADER_SIZE)   # (count, [seq, frame_id, sof, eof])
    self.buffers = [np.ndarray((self.buf_size,), dtype=np.uint8, buffer=self.mm, offset=self.data_offset + i * self.aligned)
                    for i in range(self.count)]

  def close(self) -> None:
    self.slots = None
    self.buffers = []
    try:
      self.mm.close()
    except BufferError:   # a caller still holds a VisionBuf view; the mapping goes when it does
      pass


class VisionBuf:
  """One received frame: `data` is a uint8 view on the shared buffer (no copy)."""

  def __init__(self, smap: _StreamMap, idx: int, seq: int, frame_id: int, timestamp_sof: int, timestamp_eof: int):
    self._smap = smap
    self.idx = idx
    self.seq = seq
    self.data = smap.buffers[idx]
    self.width, self.height, self.stride, self.uv_offset = smap.width, smap.height, smap.stride, smap.uv_offset
    self.fmt = smap.fmt
    self.frame_id = frame_id
    self.timestamp_sof = timestamp_sof
    self.timestamp_eof = timestamp_eof

  @property
  def rgb(self) -> bool:
    return self.fmt == PixelFormat.RGB

  def still_valid(self) -> bool:
    """False if the server has started reusing this buffer since it was announced (data may be torn)."""
    return int(self._smap.slots[self.idx, 0]) == self.seq

  def as_array(self) -> np.ndarray:
    """Shaped view: (height*3/2, width) for NV12, (height, width, 3) for RGB."""
    if self.fmt == PixelFormat.NV12:
      return self.data.reshape(self.height * 3 // 2, self.width)
    return self.data.reshape(self.height, self.width, 3)

  def to_rgb(self) -> np.ndarray:
    """An RGB copy of the frame (converts NV12)."""
    if self.fmt == PixelFormat.RGB:
      return self.as_array().copy()
    return nv12_to_rgb(self.data, self.width, self.height)


class VisionIpcServer:
  def __init__(self, name: str, prefix: str | None = None):
    self.name = _check_name(name)
    self.prefix = get_prefix(prefix)
    self.streams: dict[VisionStreamType, _StreamMap] = {}
    self.socks: dict[VisionStreamType, socket.socket] = {}
    self.clients: dict[VisionStreamType, set[bytes]] = {}
    self.dropped = 0    # announcements not delivered because a client's queue was full
    self.counter: dict[VisionStreamType, int] = {}
    self.listening = False
    self.rejected = 0   # registrations from processes of another user, ignored

  def create_buffers(self, stream_type: VisionStreamType, count: int, width: int, height: int, rgb: bool = False) -> None:
    """A ring of `count` buffers for one stream (NV12, or RGB with rgb=True)."""
    stream_type = VisionStreamType(stream_type)
    if self.listening:
      raise VisionIpcError("create_buffers() must be called before start_listener()")
    if stream_type in self.streams:
      raise VisionIpcError(f"stream {stream_type.name} already has buffers")
    if count < 2:
      raise ValueError(f"need at least 2 buffers per stream to avoid tearing, got {count}")
    fmt = PixelFormat.RGB if rgb else PixelFormat.NV12
    frame_geometry(fmt, width, height)   # validates the size before anything is created
    # claim the stream's registration address first: a second server of the same name must not
    # clobber the running one's buffers
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    _enable_peer_creds(sock)
    try:
      sock.bind(announce_address(self.name, stream_type, self.prefix))
    except OSError as e:
      sock.close()
      raise VisionIpcError(f"VisionIPC server {self.name!r} stream {stream_type.name} already running under prefix "
                           f"{self.prefix!r}: {e}") from None
    try:
      os.makedirs(_shm_dir(), exist_ok=True)
      self.streams[stream_type] = _StreamMap(shm_path(self.name, stream_type, self.prefix),
                                             create=dict(fmt=fmt, width=width, height=height, count=count))
    except BaseException:
      sock.close()
      raise
    self.socks[stream_type] = sock
    self.clients[stream_type] = set()
    self.counter[stream_type] = 0

  def start_listener(self) -> None:
    """Start announcing frames (clients can register from create_buffers() on)."""
    if not self.streams:
      raise VisionIpcError("start_listener() without buffers: call create_buffers() first")
    self.listening = True

  def _accept_clients(self, st: VisionStreamType) -> None:
    s = self.socks[st]
    while True:
      try:
        msg, addr, _, uid = _recv_with_creds(s)
      except BlockingIOError:
        return
      if uid != os.geteuid():
        self.rejected += 1
        continue
      if msg == b"hello" and addr:
        self.clients[st].add(addr)
      elif msg == b"bye":
        self.clients[st].discard(addr)

  def num_clients(self, stream_type: VisionStreamType) -> int:
    st = VisionStreamType(stream_type)
    self._accept_clients(st)
    return len(self.clients[st])

  def get_buffer(self, stream_type: VisionStreamType) -> np.ndarray:
    """The buffer the next send() will use, to render into directly (then send(stream, None, ...))."""
    smap = self.streams[VisionStreamType(stream_type)]
    return smap.buffers[self.counter[VisionStreamType(stream_type)] % smap.count]

  def send(self, stream_type: VisionStreamType, frame, frame_id: int, timestamp_sof: int = 0, timestamp_eof: int = 0) -> None:
    """Copy `frame` (bytes / uint8 array of the buffer's size; None = already written via get_buffer)
    into the next buffer of the ring and announce it.  Never blocks on clients."""
    stream_type = VisionStreamType(stream_type)
    if not self.listening:
      raise VisionIpcError("send() before start_listener()")
    smap = self.streams[stream_type]
    n = self.counter[stream_type]
    idx = n % smap.count
    seq = 2 * (n + 1)                 # even = stable; odd = being written
    slot = smap.slots[idx]
    slot[0] = seq - 1
    if frame is not None:
      src = np.frombuffer(frame, dtype=np.uint8) if isinstance(frame, (bytes, bytearray, memoryview)) else np.asarray(frame)
      if src.dtype != np.uint8 or src.size != smap.buf_size:
        raise ValueError(f"frame for {stream_type.name} must be {smap.buf_size} uint8 values "
                         f"({smap.fmt.name} {smap.width}x{smap.height}), got {src.size} {src.dtype}")
      np.copyto(smap.buffers[idx], src.reshape(-1))
    slot[1], slot[2], slot[3] = frame_id, timestamp_sof, timestamp_eof
    slot[0] = seq
    self.counter[stream_type] = n + 1
    self._accept_clients(stream_type)
    msg = ANNOUNCE.pack(smap.generation, idx, seq, frame_id, timestamp_sof, timestamp_eof)
    sock = self.socks[stream_type]
    for addr in list(self.clients[stream_type]):
      try:
        sock.sendto(msg, socket.MSG_DONTWAIT, addr)
      except BlockingIOError:
        self.dropped += 1                       # slow client: its queue is full, it will see a frame gap
      except (ConnectionRefusedError, FileNotFoundError):
        self.clients[stream_type].discard(addr)   # client went away

  def close(self) -> None:
    for s in self.socks.values():
      s.close()
    self.clients.clear()
    for smap in self.streams.values():
      try:
        os.unlink(smap.path)
      except FileNotFoundError:
        pass
      smap.close()
    self.socks.clear()
    self.streams.clear()
    self.listening = False

  def __enter__(self) -> "VisionIpcServer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class VisionIpcClient:
  def __init__(self, name: str, stream_type: VisionStreamType, conflate: bool = False, prefix: str | None = None):
    self.name = _check_name(name)
    self.stream_type = VisionStreamType(stream_type)
    self.conflate = conflate
    self.prefix = get_prefix(prefix)
    self.smap: _StreamMap | None = None
    self.sock: socket.socket | None = None
    self.addr = (f"\0worldpilot/{self.prefix}/vipc/{self.name}/{int(self.stream_type)}/"
                 f"c{os.getpid()}-{secrets.token_hex(6)}").encode()
    self.last_hello = 0.0
    self.last_frame_time = 0.0
    self.last_frame_id: int | None = None
    self.frames_missed = 0        # frames announced by the server that this client never returned
    self.frames_received = 0
    self.frames_overwritten = 0   # announcements skipped because their buffer was already reused
    self.rejected = 0             # datagrams not from the server process (forged or stray), ignored

  @staticmethod
  def available_streams(name: str, block: bool = False, prefix: str | None = None) -> set[VisionStreamType]:
    while True:
      found = {st for st in VisionStreamType if os.path.exists(shm_path(name, st, prefix))}
      if found or not block:
        return found
      time.sleep(0.01)

  @property
  def is_connected(self) -> bool:
    return self.smap is not None

  @property
  def num_buffers(self) -> int:
    return self.smap.count if self.smap else 0

  @property
  def width(self) -> int:
    return self.smap.width if self.smap else 0

  @property
  def height(self) -> int:
    return self.smap.height if self.smap else 0

  @property
  def stride(self) -> int:
    return self.smap.stride if self.smap else 0

  @property
  def uv_offset(self) -> int:
    return self.smap.uv_offset if self.smap else 0

  @property
  def rgb(self) -> bool:
    return self.smap is not None and self.smap.fmt == PixelFormat.RGB

  def connect(self, blocking: bool = True, timeout_s: float | None = None) -> bool:
    """Map the server's buffers and register for its announcements; False if it is not there (non-blocking)."""
    path = shm_path(self.name, self.stream_type, self.prefix)
    t0 = time.monotonic()
    self._disconnect()
    while True:
      if os.path.exists(path):
        if self.smap is None:
          self.smap = _StreamMap(path)
        if self.sock is None:
          self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
          _enable_peer_creds(self.sock)
          self.sock.bind(self.addr)
        if self._hello():
          return True
        self.smap.close()   # the file may be stale (server gone): map it again once the server is up
        self.smap = None
      if not blocking or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
        self._disconnect()
        return False
      time.sleep(0.01)

  def _hello(self) -> bool:
    self.last_hello = time.monotonic()
    try:
      self.sock.sendto(b"hello", socket.MSG_DONTWAIT, announce_address(self.name, self.stream_type, self.prefix))
      return True
    except (ConnectionRefusedError, FileNotFoundError, BlockingIOError):
      return False

  def recv(self, timeout_ms: int = 100) -> VisionBuf | None:
    """The next frame (the newest waiting one, with conflate=True), or None after timeout_ms."""
    if self.sock is None:
      raise VisionIpcError(f"VisionIpcClient({self.name}, {self.stream_type.name}).recv() before connect()")
    deadline = time.monotonic() + timeout_ms / 1000.0
    while True:
      now = time.monotonic()
      if now - max(self.last_hello, self.last_frame_time) > 1.0:
        self._hello()   # a restarted server has forgotten us; registering twice is harmless
      # poll first (recv(0) must still return a frame that is already waiting), then check the deadline
      remaining = max(0.0, deadline - now)
      if not select.select([self.sock], [], [], min(remaining, 1.0))[0]:
        if time.monotonic() >= deadline:
          return None
        continue
      dat = self._recv_announcement(0)
      if self.conflate:   # skip to the newest announcement waiting
        while True:
          try:
            newer = self._recv_announcement(socket.MSG_DONTWAIT)
          except BlockingIOError:
            break
          if newer is not None:
            dat = newer
      if dat is None or len(dat) != ANNOUNCE.size:
        continue
      generation, idx, seq, frame_id, sof, eof = ANNOUNCE.unpack(dat)
      if generation != self.smap.generation:   # the server restarted: map its new buffers
        self.smap.close()
        self.smap = _StreamMap(shm_path(self.name, self.stream_type, self.prefix))
        self.last_frame_id = None
        if generation != self.smap.generation:
          continue
      if idx >= self.smap.count or int(self.smap.slots[idx, 0]) != seq:
        self.frames_overwritten += 1           # buffer reused before we got here; a later frame follows
        continue
      if self.last_frame_id is not None and frame_id > self.last_frame_id + 1:
        self.frames_missed += frame_id - self.last_frame_id - 1
      self.last_frame_id = frame_id
      self.frames_received += 1
      self.last_frame_time = time.monotonic()
      return VisionBuf(self.smap, idx, seq, frame_id, sof, eof)

  def _recv_announcement(self, flags: int) -> bytes | None:
    """One datagram if it comes from a server process of this user (the one of the mapped buffers, or the
    server that replaced it: a new buffer file names its new pid), else None (counted in `rejected`)."""
    dat, _, pid, uid = _recv_with_creds(self.sock, flags)
    if uid == os.geteuid() and pid > 0:
      if pid == self.smap.server_pid:
        return dat
      try:   # a restarted server: its pid is in the header of the file now at the stream's path
        with open(shm_path(self.name, self.stream_type, self.prefix), "rb") as f:
          head = f.read(HEADER.size)
        if len(head) == HEADER.size and HEADER.unpack(head)[0] == MAGIC and HEADER.unpack(head)[-1] == pid:
          return dat
      except OSError:
        pass
    self.rejected += 1
    return None

  def _disconnect(self) -> None:
    if self.sock is not None:
      try:
        self.sock.sendto(b"bye", socket.MSG_DONTWAIT, announce_address(self.name, self.stream_type, self.prefix))
      except OSError:
        pass
      self.sock.close()
      self.sock = None
    if self.smap is not None:
      self.smap.close()
      self.smap = None

  def close(self) -> None:
    self._disconnect()


# ---------------------------------------------------------------- colour conversion helpers

def rgb_to_nv12(img: np.ndarray) -> np.ndarray:
  """(H, W, 3) RGB uint8 -> flat NV12 (H*W*3/2,) uint8 (BT.601, as cv2)."""
  import cv2
  h, w = img.shape[:2]
  if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
    raise ValueError(f"rgb_to_nv12 expects (H, W, 3) uint8, got {img.shape} {img.dtype}")
  if h % 2 or w % 2:
    raise ValueError(f"NV12 needs an even width and height, got {w}x{h}")
  i420 = cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420).reshape(-1)   # Y, then U plane, then V plane
  out = np.empty(h * w * 3 // 2, dtype=np.uint8)
  out[:h * w] = i420[:h * w]
  q = h * w // 4
  out[h * w::2] = i420[h * w:h * w + q]
  out[h * w + 1::2] = i420[h * w + q:]
  return out


def nv12_to_rgb(buf, width: int, height: int) -> np.ndarray:
  """Flat NV12 (bytes / array / VisionBuf.data) -> (H, W, 3) RGB uint8."""
  import cv2
  arr = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else np.asarray(buf)
  if arr.size != width * height * 3 // 2:
    raise ValueError(f"NV12 {width}x{height} needs {width * height * 3 // 2} bytes, got {arr.size}")
  return cv2.cvtColor(arr.reshape(height * 3 // 2, width), cv2.COLOR_YUV2RGB_NV12)
