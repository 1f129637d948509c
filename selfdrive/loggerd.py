"""loggerd: records every logged service of the stack into segment folders (openpilot's loggerd).

  <root>/<route>--<n>/rlog.zst      route = start time "YYYY-MM-DD--HH-MM-SS", n = segment number

Route names are unique under a root: a loggerd claims its route by creating "<route>--0" exclusively, and one
started in the same second (a second stack, a fast restart) takes "<time>-2", "<time>-3", ...  Segment folders
and log files are always created exclusively, so no log is ever opened over another one.

Each segment starts with an initData event (version, git commit, wall time; prefix and route name in
initData.params as WorldpilotPrefix / RouteName) and is
rotated every `segment_length` seconds (60 s, like comma2k19).  Payloads are validated before
being written (a malformed one is counted and dropped: a log must stay readable to its end).
SIGTERM / SIGINT stop the loop; the current segment is flushed and closed.

  python -m selfdrive.loggerd [--root DIR] [--segment-length S] [--prefix P]
Root defaults to $WORLDPILOT_LOG_ROOT or ~/.worldpilot/realdata.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import zmq

from cereal import messaging
from cereal.logwriter import LogWriter
from cereal.messaging import MalformedMessageError, log_from_bytes
from cereal.services import SERVICE_LIST
from common.cli import make_parser, tool_main
from common.stop_signal import StopFlag

cloudlog = logging.getLogger("selfdrive.loggerd")

LOG_ROOT_ENV = "WORLDPILOT_LOG_ROOT"
VERSION = "0.1.0"


def default_log_root() -> Path:
  return Path(os.environ.get(LOG_ROOT_ENV, Path.home() / ".worldpilot" / "realdata"))


def git_commit() -> str:
  try:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                       text=True, timeout=5)
    return r.stdout.strip() if r.returncode == 0 else "unknown"
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"


def init_data_message(version: str, commit: str, prefix: str, route: str):
  """The initData Event that starts every segment (openpilot's InitData; our prefix and route name travel
  in its params map, where openpilot's loggerd puts the device's settings)."""
  init = messaging.new_message("initData")
  d = init.initData
  d.version, d.gitCommit, d.wallTimeNanos = version, commit, time.time_ns()
  d.deviceType = "pc"
  entries = d.params.init("entries", 2)
  entries[0].key, entries[0].value = "WorldpilotPrefix", prefix.encode()
  entries[1].key, entries[1].value = "RouteName", route.encode()
  return init


def init_params(init_data) -> dict[str, bytes]:
  """initData.params as a dict (key -> bytes)."""
  return {e.key: bytes(e.value) for e in init_data.params.entries}


class Logger:
  """Writes Event bytes into rotating segment folders of one route."""

  def __init__(self, root: Path, segment_length: float = 60.0, prefix: str | None = None):
    self.root = Path(root)
    self.segment_length = segment_length
    self.prefix = messaging.get_prefix(prefix)
    self.route = self._claim_route(time.strftime("%Y-%m-%d--%H-%M-%S"))
    self.commit = git_commit()
    self.segment = -1
    self.writer: LogWriter | None = None
    self.segment_start = 0.0
    self.counts: dict[str, int] = {}
    self.malformed = 0

  def _claim_route(self, stamp: str) -> str:
    """A route name no other loggerd under root uses: mkdir of its first segment folder is the claim."""
    self.root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10000):
      route = stamp if k == 1 else f"{stamp}-{k}"
      try:
        (self.root / f"{route}--0").mkdir()
        return route
      except FileExistsError:
        continue
    raise RuntimeError(f"{self.root}: could not claim a route name for {stamp}")

  @property
  def segment_dir(self) -> Path:
    return self.root / f"{self.route}--{self.segment}"

  def rotate(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.segment += 1
    self.segment_start = time.monotonic()
    if self.segment > 0:
      self.segment_dir.mkdir()   # exclusive: segment 0 is the route's claim, made in __init__
    self.writer = LogWriter(self.segment_dir / "rlog.zst")
    self.writer.write(init_data_message(VERSION, self.commit, self.prefix, self.route))
    cloudlog.info("loggerd: writing %s", self.segment_dir)

  def write(self, service: str, dat: bytes) -> bool:
    try:
      log_from_bytes(dat)
    except MalformedMessageError as e:
      self.malformed += 1
      if self.malformed <= 10 or self.malformed % 1000 == 0:
        cloudlog.warning("loggerd: dropped malformed %s message (%d so far): %s", service, self.malformed, e)
      return False
    if self.writer is None or time.monotonic() - self.segment_start >= self.segment_length:
      self.rotate()
    self.writer.write(dat)
    self.counts[service] = self.counts.get(service, 0) + 1
    return True

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


@tool_main
def main(argv: list[str] | None = None) -> int:
  ap = make_parser("python -m selfdrive.loggerd", "Record every logged cereal service into rlog.zst segments.")
  ap.add_argument("--root", type=Path, default=None, help=f"log root (default ${LOG_ROOT_ENV} or ~/.worldpilot/realdata)")
  ap.add_argument("--segment-length", type=float, default=60.0, help="seconds per segment")
  ap.add_argument("--prefix", default=None, help="messaging prefix (default $WORLDPILOT_PREFIX)")
  args = ap.parse_args(argv)
  if not 0.1 <= args.segment_length <= 86400:   # also refuses nan/inf; 0 would make one folder per message
    ap.error(f"--segment-length must be between 0.1 and 86400 seconds, got {args.segment_length}")

  stop = StopFlag()

  poller = zmq.Poller()
  socks = {}
  for s, svc in SERVICE_LIST.items():
    if svc.should_log:
      socks[s] = messaging.sub_sock(s, poller=poller, prefix=args.prefix)
  by_zmq = {sock.sock: (name, sock) for name, sock in socks.items()}

  root = args.root or default_log_root()
  try:
    logger = Logger(root, args.segment_length, args.prefix)
    logger.rotate()
  except OSError as e:   # root is a file, not writable, ...
    for sock in socks.values():
      sock.close()
    print(f"error: log root {root}: {e}", file=sys.stderr)
    return 1
  try:
    while not stop:
      for zsock, _ in poller.poll(100):
        name, sock = by_zmq[zsock]
        for dat in messaging.drain_sock_raw(sock):
          logger.write(name, dat)
  finally:
    # take what is still arriving (until 100 ms of silence, at most 1 s), then flush and close
    t_stop = time.monotonic()
    while time.monotonic() - t_stop < 1.0:
      events = poller.poll(100)
      if not events:
        break
      for zsock, _ in events:
        name, sock = by_zmq[zsock]
        for dat in messaging.drain_sock_raw(sock):
          logger.write(name, dat)
    logger.close()
    for sock in socks.values():
      sock.close()
    cloudlog.info("loggerd: stopped; wrote %s (malformed dropped: %d)", logger.counts, logger.malformed)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
