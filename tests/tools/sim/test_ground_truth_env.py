"""Ground-truth labels, the simulated car (inverse model + actuator delay), the env, the human driver."""
import numpy as np
import pytest

from common.modelconstants import X_IDXS
from tools.sim.driver import DESIRE_NONE, HumanDriverConfig
from tools.sim.env import DT, SimEnv
from tools.sim.generate import simulate
from tools.sim.ground_truth import FIELDS, compute_ground_truth, load_ground_truth, save_ground_truth, stack_frames
from tools.sim.road import RoadConfig
from tools.sim.scenarios import lane_change_suite, lane_keep_suite
from tools.sim.vehicle import SimVehicle
from tools.sim.world import TrafficCar, TrafficConfig, World, WorldConfig


def _world(profile, n_lanes=3):
  return World(0, WorldConfig(road=RoadConfig(length=800.0, n_lanes=n_lanes, ego_lane=1, lane_width_fixed=3.6,
                                              curvature_profile=profile, flat=True, objects=False),
                              traffic=TrafficConfig(enabled=False)))


def test_labels_of_a_known_pose_on_a_curve():
  k = 1 / 250.0
  w = _world(((0.0, 801.0, k, k),))
  road = w.road
  veh = SimVehicle()
  s0, off, hd = 200.0, 0.4, np.radians(1.5)
  p = road.frenet_to_world(s0, road.lane_center_d(1) + off)
  veh.reset(float(p[0]), float(p[1]), float(road.psi_at(s0)) + hd, 20.0, k)
  gt = compute_ground_truth(w, veh.state, 0.0)
  assert gt["lateral_offset"] == pytest.approx(off, abs=2e-3)
  assert gt["heading_error"] == pytest.approx(hd, abs=1e-4)
  assert gt["road_s"] == pytest.approx(s0, abs=0.02)
  # at x = 0 the ego lane lines are at -(w/2 + off) and +(w/2 - off); the path at -off (car frame y right)
  assert gt["lane_lines"][0, 0, 0] == pytest.approx(-1.8 - off, abs=0.01)
  assert gt["lane_lines"][1, 0, 0] == pytest.approx(1.8 - off, abs=0.01)
  assert gt["path"][0, 1] == pytest.approx(-off, abs=0.01)
  assert np.allclose(gt["path"][:, 0], X_IDXS)
  assert np.allclose(gt["lane_lines"][..., 1], 1.22, atol=1e-6)     # flat road: ground at camera height (z down)
  # far ahead the left-curving lane bends left (negative y), like an arc y = -k x^2 / 2 - heading x
  x = 50.0
  y50 = float(np.interp(x, X_IDXS, gt["path"][:, 1]))
  assert y50 == pytest.approx(-off - k * x * x / 2 - np.tan(hd) * x, abs=0.15)
  el, er = road.edge_d
  assert gt["road_edges"][0, 0, 0] == pytest.approx(el - road.lane_center_d(1) - off, abs=0.01)
  assert gt["lead"][0] == 0.0
  assert set(FIELDS) <= set(gt)


def test_lead_label_and_bad_desire():
  w = _world(((0.0, 801.0, 0.0, 0.0),))
  road = w.road
  w.cars.append(TrafficCar(lane=1, s=150.0, v=15.0, v0=15.0))
  w.cars.append(TrafficCar(lane=2, s=120.0, v=15.0, v0=15.0))      # other lane: not a lead
  veh = SimVehicle()
  p = road.frenet_to_world(100.0, road.lane_center_d(1))
  veh.reset(float(p[0]), float(p[1]), float(road.psi_at(100.0)), 20.0)
  gt = compute_ground_truth(w, veh.state, 0.0)
  assert gt["lead"][0] == 1.0
  assert gt["lead"][1] == pytest.approx(50.0 - 2.3, abs=0.05)
  assert gt["lead"][2] == pytest.approx(0.0, abs=0.01)
  assert gt["lead"][3] == pytest.approx(-5.0, abs=1e-6)
  with pytest.raises(ValueError, match="desire"):
    compute_ground_truth(w, veh.state, 0.0, desire=7)


def test_ground_truth_folder_round_trip_and_errors(tmp_path):
  w = _world(((0.0, 801.0, 0.0, 0.0),))
  veh = SimVehicle()
  p = w.road.frenet_to_world(100.0, w.road.lane_center_d(1))
  veh.reset(float(p[0]), float(p[1]), float(w.road.psi_at(100.0)), 20.0)
  frames = []
  for i in range(5):
    frames.append(compute_ground_truth(w, veh.state, i * DT))
    veh.step(0.0, 0.0)
  gt = stack_frames(frames)
  save_ground_truth(tmp_path / "gt", gt)
  back = load_ground_truth(tmp_path / "gt")
  for k in FIELDS:
    assert np.array_equal(back[k], gt[k])
  (tmp_path / "gt" / "lead").unlink()
  with pytest.raises(ValueError, match="lead"):
    load_ground_truth(tmp_path / "gt")
  with open(tmp_path / "gt" / "lead", "wb") as f:
    np.save(f, np.zeros((5, 4)))
  with pytest.raises(ValueError, match="lead"):
    load_ground_truth(tmp_path / "gt")
  bad = dict(gt, path=np.zeros((5, 33, 2)))
  with pytest.raises(ValueError, match="path"):
    save_ground_truth(tmp_path / "gt2", bad)


