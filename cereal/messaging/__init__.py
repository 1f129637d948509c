"""Publish/subscribe of cereal Events between the stack's processes (openpilot's messaging API).

Transport: ZeroMQ PUB/SUB over IPC (unix-domain) sockets, one per service, in a per-run prefix
directory  /tmp/worldpilot/<WORLDPILOT_PREFIX>/<service>  (default prefix "default").  Two stacks
with different prefixes never see each other's messages and nothing listens on a network
interface.  PUB never blocks: a slow subscriber drops messages at its high-water mark.

  pm = PubMaster(['carState'])
  msg = new_message('carState'); msg.carState.vEgo = 20.
  pm.send('carState', msg)

  sm = SubMaster(['carState'])
  sm.update(100)                     # wait up to 100 ms
  sm['carState'].vEgo, sm.updated['carState'], sm.alive['carState'], sm.all_checks()

Malformed payloads (bytes that are not a valid Event) never crash a reader: they are counted
(`SubSocket.malformed`, `SubMaster.malformed[service]`), logged, and dropped.

Ownership: the prefix directory (and the root above it, when this code creates it) is made 0700 whatever the
umask, and an existing one must be a real directory owned by this user (PrefixOwnershipError otherwise: someone
who pre-created it could take over the stack's sockets).  A service has one publisher per prefix: a publisher
holds an flock on "<service>.lock" next to its socket for its lifetime, and a second one (this process or
another stack on the same prefix) raises PublisherExistsError instead of silently binding over the first.
cleanup_prefix() removes only sockets whose publisher is gone (their lock is free), so a stack that exits never
deletes the sockets of one still running.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time
from collections import deque
from typing import Any, Iterable

import capnp
import zmq

from cereal import log
from cereal.services import SERVICE_LIST

cloudlog = logging.getLogger("cereal.messaging")

PREFIX_ENV = "WORLDPILOT_PREFIX"
PREFIX_ROOT_ENV = "WORLDPILOT_PREFIX_ROOT"   # parent directory of the prefixes, default /tmp/worldpilot
DEFAULT_PREFIX = "default"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Read limit for one message: 64 Mi words = 512 MiB; frames never travel in Events (see visionipc).
TRAVERSAL_LIMIT_WORDS = 1 << 26
# After a subscriber's connection is up, the time its subscription is given to reach the publisher (ZMQ sends it right
# behind the handshake on the same unix socket, in microseconds, but does not acknowledge it).
SUBSCRIPTION_SETTLE_S = 0.1


class MalformedMessageError(ValueError):
  """Bytes that do not decode to a valid log.Event (truncated, garbage, or corrupt pointers)."""


class UnknownUnionTagError(MalformedMessageError):
  """A well-framed Event whose union tag this schema does not have (a newer openpilot, or corrupt bytes).
  It is never read as another member; log readers skip it and count it."""


class PublisherExistsError(RuntimeError):
  """A service already has a live publisher under this prefix."""


class PrefixOwnershipError(PermissionError):
  """The socket directory (or its root) exists but is not a directory owned by this user."""


# ---------------------------------------------------------------- prefix / socket addresses

def get_prefix(prefix: str | None = None) -> str:
  """The stack's prefix name: the argument, else $WORLDPILOT_PREFIX, else "default"."""
  p = prefix if prefix is not None else os.environ.get(PREFIX_ENV, DEFAULT_PREFIX)
  if not _PREFIX_RE.match(p):
    raise ValueError(f"invalid messaging prefix {p!r} (from {'argument' if prefix is not None else PREFIX_ENV}): "
                     "use 1-64 characters of [A-Za-z0-9_.-]")
  return p


def prefix_dir(prefix: str | None = None) -> str:
  """Directory that holds the IPC sockets (and visionipc buffers' names) of one stack."""
  root = os.environ.get(PREFIX_ROOT_ENV, "/tmp/worldpilot")
  return os.path.join(root, get_prefix(prefix))


