"""openpilot's wire format: a log written with openpilot's own schema reads here with every event's type and
values; a log written here reads with openpilot's schema (when $OPENPILOT_CEREAL names an openpilot checkout's
cereal/log.capnp); an Event whose union tag the schema does not know is rejected, never read as another member.

The fixture (fixtures/openpilot_rlog.zst) and what openpilot itself decodes from it (fixtures/openpilot_rlog.json)
were made by fixtures/make_openpilot_log.py from openpilot's schema.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cereal import log
from cereal.logwriter import LogWriter
from cereal.messaging import MalformedMessageError, log_from_bytes, new_message
from tests.cereal.fixtures.make_openpilot_log import jsonable, layout, layout_differences
from tools.lib.logreader import LogCorruptError, LogReader

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "openpilot_rlog.zst"
EXPECTED = json.loads((FIXTURES / "openpilot_rlog.json").read_text())
ROOT = Path(__file__).resolve().parents[2]
OPENPILOT_SCHEMA = os.environ.get("OPENPILOT_CEREAL")


def member_value(ev):
  """The active member as plain JSON, or None for members the stack only passes through (AnyPointer)."""
  w = ev.which()
  if log.Event.schema.fields[w].proto.slot.type.which() == "anyPointer":
    return None
  v = getattr(ev, w)
  return jsonable(v.to_dict() if hasattr(v, "to_dict") else (list(v) if not isinstance(v, (str, bytes)) else v))


def test_reads_every_event_of_an_openpilot_log():
  events = list(LogReader(FIXTURE))     # strict: the whole file must decode
  assert len(events) == len(EXPECTED) == 35
  modelled = 0
  for ev, exp in zip(events, EXPECTED):
    assert ev.which() == exp["which"]
    assert ev.logMonoTime == exp["logMonoTime"] and ev.valid == exp["valid"]
    got = member_value(ev)
    if got is not None:
      assert got == exp["value"], exp["which"]    # every field, the defaults included
      modelled += 1
  assert modelled == 32     # all but deviceState, pandaStates, driverMonitoringState (passed through as AnyPointer)
  kinds = {e["which"] for e in EXPECTED}
  assert {"initData", "roadCameraState", "roadEncodeIdx", "carState", "carControl", "modelV2", "drivingModelData",
          "cameraOdometry", "controlsState", "selfdriveState", "liveCalibration", "managerState", "logMessage",
          "carParams", "sentinel", "deviceState", "pandaStates", "driverMonitoringState"} <= kinds


def test_openpilot_values_mean_the_same_here():
  ev = {}
  for e in LogReader(FIXTURE):
    ev.setdefault(e.which(), e)
  assert ev["initData"].initData.deviceType == "tici" and ev["initData"].initData.dongleId == "a2a0ccea32023010"
  cs = ev["carState"].carState
  assert cs.vEgo == 25.0 and cs.steeringAngleDeg == 3.5 and cs.leftBlinker and cs.cruiseState.speed == 29.0
  assert cs.gearShifter == "drive" and cs.buttonEvents[0].type == "accelCruise"
  cc = ev["carControl"].carControl
  assert cc.latActive and cc.actuators.steeringAngleDeg == 4.25 and cc.actuators.accel == -0.5
  mv = ev["modelV2"].modelV2
  assert mv.frameId == 100 and len(mv.position.x) == 33 and mv.position.x[32] == 64.0
  assert len(mv.laneLines) == 4 and len(mv.leadsV3) == 3 and mv.meta.laneChangeState == "preLaneChange"
  assert mv.action.desiredCurvature == pytest.approx(0.002) and mv.confidence == "green"
  assert list(mv.meta.desireState)[3] == pytest.approx(0.1)       # openpilot's Desire.laneChangeLeft = 3
  assert log.Desire.schema.enumerants["laneChangeLeft"] == 3
  assert ev["roadEncodeIdx"].roadEncodeIdx.type == "fullHEVC" and ev["roadEncodeIdx"].roadEncodeIdx.segmentNum == 3
  assert ev["roadCameraState"].roadCameraState.sensor == "os04c10"
  assert ev["liveCalibration"].liveCalibration.calStatus == "calibrated"
  assert ev["controlsState"].controlsState.lateralControlState.which() == "torqueState"
  assert ev["selfdriveState"].selfdriveState.state == "enabled"
  assert ev["carParams"].carParams.carFingerprint == "TOYOTA_RAV4"
  assert ev["managerState"].managerState.processes[1].exitCode == -9


def test_reader_rejects_unknown_union_tags_instead_of_guessing(tmp_path):
  """An Event from a newer schema (tag past the last member) is malformed: never initData or any other member."""
  msg = new_message("carState")
  dat = bytearray(msg.to_bytes())
  disc_at = 8 + 8 + 2 * log.Event.schema.node.struct.discriminantOffset   # segment table, root pointer, data
  assert struct.unpack_from("<H", dat, disc_at)[0] == 21
  for tag in (len(log.Event.schema.union_fields), 0xFFFF):
    bad = bytearray(dat)
    struct.pack_into("<H", bad, disc_at, tag)
    with pytest.raises(MalformedMessageError, match="union tag"):
      log_from_bytes(bytes(bad))
  # in a log: that message is skipped and counted, the rest is read; no event is invented
  path = tmp_path / "rlog.zst"
  with LogWriter(path) as lw:
    lw.write(new_message("initData"))
    lw.write(new_message("carState"))
    lw.write(bytes(bad))
    lw.write(new_message("carState"))
  reader = LogReader(path)      # strict
  assert [e.which() for e in reader] == ["initData", "carState", "carState"]
  assert reader.skipped_unknown == 1
  # a damaged message (bad pointer) still stops a strict reader
  broken = bytearray(new_message("carState").to_bytes())
  struct.pack_into("<I", broken, 8, 0x0FFFFFF0 << 2)
  with LogWriter(tmp_path / "b.zst") as lw:
    lw.write(new_message("initData"))
    lw.write(bytes(broken))
  with pytest.raises(LogCorruptError):
    list(LogReader(tmp_path / "b.zst"))


def stack_log(path: Path) -> list:
  """A log written by the stack's own builders (simulator, loggerd, the custom messages)."""
  import numpy as np

  from selfdrive.loggerd import init_data_message
  from tools.sim.messages import camera_messages, car_state_message, driving_desire_message
  evs = [init_data_message("0.1.0", "abc", "pfx", "2026-01-01--00-00-00")]
  cam, info = camera_messages(7, 10, 20, 1164, 874, 1164, np.eye(3), log_mono_time=10)
  evs += [cam, info, car_state_message(22.0, 0.5, 0.02, 0.01, 1, v_cruise=25.0, cruise_enabled=True),
          driving_desire_message(2)]
  m = new_message("modelV2")
  m.modelV2.frameId = 7
  m.modelV2.position.x = [0.0, 1.0, 2.0]
  m.modelV2.action.desiredCurvature = 0.01
  m.modelV2.meta.laneChangeState = "laneChangeStarting"
  evs.append(m)
  c = new_message("carControl")
  c.carControl.latActive = True
  c.carControl.actuators.steeringAngleDeg = -3.0
  evs.append(c)
  from tools.sim.generate import live_pose_message
  motion = {"rpy": np.array([[0.01, -0.02, 1.5]]), "velocity": np.array([[20.0, 0.1, 0.0]]),
            "acceleration": np.array([[0.3, -0.1, 0.0]]), "angular_velocity": np.array([[0.0, 0.01, -0.05]])}
  evs.append(live_pose_message(motion, 0, 30))
  g = new_message("groundTruth")
  g.groundTruth.lateralOffset = 0.5
  evs.append(g)
  with LogWriter(path) as lw:
    for e in evs:
      lw.write(e)
  return evs


