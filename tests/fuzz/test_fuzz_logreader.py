"""The log reader on truncated and bit-flipped logs (raw, zstd, bz2): it never crashes or hangs, raises only
LogCorruptError, and every message that lies wholly before the damage comes back unchanged.

"Before the damage" per format: raw -- the message's bytes end before the damaged byte; zstd -- its compressed
block (LogWriter flushes one block per message here) ends before it; bz2 -- decodes only in whole 900 kB
blocks, so a damaged or cut small file may return nothing, but never a wrong message (the block CRC holds)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cereal.logwriter import LogWriter
from cereal.messaging import new_message
from tools.lib.logreader import LogCorruptError, LogReader

pytestmark = pytest.mark.timeout(120)
N_MSGS = 60


def _messages() -> list[bytes]:
  out = []
  for i in range(N_MSGS):
    if i % 2:
      m = new_message("carState", logMonoTime=i)
      m.carState.vEgo = float(i)
    else:
      m = new_message("modelV2", logMonoTime=i)
      m.modelV2.frameId = i
      m.modelV2.position.x = [float(i)] * 33
    out.append(m.to_bytes())
  return out


MSGS = _messages()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
  """{kind: (file bytes, [offset where message i is complete in the file])}"""
  d = tmp_path_factory.mktemp("logs")
  out = {}
  for name in ("rlog", "rlog.zst", "rlog.bz2"):
    path = d / name
    ends = []
    with LogWriter(path, flush_every=1) as lw:
      for m in MSGS:
        lw.write(m)
        ends.append(lw._raw.tell())
    if name == "rlog.bz2":
      ends = [path.stat().st_size] * len(MSGS)   # nothing is complete before the stream's end
    out[name] = (path.read_bytes(), ends)
  return out


def _read(path) -> tuple[list[bytes], bool]:
  got, damaged = [], False
  try:
    for ev in LogReader(path):
      got.append(ev.as_builder().to_bytes())
  except LogCorruptError as e:
    damaged = True
    assert str(path) in str(e) and e.n_read == len(got)
  return got, damaged


def _check(tmp_path, name, data, ends, damage_at, blob):
  path = tmp_path / name
  path.write_bytes(blob)
  got, damaged = _read(path)
  intact = sum(1 for e in ends if e <= damage_at)
  assert len(got) >= intact, (len(got), intact)
  assert got[:intact] == MSGS[:intact]                  # nothing intact is lost or altered
  if name == "rlog.bz2":
    assert got == MSGS[:len(got)]                        # the CRC: no wrong message either
  if blob == data:
    assert got == MSGS and not damaged


@given(st.sampled_from(["rlog", "rlog.zst", "rlog.bz2"]), st.integers(0, 10 ** 6))
def test_truncated(logs, tmp_path_factory, name, cut):
  data, ends = logs[name]
  cut = cut % (len(data) + 1)
  _check(tmp_path_factory.mktemp("t"), name, data, ends, cut, data[:cut])


@settings(max_examples=60)
@given(st.sampled_from(["rlog", "rlog.zst", "rlog.bz2"]), st.integers(0, 10 ** 6), st.integers(1, 255))
def test_flipped_byte(logs, tmp_path_factory, name, pos, x):
  data, ends = logs[name]
  pos = pos % len(data)
  blob = bytearray(data)
  blob[pos] ^= x
  _check(tmp_path_factory.mktemp("f"), name, data, ends, pos, bytes(blob))


@given(st.binary(max_size=2048), st.sampled_from(["rlog", "rlog.zst", "rlog.bz2"]))
def test_garbage_files(tmp_path_factory, blob, name):
  path = tmp_path_factory.mktemp("g") / name
  path.write_bytes(blob)
  _read(path)