def service_address(service: str, prefix: str | None = None) -> str:
  if service not in SERVICE_LIST:
    raise KeyError(f"unknown service {service!r}; known services are in cereal/services.py: {sorted(SERVICE_LIST)}")
  path = os.path.join(prefix_dir(prefix), service)
  if len(path) > 100:   # sun_path is 108 bytes on Linux
    raise ValueError(f"socket path too long for a unix socket ({len(path)} chars): {path}")
  return "ipc://" + path


def _secure_dir(path: str, is_root: bool = False) -> None:
  """Create `path` with mode 0700, or check an existing one: a directory (not a symlink) owned by this user, whose
  group/other permission bits are then cleared.  An existing root may instead be a system-owned sticky directory
  such as /tmp."""
  try:
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)   # mkdir's mode is masked by the umask (bits can only be lost; be exact anyway)
    return
  except FileExistsError:
    pass
  st = os.lstat(path)
  if not stat.S_ISDIR(st.st_mode):
    raise PrefixOwnershipError(f"{path}: exists and is not a directory (a symlink or file); refusing to use it "
                               f"for IPC sockets")
  if st.st_uid == os.geteuid():
    if st.st_mode & 0o077:
      os.chmod(path, 0o700)
    return
  if is_root and st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
    return
  raise PrefixOwnershipError(f"{path}: owned by uid {st.st_uid}, not this user ({os.geteuid()}); refusing to use "
                             f"it for IPC sockets (set {PREFIX_ENV} or {PREFIX_ROOT_ENV} to a directory of yours)")


def ensure_prefix_dir(prefix: str | None = None) -> str:
  """The stack's socket directory, created 0700 (with its root) or checked to be this user's own."""
  d = prefix_dir(prefix)
  root = os.path.dirname(d)
  if not os.path.isdir(root):
    os.makedirs(os.path.dirname(root), exist_ok=True)
  _secure_dir(root, is_root=True)
  _secure_dir(d)
  return d


def _try_lock(lock_path: str) -> int | None:
  """An fd holding an exclusive flock on lock_path (created 0600), or None if another holder has it."""
  while True:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        return None
      raise
    try:
      same = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)   # the file was unlinked by its previous holder after we opened it: lock the new one


def _lock_path(service: str, prefix: str | None = None) -> str:
  return service_address(service, prefix)[len("ipc://"):] + ".lock"


def cleanup_prefix(prefix: str | None = None) -> None:
  """Remove a stack's sockets whose publisher has exited, then the directory if nothing else is left.
  Sockets of live publishers (another stack on the same prefix) and directories of other users are left alone."""
  d = prefix_dir(prefix)
  try:
    st = os.lstat(d)
  except FileNotFoundError:
    return
  if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
    return
  for name in os.listdir(d):
    if not name.endswith(".lock"):
      continue
    lock_path = os.path.join(d, name)
    try:
      fd = _try_lock(lock_path)
    except OSError:
      continue
    if fd is None:
      continue   # a live publisher
    try:
      sock_path = lock_path[:-len(".lock")]
      try:
        if stat.S_ISSOCK(os.lstat(sock_path).st_mode):
          os.unlink(sock_path)
      except FileNotFoundError:
        pass
      os.unlink(lock_path)
    finally:
      os.close(fd)
  try:
    os.rmdir(d)
  except OSError:
    pass   # not empty: something still lives there


def context() -> zmq.Context:
  return zmq.Context.instance()   # pyzmq makes a fresh one after fork()


# ---------------------------------------------------------------- messages

def new_message(service: str | None = None, size: int | None = None, **kwargs: Any) -> capnp.lib.capnp._DynamicStructBuilder:
  """An Event builder with logMonoTime = time.monotonic_ns(), valid = True, and `service` initialised."""
  kwargs.setdefault("valid", True)
  kwargs.setdefault("logMonoTime", time.monotonic_ns())
  dat = log.Event.new_message(**kwargs)
  if service is not None:
    field = log.Event.schema.fields.get(service)
    if field is None or service not in log.Event.schema.union_fields:
      raise KeyError(f"{service!r} is not a member of the Event union in cereal/log.capnp")
    which = field.proto.slot.type.which()
    if which == "struct":
      dat.init(service)
    elif which in ("list",):
      dat.init(service, size or 0)
    elif which == "text":
      setattr(dat, service, "")
    elif which == "data":
      setattr(dat, service, b"")
    else:   # AnyPointer: an openpilot message whose content this stack does not model
      raise KeyError(f"{service!r} is an openpilot message the stack only passes through (AnyPointer in "
                     "cereal/log.capnp); it cannot be built here")
  return dat


