"""Write logs: a stream of capnp `Event`s, zstd- (rlog.zst) or bz2- (rlog.bz2) compressed or raw (rlog).

File format (openpilot's rlog): the Events' standard capnp serialisation (segment table + segments)
concatenated back to back, then compressed as a whole; the suffix names the compression.  The writer lives
beside the schema so that loggerd (device) and the simulator's segment generator share it; the reader is
tools/lib/logreader.py.

  with LogWriter(seg_dir / "rlog.zst") as lw:
    lw.write(msg)                       # an Event builder/reader or its bytes

zstd frames carry a content checksum (checked at the end of the frame) and LogWriter flushes a
zstd block every `flush_every` messages, so a writer that dies loses at most that many messages.
bz2 can only be decoded in whole 900 kB blocks: a truncated rlog.bz2 loses its last block.
"""
from __future__ import annotations

import bz2
from pathlib import Path

import zstandard

from cereal.messaging import event_to_bytes


def compression(path: Path) -> str:
  """A log file's compression from its suffix, shared by the writer and tools/lib/logreader: "zst", "bz2" or "none"."""
  name = path.name
  if name.endswith(".zst"):
    return "zst"
  if name.endswith(".bz2"):
    return "bz2"
  return "none"


class LogWriter:
  """Appends Events to a new log file; compression from the suffix (.zst, .bz2, or none).
  The file must not exist yet (FileExistsError otherwise): two writers on one file would destroy both logs.

  zstd output is flushed block-wise every `flush_every` messages, so that a writer killed without
  close() still leaves every message up to the last flush readable.
  """

  def __init__(self, path: str | Path, level: int = 3, flush_every: int = 100):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.kind = compression(self.path)
    self.flush_every = flush_every
    self.count = 0
    self._raw = open(self.path, "xb")   # exclusive: never write over (and interleave with) an existing log
    if self.kind == "zst":
      self._f = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(self._raw, closefd=False)
    elif self.kind == "bz2":
      self._f = bz2.BZ2File(self._raw, "wb", compresslevel=9)
    else:
      self._f = self._raw
    self.closed = False

  def write(self, event) -> None:
    if self.closed:
      raise ValueError(f"{self.path}: write to a closed LogWriter")
    dat = event_to_bytes(event)
    self._f.write(dat)
    self.count += 1
    if self.flush_every and self.count % self.flush_every == 0:
      self.flush()

  def flush(self) -> None:
    if self.kind == "zst":
      self._f.flush(zstandard.FLUSH_BLOCK)
    elif self.kind == "bz2":
      pass   # bz2 can only flush by ending the stream
    self._raw.flush()

  def close(self) -> None:
    if self.closed:
      return
    if self.kind in ("zst", "bz2"):
      self._f.close()   # ends the zstd frame / bz2 stream
    self._raw.close()
    self.closed = True

  def __enter__(self) -> "LogWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
