"""Frame-accurate random access into raw Annex-B HEVC files (comma2k19's `video.hevc`) with PyAV.

Raw .hevc has no container timestamps, so frames are identified by ORDER:
* One demux pass (no decoding) records every packet's byte offset, size and the NAL type of its
  first picture slice. Packet k in decode order = one access unit.
* Random access to display frame i decodes from the nearest seek point at or before i. A seek point
  is an IDR picture (NAL 19/20), or a CRA/BLA picture (16..21) not followed by RASL pictures (8/9)
  before the next random-access picture. HEVC requires every picture before such a picture in
  decode order to precede it and its RADL leading pictures in output order, and those leading
  pictures are decodable from it, so the first picture output after starting at seek packet k is
  display frame k. (A CRA with RASL pictures is skipped: they reference the previous GOP. An
  open-GOP stream therefore falls back to earlier seek points, at worst frame 0.)
* Reading forward reuses the open decoder, so sequential access decodes every frame once.

Damage: raw HEVC has no checksums, and FFmpeg's decoder conceals errors (a frame whose references are missing
still comes out, grey or smeared, and the frame count still matches).  What it does say is logged: undecodable
NAL units, missing parameter sets or reference pictures.  Those reports are captured for every packet fed; a
frame that comes out after one (from the same seek point on) is refused with CorruptFrameError, and the next
seek point restarts the decoder cleanly.  `damaged_frames()` lists them for a segment's report.
"""
from collections import deque
from pathlib import Path

import av
import av.logging
import numpy as np

from common.cli import ToolError
from common.modelconstants import MODEL_FREQ

IDR_NAL_TYPES = (19, 20)   # IDR_W_RADL, IDR_N_LP
IRAP_NAL_TYPES = range(16, 24)
RASL_NAL_TYPES = (8, 9)


class VideoError(ToolError):   # a tool reports it as one line, exit 1
  """A video file is missing, not decodable, or truncated; the message names the file."""


class CorruptFrameError(VideoError):
  """The decoder reported damage (errors or concealment) on the way to this frame; its pixels are not the video's."""


class _DecoderReports:
  """Errors and warnings FFmpeg logs while the calling thread decodes (PyAV forwards nothing by default)."""

  def __enter__(self) -> list:
    self._prev = av.logging.get_level()
    self._prev_skip = av.logging.get_skip_repeated()
    if self._prev is None or self._prev < av.logging.WARNING:
      av.logging.set_level(av.logging.WARNING)
    av.logging.set_skip_repeated(False)   # a report repeated from an earlier decode must still be seen
    self._cap = av.logging.Capture(local=True)
    self.logs = self._cap.__enter__()
    return self.logs

  def __exit__(self, *exc) -> None:
    self._cap.__exit__(*exc)
    av.logging.set_level(self._prev)
    av.logging.set_skip_repeated(self._prev_skip)


def _nal_types(data: bytes) -> list[int]:
  """HEVC nal_unit_type of every NAL unit in an Annex-B byte string."""
  types, i, n = [], 0, len(data)
  while True:
    i = data.find(b"\x00\x00\x01", i)
    if i < 0 or i + 3 >= n:
      return types
    types.append((data[i + 3] >> 1) & 0x3F)
    i += 3


def _first_slice_type(data: bytes) -> int:
  """NAL type of the first VCL (slice) NAL unit of an access unit, -1 if none."""
  for t in _nal_types(data):
    if t < 32:
      return t
  return -1


def seek_points(slice_types) -> np.ndarray:
  """Packet indices from which decoding yields display frames in order (see module docstring)."""
  types = np.asarray(slice_types)
  irap = np.flatnonzero((types >= IRAP_NAL_TYPES.start) & (types < IRAP_NAL_TYPES.stop))
  keep = []
  for j, k in enumerate(irap):
    if types[k] in IDR_NAL_TYPES:
      keep.append(k)
      continue
    end = irap[j + 1] if j + 1 < len(irap) else len(types)
    if not np.isin(types[k + 1:end], RASL_NAL_TYPES).any():
      keep.append(k)
  return np.asarray(keep, dtype=np.int64)