_WALK_PLANS: dict[int, tuple[list, dict]] = {}


def _walk_plan(schema) -> tuple[list, dict]:
  """For a struct schema: its pointer fields as (name, kind, sub-schema), split into plain and union members."""
  plan = _WALK_PLANS.get(schema.node.id)
  if plan is not None:
    return plan
  union = set(schema.union_fields)
  plain: list = []
  in_union: dict = {}
  for name, field in schema.fields.items():
    p = field.proto
    if p.which() == "group":
      entry = (name, "struct", field.schema)
    else:
      t = p.slot.type
      k = t.which()
      if k == "struct":
        entry = (name, "struct", field.schema)
      elif k == "list":
        elem = t.list.elementType.which()
        if elem == "struct":
          entry = (name, "structlist", field.schema.elementType)
        elif elem in ("list", "text", "data", "anyPointer"):
          entry = (name, "ptrlist", None)
        else:
          entry = (name, "ptr", None)
      elif k in ("text", "data", "anyPointer"):
        entry = (name, "ptr", None)
      else:
        continue   # primitives and enums live in the data section: always in bounds
    if name in union:
      in_union[name] = entry
    else:
      plain.append(entry)
  plan = (plain, in_union)
  _WALK_PLANS[schema.node.id] = plan
  return plan


def _validate(reader, schema) -> None:
  """Follow every pointer of a message once (field access raises catchable errors on bad pointers).

  pycapnp's whole-message traversals (total_size, as_builder) abort the process on corrupt
  pointers instead of raising, so a message from a socket or a file is checked this way.
  """
  plain, in_union = _walk_plan(schema)
  entries = plain
  if schema.union_fields:
    try:
      w = reader.which()
    except capnp.KjException:
      # a discriminant this schema does not have: a newer schema wrote it, or the bytes are not an
      # Event of this layout at all.  Never guess a member (that is how garbage reads as initData).
      name = schema.node.displayName.split(":")[-1]
      raise UnknownUnionTagError(f"{name} has a union tag that cereal/log.capnp does not know") from None
    if w in in_union:
      entries = plain + [in_union[w]]
  for name, kind, sub in entries:
    v = getattr(reader, name)
    if kind == "struct":
      _validate(v, sub)
    elif kind == "structlist":
      for item in v:
        _validate(item, sub)
    elif kind == "ptrlist":
      for item in v:
        pass


def log_from_bytes(dat: bytes, struct: Any = log.Event) -> capnp.lib.capnp._DynamicStructReader:
  """Decode bytes to a reader; raise MalformedMessageError on truncated/garbage/corrupt bytes.

  Cap'n Proto checks pointers lazily, so every pointer is followed once here (_validate);
  afterwards no field access can fail on a bad pointer.
  """
  if not isinstance(dat, (bytes, bytearray, memoryview)):
    raise MalformedMessageError(f"expected bytes, got {type(dat).__name__}")
  if len(dat) == 0 or len(dat) % 8 != 0:
    raise MalformedMessageError(f"message length {len(dat)} is not a positive multiple of 8 bytes")
  try:
    with struct.from_bytes(bytes(dat), traversal_limit_in_words=TRAVERSAL_LIMIT_WORDS) as msg:
      _validate(msg, struct.schema)   # also raises on an unknown union member (newer schema)
      return msg
  except MalformedMessageError:
    raise
  except capnp.KjException as e:
    raise MalformedMessageError(f"invalid capnp {struct.schema.node.displayName.split(':')[-1]}: {e.description}") from None
  except (ValueError, TypeError, UnicodeDecodeError, IndexError) as e:
    raise MalformedMessageError(f"invalid capnp message: {type(e).__name__}: {e}") from None


