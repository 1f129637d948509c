"""FloatTemplate: float32 lists and scalars of a capnp message written in place with numpy."""
import numpy as np
import pytest

from cereal import custom, log
from modeld.msg_template import FloatTemplate


def test_values_and_constants_round_trip():
  fields = [(("x",), 3), (("yStd",), 2)]
  tmpl = FloatTemplate(log.XYZTData, fields, constants={("t",): [0.0, 0.5, 1.0]})
  assert tmpl.size == 5
  for vals in (np.float32([1.5, -2.25, 3e38, -0.0, 7.0]), np.zeros(5, np.float32)):
    r = tmpl.read(vals)
    assert list(r.x) == vals[:3].tolist() and list(r.yStd) == vals[3:].tolist() and list(r.t) == [0.0, 0.5, 1.0]
    assert len(r.y) == 0 and len(r.xStd) == 0                       # fields not listed stay empty
    dst = log.ModelDataV2.new_message()
    dst.position = r                                               # a deep copy: later reads do not change it
    tmpl.read(np.full(5, 9.0, np.float32))
    assert list(dst.position.x) == vals[:3].tolist()


def test_struct_lists_and_scalars():
  fields = [(("planHypotheses", k, "position", "x"), 4) for k in range(3)] + \
           [(("planHypotheses", k, "prob"), None) for k in range(3)]
  tmpl = FloatTemplate(custom.ModelV2Extra, fields)
  vals = np.arange(15, dtype=np.float32) / 4
  hyps = tmpl.read(vals).planHypotheses
  assert len(hyps) == 3
  assert [list(h.position.x) for h in hyps] == vals[:12].reshape(3, 4).tolist()
  assert [h.prob for h in hyps] == vals[12:].tolist()


def test_bad_fields_are_refused():
  with pytest.raises(ValueError, match="twice"):
    FloatTemplate(log.XYZTData, [(("x",), 3), (("x",), 3)])
  with pytest.raises(Exception):
    FloatTemplate(log.XYZTData, [(("nope",), 3)])


def test_scalars_and_wire_bytes_of_a_whole_event():
  """Integer and Bool scalars of a whole Event (Event.valid defaults to true: its bit is the value XOR that default)
  round-trip, and to_bytes() is the message on the wire (pycapnp's framing decodes it to the same content)."""
  scalars = [(("logMonoTime",), "u64"), (("valid",), "bool"), (("modelV2", "frameId"), "u32"),
             (("modelV2", "timestampEof"), "u64"), (("modelV2", "action", "shouldStop"), "bool")]
  tmpl = FloatTemplate(log.Event, [(("modelV2", "position", "x"), 3), (("modelV2", "frameDropPerc"), None)],
                       scalars=scalars, init=lambda m: m.init("modelV2"))
  for vals, sc in ((np.float32([1.0, -2.0, 3.5, 12.5]), [(1 << 64) - 1, False, (1 << 32) - 1, 1 << 40, True]),
                   (np.float32([0.0, 0.0, 0.0, 0.0]), [5, True, 0, 0, False])):
    r = tmpl.read(vals)
    tmpl.set_scalars(sc)
    r = tmpl.reader()
    assert [r.logMonoTime, r.valid, r.modelV2.frameId, r.modelV2.timestampEof, r.modelV2.action.shouldStop] == sc
    assert list(r.modelV2.position.x) == vals[:3].tolist() and r.modelV2.frameDropPerc == vals[3]
    wire = tmpl.to_bytes()
    assert len(wire) == 8 + len(tmpl.buf) and wire[:8] == np.uint32([0, len(tmpl.buf) // 8]).tobytes()
    with log.Event.from_bytes(wire) as ev:
      assert ev.to_dict() == r.to_dict()
  with pytest.raises(ValueError, match="5 scalars"):
    tmpl.set_scalars([1, True])
  with pytest.raises(ValueError, match="kind"):
    FloatTemplate(log.XYZTData, [(("x",), 3)], scalars=[(("t",), "f64")])
