"""controlsd: openpilot's curvature limits, the inverse vehicle model, the safety state machine, and the daemon."""
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from cereal import messaging
from common.modelconstants import T_IDXS
from selfdrive.controls.controlsd import MAX_FRAME_DROP_PERC, MODEL_TIMEOUT, Controls, SteerLimits, build_messages
from selfdrive.controls.lib.drive_helpers import DT_CTRL, MAX_CURVATURE, clip_curvature, get_curvature_from_plan
from selfdrive.controls.vehicle_model import DEFAULT_CAR, VehicleModel, get_car_params

ROOT = Path(__file__).resolve().parents[2]
CP = get_car_params(DEFAULT_CAR)


# ---------------------------------------------------------------- helpers

def test_clip_curvature_limits():
  v = 20.0
  c, lim = clip_curvature(v, 0.0, 0.1, 0.0)
  assert c == pytest.approx(5.0 / v ** 2 * DT_CTRL) and not lim            # jerk: rate-limited per 10 ms step
  c = 0.0
  for _ in range(1000):
    c, lim = clip_curvature(v, c, 0.1, 0.0)
  assert c == pytest.approx(3.0 / v ** 2) and lim                          # lateral acceleration 3 m/s^2
  c, _ = clip_curvature(v, 3.0 / v ** 2, -1.0, 0.0)
  assert c == pytest.approx(3.0 / v ** 2 - 5.0 / v ** 2 * DT_CTRL)
  c, lim = clip_curvature(0.5, 0.19, 1.0, 0.0)
  assert c == MAX_CURVATURE and lim                                        # |curvature| <= 0.2 at low speed
  # a road rolled right-side-down by 0.05 rad: gravity pulls right, the right limit grows by g*roll
  lo = 0.0
  for _ in range(2000):
    lo, _ = clip_curvature(v, lo, -1.0, 0.05)
  assert lo == pytest.approx(-(3.0 + 9.81 * 0.05) / v ** 2)
  assert clip_curvature(v, 0.0, 0.0, 0.0) == (0.0, False)


@pytest.mark.parametrize("kappa", [0.0, 0.004, -0.01])
def test_curvature_from_plan_recovers_a_constant_turn(kappa):
  v = 25.0
  yaw = -kappa * v * T_IDXS            # car frame, z down: a left turn has negative yaw
  yaw_rate = np.full_like(T_IDXS, -kappa * v)
  assert get_curvature_from_plan(yaw, yaw_rate, T_IDXS, v, 0.3) == pytest.approx(kappa, abs=1e-9)


# ---------------------------------------------------------------- the state machine, in simulated time

class Feed:
  """Feeds a SubMaster messages with chosen receive times (no wall clock)."""

  def __init__(self, prefix):
    self.sm = messaging.SubMaster(["carState", "modelV2"], prefix=prefix)

  def car_state(self, t, v=20.0, angle=0.0, enabled=True, pressed=False, valid=True):
    m = messaging.new_message("carState", valid=valid)
    c = m.carState
    c.vEgo, c.steeringAngleDeg, c.steeringPressed = v, angle, pressed
    c.cruiseState.enabled = enabled
    self.sm.update_msgs(t, [("carState", m.to_bytes())])

  def model(self, t, curv=0.0, valid=True, drop=0.0, frame_id=0):
    m = messaging.new_message("modelV2", valid=valid)
    mv = m.modelV2
    mv.frameId, mv.frameDropPerc = frame_id, drop
    mv.action.desiredCurvature = curv
    mv.position.y = [0.3] + [0.0] * 32
    self.sm.update_msgs(t, [("modelV2", m.to_bytes())])

  def tick(self, t):
    self.sm.update_msgs(t, [])


@pytest.fixture
def feed():
  p = f"ctl{os.getpid()}_{uuid.uuid4().hex[:6]}"
  f = Feed(p)
  yield f
  f.sm.close()
  messaging.cleanup_prefix(p)


def drive(ctrl, feed, t0, t1, curv=0.002, model_period=0.05, **model_kw):
  """Steps controlsd at 100 Hz from t0 to t1 with carState at 100 Hz and modelV2 every model_period."""
  outs, t, next_model = [], t0, t0
  while t < t1 - 1e-9:
    feed.car_state(t, angle=ctrl.steer_angle_deg)
    if model_period and t >= next_model - 1e-9:
      feed.model(t, curv, **model_kw)
      next_model += model_period
    outs.append((t, ctrl.update(t, feed.sm)))
    t += DT_CTRL
  return outs


def test_engaged_steering_follows_the_inverse_vehicle_model(feed):
  ctrl = Controls(CP)
  outs = drive(ctrl, feed, 0.0, 3.0, curv=0.002)
  o = outs[-1][1]
  assert o.lat_active and o.state == "enabled" and o.alert[2] == "normal"
  assert o.desired_curvature == pytest.approx(0.002)
  want = math.degrees(VehicleModel(CP).get_steer_from_curvature(0.002, 20.0))
  assert o.steer_angle_deg == pytest.approx(want, rel=1e-6)
  assert o.lateral_error == pytest.approx(0.3)
  msgs = build_messages(o)
  cc = msgs["carControl"].carControl
  assert cc.latActive and cc.actuators.steeringAngleDeg == pytest.approx(want, rel=1e-5)
  assert msgs["controlsState"].controlsState.desiredCurvature == pytest.approx(0.002)
  assert str(msgs["selfdriveState"].selfdriveState.state) == "enabled"


