"""Read and write logs: a stream of capnp `Event`s, zstd- (rlog.zst) or bz2- (rlog.bz2) compressed.

File format (openpilot's rlog): the Events' standard capnp serialisation (segment table + segments)
concatenated back to back, then compressed as a whole.  `rlog` (no suffix) is uncompressed.

  with LogWriter(seg_dir / "rlog.zst") as lw:
    lw.write(msg)                       # an Event builder/reader or its bytes
  for ev in LogReader(seg_dir / "rlog.zst"):
    ev.which(), ev.logMonoTime

A message whose union tag the schema does not know (written by a newer openpilot) is skipped and counted
(`reader.skipped_unknown`), never read as another message.
A truncated or corrupt file yields every complete message before the damage, then raises
LogCorruptError naming the file, the byte offset and how many messages were read
(`LogReader(path, strict=False)` logs a warning and stops instead).  Every message is validated
(cereal.messaging.log_from_bytes follows every pointer), so a reader never crashes on bad bytes.
zstd frames carry a content checksum (checked at the end of the frame) and LogWriter flushes a
zstd block every `flush_every` messages, so a writer that dies loses at most that many messages.
bz2 can only be decoded in whole 900 kB blocks: a truncated rlog.bz2 loses its last block.

CLI:  python -m tools.lib.logreader FILE   -> per-service message counts and rates.
"""
from __future__ import annotations

import argparse
import bz2
import logging
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import zstandard

from cereal.messaging import MalformedMessageError, UnknownUnionTagError, event_to_bytes, log_from_bytes

cloudlog = logging.getLogger("tools.lib.logreader")

CHUNK = 1 << 20
LOG_NAMES = ("rlog.zst", "rlog.bz2", "rlog", "qlog.zst", "qlog.bz2", "qlog")   # in a segment folder, first found wins


class LogCorruptError(Exception):
  """A log file is truncated or corrupt; every message before `offset` was readable."""

  def __init__(self, path: Path, offset: int, n_read: int, reason: str):
    self.path, self.offset, self.n_read, self.reason = Path(path), offset, n_read, reason
    super().__init__(f"{path}: corrupt or truncated log at decompressed byte {offset} "
                     f"after {n_read} complete messages: {reason}")


def _compression(path: Path) -> str:
  name = path.name
  if name.endswith(".zst"):
    return "zst"
  if name.endswith(".bz2"):
    return "bz2"
  return "none"


class LogWriter:
  """Appends Events to a new log file; compression from the suffix (.zst, .bz2, or none).

  zstd output is flushed block-wise every `flush_every` messages, so that a writer killed without
  close() still leaves every message up to the last flush readable.
  """

  def __init__(self, path: str | Path, level: int = 3, flush_every: int = 100):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.kind = _compression(self.path)
    self.flush_every = flush_every
    self.count = 0
    self._raw = open(self.path, "wb")
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


def _decompressed_chunks(path: Path) -> Iterator[bytes]:
  """Decompressed bytes of a file; raises EOFError when the compressed stream ends early."""
  kind = _compression(path)
  with open(path, "rb") as f:
    if kind == "none":
      while chunk := f.read(CHUNK):
        yield chunk
      return
    new = (lambda: zstandard.ZstdDecompressor().decompressobj()) if kind == "zst" else bz2.BZ2Decompressor
    dec = new()
    started = False
    while True:
      chunk = f.read(CHUNK)
      if not chunk:
        break
      while chunk:
        started = True
        out = dec.decompress(chunk)
        if out:
          yield out
        if dec.eof:   # end of one frame/stream; concatenated streams follow
          chunk = dec.unused_data
          dec = new()
          started = False
        else:
          chunk = b""
    if started and not dec.eof:
      raise EOFError(f"{'zstd frame' if kind == 'zst' else 'bz2 stream'} ends before its end marker")