def event_to_bytes(event) -> bytes:
  """Serialised bytes of an Event builder, an Event reader, or bytes (returned as they are)."""
  if isinstance(event, (bytes, bytearray, memoryview)):
    return event
  if isinstance(event, capnp.lib.capnp._DynamicStructBuilder):
    return event.to_bytes()
  if isinstance(event, capnp.lib.capnp._DynamicStructReader):
    return event.as_builder().to_bytes()
  raise TypeError(f"expected an Event builder, reader or bytes, got {type(event).__name__}")


# ---------------------------------------------------------------- sockets

class PubSocket:
  """Publisher of one service. Binds the service's IPC socket; send() never blocks.

  track_subscribers=True makes it a ZMQ XPUB that also receives its subscribers' subscriptions, so a harness that
  drives a process in lockstep (model replay, the simulator's stack) can wait until that process really listens
  (wait_for_subscribers) instead of losing its first messages to ZMQ's slow-joiner window."""

  def __init__(self, service: str, prefix: str | None = None, track_subscribers: bool = False):
    self.service = service
    self.subscriptions = 0   # subscriptions received so far (track_subscribers only)
    self.track_subscribers = track_subscribers
    self.addr = service_address(service, prefix)
    self.path = self.addr[len("ipc://"):]
    self.lock_path = self.path + ".lock"
    self.lock_fd: int | None = None
    for _ in range(3):   # a concurrent cleanup_prefix may remove the empty directory between the two steps
      ensure_prefix_dir(prefix)
      try:
        self.lock_fd = _try_lock(self.lock_path)
        break
      except FileNotFoundError:
        continue
    else:
      raise FileNotFoundError(f"{self.lock_path}: socket directory keeps disappearing")
    if self.lock_fd is None:
      try:
        with open(self.lock_path) as f:
          holder = f.read().strip() or "?"
      except OSError:
        holder = "?"
      raise PublisherExistsError(f"{service}: already published under prefix {get_prefix(prefix)!r} by pid {holder} "
                                 f"({self.path}); two stacks on one prefix would steal each other's subscribers, "
                                 f"use another {PREFIX_ENV}")
    os.ftruncate(self.lock_fd, 0)
    os.pwrite(self.lock_fd, str(os.getpid()).encode(), 0)
    try:
      self.sock = context().socket(zmq.XPUB if track_subscribers else zmq.PUB)
      self.sock.setsockopt(zmq.LINGER, 0)
      if track_subscribers:
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)   # every subscriber's subscription, not only the first one
      self.sock.bind(self.addr)   # replaces a stale socket file of a publisher that died
    except BaseException:
      os.close(self.lock_fd)
      self.lock_fd = None
      raise

  def send(self, dat: bytes) -> None:
    try:
      self.sock.send(dat, zmq.NOBLOCK)
    except zmq.Again:   # cannot happen with PUB (it drops at HWM), kept for safety
      pass

  def wait_for_subscribers(self, n: int = 1, timeout_s: float = 10.0) -> bool:
    """Whether `n` subscriptions have reached this publisher (within timeout_s); needs track_subscribers=True.
    A message sent afterwards reaches those subscribers (ZMQ drops it for a subscriber still connecting)."""
    if not self.track_subscribers:
      raise RuntimeError(f"{self.service}: wait_for_subscribers() needs PubSocket(..., track_subscribers=True)")
    deadline = time.monotonic() + timeout_s
    while self.subscriptions < n:
      left = deadline - time.monotonic()
      if left <= 0 or not self.sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
        return False
      while True:
        try:
          msg = self.sock.recv(zmq.NOBLOCK)   # b"\x01" + topic: subscribe, b"\x00" + topic: unsubscribe
        except zmq.Again:
          break
        self.subscriptions += msg[:1] == b"\x01"
    return True

  def close(self) -> None:
    if self.lock_fd is None:
      return
    self.sock.close()
    # libzmq leaves the socket file behind; remove it (and the lock file) while still holding the lock
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    try:
      os.unlink(self.lock_path)
    except FileNotFoundError:
      pass
    os.close(self.lock_fd)
    self.lock_fd = None


