"""tools.plot.overlay: predictions land where the camera geometry puts them; a log with modelV2 and a log without
(the model runs) both give a video with one frame per camera frame and a time plot."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from common.modelconstants import T_IDXS, X_IDXS
from common.transformations.camera import CameraConfig, project
from tools.plot.overlay import Prediction, draw_prediction, prediction_from_model_v2

REPO = Path(__file__).resolve().parents[3]
CAM = CameraConfig(256, 128, 227.5)


def straight_prediction(lead=(30.0, 0.0, 0.9)) -> Prediction:
  x = 20.0 * T_IDXS
  path = np.stack([x, np.zeros_like(x), np.zeros_like(x)], 1)
  lines = [(np.stack([X_IDXS, np.full(33, y), np.full(33, 1.22)], 1), 1.0) for y in (-1.8, 1.8)]
  edges = [(np.stack([X_IDXS, np.full(33, y), np.full(33, 1.22)], 1), 0.0) for y in (-5.0, 5.0)]
  return Prediction(path, lines, edges, lead, 0.0)


def test_drawing_follows_the_camera_geometry():
  img = draw_prediction(np.zeros((128, 256, 3), np.uint8), straight_prediction(), CAM.intrinsics)
  K = CAM.intrinsics
  # 10 m ahead on the road: path in the middle (green), right lane line at y=+1.8 to the RIGHT of centre (white)
  u_c, v_c = project(np.array([[10.0, 0.0, 1.22]]), K)[0]
  r, g, b = img[int(v_c), int(u_c)]
  assert g > 80 and g > r + 40 and g > b + 20, img[int(v_c), int(u_c)]
  for y, side in ((1.8, 1), (-1.8, -1)):
    u, v = project(np.array([[10.0, y, 1.22]]), K)[0]
    assert (u - u_c) * side > 0
    patch = img[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2].reshape(-1, 3)
    assert patch.min(1).max() > 150, patch           # a bright white pixel on the line
  u, v = project(np.array([[10.0, 5.0, 1.22]]), K)[0]
  if 0 <= u < 256:
    px = img[int(v), int(u)]
    assert px[0] > 100 and px[0] > px[1] + 60        # road edge in red
  # the lead chevron sits over the lead's road position; a zero-probability lead draws nothing
  u, v = project(np.array([[30.0, 0.0, 1.22]]), K)[0]
  near = img[int(v) - 6:int(v) + 3, int(u) - 4:int(u) + 5].reshape(-1, 3)
  assert (near[:, 0] > 120).any()
  no_lead = draw_prediction(np.zeros((128, 256, 3), np.uint8), straight_prediction(lead=(30.0, 0.0, 0.0)), K)
  assert (no_lead[int(v) - 6:int(v) + 3, int(u) - 4:int(u) + 5, 0] <= img[int(v) - 6:int(v) + 3, int(u) - 4:int(u) + 5, 0]).all()
  # calibration: yawing the camera left moves the drawing right
  yawed = draw_prediction(np.zeros((128, 256, 3), np.uint8), straight_prediction(), K, rpy=(0.0, 0.0, 0.05))
  cols = lambda im: np.nonzero(im[100, :, 1] > 80)[0].mean()
  assert cols(yawed) > cols(img) + 5


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
  root = tmp_path_factory.mktemp("overlay")
  r = subprocess.run([sys.executable, "-m", "tools.sim.generate", "--out", str(root / "segs"), "--duration", "1",
                      "--resolution", "256x128", "--format", "openpilot"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  return next(p for p in (root / "segs").iterdir() if (p / "rlog.zst").is_file()), root


def _frames(path: Path) -> list[np.ndarray]:
  with av.open(str(path)) as c:
    return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_overlay_from_a_log_with_model_v2(segment, tmp_path):
  from cereal.logwriter import LogWriter
  from cereal.messaging import log_from_bytes, new_message
  from tools.lib.logreader import LogReader
  seg, _ = segment
  work = tmp_path / seg.name
  shutil.copytree(seg, work)
  events = list(LogReader(work / "rlog.zst"))
  (work / "rlog.zst").unlink()          # rewritten below with modelV2 added (LogWriter never writes over a log)
  with LogWriter(work / "rlog.zst") as lw:
    for ev in events:
      lw.write(ev)
      if ev.which() == "roadCameraState":       # a model that always predicts a gentle left curve
        m = new_message("modelV2", logMonoTime=ev.logMonoTime + 1)
        mv = m.modelV2
        mv.frameId = ev.roadCameraState.frameId
        x = 20.0 * T_IDXS
        mv.position.t, mv.position.x = T_IDXS.tolist(), x.tolist()
        mv.position.y, mv.position.z = (-0.002 * x ** 2 / 2).tolist(), [0.0] * 33
        lines = mv.init("laneLines", 2)
        for ll, y in zip(lines, (-1.8, 1.8)):
          ll.x, ll.y, ll.z = X_IDXS.tolist(), [y] * 33, [1.22] * 33
        mv.laneLineProbs = [0.9, 0.9]
        mv.action.desiredCurvature = 0.002
        last = m.to_bytes()
        lw.write(last)
  pred = prediction_from_model_v2(log_from_bytes(last).modelV2)
  assert pred.desired_curvature == pytest.approx(0.002, rel=1e-6) and pred.path[-1, 1] < -30
  out = tmp_path / "ov.mp4"
  r = subprocess.run([sys.executable, "-m", "tools.plot.overlay", str(work / "rlog.zst"), "--out", str(out),
                      "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  res = json.loads(r.stdout.strip().splitlines()[-1])
  n_cam = sum(ev.which() == "roadCameraState" for ev in events)
  assert res["source"] == "modelV2" and res["frames"] == n_cam == 20
  frames = _frames(out)
  assert len(frames) == n_cam and frames[0].shape == (128, 256, 3)
  plot = Path(res["plot"])
  assert plot.is_file() and plot.stat().st_size > 20_000
  # the drawn path is green in every frame
  assert all((f[90:128, 96:160, 1].astype(int) - f[90:128, 96:160, 0]).mean() > 20 for f in frames)


def test_overlay_runs_the_model_when_the_log_has_none(segment, tmp_path):
  torch = pytest.importorskip("torch")
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  seg, _ = segment
  cfg = get_config("tiny")
  torch.manual_seed(0)
  export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), tmp_path / "model", commit="test")
  out = tmp_path / "ov.mp4"
  r = subprocess.run([sys.executable, "-m", "tools.plot.overlay", str(seg), "--out", str(out), "--model-dir",
                      str(tmp_path / "model"), "--every", "2", "--no-progress"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert res["source"] == "model" and res["model"] and res["frames"] == 10
  assert len(_frames(out)) == 10 and Path(res["plot"]).is_file()


def test_overlay_errors(tmp_path):
  r = subprocess.run([sys.executable, "-m", "tools.plot.overlay", str(tmp_path / "nothing"), "--out",
                      str(tmp_path / "o.mp4")], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 1 and "nothing" in r.stderr and r.stderr.strip().count("\n") == 0
  real = REPO / "../shared/data/comma2k19/Example_1/b0c9d2329ad1606b|2018-08-02--08-34-47/40"
  r = subprocess.run([sys.executable, "-m", "tools.plot.overlay", str(real), "--out", str(tmp_path / "o.mp4")],
                     cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 1 and "no video" in r.stderr