def _message_size(buf: bytearray | bytes, pos: int) -> int | None:
  """Byte size of the capnp message at buf[pos:], or None if its header is not complete yet."""
  if len(buf) - pos < 4:
    return None
  n_seg = struct.unpack_from("<I", buf, pos)[0] + 1
  if n_seg > 512:
    raise MalformedMessageError(f"segment table claims {n_seg} segments")
  header = 4 * (n_seg + 1)
  header += header % 8
  if len(buf) - pos < 4 * (n_seg + 1):
    return None
  words = sum(struct.unpack_from(f"<{n_seg}I", buf, pos + 4))
  return header + 8 * words


class LogReader:
  """Iterates the Events of a log file (or of the rlog in a segment directory)."""

  def __init__(self, path: str | Path, sort_by_time: bool = False, strict: bool = True):
    p = Path(path)
    if p.is_dir():
      found = [p / n for n in LOG_NAMES if (p / n).is_file()]
      if not found:
        raise FileNotFoundError(f"{p}: no log file ({', '.join(LOG_NAMES)}) in this directory")
      p = found[0]
    if not p.is_file():
      raise FileNotFoundError(f"{p}: log file not found")
    self.path = p
    self.sort_by_time = sort_by_time
    self.strict = strict
    self.skipped_unknown = 0   # messages with a union tag the schema does not know (a newer openpilot)

  def _iter(self) -> Iterator:
    buf = bytearray()
    pos = 0          # offset of the next message in buf
    consumed = 0     # decompressed bytes dropped from buf before pos
    n = 0
    try:
      for chunk in _decompressed_chunks(self.path):
        buf += chunk
        while True:
          size = _message_size(buf, pos)
          if size is None or len(buf) - pos < size:
            break
          try:
            msg = log_from_bytes(bytes(buf[pos:pos + size]))
          except UnknownUnionTagError as e:   # never guessed as another message: skipped and counted
            pos += size
            self.skipped_unknown += 1
            if self.skipped_unknown <= 10:
              cloudlog.warning("%s: skipped a message at decompressed byte %d: %s", self.path, consumed + pos - size, e)
            continue
          pos += size
          n += 1
          yield msg
        if pos > CHUNK:
          del buf[:pos]
          consumed += pos
          pos = 0
    except (EOFError, zstandard.ZstdError, OSError) as e:
      self._damaged(consumed + pos, n, f"compressed stream damaged: {e}")
      return
    except MalformedMessageError as e:
      self._damaged(consumed + pos, n, str(e))
      return
    if pos != len(buf):
      self._damaged(consumed + pos, n, f"file ends inside a message ({len(buf) - pos} trailing bytes)")

  def _damaged(self, offset: int, n: int, reason: str) -> None:
    err = LogCorruptError(self.path, offset, n, reason)
    if self.strict:
      raise err
    cloudlog.warning("%s", err)

  def __iter__(self) -> Iterator:
    if self.sort_by_time:
      return iter(sorted(self._iter(), key=lambda m: m.logMonoTime))
    return self._iter()


def summarize(path: str | Path) -> tuple[dict, LogCorruptError | None]:
  """Per-service counts, first/last logMonoTime and rate; plus the error if the file is damaged."""
  counts: Counter = Counter()
  first: dict[str, int] = {}
  last: dict[str, int] = {}
  err = None
  try:
    for ev in LogReader(path):
      w = ev.which()
      counts[w] += 1
      first.setdefault(w, ev.logMonoTime)
      last[w] = ev.logMonoTime
  except LogCorruptError as e:
    err = e
  out = {}
  for w, c in sorted(counts.items()):
    span = (last[w] - first[w]) * 1e-9
    out[w] = {"count": c, "span_s": span, "freq_hz": (c - 1) / span if span > 0 else 0.0}
  return out, err


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description="Per-service summary of a cereal log (rlog.zst / rlog.bz2 / rlog).")
  ap.add_argument("path", help="log file or segment directory")
  args = ap.parse_args(argv)
  try:
    summary, err = summarize(args.path)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{'service':<20} {'count':>8} {'span s':>9} {'Hz':>8}")
  for w, s in summary.items():
    print(f"{w:<20} {s['count']:>8} {s['span_s']:>9.2f} {s['freq_hz']:>8.2f}")
  print(f"{'total':<20} {sum(s['count'] for s in summary.values()):>8}")
  if err is not None:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