class SubSocket:
  """Subscriber of one service. receive() returns raw bytes or None (timeout / non-blocking)."""

  def __init__(self, service: str, conflate: bool = False, timeout: int | None = None, prefix: str | None = None,
               track_connection: bool = False):
    self.service = service
    self.malformed = 0
    self.connected = False
    addr = service_address(service, prefix)
    ensure_prefix_dir(prefix)   # our own 0700 directory, so nobody else can plant the publisher's socket
    self.sock = context().socket(zmq.SUB)
    self.sock.setsockopt(zmq.LINGER, 0)
    if conflate:
      self.sock.setsockopt(zmq.CONFLATE, 1)   # keep only the newest message
    self.sock.setsockopt(zmq.SUBSCRIBE, b"")
    if timeout is not None:
      self.sock.setsockopt(zmq.RCVTIMEO, int(timeout))
    # the monitor must exist before connect() to see the handshake
    self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if track_connection else None
    self.sock.connect(addr)

  def wait_connected(self, timeout_s: float = 10.0) -> bool:
    """Whether the connection to the publisher is up (ZMTP handshake done) within timeout_s; needs
    track_connection=True. The subscription follows the handshake on the same connection; ZMQ does not acknowledge
    it, so a lockstep harness allows SUBSCRIPTION_SETTLE_S before the publisher's first message that must arrive."""
    if self.monitor is None:
      raise RuntimeError(f"{self.service}: wait_connected() needs SubSocket(..., track_connection=True)")
    if not self.connected and self.monitor.poll(max(1, int(timeout_s * 1000)), zmq.POLLIN):
      self.monitor.recv_multipart()
      self.connected = True
    return self.connected

  def receive(self, non_blocking: bool = False) -> bytes | None:
    try:
      return self.sock.recv(zmq.NOBLOCK if non_blocking else 0)
    except zmq.Again:
      return None

  def decode(self, dat: bytes) -> capnp.lib.capnp._DynamicStructReader | None:
    """Decode; a malformed payload is counted, logged and dropped (returns None)."""
    try:
      return log_from_bytes(dat)
    except MalformedMessageError as e:
      self.malformed += 1
      if self.malformed <= 10 or self.malformed % 1000 == 0:   # a flood of garbage must not flood the log
        cloudlog.warning("dropped malformed message on %s (%d bytes, %d so far): %s", self.service, len(dat), self.malformed, e)
      return None

  def close(self) -> None:
    if self.monitor is not None:
      self.sock.disable_monitor()
      self.monitor.close()
      self.monitor = None
    self.sock.close()


def pub_sock(service: str, prefix: str | None = None, track_subscribers: bool = False) -> PubSocket:
  return PubSocket(service, prefix, track_subscribers=track_subscribers)


def sub_sock(service: str, poller: zmq.Poller | None = None, conflate: bool = False,
             timeout: int | None = None, prefix: str | None = None, track_connection: bool = False) -> SubSocket:
  if poller is not None and not isinstance(poller, zmq.Poller):
    raise TypeError(f"sub_sock({service!r}): poller must be a zmq.Poller or None, got {poller!r} "
                    "(pass conflate/timeout as keywords)")
  sock = SubSocket(service, conflate=conflate, timeout=timeout, prefix=prefix, track_connection=track_connection)
  if poller is not None:
    poller.register(sock.sock, zmq.POLLIN)
  return sock


def drain_sock_raw(sock: SubSocket, wait_for_one: bool = False) -> list[bytes]:
  """Every message waiting on the socket, as bytes (optionally block for the first)."""
  ret: list[bytes] = []
  while True:
    dat = sock.receive(non_blocking=not (wait_for_one and len(ret) == 0))
    if dat is None:
      break
    ret.append(dat)
  return ret


def drain_sock(sock: SubSocket, wait_for_one: bool = False) -> list:
  """Every valid Event waiting on the socket; malformed ones are counted and dropped."""
  ret = []
  for dat in drain_sock_raw(sock, wait_for_one):
    msg = sock.decode(dat)
    if msg is not None:
      ret.append(msg)
  return ret


