"""tools.sim.messages: the one place the simulator builds its cereal messages (the bridge live, generate in logs)."""
import ast
from pathlib import Path

import pytest

from common.modelconstants import DESIRES
from tools.sim.ground_truth import FIELDS, compute_ground_truth, stack_frames
from tools.sim.messages import GROUND_TRUTH_KEYS, ground_truth_message
from tools.sim.road import RoadConfig
from tools.sim.vehicle import SimVehicle
from tools.sim.world import TrafficConfig, World, WorldConfig

SIM = Path(__file__).resolve().parents[3] / "tools" / "sim"


def _frames(n=3):
  w = World(0, WorldConfig(road=RoadConfig(length=600.0, n_lanes=3, ego_lane=1, lane_width_fixed=3.6, flat=True,
                                           objects=False), traffic=TrafficConfig(enabled=False)))
  veh = SimVehicle()
  out = []
  for i in range(n):
    s0 = 100.0 + 5.0 * i
    p = w.road.frenet_to_world(s0, w.road.lane_center_d(1) + 0.3)
    veh.reset(float(p[0]), float(p[1]), float(w.road.psi_at(s0)), 20.0, 0.0)
    out.append(compute_ground_truth(w, veh.state, 0.05 * i, desire=DESIRES.index("laneChangeLeft")))
  return out


def test_keys_are_ground_truth_fields():
  assert set(GROUND_TRUTH_KEYS) <= set(FIELDS)


def test_ground_truth_message_fields():
  f = _frames(1)[0]
  g = ground_truth_message(f, 7, log_mono_time=123).groundTruth
  assert g.frameId == 7
  assert list(g.poseWorld) == pytest.approx(list(f["pose_world"]))
  assert g.lateralOffset == pytest.approx(0.3, abs=2e-3) and g.lateralOffset == pytest.approx(f["lateral_offset"])
  assert g.roadS == pytest.approx(f["road_s"]) and g.speed == pytest.approx(f["speed"])
  assert str(g.desire) == "laneChangeLeft"
  assert g.frameTime == pytest.approx(f["frame_times"])
  assert ground_truth_message(f, 7, log_mono_time=123).logMonoTime == 123


def test_live_frame_and_logged_row_give_the_same_message():
  """The bridge passes the env's per-frame labels, generate a row of the stacked labels: same bytes."""
  frames = _frames(3)
  gt = stack_frames(frames)
  for i, f in enumerate(frames):
    live = ground_truth_message(f, i, log_mono_time=10 * i).to_bytes()
    logged = ground_truth_message({k: gt[k][i] for k in GROUND_TRUTH_KEYS}, i, log_mono_time=10 * i).to_bytes()
    assert live == logged


def _built_services(path: Path) -> set[str]:
  """Services whose Event a module builds itself: new_message("<service>", ...) calls with a literal name."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "new_message"
        and node.args and isinstance(node.args[0], ast.Constant)):
      out.add(node.args[0].value)
  return out


@pytest.mark.parametrize("module", ["bridge.py", "generate.py"])
def test_bridge_and_generate_build_no_shared_message_themselves(module):
  shared = {"roadCameraState", "roadCameraInfo", "carState", "drivingDesire", "groundTruth"}
  assert _built_services(SIM / "messages.py") >= shared
  assert not _built_services(SIM / module) & shared


def test_checker_sees_a_built_message(tmp_path):
  p = tmp_path / "m.py"
  p.write_text('from cereal import messaging\nm = messaging.new_message("groundTruth", logMonoTime=1)\n')
  assert _built_services(p) == {"groundTruth"}