@pytest.mark.skipif(not OPENPILOT_SCHEMA, reason="set OPENPILOT_CEREAL to an openpilot checkout's cereal/log.capnp")
def test_openpilot_schema_reads_a_log_written_here(tmp_path):
  path = tmp_path / "rlog.zst"
  evs = stack_log(path)
  r = subprocess.run([sys.executable, str(FIXTURES / "make_openpilot_log.py"), "--schema", OPENPILOT_SCHEMA,
                      "--read", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = [json.loads(x) for x in r.stdout.splitlines()]
  decoded, summary = lines[:-1], lines[-1]
  assert summary["events"] == len(evs)
  for ours, theirs in zip(evs, decoded):
    w = ours.which()
    field = log.Event.schema.fields[w]
    if field.proto.discriminantValue in range(105, 115):   # Event @107..@116: openpilot's customReserved0..9
      assert theirs["which"].startswith("customReserved"), theirs   # ours only: openpilot sees its reserved slot
      continue
    assert theirs["which"] == w
    assert theirs["value"] == member_value(ours.as_reader()), w


@pytest.mark.skipif(not OPENPILOT_SCHEMA, reason="set OPENPILOT_CEREAL to an openpilot checkout's cereal/log.capnp")
def test_fixture_script_reproduces_the_committed_fixture(tmp_path):
  out = tmp_path / "openpilot_rlog.zst"
  r = subprocess.run([sys.executable, str(FIXTURES / "make_openpilot_log.py"), "--schema", OPENPILOT_SCHEMA,
                      "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert out.read_bytes() == FIXTURE.read_bytes()
  assert json.loads(out.with_suffix(".json").read_text()) == EXPECTED


def test_logreader_cli_summarizes_an_openpilot_log(capsys):
  from tools.lib.logreader import main, summarize
  summary, err = summarize(FIXTURE)
  assert err is None
  counts = {}
  for e in EXPECTED:
    counts[e["which"]] = counts.get(e["which"], 0) + 1
  assert {k: v["count"] for k, v in summary.items()} == counts
  assert main([str(FIXTURE)]) == 0
  assert "driverMonitoringState" in capsys.readouterr().out


@pytest.mark.skipif(not OPENPILOT_SCHEMA, reason="set OPENPILOT_CEREAL to an openpilot checkout's cereal/log.capnp")
def test_layout_equals_openpilots():
  """Every struct both schemas reach from Event puts every field at the same place; only our custom members'
  names differ (openpilot calls them customReserved0..4)."""
  r = subprocess.run([sys.executable, str(FIXTURES / "make_openpilot_log.py"), "--schema", OPENPILOT_SCHEMA, "--layout"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  theirs = json.loads(r.stdout)
  ours = layout(log)
  diffs = layout_differences(ours, theirs)
  ours_only = {"groundTruth", "drivingDesire", "modelV2Extra", "roadCameraInfo", "controlsStateExtra"}
  assert all(d.startswith("Event @") and d.split("name ")[1].split(" vs ")[0] in ours_only for d in diffs), diffs
  assert len(diffs) == len(ours_only)
  assert len([p for p in ours if p in theirs]) > 100


def test_layout_comparison_finds_a_moved_field():
  ours = layout(log)
  moved = json.loads(json.dumps(ours))
  moved["Event.carState"]["fields"]["vEgo"]["off"] += 1
  off = ours["Event.carState"]["fields"]["vEgo"]["off"]
  assert layout_differences(ours, moved) == [f"Event.carState.vEgo: offset/tag/enum ({off}, 65535, None) "
                                             f"vs ({off + 1}, 65535, None)"]
  assert layout_differences(ours, ours) == []