def recv_one_or_none(sock: SubSocket):
  """The next valid Event if one is waiting now, else None."""
  while True:
    dat = sock.receive(non_blocking=True)
    if dat is None:
      return None
    msg = sock.decode(dat)
    if msg is not None:
      return msg


def recv_one(sock: SubSocket):
  """Block (up to the socket's timeout) for the next valid Event; None on timeout."""
  while True:
    dat = sock.receive()
    if dat is None:
      return None
    msg = sock.decode(dat)
    if msg is not None:
      return msg


def recv_sock(sock: SubSocket, wait: bool = False):
  """The newest valid Event waiting on the socket (older ones are discarded), or None."""
  msgs = drain_sock(sock, wait_for_one=wait)
  return msgs[-1] if msgs else None


# ---------------------------------------------------------------- masters

class FrequencyTracker:
  """Receive-rate of one service over a sliding window of ~2 s (at least 5 messages)."""

  def __init__(self, service_freq: float):
    self.service_freq = service_freq
    n = max(5, int(round(2.0 * service_freq))) if service_freq > 0 else 5
    self.times: deque[float] = deque(maxlen=n)
    self.min_freq = 0.8 * service_freq
    self.max_freq = 1.2 * service_freq

  def record(self, t: float) -> None:
    self.times.append(t)

  def avg_freq(self, now: float) -> float:
    """Messages per second over the window; a gap since the last message counts against it."""
    if len(self.times) < 2:
      return 0.0
    span = max(self.times[-1] - self.times[0], now - self.times[0] - (1.0 / self.service_freq if self.service_freq > 0 else 0.0))
    return (len(self.times) - 1) / span if span > 0 else 0.0

  def ok(self, now: float) -> bool:
    if self.service_freq <= 1e-5:
      return True
    if len(self.times) < self.times.maxlen:
      return False
    return self.min_freq <= self.avg_freq(now) <= self.max_freq