class VideoReader:
  """Random access by frame index into a raw HEVC file.

  `fps` is the capture rate (raw Annex-B carries none; comma2k19 records at 20 Hz)."""

  def __init__(self, path, fps: float = MODEL_FREQ, threads: int = 1):
    self.path = Path(path)
    self.fps = float(fps)
    self.threads = threads
    if not self.path.is_file():
      raise VideoError(f"{self.path}: video file not found")
    self._offsets, self._sizes, types = [], [], []
    try:
      with av.open(str(self.path), format="hevc") as c:
        stream = c.streams.video[0]
        for p in c.demux(stream):
          if p.size == 0:
            continue
          if p.pos is None or p.pos < 0:
            raise VideoError(f"{self.path}: demuxer gave no byte position for packet {len(self._offsets)}")
          self._offsets.append(p.pos)
          self._sizes.append(p.size)
          types.append(_first_slice_type(bytes(p)))
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as e:
      raise VideoError(f"{self.path}: not a readable HEVC stream ({e})") from e
    while types and types[-1] == -1:   # a file cut inside the last access unit's headers: no picture in it
      self._offsets.pop(), self._sizes.pop(), types.pop()
    if not self._offsets:
      raise VideoError(f"{self.path}: no video packets (empty or not HEVC)")
    self._idr = seek_points(types)                  # packet indices that are safe seek points
    if len(self._idr) == 0 or self._idr[0] != 0:
      raise VideoError(f"{self.path}: stream does not start with a random-access picture (cut at the start?)")
    self._file = open(self.path, "rb")
    self._reset_decoder()
    if not (self.width and self.height):             # raw stream: size known after the first decode
      f = self.frame(0)
      self.height, self.width = f.shape[:2]

  # ---- public API ----
  def __len__(self) -> int:
    return len(self._offsets)

  @property
  def timestamps(self) -> np.ndarray:
    """(N,) presentation time of each frame in seconds from the first, at the capture rate."""
    return np.arange(len(self)) / self.fps

  @property
  def keyframes(self) -> np.ndarray:
    return self._idr.copy()

  def frame(self, i: int) -> np.ndarray:
    """Display frame i as an HxWx3 RGB uint8 array."""
    n = len(self)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"{self.path}: frame {i} out of range (0..{n - 1})")
    if self._last is not None and self._last[0] == i:
      return self._last[1].to_ndarray(format="rgb24")
    key = self._idr[np.searchsorted(self._idr, i, side="right") - 1]
    # restart unless the open decoder is already between the seek point and i (and undamaged for i)
    if self._damaged(i) or not (key <= self._next_out <= i):
      self._start_at(key)
    while True:
      idx, f = self._next_frame()     # frames before i are decoded but not converted to RGB
      if idx == i:
        if self._damaged(i):
          raise CorruptFrameError(f"{self.path}: frame {i} is damaged: {self._damage}")
        self._last = (i, f)
        return f.to_ndarray(format="rgb24")

  def damaged_frames(self) -> list[int]:
    """Decode every frame once (no RGB conversion); the indices of those the decoder damaged or never produced."""
    bad: list[int] = []
    seek = set(int(k) for k in self._idr)
    self._start_at(0)
    while self._next_out < len(self):
      if self._damage is not None and self._next_out in seek:
        self._start_at(self._next_out)   # a clean restart at the next seek point
      try:
        idx, _ = self._next_frame()
      except VideoError:
        bad.extend(range(self._next_out, len(self)))
        break
      if self._damaged(idx):
        bad.append(idx)
    self._reset_decoder()
    return bad

  def _damaged(self, i: int) -> bool:
    """Whether display frame i can depend on the packet the decoder reported damage on: a frame does not depend
    on packets from the next seek point on (see the module docstring), although the decoder may output it only
    after reading them."""
    if self._damage is None:
      return False
    j = int(np.searchsorted(self._idr, i, side="right"))
    next_key = int(self._idr[j]) if j < len(self._idr) else len(self)
    return self._damage_pkt < next_key

  def frames(self, start: int = 0, stop: int | None = None):
    """Iterate RGB frames start..stop-1 in order (one decode per frame)."""
    stop = len(self) if stop is None else min(stop, len(self))
    for i in range(start, stop):
      yield self.frame(i)

  def close(self) -> None:
    self._file.close()

  def __del__(self):
    f = self.__dict__.get("_file")
    if f is not None:
      f.close()

  # pickling (e.g. into DataLoader worker processes): ship the packet index, reopen the file there
  def __getstate__(self) -> dict:
    skip = {"_file", "_ctx", "_pending", "_last", "_next_pkt", "_next_out", "_flushed"}
    return {k: v for k, v in self.__dict__.items() if k not in skip}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    try:
      self._file = open(self.path, "rb")
    except FileNotFoundError:
      raise VideoError(f"{self.path}: video file not found") from None
    self._reset_decoder()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ---- decoding ----
  def _reset_decoder(self) -> None:
    self._ctx = av.CodecContext.create("hevc", "r")
    # check what can be checked (bitstream, buffer bounds, CRCs) and report it instead of concealing silently.
    # Slice threading: its wavefront path validates each slice's entry-point offsets against the data, which is
    # what reveals a truncated picture (the single-threaded path decodes past the end without a word).
    self._ctx.options = {"err_detect": "crccheck+bitstream+buffer+careful"}
    self._ctx.thread_type = "SLICE"
    self._ctx.thread_count = max(2, self.threads)
    self._next_pkt = 0       # next packet (decode order) to feed
    self._next_out = 0       # display index of the next frame the decoder will output
    self._pending = deque()  # decoded frames not yet consumed
    self._flushed = False
    self._last = None
    self._damage: str | None = None   # first decoder report since the seek point, if any
    self._damage_pkt = -1             # the packet being decoded when it came

  def _start_at(self, key: int) -> None:
    self._reset_decoder()
    self._next_pkt = self._next_out = int(key)

  def _read_packet(self, k: int) -> av.Packet:
    self._file.seek(self._offsets[k])
    data = self._file.read(self._sizes[k])
    if len(data) != self._sizes[k]:
      raise VideoError(f"{self.path}: short read at packet {k} (file truncated or changed)")
    return av.Packet(data)

  def _next_frame(self) -> tuple[int, av.VideoFrame]:
    while not self._pending:
      if self._next_pkt < len(self):
        pkt = self._read_packet(self._next_pkt)
        self._next_pkt += 1
      elif not self._flushed:
        pkt, self._flushed = None, True
      else:
        raise VideoError(f"{self.path}: decoder produced only {self._next_out} of {len(self)} frames "
                         f"(truncated or corrupt stream)")
      try:
        with _DecoderReports() as logs:
          self._pending.extend(self._ctx.decode(pkt))
      except av.error.FFmpegError as e:
        if self._damage is None:
          self._damage, self._damage_pkt = f"decode error at packet {self._next_pkt - 1}: {e}", self._next_pkt - 1
        raise CorruptFrameError(f"{self.path}: decode error at packet {self._next_pkt - 1}: {e}") from e
      reports = [m.strip() for level, _, m in logs if level <= av.logging.WARNING]
      if reports and self._damage is None:
        self._damage = f"decoder reported {reports[0]!r} at packet {self._next_pkt - 1}"
        self._damage_pkt = self._next_pkt - 1 if pkt is not None else len(self)
    f = self._pending.popleft()
    idx = self._next_out
    self._next_out += 1
    return idx, f