def first_off(outs, t_fault):
  for t, o in outs:
    if t >= t_fault - 1e-9 and not o.lat_active:
      return t, o
  return None, None


def test_model_not_alive_turns_lateral_off_within_200ms(feed):
  ctrl = Controls(CP)
  outs = drive(ctrl, feed, 0.0, 2.0)
  assert outs[-1][1].lat_active
  last_model = max(t for t in np.arange(0.0, 2.0, 0.05) if t < 2.0 - 1e-9)
  outs = drive(ctrl, feed, 2.0, 2.5, model_period=0)          # modeld stops
  t_off, o = first_off(outs, 2.0)
  assert t_off is not None and t_off - last_model <= 0.2
  assert t_off - last_model > MODEL_TIMEOUT - 0.011            # not before its alive window
  assert o.alert == ("Lateral control off", "Driving model not responding", "critical")
  assert o.state == "softDisabling"
  assert all(not o.lat_active for t, o in outs if t >= t_off)


@pytest.mark.parametrize("fault,kw,text", [
  ("invalid", dict(valid=False), "Driving model output invalid"),
  ("drops", dict(drop=MAX_FRAME_DROP_PERC + 5), "Camera frames dropped (25 %)"),
  ("nan", dict(curv=float("nan")), "Driving model output not finite"),
  ("inf", dict(curv=float("inf")), "Driving model output not finite"),
])
def test_bad_model_message_turns_lateral_off_on_the_next_step(feed, fault, kw, text):
  ctrl = Controls(CP)
  drive(ctrl, feed, 0.0, 2.0)
  curv = kw.pop("curv", 0.002)
  outs = drive(ctrl, feed, 2.0, 2.3, curv=curv, **kw)
  t_off, o = first_off(outs, 2.0)
  assert t_off == pytest.approx(2.0)                              # the step that sees the message
  assert o.alert[1] == text and o.alert[2] == "critical"
  for _, o in outs:
    assert math.isfinite(o.steer_angle_deg) and math.isfinite(o.desired_curvature)
    cc = build_messages(o)["carControl"].carControl
    assert not cc.latActive and math.isfinite(cc.actuators.steeringAngleDeg)
  # the fault clears: control comes back, starting from the measured angle (no jump)
  outs = drive(ctrl, feed, 2.3, 3.0)
  assert outs[-1][1].lat_active


def test_stale_car_state_and_driver_override(feed):
  ctrl = Controls(CP)
  drive(ctrl, feed, 0.0, 1.0)
  t = 1.0
  feed.model(t, 0.002)
  o = ctrl.update(t + 0.25, feed.sm)               # carState last at ~0.99 s
  assert not o.lat_active and o.alert[1] == "Car state not received"
  feed.car_state(t + 0.26, pressed=True)
  feed.model(t + 0.26, 0.002)
  o = ctrl.update(t + 0.26, feed.sm)
  assert not o.lat_active and o.state == "overriding" and o.alert[2] == "normal"
  feed.car_state(t + 0.27, enabled=False)
  o = ctrl.update(t + 0.27, feed.sm)
  assert not o.lat_active and o.state == "disabled"


def test_command_always_within_angle_and_rate_limits(feed):
  """Random (also non-finite, huge, flipping) model curvatures at low and high speed: every command is finite,
  within the angle limit, and moves at most max_rate * 10 ms per step."""
  lim = SteerLimits(max_angle_deg=90.0, max_rate_deg_s=100.0)
  ctrl = Controls(CP, lim)
  rng = np.random.default_rng(0)
  prev = 0.0
  for i in range(1500):
    t = i * DT_CTRL
    v = 2.0 if i < 700 else 30.0
    feed.car_state(t, v=v, angle=ctrl.steer_angle_deg)
    if i % 5 == 0:
      c = rng.choice([rng.normal(0, 0.3), 1e6, -1e6, float("nan"), 0.2, -0.2])
      feed.model(t, float(c))
    o = ctrl.update(t, feed.sm)
    assert math.isfinite(o.steer_angle_deg) and abs(o.steer_angle_deg) <= lim.max_angle_deg + 1e-9
    if o.lat_active:
      assert abs(o.steer_angle_deg - prev) <= lim.max_rate_deg_s * DT_CTRL + 1e-9
      assert abs(o.desired_curvature) <= MAX_CURVATURE
    prev = o.steer_angle_deg


# ---------------------------------------------------------------- the daemon

