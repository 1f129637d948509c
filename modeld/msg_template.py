"""Float32 fields of a cereal (pycapnp) message written in place with numpy, for modeld's per-frame messages.

pycapnp converts a Python list element by element (about 3 us for a list of 33 floats), and modelV2 +
modelV2Extra carry some 170 such lists a frame. A FloatTemplate is one capnp message of a given struct type,
built once with pycapnp, whose Float32 lists (and Float32 scalars) have fixed lengths: their places in the
message's single segment are found once, so a frame's values go in with one numpy assignment, and a struct or
list is then deep-copied (in C++) into the message being published:

  tmpl = FloatTemplate(custom.ModelV2Extra, [(("planHypotheses", 0, "position", "x"), 33), ...],
                       constants={("planHypotheses", 0, "position", "t"): T_IDXS, ...})
  reader = tmpl.read(values)         # values: float32, sum of the non-constant lengths, in the order given
  extra.planHypotheses = reader.planHypotheses

A template can also hold integer and Bool scalars (`scalars`, set with set_scalars) and be a whole Event
(`init` prepares the union member and any text before the fields are placed); to_bytes() then gives the message as
it goes on the wire, with no pycapnp builder per frame (modeld's modelV2: modeld/fill_model_msg.py).

  tmpl = FloatTemplate(log.Event, [(("modelV2", "position", "x"), 33), ...], init=lambda m: m.init("modelV2"),
                       scalars=[(("logMonoTime",), "u64"), (("valid",), "bool"), (("modelV2", "frameId"), "u32")])
  tmpl.read(values); tmpl.set_scalars([t_ns, True, 7]); wire = tmpl.to_bytes()

Nothing about the wire format is assumed: each field is found by writing distinct marker values through pycapnp
and looking for them in the segment (a Bool: the one bit that setting it flips), and every place is then checked
by writing test values with numpy and reading them back through pycapnp (a field that does not round-trip raises at
construction). The values a subscriber reads are the float32 values written, exactly as assigning `tolist()` of the
same float32 array.
Device side: numpy + pycapnp only.
"""
from __future__ import annotations

import struct

import numpy as np

Path = tuple   # ("field", index, "field", ...): a Float32 list (length n) or a Float32 scalar (n = None)


def _navigate(builder, path: Path):
  """The builder holding the last element of `path` (struct fields by name, list elements by index)."""
  for p in path[:-1]:
    builder = builder[p] if isinstance(p, int) else getattr(builder, p)
  return builder


def _segments(msg) -> list:
  """The builder's segments; it stays writable (pycapnp warns about writing a message again after it was written)."""
  segments = msg.to_segments()
  msg.clear_write_flag()
  return segments


def _struct_lists(paths: list[Path]) -> dict[Path, int]:
  """Lists of structs the paths go through -> their length (largest index + 1), outermost first."""
  counts: dict[Path, int] = {}
  for path in paths:
    for i, p in enumerate(path):
      if isinstance(p, int):
        counts[path[:i]] = max(counts.get(path[:i], 0), p + 1)
  return dict(sorted(counts.items(), key=lambda kv: len(kv[0])))


SCALAR_KINDS = {"u32": np.uint32, "u64": np.uint64, "bool": None}


