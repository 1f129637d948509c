"""log.capnp: every message round-trips; garbage and truncated bytes give a clear error."""
import struct

import numpy as np
import pytest

from cereal import LOG_CAPNP, log
from cereal.messaging import MalformedMessageError, log_from_bytes, new_message
from cereal.services import SERVICE_LIST
from common.modelconstants import DESIRES, IDX_N, PLAN_HYPOTHESES

EVENT_MEMBERS = list(log.Event.schema.union_fields)


def fill(builder, schema, depth=0, seed=1) -> int:
  """Set every field of a struct builder to a distinctive non-default value (recursively); returns how many
  fields of this struct were set (AnyPointer fields, which the stack only passes through, stay unset)."""
  n_set = 0
  for i, (name, field) in enumerate(schema.fields.items()):
    if schema.union_fields and name in schema.union_fields and name != schema.union_fields[0]:
      continue   # one member of a union at a time
    v = seed + i + 1
    if field.proto.which() == "group":
      fill(getattr(builder, name), field.schema, depth + 1, v)
      n_set += 1
      continue
    t = field.proto.slot.type
    kind = t.which()
    n_set += 1
    if kind == "bool":
      setattr(builder, name, True)
    elif kind.startswith("int") or kind.startswith("uint"):
      setattr(builder, name, v % 100 + 1)
    elif kind.startswith("float"):
      setattr(builder, name, v + 0.25)
    elif kind == "text":
      setattr(builder, name, f"{name}-{v}")
    elif kind == "data":
      setattr(builder, name, f"{name}-{v}".encode())
    elif kind == "enum":
      setattr(builder, name, len(field.schema.enumerants) - 1)
    elif kind == "struct":
      fill(builder.init(name), field.schema, depth + 1, v)
    elif kind == "list":
      elem = t.list.elementType.which()
      lst = builder.init(name, 3)
      for j in range(3):
        if elem == "struct":
          fill(lst[j], field.schema.elementType, depth + 1, v + j)
        elif elem.startswith("float"):
          lst[j] = v + j + 0.5
        elif elem == "text":
          lst[j] = f"{name}{j}"
        elif elem == "data":
          lst[j] = f"{name}{j}".encode()
        elif elem == "bool":
          lst[j] = True
        elif elem == "enum":
          lst[j] = list(field.schema.elementType.enumerants)[j % len(field.schema.elementType.enumerants)]
        elif elem in ("list", "anyPointer"):
          pass
        else:
          lst[j] = v + j
    elif kind == "anyPointer":
      n_set -= 1
    else:
      raise AssertionError(f"unhandled field kind {kind} for {name}")
  return n_set


BUILT_MEMBERS = [m for m in EVENT_MEMBERS if log.Event.schema.fields[m].proto.slot.type.which() != "anyPointer"]


def test_file_id_is_fixed():
  # the file id is part of every struct's identity; changing it breaks old logs' tooling
  assert log.Event.schema.node.scopeId == 0xd4a7c3e8b91f5a26
  with open(LOG_CAPNP) as f:
    assert f.readline().strip() == "@0xd4a7c3e8b91f5a26;"


@pytest.mark.parametrize("member", BUILT_MEMBERS)
def test_every_message_round_trips(member):
  msg = new_message(member)
  field = log.Event.schema.fields[member]
  kind = field.proto.slot.type.which()
  n_set = 0
  if kind == "struct":
    n_set = fill(getattr(msg, member), field.schema)
  elif kind == "list":
    lst = msg.init(member, 2)
    for j in range(2):
      fill(lst[j], field.schema.elementType, 0, j)
  elif kind == "data":
    setattr(msg, member, b"raw bytes")
  else:
    setattr(msg, member, "a log line")
  dat = msg.to_bytes()
  back = log_from_bytes(dat)
  assert back.which() == member
  assert back.valid and back.logMonoTime == msg.logMonoTime
  assert back.to_dict() == msg.as_reader().to_dict()
  # the message really holds data in every field (no default left behind)
  d = back.to_dict()[member]
  if isinstance(d, dict):
    assert len(d) >= n_set and (n_set > 0 or not field.schema.fields)


def test_renamed_members_point_at_current_names():
  from cereal import RENAMED_EVENT_MEMBERS
  for old, new in RENAMED_EVENT_MEMBERS.items():
    assert old not in EVENT_MEMBERS and new in EVENT_MEMBERS, (old, new)


