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
