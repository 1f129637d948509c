"""modeld as a process: frames through VisionIPC -> modelV2 + drivingModelData + modelV2Extra for every frame,
valid once calibrated with a fresh carState; SIGHUP with a bad pair is refused and publishing goes on."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cereal import messaging
from cereal.visionipc import VisionIpcServer, VisionStreamType, rgb_to_nv12
from common.transformations.camera import model_frame_camera
from modeld.model_runner import VISION_FILE

ROOT = Path(__file__).resolve().parents[2]


def start_modeld(model_dir, prefix):
  env = dict(os.environ, WORLDPILOT_PREFIX=prefix, OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  return subprocess.Popen([sys.executable, "-m", "modeld.modeld", "--model-dir", str(model_dir)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Camera:
  """camerad + the car for the test: frames through VisionIPC, camera/car/calibration messages through cereal."""

  def __init__(self, w=128, h=64, focal=227.5):
    self.cam = model_frame_camera(w, h, focal)
    self.vipc = VisionIpcServer("camerad")
    self.vipc.create_buffers(VisionStreamType.VISION_STREAM_ROAD, 4, w, h)
    self.vipc.start_listener()
    self.pm = messaging.PubMaster(["roadCameraState", "roadCameraInfo", "carState", "liveCalibration"])
    self.rng = np.random.default_rng(0)

  def send(self, i, calibrated=True):
    m = messaging.new_message("carState")
    m.carState.vEgo = 20.0
    self.pm.send("carState", m)
    if calibrated:
      m = messaging.new_message("liveCalibration")
      m.liveCalibration.rpyCalib = [0.0, 0.0, 0.0]
      m.liveCalibration.calStatus = "calibrated"
      self.pm.send("liveCalibration", m)
    ns = time.monotonic_ns()
    m = messaging.new_message("roadCameraInfo")
    ci = m.roadCameraInfo
    ci.frameId, ci.width, ci.height, ci.stride = i, self.cam.width, self.cam.height, self.cam.width
    ci.intrinsics = self.cam.intrinsics.reshape(-1).tolist()
    self.pm.send("roadCameraInfo", m)
    m = messaging.new_message("roadCameraState")
    m.roadCameraState.frameId, m.roadCameraState.timestampEof = i, ns
    self.pm.send("roadCameraState", m)
    time.sleep(0.01)   # let the messages land before the frame announcement
    img = self.rng.integers(0, 255, (self.cam.height, self.cam.width, 3), dtype=np.uint8)
    self.vipc.send(VisionStreamType.VISION_STREAM_ROAD, rgb_to_nv12(img), i, ns, ns)

  def close(self):
    self.vipc.close()
    self.pm.close()


def wait_for(sock, frame_id, timeout=5.0, which="modelV2"):
  """The `which` message of frame `frame_id` (or None)."""
  t0 = time.monotonic()
  while time.monotonic() - t0 < timeout:
    m = messaging.recv_one(sock)
    if m is not None and getattr(m, which).frameId == frame_id:
      return m
  return None


@pytest.mark.timeout(120)
def test_modeld_process(model_copy, prefix):
  sock = messaging.sub_sock("modelV2", timeout=200)
  dsock = messaging.sub_sock("drivingModelData", timeout=200)
  esock = messaging.sub_sock("modelV2Extra", timeout=200)
  cam = Camera()
  proc = start_modeld(model_copy, prefix)
  try:
    # frames until modeld is up and answering
    got, i = None, 0
    t0 = time.monotonic()
    while got is None and time.monotonic() - t0 < 60:
      cam.send(i, calibrated=False)
      got = wait_for(sock, i, timeout=0.3)
      i += 1
    assert got is not None, "modeld never answered"
    assert not got.valid                                   # no calibration yet: default one, valid=false
    for j in range(i, i + 10):
      cam.send(j)
      m = wait_for(sock, j)
      assert m is not None and m.valid, j
      mv = m.modelV2
      assert len(mv.position.x) == 33 and np.isfinite(mv.action.desiredCurvature)
      assert mv.modelExecutionTime > 0
    d = wait_for(dsock, j, which="drivingModelData")
    assert d is not None and d.valid
    e = wait_for(esock, j, which="modelV2Extra")
    assert e is not None and len(e.modelV2Extra.planHypotheses) == 5
    old_hash = e.modelV2Extra.modelHash
    # a bad pair + SIGHUP: refused, the old model keeps publishing
    (model_copy / VISION_FILE).write_bytes(b"not an onnx file")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    for k in range(j + 1, j + 6):
      cam.send(k)
      m = wait_for(sock, k)
      assert m is not None and m.valid, k
    e = wait_for(esock, k, which="modelV2Extra")
    assert e is not None and e.modelV2Extra.modelHash == old_hash
    # the camera restarts (new VisionIPC server, frame ids from 0): modeld follows it with a fresh history
    cam.close()
    cam = Camera()
    got, i, t0 = None, 0, time.monotonic()
    while (got is None or not got.valid) and time.monotonic() - t0 < 30:   # (subscribers reconnect to the new publishers)
      cam.send(i)
      got = wait_for(sock, i, timeout=0.3)
      i += 1
    assert got is not None and got.valid and got.modelV2.frameAge == 0, "modeld did not follow the restarted camera"
  finally:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    cam.close()
  assert proc.returncode == 0, out
  assert out.count("refused new model") == 1, out
