"""LogWriter/LogReader: round trip (zstd, bz2, raw), sorting, truncated and corrupt files, CLI summary."""
import subprocess
import sys
from pathlib import Path

import pytest

from cereal.messaging import log_from_bytes, new_message
from tools.lib.logreader import LogCorruptError, LogReader, LogWriter, main, summarize

ROOT = Path(__file__).resolve().parents[3]


def write_log(path: Path, n: int = 600, flush_every: int = 100) -> list[bytes]:
  msgs = []
  with LogWriter(path, flush_every=flush_every) as lw:
    for i in range(n):
      if i % 3 == 0:
        m = new_message("carState", logMonoTime=1_000_000_000 + i * 50_000_000)
        m.carState.vEgo = float(i)
      elif i % 3 == 1:
        m = new_message("selfdriveState", logMonoTime=1_000_000_000 + i * 50_000_000)
        m.selfdriveState.alertText1 = f"step {i}"
      else:
        m = new_message("modelV2", logMonoTime=1_000_000_000 + i * 50_000_000)
        m.modelV2.frameId = i
        m.modelV2.position.x = [float(i)] * 33
      dat = m.to_bytes()
      msgs.append(dat)
      lw.write(dat if i % 2 else log_from_bytes(dat))     # both bytes and readers
  return msgs


@pytest.mark.parametrize("name", ["rlog.zst", "rlog.bz2", "rlog"])
def test_round_trip(tmp_path, name):
  path = tmp_path / name
  msgs = write_log(path)
  events = list(LogReader(path))
  assert len(events) == len(msgs)
  assert [e.as_builder().to_bytes() for e in events] == msgs
  assert events[0].carState.vEgo == 0.0 and events[1].selfdriveState.alertText1 == "step 1"
  assert list(events[2].modelV2.position.x) == [2.0] * 33
  if name != "rlog":
    assert path.stat().st_size < sum(len(m) for m in msgs) / 3     # really compressed
  assert len(list(LogReader(tmp_path))) == len(msgs)              # a segment directory works too


def test_sorted_option(tmp_path):
  path = tmp_path / "rlog.zst"
  with LogWriter(path) as lw:
    for t in (30, 10, 20):
      lw.write(new_message("carState", logMonoTime=t))
  assert [e.logMonoTime for e in LogReader(path)] == [30, 10, 20]
  assert [e.logMonoTime for e in LogReader(path, sort_by_time=True)] == [10, 20, 30]


@pytest.mark.parametrize("name", ["rlog.zst", "rlog"])
def test_truncated_file_yields_every_complete_message_then_errors(tmp_path, name):
  full = tmp_path / "full" / name
  msgs = write_log(full, n=600, flush_every=50)
  data = full.read_bytes()
  cut = tmp_path / "cut" / name
  cut.parent.mkdir()
  cut.write_bytes(data[: int(len(data) * 0.6)])
  got = []
  with pytest.raises(LogCorruptError, match=r"cut/rlog.*truncated") as ei:
    for e in LogReader(cut):
      got.append(e.as_builder().to_bytes())
  assert got == msgs[: len(got)]                   # every message before the damage, unchanged
  assert len(got) >= 250 and ei.value.n_read == len(got)
  # strict=False: warns and stops instead of raising
  assert len(list(LogReader(cut, strict=False))) == len(got)


def test_corrupt_bytes_in_the_middle(tmp_path):
  path = tmp_path / "rlog"
  msgs = write_log(path, n=30)
  data = bytearray(path.read_bytes())
  off = sum(len(m) for m in msgs[:10])
  data[off:off + 8] = b"\xff" * 8                  # destroy message 10's segment table
  path.write_bytes(bytes(data))
  got = []
  with pytest.raises(LogCorruptError, match="after 10 complete messages") as ei:
    for e in LogReader(path):
      got.append(e)
  assert len(got) == 10 and ei.value.offset == off


def test_corrupt_compressed_stream(tmp_path):
  path = tmp_path / "rlog.zst"
  write_log(path, n=300)
  data = bytearray(path.read_bytes())
  data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
  path.write_bytes(bytes(data))
  with pytest.raises(LogCorruptError, match="rlog.zst"):
    for _ in LogReader(path):
      pass


def test_missing_file_and_empty_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    LogReader(tmp_path / "nope.zst")
  with pytest.raises(FileNotFoundError, match="no log file"):
    LogReader(tmp_path)


def test_writer_killed_without_close_keeps_flushed_messages(tmp_path):
  path = tmp_path / "rlog.zst"
  code = ("from tools.lib.logreader import LogWriter\nfrom cereal.messaging import new_message\nimport os\n"
          f"lw = LogWriter({str(path)!r}, flush_every=10)\n"
          "for i in range(95): lw.write(new_message('carState'))\n"
          "os._exit(0)\n")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
  assert len(list(LogReader(path, strict=False))) == 90


def test_cli_summary(tmp_path, capsys):
  path = tmp_path / "rlog.zst"
  write_log(path, n=90)
  summary, err = summarize(path)
  assert err is None
  assert {k: v["count"] for k, v in summary.items()} == {"carState": 30, "modelV2": 30, "selfdriveState": 30}
  assert summary["carState"]["freq_hz"] == pytest.approx(1 / 0.15, rel=1e-6)
  assert main([str(path)]) == 0
  out = capsys.readouterr().out
  assert "carState" in out and "total" in out and "90" in out
  r = subprocess.run([sys.executable, "-m", "tools.lib.logreader", str(path)], cwd=ROOT, capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 0 and "modelV2" in r.stdout
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  assert main([str(path)]) == 1
