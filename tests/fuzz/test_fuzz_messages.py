"""log_from_bytes on random and mutated bytes: a reader whose every field can be read, or MalformedMessageError."""
import capnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cereal.messaging import MalformedMessageError, event_to_bytes, log_from_bytes, new_message

pytestmark = pytest.mark.timeout(60)


def _valid_messages() -> list[bytes]:
  out = []
  m = new_message("carState")
  m.carState.vEgo = 12.5
  out.append(m.to_bytes())
  m = new_message("modelV2")
  m.modelV2.frameId = 7
  m.modelV2.position.x = [float(i) for i in range(33)]
  out.append(m.to_bytes())
  m = new_message("selfdriveState")
  m.selfdriveState.alertText1 = "fuzz"
  out.append(m.to_bytes())
  return out


VALID = _valid_messages()


def _walk(reader, depth: int = 0) -> None:
  """Read every field the way consumers do (attribute access, list iteration, union which())."""
  if depth > 16:
    return
  schema = reader.schema
  names = [n for n in schema.fields if n not in schema.union_fields]
  if schema.union_fields:
    names.append(reader.which())
  for name in names:
    v = getattr(reader, name)
    if isinstance(v, capnp.lib.capnp._DynamicStructReader):
      _walk(v, depth + 1)
    elif isinstance(v, capnp.lib.capnp._DynamicListReader):
      for item in v:
        if isinstance(item, capnp.lib.capnp._DynamicStructReader):
          _walk(item, depth + 1)


def _read_everything(ev) -> None:
  """Every field of an accepted message reads without error, and it re-serialises (what LogWriter does with
  readers). pycapnp's to_dict is not used: it refuses enum values this schema does not name."""
  _walk(ev)
  event_to_bytes(ev)


def _check(dat: bytes) -> None:
  try:
    ev = log_from_bytes(dat)
  except MalformedMessageError:
    return
  _read_everything(ev)


@given(st.binary(max_size=512))
def test_random_bytes(dat):
  _check(dat)


@given(st.binary(min_size=8, max_size=512).map(lambda b: b[: len(b) // 8 * 8]))
def test_random_word_aligned_bytes(dat):
  _check(dat)


@settings(max_examples=80)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1,
                                        max_size=4), st.integers(0, 10 ** 6))
def test_mutated_valid_messages(msg, flips, cut):
  dat = bytearray(msg)
  for pos, x in flips:
    dat[pos % len(dat)] ^= x
  _check(bytes(dat))
  _check(bytes(dat[: cut % (len(dat) + 1)]))


def test_valid_messages_round_trip():
  for dat in VALID:
    assert log_from_bytes(dat).as_builder().to_bytes() == dat