def write_hevc(path, frames, fps: float = MODEL_FREQ, crf: int = 23, keyint: int = 20, preset: str = "ultrafast",
               threads: int = 1) -> int:
  """Encode an iterable of HxWx3 RGB uint8 frames to a raw Annex-B .hevc file with libx265
  (closed GOPs with an IDR every `keyint` frames, so VideoReader can seek to each). Returns the
  frame count."""
  path = Path(path)
  n = 0
  out = av.open(str(path), "w", format="hevc")
  try:
    stream = None
    for img in frames:
      img = np.asarray(img)
      if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"write_hevc({path}): frame {n} must be HxWx3 uint8, got {img.shape} {img.dtype}")
      if stream is None:
        stream = out.add_stream("libx265", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        stream.options = {"preset": preset, "crf": str(crf),
                          "x265-params": f"keyint={keyint}:min-keyint={keyint}:open-gop=0:scenecut=0:"
                                         f"pools={threads}:frame-threads=1:log-level=error"}
      for pkt in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        out.mux(pkt)
      n += 1
    if stream is not None:
      for pkt in stream.encode():
        out.mux(pkt)
  finally:
    out.close()
  if n == 0:
    path.unlink(missing_ok=True)
    raise ValueError(f"write_hevc({path}): no frames")
  return n
