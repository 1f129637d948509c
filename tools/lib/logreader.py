"""Read logs: a stream of capnp `Event`s, zstd- (rlog.zst) or bz2- (rlog.bz2) compressed.

File format (openpilot's rlog): the Events' standard capnp serialisation (segment table + segments)
concatenated back to back, then compressed as a whole.  `rlog` (no suffix) is uncompressed.
The writer is cereal/logwriter.py (`LogWriter`).

  for ev in LogReader(seg_dir / "rlog.zst"):
    ev.which(), ev.logMonoTime

A message whose union tag the schema does not know (written by a newer openpilot) is skipped and counted
(`reader.skipped_unknown`), never read as another message.
A truncated or corrupt file yields every complete message before the damage, then raises
LogCorruptError naming the file, the byte offset (decompressed, and compressed where the decoder failed) and how
many messages were read
(`LogReader(path, strict=False)` logs a warning and stops instead).  Every message is validated
(cereal.messaging.log_from_bytes follows every pointer), so a reader never crashes on bad bytes.
zstd frames carry a content checksum (checked at the end of the frame) and LogWriter flushes a
zstd block every `flush_every` messages, so a writer that dies loses at most that many messages.
Decompression is a stream: a damaged zstd block loses only the messages in it and after it.
bz2 can only be decoded in whole 900 kB blocks: a truncated rlog.bz2 loses its last block.

CLI:  python -m tools.lib.logreader FILE   -> per-service message counts and rates.
"""
from __future__ import annotations

import bz2
import logging
import struct
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import zstandard

from cereal.logwriter import compression
from cereal.messaging import MalformedMessageError, UnknownUnionTagError, log_from_bytes
from common.cli import ToolError, emit_result, make_parser, tool_main

cloudlog = logging.getLogger("tools.lib.logreader")

CHUNK = 1 << 20
LOG_NAMES = ("rlog.zst", "rlog.bz2", "rlog", "qlog.zst", "qlog.bz2", "qlog")   # in a segment folder, first found wins


class LogCorruptError(ToolError):   # a tool reports it as one line, exit 1
  """A log file is truncated or corrupt; every message before `offset` was readable."""

  def __init__(self, path: Path, offset: int, n_read: int, reason: str):
    self.path, self.offset, self.n_read, self.reason = Path(path), offset, n_read, reason
    super().__init__(f"{path}: corrupt or truncated log at decompressed byte {offset} "
                     f"after {n_read} complete messages: {reason}")


PIECE = 1 << 16   # compressed bytes fed to the decompressor per call


class StreamDamagedError(Exception):
  """The compressed stream cannot be decoded past compressed byte `offset`."""

  def __init__(self, offset: int, reason: str):
    self.offset = offset
    super().__init__(f"compressed stream damaged at compressed byte {offset}: {reason}")


def _decompressed_chunks(path: Path) -> Iterator[bytes]:
  """Decompressed bytes of a file, as a stream: everything the decoder can produce before damage is yielded,
  then StreamDamagedError names the compressed offset (EOFError-like ends are reported the same way)."""
  kind = compression(path)
  with open(path, "rb") as f:
    if kind == "none":
      while chunk := f.read(CHUNK):
        yield chunk
      return
    new = (lambda: zstandard.ZstdDecompressor().decompressobj()) if kind == "zst" else bz2.BZ2Decompressor
    errors = (zstandard.ZstdError, EOFError) if kind == "zst" else (OSError, EOFError, ValueError)
    dec = new()
    frame_start = 0   # compressed offset where the current zstd frame / bz2 stream starts
    fed = 0           # compressed bytes of it given to `dec` so far
    while True:
      piece = f.read(PIECE)
      if not piece:
        break
      while piece:
        try:
          out = dec.decompress(piece)
        except errors as e:
          # one call's output is lost with its error: decode this piece again a byte at a time, from a fresh
          # decoder replayed to the piece's start, to yield everything before the damaged byte
          yield from _salvage(f, new, errors, frame_start, fed, piece, e)
          return   # _salvage always raises
        fed += len(piece)
        if out:
          yield out
        if dec.eof:   # end of one frame/stream; concatenated streams follow
          piece = dec.unused_data
          frame_start += fed - len(piece)
          fed = 0
          dec = new()
        else:
          piece = b""
    if fed and not dec.eof:
      raise StreamDamagedError(frame_start + fed, f"{'zstd frame' if kind == 'zst' else 'bz2 stream'} ends before "
                                                  "its end marker (truncated)")


def _salvage(f, new, errors, frame_start: int, fed: int, piece: bytes, err: Exception) -> Iterator[bytes]:
  f.seek(frame_start)
  dec = new()
  dec.decompress(f.read(fed))   # output already yielded; cannot fail (it did not the first time)
  for i in range(len(piece)):
    try:
      out = dec.decompress(piece[i:i + 1])
    except errors as e:
      raise StreamDamagedError(frame_start + fed + i, str(e) or type(e).__name__) from None
    if out:
      yield out
    if dec.eof:
      dec = new()
  raise StreamDamagedError(frame_start + fed, str(err) or type(err).__name__)


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
    except StreamDamagedError as e:
      self._damaged(consumed + pos, n, str(e))
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


@tool_main
def main(argv: list[str] | None = None) -> int:
  ap = make_parser("python -m tools.lib.logreader", "Per-service summary of a cereal log (rlog.zst / rlog.bz2 / rlog).")
  ap.add_argument("path", help="log file or segment directory")
  args = ap.parse_args(argv)
  try:
    summary, err = summarize(args.path)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{'service':<20} {'count':>8} {'span s':>9} {'Hz':>8}")
  for w, s in summary.items():
    print(f"{w:<20} {s['count']:>8} {s['span_s']:>9.2f} {s['freq_hz']:>8.2f}")
  print(f"{'total':<20} {sum(s['count'] for s in summary.values()):>8}")
  emit_result({"path": args.path, "services": summary, "total": sum(s["count"] for s in summary.values()),
               "error": None if err is None else str(err)})
  if err is not None:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