class FloatTemplate:
  def __init__(self, struct_type, fields: list[tuple[Path, int | None]], constants: dict[Path, np.ndarray] | None = None,
               scalars: list[tuple[Path, str]] | None = None, init=None):
    self.struct_type = struct_type
    constants = {tuple(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in (constants or {}).items()}
    variable = [(tuple(p), n) for p, n in fields]
    every = variable + [(p, c.size) for p, c in constants.items()]
    if len({p for p, _ in every}) != len(every):
      raise ValueError("FloatTemplate: a field is listed twice")
    words = 1024 + sum(1 + (n or 1) for _, n in every) * 2       # room for everything in one first segment
    msg = struct_type.new_message(num_first_segment_words=words)
    if init is not None:
      init(msg)
    scalars = [(tuple(p), k) for p, k in (scalars or [])]
    for path, kind in scalars:
      if kind not in SCALAR_KINDS:
        raise ValueError(f"FloatTemplate: scalar {path}: kind {kind!r}, expected one of {sorted(SCALAR_KINDS)}")
    for lst, count in _struct_lists([p for p, _ in every] + [p for p, _ in scalars]).items():
      if not isinstance(lst[-1], str):
        raise ValueError(f"FloatTemplate: {lst}: lists of lists are not supported")
      _navigate(msg, lst).init(lst[-1], count)
    for path, _ in scalars:   # a struct that holds only scalars is allocated now, before the floats are placed
      _navigate(msg, path)
    # markers: field j element i -> float32 (j * 4096 + i + 1), exact and distinct (fields < 4096, lengths < 4096)
    if len(every) >= 4096 or any((n or 1) >= 4096 for _, n in every):
      raise ValueError("FloatTemplate: at most 4095 fields of at most 4095 values")
    for j, (path, n) in enumerate(every):
      b = _navigate(msg, path)
      if n is None:
        setattr(b, path[-1], float(j * 4096 + 1))
      else:
        setattr(b, path[-1], [float(j * 4096 + i + 1) for i in range(n)])
    segments = _segments(msg)
    if len(segments) != 1:
      raise RuntimeError(f"FloatTemplate: message spans {len(segments)} segments")
    self.buf = bytearray(segments[0])
    self.f32 = np.frombuffer(self.buf, dtype=np.float32)
    where: dict[float, int] = {}
    for i, v in enumerate(self.f32.tolist()):
      where[v] = -1 if v in where else i                            # -1: the value occurs twice (not a marker)
    starts = []
    for j, (path, n) in enumerate(every):
      s = where.get(float(j * 4096 + 1), -1)
      if s < 0 or not np.array_equal(self.f32[s:s + (n or 1)], j * 4096 + 1 + np.arange(n or 1, dtype=np.float32)):
        raise RuntimeError(f"FloatTemplate: field {path} not found in the message")
      starts.append(s)
    self.size = sum(n or 1 for _, n in variable)
    self.index = np.concatenate([np.arange(s, s + (n or 1)) for s, (_, n) in zip(starts, variable)] or [np.zeros(0, int)])
    const_index = [np.arange(s, s + c.size) for s, c in zip(starts[len(variable):], constants.values())]
    # round trip: distinct test values written with numpy must read back through pycapnp
    test = np.arange(1, len(self.f32) + 1, dtype=np.float32) * np.float32(-0.5)
    self.f32[self.index] = test[:self.size]
    r = self.reader()
    pos = 0
    for path, n in variable:
      got = getattr(_navigate(r, path), path[-1])
      got = [got] if n is None else list(got)
      if got != test[pos:pos + (n or 1)].tolist():
        raise RuntimeError(f"FloatTemplate: field {path} does not round-trip")
      pos += n or 1
    self.f32[self.index] = 0.0
    for idx, c in zip(const_index, constants.values()):
      self.f32[idx] = c
    for path, c in constants.items():
      if list(getattr(_navigate(self.reader(), path), path[-1])) != c.tolist():
        raise RuntimeError(f"FloatTemplate: constant {path} does not round-trip")
    self._place_scalars(msg, scalars)

  def _place_scalars(self, msg, scalars: list[tuple[Path, str]]) -> None:
    """Find each integer scalar by a marker value and each Bool by the bit it flips, in a copy of the message
    built the same way (its segment has the float fields' markers, never values the scalars' markers could be)."""
    self.scalars = scalars
    self._ints: list[tuple[np.ndarray, int]] = []     # per integer scalar: (view of the buffer, index)
    self._bits: list[tuple[int, int, bool]] = []      # per Bool: (byte, mask, whether the bit is set for True)
    self._order: list[tuple[str, int]] = []           # per scalar in the given order: ("int" | "bit", its slot)
    if not scalars:
      return
    ints = [(j, p, k) for j, (p, k) in enumerate(scalars) if k != "bool"]
    for j, path, kind in ints:   # markers 0x5ca1ab1e00000000 + j + 1 (u64), 0x5ca10000 + j + 1 (u32): no float's bits
      setattr(_navigate(msg, path), path[-1], (0x5CA1AB1E00000000 if kind == "u64" else 0x5CA10000) + j + 1)
    for path, kind in scalars:
      if kind == "bool":
        setattr(_navigate(msg, path), path[-1], False)
    seg = _segments(msg)
    if len(seg) != 1 or len(seg[0]) != len(self.buf):
      raise RuntimeError("FloatTemplate: the scalars changed the message's layout")
    base = bytearray(seg[0])
    views = {k: np.frombuffer(self.buf, dtype=t) for k, t in SCALAR_KINDS.items() if t is not None}
    slots: dict[int, tuple] = {}
    for j, path, kind in ints:
      marker = (0x5CA1AB1E00000000 if kind == "u64" else 0x5CA10000) + j + 1
      hits = np.flatnonzero(np.frombuffer(base, dtype=SCALAR_KINDS[kind]) == marker)
      if len(hits) != 1:
        raise RuntimeError(f"FloatTemplate: scalar {path} not found in the message")
      slots[j] = ("int", len(self._ints))
      self._ints.append((views[kind], int(hits[0])))
    for j, (path, kind) in enumerate(scalars):
      if kind != "bool":
        continue
      b = _navigate(msg, path)
      setattr(b, path[-1], True)
      true = np.frombuffer(bytearray(_segments(msg)[0]), np.uint8)
      setattr(b, path[-1], False)
      flipped = true ^ np.frombuffer(base, np.uint8)
      where = np.flatnonzero(flipped)
      if len(where) != 1 or bin(int(flipped[where[0]])).count("1") != 1:
        raise RuntimeError(f"FloatTemplate: Bool {path} not found in the message")
      byte, mask = int(where[0]), int(flipped[where[0]])
      slots[j] = ("bit", len(self._bits))
      self._bits.append((byte, mask, bool(true[byte] & mask)))   # a Bool's bit is its value XOR its default
    self._order = [slots[j] for j in range(len(scalars))]
    # the template's own bytes: its floats (zeros and constants) as placed above, its scalars from the marker copy;
    # then a round trip of test values through pycapnp, and every scalar back to zero / False
    test = [True if k == "bool" else (0xFEDCBA9876543210 if k == "u64" else 0xFEDCBA98) - j
            for j, (_, k) in enumerate(scalars)]
    self.set_scalars(test)
    r = self.reader()
    for (path, kind), want in zip(scalars, test):
      if getattr(_navigate(r, path), path[-1]) != want:
        raise RuntimeError(f"FloatTemplate: scalar {path} does not round-trip")
    self.set_scalars([False if k == "bool" else 0 for _, k in scalars])

  def set_scalars(self, values) -> None:
    """Write the scalars (in the order of `scalars`): integers as they are, Bools by truth."""
    if len(values) != len(self._order):
      raise ValueError(f"FloatTemplate.set_scalars: {len(values)} values for {len(self._order)} scalars")
    for (what, slot), v in zip(self._order, values):
      if what == "int":
        view, i = self._ints[slot]
        view[i] = v
      else:
        byte, mask, set_for_true = self._bits[slot]
        self.buf[byte] = (self.buf[byte] | mask) if bool(v) == set_for_true else (self.buf[byte] & ~mask & 0xFF)

  def to_bytes(self) -> bytes:
    """The message as it goes on the wire (one segment: the segment table, then the segment)."""
    return struct.pack("<II", 0, len(self.buf) // 8) + bytes(self.buf)

  def reader(self):
    return self.struct_type.from_segments([self.buf])

  def read(self, values: np.ndarray):
    """Write one frame's values (float32, self.size of them, in the order of `fields`) and return a reader of
    the template (valid until the next read: copy what it points to before that)."""
    self.f32[self.index] = values
    return self.reader()