def test_deprecated_fields_keep_their_positions():
  # openpilot's 2026 rename moved deprecated fields into groups; a group keeps its fields' ordinals
  frame = log.FrameData.schema.fields
  assert frame["deprecated"].proto.which() == "group"
  dep = frame["deprecated"].schema.fields
  assert dep["frameLength"].proto.ordinal.explicit == 3 and dep["recoverState"].proto.ordinal.explicit == 19
  m = new_message("roadCameraState")
  m.roadCameraState.deprecated.lensPos = 7
  assert log_from_bytes(m.to_bytes()).roadCameraState.deprecated.lensPos == 7


def test_services_are_event_members():
  for name, s in SERVICE_LIST.items():
    assert name in EVENT_MEMBERS, name
    assert s.frequency >= 0
  for name in ("roadCameraState", "carState", "liveCalibration", "modelV2", "carControl", "controlsState", "groundTruth"):
    assert name in SERVICE_LIST


def test_desire_enum_is_openpilots():
  # openpilot's values: the model's DESIRES index is converted by name (tools/sim/messages.py)
  assert dict(log.Desire.schema.enumerants) == {"none": 0, "turnLeft": 1, "turnRight": 2, "laneChangeLeft": 3,
                                                "laneChangeRight": 4, "keepLeft": 5, "keepRight": 6}
  for d in DESIRES:
    assert d in log.Desire.schema.enumerants


def test_event_layout_is_openpilots():
  """Union discriminants and the envelope's bit positions of openpilot's Event (log.capnp header commit)."""
  f = log.Event.schema.fields
  disc = {m: f[m].proto.discriminantValue for m in EVENT_MEMBERS}
  assert disc["initData"] == 0 and disc["roadCameraState"] == 1
  assert disc["carState"] == 21 and disc["carControl"] == 22 and disc["liveCalibration"] == 18
  assert disc["modelV2"] == 73 and disc["controlsState"] == 6 and disc["logMessage"] == 17
  assert disc["managerState"] == 76 and disc["roadEncodeIdx"] == 14 and disc["cameraOdometry"] == 62
  assert disc["drivingModelData"] == 126 and disc["selfdriveState"] == 128
  assert disc["groundTruth"] == 105 and disc["liveDelay"] == 144   # customReserved0 @107, liveDelay @146
  assert disc["lateralManeuverPlan"] == 148 and disc["driverMonitoringState"] == 149       # @150, @151
  assert disc["driverMonitoringStateDEPRECATED"] == 69 and disc["soundPressure"] == 101     # @71, @103
  assert sorted(disc.values()) == list(range(len(EVENT_MEMBERS)))
  assert f["logMonoTime"].proto.slot.offset == 0                    # UInt64 word 0
  assert log.Event.schema.node.struct.discriminantOffset == 4       # 16-bit slot 4 = bits 64..79
  assert f["valid"].proto.slot.offset == 80                         # bit 80
  assert f["valid"].proto.slot.defaultValue.bool is True
  # the messages the stack exchanges use openpilot's (or opendbc's) structs, the rest pass through
  assert f["carState"].schema.node.displayName.endswith("car.capnp:CarState")
  assert f["carControl"].schema.node.displayName.endswith("car.capnp:CarControl")
  assert f["deviceState"].proto.slot.type.which() == "anyPointer"


def test_new_message_sets_time_and_valid():
  import time
  t0 = time.monotonic_ns()
  m = new_message("carState")
  assert m.valid and t0 <= m.logMonoTime <= time.monotonic_ns()
  assert m.which() == "carState"
  with pytest.raises(KeyError, match="notAService"):
    new_message("notAService")