def test_vehicle_inverse_model_and_actuator_delay():
  veh = SimVehicle()
  veh.reset(0.0, 0.0, 0.0, 25.0)
  n_delay = int(round(veh.CP.steerActuatorDelay / DT))
  target = 1 / 300.0
  sa = veh.steer_for_curvature(target)
  steers = []
  for _ in range(80):
    veh.step(sa, 0.0)
    steers.append(veh.state.steer)
  assert np.allclose(steers[:n_delay], 0.0)                          # pure delay first
  assert steers[n_delay] != 0.0 and abs(steers[n_delay]) < abs(sa)   # then a lag, not a jump
  assert veh.curvature == pytest.approx(target, rel=0.01)            # the inverse model is exact in steady state
  assert veh.state.psi < 0                                           # left turn = NED yaw decreasing
  with pytest.raises(ValueError, match="non-finite"):
    veh.step(np.nan, 0.0)


def test_env_without_rendering_and_with_a_camera():
  from common.transformations.camera import model_frame_camera
  sc = lane_keep_suite()[0]
  env = SimEnv(camera=None)
  obs = env.reset(sc)
  assert obs["image"] is None and env.info["lateral_offset"] == pytest.approx(sc.lateral_offset, abs=1e-3)
  obs, info = env.step((0.0, 0.0))
  assert info["frame_times"] == pytest.approx(DT)
  with pytest.raises(ValueError, match="non-finite"):
    env.step((np.inf, 0.0))
  env = SimEnv(camera=model_frame_camera(128, 64, 227.5))
  obs = env.reset(sc)
  assert obs["image"].shape == (64, 128, 3)


def test_env_ends_a_lane_change_desire_on_the_frame_the_car_enters_the_target_lane():
  from tools.sim.policies import PerfectPolicy
  sc = lane_change_suite()[0]
  env = SimEnv(camera=None)
  obs, info, drv = env.reset(sc), env.info, PerfectPolicy()
  assert sc.lane_change and obs["desire"] == sc.desire != 0
  desire, off = [], []
  for _ in range(int(6.0 / DT)):
    assert obs["desire"] == env.desire == info["desire"]      # the policy, the harness and the labels agree
    desire.append(obs["desire"])
    off.append(abs(info["_target_offset"]))
    obs, info = env.step(drv(obs, info))
  desire, off = np.array(desire), np.array(off)
  k = int(np.argmin(desire != 0))
  assert k > 0 and desire[:k].all() and not desire[k:].any()
  assert off[k] < env.world.road.lane_width / 2 <= off[k - 1]


def test_human_driver_statistics_and_lane_changes():
  cfg = WorldConfig(road=RoadConfig(length=60 * 35.0 + 400.0, n_lanes=3, lane_width_fixed=3.6))
  sim = simulate(11, 60.0, None, cfg, driver_cfg=HumanDriverConfig(lane_change_every=12.0))
  gt = sim["gt"]
  keep = gt["desire"] == DESIRE_NONE
  off = gt["lateral_offset"][keep]
  assert 0.04 < off.std() < 0.5                      # weaves like a person, stays in lane
  assert np.mean(np.abs(off) < 1.0) > 0.97
  lc = gt["desire"] != DESIRE_NONE
  assert lc.any()                                      # it changed lanes with the desire set
  road = sim["world"].road
  assert len(np.unique(road.lane_of(road.world_to_frenet(gt["pose_world"][:, :2])[1]))) >= 2   # ...really
  assert np.all(gt["speed"] > 5.0)
  curv = gt["curvature"]
  assert np.abs(curv).max() < 0.02 and curv.std() > 1e-4
  # the same seed drives the same way
  again = simulate(11, 10.0, None, cfg, driver_cfg=HumanDriverConfig(lane_change_every=12.0))["gt"]
  assert np.array_equal(again["pose_world"], gt["pose_world"][:200])


def test_env_refuses_to_run_past_the_road_end():
  from dataclasses import replace
  sc = replace(lane_keep_suite()[1], duration=2.0)          # road built for 2 s, driven for longer
  env = SimEnv(camera=None)
  env.reset(sc)
  with pytest.raises(ValueError, match="past the end of its road"):
    for _ in range(400):
      env.step((0.0, 0.0))
