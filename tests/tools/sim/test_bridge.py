"""The bridge across processes: a subprocess runs tools.sim.bridge, this test process is the stack
(reads carState / groundTruth and VisionIPC frames, sends carControl) and must bring the car back to
the lane centre from a 1 m offset."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(120)
def test_bridge_closed_loop_over_cereal():
  from cereal.messaging import PubMaster, SubMaster, cleanup_prefix, new_message, prefix_dir
  from cereal.visionipc import VisionIpcClient, VisionStreamType, nv12_to_rgb
  from selfdrive.controls.vehicle_model import VehicleModel, get_car_params
  prefix = f"simtest_{uuid.uuid4().hex[:8]}"
  socket_dir = prefix_dir(prefix)                   # /tmp/worldpilot/<prefix>
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix, PYTHONPATH=str(REPO))
  os.environ["WORLDPILOT_PREFIX"] = prefix
  sm = pm = client = proc = None
  try:
    sm = SubMaster(["carState", "groundTruth", "roadCameraState"])
    pm = PubMaster(["carControl"])
    duration = 8.0
    proc = subprocess.Popen([sys.executable, "-m", "tools.sim.bridge", "--scenario", "keep_straight_off+1.0_hd+0_v30",
                             "--camera", "128x64", "--duration", str(duration), "--lockstep", "--step-timeout", "2.0",
                             "--idle", "straight"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    VM = VehicleModel(get_car_params())   # the simulator's default car
    client = VisionIpcClient("camerad", VisionStreamType.VISION_STREAM_ROAD, conflate=True)
    offsets, frames_seen, last_frame = [], 0, None
    t_end = time.monotonic() + 100
    while proc.poll() is None and time.monotonic() < t_end:
      sm.update(100)
      if not client.is_connected:
        client.connect(blocking=False)
      if client.is_connected:
        buf = client.recv(5)
        if buf is not None:
          frames_seen += 1
          last_frame = nv12_to_rgb(buf.data, buf.width, buf.height)
      if sm.updated["groundTruth"]:
        gt, cs = sm["groundTruth"], sm["carState"]
        offsets.append(gt.lateralOffset)
        L = max(12.0, 0.9 * max(cs.vEgo, 1.0))
        curv = 2.0 * (gt.lateralOffset + L * gt.headingError) / L ** 2     # pure pursuit on a straight lane
        msg = new_message("carControl")
        cc = msg.carControl
        cc.enabled, cc.latActive, cc.longActive = True, True, False
        cc.actuators.curvature = float(curv)
        cc.actuators.steeringAngleDeg = float(np.degrees(VM.get_steer_from_curvature(curv, max(cs.vEgo, 1.0))))
        pm.send("carControl", msg)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    engaged = int(out.split("engaged ")[1].split(",")[0])
    final = float(out.split("final lateral offset ")[1].split()[0])
    n = int(duration * 20)
    assert engaged > 0.8 * n, out
    assert abs(offsets[0] - 1.0) < 0.05            # started 1 m right of the centre
    assert abs(final) < 0.3, (final, offsets[-20:])   # our controller brought it back
    assert frames_seen > 10 and last_frame.shape == (64, 128, 3)
    assert last_frame.std() > 5                     # a real picture, not a blank buffer
  finally:
    if proc is not None and proc.poll() is None:   # a failed assertion above: stop the bridge before cleaning up
      proc.kill()
      proc.communicate()
    for ipc in (client, sm, pm):
      if ipc is not None:
        ipc.close()
    cleanup_prefix(prefix)                           # this run's socket files
    os.environ.pop("WORLDPILOT_PREFIX", None)
  assert not os.path.exists(socket_dir), socket_dir