def full_model_v2():
  """A modelV2 with every plan array filled (the size the stack really sends)."""
  m = new_message("modelV2")
  mv = m.modelV2
  rng = np.random.default_rng(0)
  def xyzt(b, n=IDX_N):
    for k in ("x", "y", "z", "t", "xStd", "yStd", "zStd"):
      setattr(b, k, rng.standard_normal(n).astype(np.float32).tolist())
  for k in ("position", "velocity", "acceleration", "orientation", "orientationRate"):
    xyzt(mv.init(k))
  for k in ("laneLines", "roadEdges"):
    lst = mv.init(k, 2)
    for b in lst:
      xyzt(b)
  mv.laneLineProbs = [0.9, 0.8]
  mv.laneLineStds = [0.1, 0.1]
  mv.roadEdgeStds = [0.2, 0.2]
  lead = mv.init("leadsV3", 1)[0]
  lead.prob = 0.5
  for k in ("t", "x", "y", "v", "a", "xStd", "yStd", "vStd", "aStd"):
    setattr(lead, k, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
  mv.action.desiredCurvature = 0.01
  mv.action.desiredAcceleration = -0.5
  mv.meta.desireState = [1.0, 0, 0, 0, 0, 0, 0]
  mv.meta.laneChangeState = "off"
  return m


def full_model_v2_extra():
  m = new_message("modelV2Extra")
  ex = m.modelV2Extra
  rng = np.random.default_rng(1)
  for h in ex.init("planHypotheses", PLAN_HYPOTHESES):
    h.prob = 1.0 / PLAN_HYPOTHESES
    for k in ("position", "velocity", "acceleration", "orientation", "orientationRate"):
      b = h.init(k)
      for c in ("x", "y", "z", "t", "xStd", "yStd", "zStd"):
        setattr(b, c, rng.standard_normal(IDX_N).astype(np.float32).tolist())
  ex.modelName = "tiny"
  ex.modelHash = "0" * 64
  return m


def test_full_model_v2_round_trip():
  m = full_model_v2()
  back = log_from_bytes(m.to_bytes())
  assert list(back.modelV2.position.x) == list(m.modelV2.position.x)
  ex = full_model_v2_extra()
  back_ex = log_from_bytes(ex.to_bytes())
  assert len(back_ex.modelV2Extra.planHypotheses) == PLAN_HYPOTHESES
  assert back_ex.modelV2Extra.modelName == "tiny"
  assert back.modelV2.action.desiredCurvature == pytest.approx(0.01)


def test_garbage_and_truncated_bytes_raise_clear_error():
  good = full_model_v2().to_bytes()
  cases = {
    "empty": b"",
    "not multiple of 8": b"abc",
    "garbage": b"garbage!" * 16,
    "truncated": good[: len(good) // 2 // 8 * 8],
    "segment table only": good[:8],
  }
  n_seg = struct.unpack_from("<I", good, 0)[0] + 1
  header = 4 * (n_seg + 1) + (4 * (n_seg + 1)) % 8   # segment table, padded to 8 bytes
  # root pointer (first word of segment 0) pointing far outside the segment: traversal catches it
  bad_ptr = bytearray(good)
  struct.pack_into("<I", bad_ptr, header, (0x0FFFFFF0 << 2))
  cases["bad pointer"] = bytes(bad_ptr)
  for name, dat in cases.items():
    with pytest.raises(MalformedMessageError):
      log_from_bytes(dat)
      pytest.fail(f"{name}: not rejected")
  with pytest.raises(MalformedMessageError, match="expected bytes"):
    log_from_bytes("a string")


def test_unknown_union_member_is_malformed():
  m = new_message("carState")
  dat = bytearray(m.to_bytes())
  # the union discriminant lives in the data section; find it by flipping each 16-bit slot
  base = log_from_bytes(bytes(dat))
  found = False
  for off in range(16, 48, 2):
    trial = bytearray(dat)
    old = struct.unpack_from("<H", trial, off)[0]
    if old != log.Event.schema.fields["carState"].proto.discriminantValue:
      continue
    struct.pack_into("<H", trial, off, 999)
    with pytest.raises(MalformedMessageError, match="union tag"):
      log_from_bytes(bytes(trial))
    found = True
    break
  assert base.which() == "carState"
  assert found, "a union discriminant of 999 must be rejected"


FUZZ = """
import random, struct, sys
from cereal.messaging import MalformedMessageError, log_from_bytes
from tests.cereal.test_log_schema import full_model_v2
m = full_model_v2(); m.logMonoTime = 1
good = m.to_bytes()
n_seg = struct.unpack_from("<I", good, 0)[0] + 1
header = 4 * (n_seg + 1) + (4 * (n_seg + 1)) % 8
rng = random.Random(0)
rejected = 0
for trial in range(400):
  bad = bytearray(good)
  for _ in range(rng.randint(1, 3)):
    struct.pack_into("<Q", bad, rng.randrange(header, len(good) - 7, 8), rng.getrandbits(64))
  try:
    msg = log_from_bytes(bytes(bad))
    msg.to_dict()          # after validation, a full read must not fail
  except MalformedMessageError:
    rejected += 1
print("rejected", rejected)
"""


def test_corrupt_words_never_crash_the_reader():
  """Random word corruptions of a full modelV2: each is rejected with MalformedMessageError or reads fine.

  Runs in a subprocess: a bad pointer that reached pycapnp's C++ traversal would abort the process.
  """
  import subprocess
  import sys
  from pathlib import Path
  root = Path(__file__).resolve().parents[2]
  r = subprocess.run([sys.executable, "-c", FUZZ], cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  rejected = int(r.stdout.split()[-1])
  assert 50 < rejected <= 400, r.stdout
