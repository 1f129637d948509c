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

Nothing about the wire format is assumed: each field is found by writing distinct marker values through pycapnp
and looking for them in the segment, and every place is then checked by writing test values with numpy and
reading them back through pycapnp (a field that does not round-trip raises at construction). The values a
subscriber reads are the float32 values written, exactly as assigning `tolist()` of the same float32 array.
Device side: numpy + pycapnp only.
"""
from __future__ import annotations

import numpy as np

Path = tuple   # ("field", index, "field", ...): a Float32 list (length n) or a Float32 scalar (n = None)


def _navigate(builder, path: Path):
  """The builder holding the last element of `path` (struct fields by name, list elements by index)."""
  for p in path[:-1]:
    builder = builder[p] if isinstance(p, int) else getattr(builder, p)
  return builder


def _struct_lists(paths: list[Path]) -> dict[Path, int]:
  """Lists of structs the paths go through -> their length (largest index + 1), outermost first."""
  counts: dict[Path, int] = {}
  for path in paths:
    for i, p in enumerate(path):
      if isinstance(p, int):
        counts[path[:i]] = max(counts.get(path[:i], 0), p + 1)
  return dict(sorted(counts.items(), key=lambda kv: len(kv[0])))


class FloatTemplate:
  def __init__(self, struct_type, fields: list[tuple[Path, int | None]], constants: dict[Path, np.ndarray] | None = None):
    self.struct_type = struct_type
    constants = {tuple(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in (constants or {}).items()}
    variable = [(tuple(p), n) for p, n in fields]
    every = variable + [(p, c.size) for p, c in constants.items()]
    if len({p for p, _ in every}) != len(every):
      raise ValueError("FloatTemplate: a field is listed twice")
    words = 1024 + sum(1 + (n or 1) for _, n in every) * 2       # room for everything in one first segment
    msg = struct_type.new_message(num_first_segment_words=words)
    for lst, count in _struct_lists([p for p, _ in every]).items():
      if not isinstance(lst[-1], str):
        raise ValueError(f"FloatTemplate: {lst}: lists of lists are not supported")
      _navigate(msg, lst).init(lst[-1], count)
    # markers: field j element i -> float32 (j * 4096 + i + 1), exact and distinct (fields < 4096, lengths < 4096)
    if len(every) >= 4096 or any((n or 1) >= 4096 for _, n in every):
      raise ValueError("FloatTemplate: at most 4095 fields of at most 4095 values")
    for j, (path, n) in enumerate(every):
      b = _navigate(msg, path)
      if n is None:
        setattr(b, path[-1], float(j * 4096 + 1))
      else:
        setattr(b, path[-1], [float(j * 4096 + i + 1) for i in range(n)])
    segments = msg.to_segments()
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

  def reader(self):
    return self.struct_type.from_segments([self.buf])

  def read(self, values: np.ndarray):
    """Write one frame's values (float32, self.size of them, in the order of `fields`) and return a reader of
    the template (valid until the next read: copy what it points to before that)."""
    self.f32[self.index] = values
    return self.reader()