class SubMaster:
  """Keeps the newest message of several services plus their health flags.

  alive[s]:   a message arrived within 10 expected periods (always True for event services)
  freq_ok[s]: receive rate within 80..120 % of the service frequency over ~2 s
  valid[s]:   the newest message's `valid` flag
  updated[s]: a new message arrived in the last update()
  malformed[s]: count of dropped undecodable payloads
  """

  def __init__(self, services: Iterable[str], poll: str | None = None, ignore_alive: Iterable[str] | None = None,
               ignore_avg_freq: Iterable[str] | None = None, ignore_valid: Iterable[str] | None = None,
               conflate: bool = False, prefix: str | None = None, track_connection: bool = False):
    self.services = list(services)
    self.frame = -1
    self.poller = zmq.Poller()
    self.sock: dict[str, SubSocket] = {}
    self.data: dict[str, Any] = {}
    self.updated: dict[str, bool] = {}
    self.seen: dict[str, bool] = {}
    self.alive: dict[str, bool] = {}
    self.freq_ok: dict[str, bool] = {}
    self.valid: dict[str, bool] = {}
    self.recv_time: dict[str, float] = {}
    self.recv_frame: dict[str, int] = {}
    self.logMonoTime: dict[str, int] = {}
    self.malformed: dict[str, int] = {}
    self.freq_tracker: dict[str, FrequencyTracker] = {}
    self.ignore_alive = set(ignore_alive or [])
    self.ignore_average_freq = set(ignore_avg_freq or [])
    self.ignore_valid = set(ignore_valid or [])
    if poll is not None and poll not in self.services:
      raise ValueError(f"poll service {poll!r} is not in {self.services}")
    self.poll = poll

    for s in self.services:
      self.sock[s] = sub_sock(s, poller=self.poller if (poll is None or s == poll) else None,
                              conflate=conflate, prefix=prefix, track_connection=track_connection)
      self.data[s] = getattr(new_message(s), s)
      self.updated[s] = False
      self.seen[s] = False
      self.alive[s] = False
      self.freq_ok[s] = False
      self.valid[s] = True
      self.recv_time[s] = 0.0
      self.recv_frame[s] = 0
      self.logMonoTime[s] = 0
      self.malformed[s] = 0
      self.freq_tracker[s] = FrequencyTracker(SERVICE_LIST[s].frequency)

  def __getitem__(self, s: str):
    return self.data[s]

  def __contains__(self, s: str) -> bool:
    return s in self.data

  def update(self, timeout: int = 100) -> None:
    """Wait up to `timeout` ms for any (or the polled) service, then take everything waiting."""
    self.poller.poll(timeout)
    msgs = []
    for s in self.services:
      for dat in drain_sock_raw(self.sock[s]):
        msgs.append((s, dat))
    self.update_msgs(time.monotonic(), msgs)

  def update_msgs(self, cur_time: float, msgs: list[tuple[str, bytes]]) -> None:
    self.frame += 1
    self.updated = dict.fromkeys(self.services, False)
    for s, dat in msgs:
      msg = self.sock[s].decode(dat)
      self.malformed[s] = self.sock[s].malformed
      if msg is None:
        continue
      which = msg.which()
      if which != s:
        self.sock[s].malformed += 1
        self.malformed[s] = self.sock[s].malformed
        if self.malformed[s] <= 10 or self.malformed[s] % 1000 == 0:
          cloudlog.warning("dropped %s message received on the %s socket", which, s)
        continue
      self.updated[s] = True
      self.seen[s] = True
      self.freq_tracker[s].record(cur_time)
      self.recv_time[s] = cur_time
      self.recv_frame[s] = self.frame
      self.data[s] = getattr(msg, s)
      self.logMonoTime[s] = msg.logMonoTime
      self.valid[s] = msg.valid

    for s in self.services:
      freq = SERVICE_LIST[s].frequency
      if freq > 1e-5:
        self.alive[s] = self.seen[s] and (cur_time - self.recv_time[s]) < (10.0 / freq)
        self.freq_ok[s] = self.alive[s] and self.freq_tracker[s].ok(cur_time)
      else:
        self.alive[s] = True
        self.freq_ok[s] = True

  def all_alive(self, service_list: Iterable[str] | None = None) -> bool:
    return all(self.alive[s] for s in (service_list or self.services) if s not in self.ignore_alive)

  def all_freq_ok(self, service_list: Iterable[str] | None = None) -> bool:
    return all(self.freq_ok[s] for s in (service_list or self.services) if s not in self.ignore_average_freq)

  def all_valid(self, service_list: Iterable[str] | None = None) -> bool:
    return all(self.valid[s] for s in (service_list or self.services) if s not in self.ignore_valid)

  def all_checks(self, service_list: Iterable[str] | None = None) -> bool:
    return self.all_alive(service_list) and self.all_freq_ok(service_list) and self.all_valid(service_list)

  def wait_connected(self, timeout_s: float = 10.0) -> list[str]:
    """Wait until every socket is connected to its publisher (SubMaster(..., track_connection=True)), then
    SUBSCRIPTION_SETTLE_S for the subscriptions to arrive; returns the services still not connected."""
    deadline = time.monotonic() + timeout_s
    missing = [s for s, sock in self.sock.items() if not sock.wait_connected(max(0.0, deadline - time.monotonic()))]
    time.sleep(SUBSCRIPTION_SETTLE_S)
    return missing

  def close(self) -> None:
    for s in self.sock.values():
      s.close()


class PubMaster:
  def __init__(self, services: Iterable[str], prefix: str | None = None, track_subscribers: bool = False):
    self.sock = {s: pub_sock(s, prefix, track_subscribers=track_subscribers) for s in services}

  def wait_for_subscribers(self, timeout_s: float = 10.0, counts: dict[str, int] | None = None) -> list[str]:
    """Wait until every service has counts[service] (default 1) subscriptions; returns the services that do not."""
    deadline = time.monotonic() + timeout_s
    return [s for s, sock in self.sock.items()
            if not sock.wait_for_subscribers((counts or {}).get(s, 1), max(0.0, deadline - time.monotonic()))]

  def send(self, s: str, dat) -> None:
    if s not in self.sock:
      raise KeyError(f"PubMaster does not publish {s!r} (publishes {sorted(self.sock)})")
    self.sock[s].send(event_to_bytes(dat))

  def close(self) -> None:
    for s in self.sock.values():
      s.close()