@pytest.mark.timeout(60)
def test_daemon_publishes_at_100hz_and_disengages_when_modeld_stops():
  prefix = f"ctld{uuid.uuid4().hex[:8]}"
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix,
             PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  pm = messaging.PubMaster(["carState", "modelV2"], prefix=prefix)
  cc_sock = messaging.sub_sock("carControl", prefix=prefix)
  ss_sock = messaging.sub_sock("selfdriveState", prefix=prefix)
  proc = subprocess.Popen([sys.executable, "-m", "selfdrive.controls.controlsd"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    n_cc, active_at, t_stop, off_at, ss = 0, None, None, None, None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30 and off_at is None:
      m = messaging.new_message("carState")
      m.carState.vEgo, m.carState.cruiseState.enabled = 20.0, True
      pm.send("carState", m)
      if t_stop is None:
        m = messaging.new_message("modelV2")
        m.modelV2.action.desiredCurvature = 0.001
        pm.send("modelV2", m)
      time.sleep(0.05)
      now = time.monotonic()
      msgs = messaging.drain_sock(cc_sock)
      ss = messaging.recv_sock(ss_sock) or ss
      if active_at is not None and t_stop is None:
        n_cc += len(msgs)
      for cc in (x.carControl for x in msgs):
        if cc.latActive and active_at is None:
          active_at = now
        if t_stop is not None and not cc.latActive:
          off_at = now
          break
      if active_at is not None and t_stop is None and now - active_at > 1.0:
        t_stop = now
    assert active_at is not None, "controlsd never engaged"
    rate = n_cc / (t_stop - active_at)
    assert rate > 50, f"carControl at {rate:.0f} Hz"             # 100 Hz nominal, on a loaded CI machine
    assert off_at is not None and off_at - t_stop < 0.2 + 0.3    # 0.2 s + this test's 50 ms polling and load
    assert ss is not None and ss.selfdriveState.alertText2 == "Driving model not responding"
  finally:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    pm.close()
    cc_sock.close()
    ss_sock.close()
    messaging.cleanup_prefix(prefix)
  assert proc.returncode == 0, out


def test_curvature_from_the_plan_at_the_actuator_delay(feed):
  """--curvature-source plan: the plan's heading (car frame, z down) of a constant left turn gives its curvature."""
  kappa, v = 0.004, 20.0
  ctrl = Controls(CP, curvature_source="plan")
  t = 0.0
  for i in range(300):
    t = i * DT_CTRL
    feed.car_state(t, v=v, angle=ctrl.steer_angle_deg)
    m = messaging.new_message("modelV2")
    m.modelV2.orientation.z = (-kappa * v * T_IDXS).tolist()
    m.modelV2.orientationRate.z = [-kappa * v] * len(T_IDXS)
    feed.sm.update_msgs(t, [("modelV2", m.to_bytes())])
    o = ctrl.update(t, feed.sm)
  assert o.lat_active and o.model_curvature == pytest.approx(kappa, rel=1e-4)
  assert o.desired_curvature == pytest.approx(kappa, rel=1e-4)


@pytest.mark.timeout(60)
def test_daemon_lockstep_takes_one_step_per_car_state():
  """--lockstep (the simulator's stack): no clock; each carState is one control step, however long the sender waits."""
  prefix = f"ctld{uuid.uuid4().hex[:8]}"
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix,
             PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  pm = messaging.PubMaster(["carState", "modelV2"], prefix=prefix, track_subscribers=True)
  cc_sock = messaging.sub_sock("carControl", prefix=prefix, track_connection=True)
  proc = subprocess.Popen([sys.executable, "-m", "selfdrive.controls.controlsd", "--lockstep", "--model-timeout", "5",
                           "--carstate-timeout", "5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    assert pm.wait_for_subscribers(20.0) == [], "controlsd did not subscribe"
    assert cc_sock.wait_connected(20.0)
    time.sleep(messaging.SUBSCRIPTION_SETTLE_S)
    time.sleep(0.3)                                  # nothing is published without a carState
    assert messaging.drain_sock(cc_sock) == []
    m = messaging.new_message("modelV2")
    m.modelV2.action.desiredCurvature = 0.01         # far beyond one step's jerk-limited change
    pm.send("modelV2", m)
    time.sleep(0.1)
    curvatures = []
    for _ in range(6):
      m = messaging.new_message("carState")
      m.carState.vEgo, m.carState.cruiseState.enabled = 20.0, True
      pm.send("carState", m)
      got = messaging.drain_sock(cc_sock, wait_for_one=True)
      time.sleep(0.05)                               # 5 clock steps' worth of wall time: still one step
      got += messaging.drain_sock(cc_sock)
      assert len(got) == 1, f"{len(got)} carControl messages for one carState"
      assert got[0].carControl.latActive
      curvatures.append(got[0].carControl.actuators.curvature)
    # engaged from the measured curvature 0, then one jerk-limited step of 10 ms per carState
    step = 5.0 / 20.0 ** 2 * DT_CTRL
    np.testing.assert_allclose(np.diff(curvatures), step, rtol=1e-5)
  finally:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    pm.close()
    cc_sock.close()
    messaging.cleanup_prefix(prefix)
  assert proc.returncode == 0, out
