"""modeld's per-frame logic in-process (no sockets): input queues, desire pulse, frame drops, bad input, model swap."""
import logging
import shutil

import numpy as np
import pytest

from cereal import messaging
from cereal.visionipc import PixelFormat, rgb_to_nv12
from common.modelconstants import DESIRE_LEN
from common.transformations.camera import model_frame_camera
from modeld.model_runner import POLICY_FILE, VISION_FILE, DrivingModel, ModelLoadError
from modeld.modeld import N_FRAMES, DesireInput, FrameDropFilter, InputQueues, Inputs, ModelD, load_model


class Frame:
  """A VisionBuf look-alike."""

  def __init__(self, rgb, frame_id, fmt=PixelFormat.NV12):
    self.height, self.width = rgb.shape[:2]
    self.fmt = fmt
    self.data = rgb_to_nv12(rgb) if fmt == PixelFormat.NV12 else rgb.reshape(-1).copy()
    self.frame_id = frame_id
    self.timestamp_eof = 1_000_000_000 + 50_000_000 * frame_id


def frames(n, w=128, h=64, seed=0):
  """Smooth random images (NV12 round trip keeps them close)."""
  import cv2
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    out.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
  return out


GOOD = dict(v_ego=20.0, carstate_fresh=True, calibrated=True)


def sim_inputs(model, **kw):
  """Inputs for frames already in the model's frame (identity warp): intrinsics of its model-frame camera."""
  spec = model.state.frame_spec
  cam = model_frame_camera(int(spec["width"]), int(spec["height"]), float(spec["focal"]))
  return Inputs(**{**GOOD, "intrinsics": cam.intrinsics.reshape(-1).tolist(), **kw})


def run(md, frame, inp):
  m, d, e = messaging.new_message("modelV2"), messaging.new_message("drivingModelData"), messaging.new_message("modelV2Extra")
  valid = md.process(frame, inp, m, d, e)
  if valid is not None:
    assert e.valid == m.valid and e.modelV2Extra.frameId == m.modelV2.frameId
    assert e.modelV2Extra.modelHash == md.state.hash
    # the networks' own times (bench/modeld.py's overhead in the daemon) fit in warp + vision + policy
    ex = e.modelV2Extra
    if valid:
      assert ex.visionExecutionTime > 0 and ex.policyExecutionTime > 0
      assert ex.visionExecutionTime + ex.policyExecutionTime <= m.modelV2.modelExecutionTime
      assert (ex.visionExecutionTime, ex.policyExecutionTime) == pytest.approx(
        (md.timings["vision"], md.timings["policy"]), rel=1e-6)
  return valid, m, d


def all_floats(msg):
  """Every float in a message (recursively), to check none is NaN/Inf."""
  out = []

  def walk(v):
    if isinstance(v, dict):
      for x in v.values():
        walk(x)
    elif isinstance(v, list):
      for x in v:
        walk(x)
    elif isinstance(v, float):
      out.append(v)
  walk(msg.to_dict())
  return np.array(out)


# ---------------------------------------------------------------- queues / desire / drops

def test_input_queues_sample_frames_and_pulse():
  q = InputQueues(5, 20, N_FRAMES)
  q.add("img", "frames")
  q.add("x", "sample", 3)
  q.add("p", "pulse", 3)
  assert q.length("img") == 5 and q.length("x") == 9 and q.length("p") == 12
  q.enqueue({"img": np.float32(0), "x": np.float32(0), "p": np.float32(0)})
  assert q.get("x").tolist() == [0, 0, 0] and q.get("img").tolist() == [0, 0]   # first push fills
  for i in range(1, 12):
    q.enqueue({"img": np.float32(i), "x": np.float32(i), "p": np.float32(i == 2)})
  assert q.get("img").tolist() == [7, 11]            # two frames 4 slots (0.2 s) apart, oldest first
  assert q.get("x").tolist() == [3, 7, 11]           # every 4th, ending at the newest
  assert q.get("p").tolist() == [1, 0, 0]            # a pulse anywhere in a 4-frame block counts for it


def test_input_queues_hold_missed_frames_aligned_in_time():
  q = InputQueues(5, 20, N_FRAMES)
  q.add("x", "sample", 3)
  q.add("p", "pulse", 2)
  for i in range(10):
    q.enqueue({"x": np.float32(i), "p": np.float32(0)})
  q.enqueue({"x": np.float32(13), "p": np.float32(1)}, missed=3)   # frames 10, 11, 12 were dropped
  # slots are frames 5..13; dropped ones hold the last value (9)
  assert q.q["x"].tolist() == [5, 6, 7, 8, 9, 9, 9, 9, 13]
  assert q.get("x").tolist() == [5, 9, 13]
  assert q.q["p"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
  q.enqueue({"x": np.float32(100), "p": np.float32(0)}, missed=1000)  # a gap longer than the queue
  assert q.q["x"].tolist() == [13] * 8 + [100]


def test_desire_pulse_is_a_rising_edge_and_held_mode_is_one_hot():
  d = DesireInput("pulse")
  seq = [0, 1, 1, 1, 0, 2, 2, 1]
  out = np.stack([d(s) for s in seq])
  expect = np.zeros((len(seq), DESIRE_LEN), np.float32)
  expect[1, 1] = expect[5, 2] = expect[7, 1] = 1.0    # only where a desire starts; "none" never set
  np.testing.assert_array_equal(out, expect)
  h = DesireInput("held")
  np.testing.assert_array_equal(np.stack([h(s) for s in seq]), np.eye(DESIRE_LEN, dtype=np.float32)[seq])
  with pytest.raises(ValueError):
    DesireInput("sometimes")


def test_frame_drop_filter():
  f = FrameDropFilter()
  for _ in range(10):
    assert f.update(5) == 0.0                       # warm-up: start-up drops are ignored
  for _ in range(100):
    f.update(0)
  assert f.perc == 0.0
  n = 0
  while f.update(1) <= 20.0:                        # every other frame dropped (50 %)
    n += 1
  assert 10 < n < 200                               # filtered (10 s time constant), not instant, not never
  for _ in range(2000):
    f.update(1)
  assert f.perc == pytest.approx(50.0, abs=0.5)     # one dropped per processed frame -> f = 1 -> 50 %


# ---------------------------------------------------------------- the model on frames

def test_matches_drivingmodel_run_without_drops(tiny_model_dir):
  """With every frame, a held desire and an identity warp, modeld's queues feed the networks exactly what
  DrivingModel.run's history does (the in-process path of training and tools.sim)."""
  md = ModelD(tiny_model_dir)
  ref = DrivingModel(tiny_model_dir)
  inp = sim_inputs(md)
  desires = [0] * 6 + [1] * 10 + [0] * 4
  for i, img in enumerate(frames(20)):
    f = Frame(img, i, fmt=PixelFormat.RGB)
    inp.desire, inp.v_ego = desires[i], 20.0 + 0.1 * i
    valid, m, d = run(md, f, inp)
    assert valid is True and m.valid and d.valid
    want = ref.run(img, inp.v_ego, desires[i])["action"]["desiredCurvature"]
    assert m.modelV2.action.desiredCurvature == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert d.drivingModelData.action.desiredCurvature == m.modelV2.action.desiredCurvature
    assert m.modelV2.frameId == i and m.modelV2.frameDropPerc == 0.0
  mv = m.modelV2
  assert len(mv.position.x) == 33 and len(mv.laneLines) == 4 and len(mv.roadEdges) == 2
  assert mv.modelExecutionTime > 0 and mv.timestampEof == f.timestamp_eof
  assert np.isfinite(all_floats(m)).all()


def test_frame_gap_counts_drops_and_keeps_running(tiny_model_dir):
  md = ModelD(tiny_model_dir)
  inp = sim_inputs(md)
  imgs = frames(40)
  ids = list(range(15)) + list(range(16, 40, 2))     # after warm-up, every other frame dropped
  percs = []
  for i in ids:
    valid, m, _ = run(md, Frame(imgs[i], i), inp)
    assert valid
    percs.append(m.modelV2.frameDropPerc)
  assert percs[14] == 0.0 and percs[-1] > percs[15] > 0.0
  assert run(md, Frame(imgs[38], 38), inp)[0] is None     # the same frame is never run twice
  assert run(md, Frame(imgs[37], 37), inp)[0] is None     # nor a late one
  assert run(md, Frame(imgs[39], 39), inp)[0] is True
  valid, m, _ = run(md, Frame(imgs[0], 0), inp)           # ids far back: the camera restarted, history reset
  assert valid and m.modelV2.frameId == 0


@pytest.mark.parametrize("bad", ["size", "odd", "format", "vs_camera_state"])
def test_bad_frame_gives_invalid_message_and_recovers(tiny_model_dir, bad, caplog):
  md = ModelD(tiny_model_dir)
  inp = sim_inputs(md)
  img = frames(1)[0]
  assert run(md, Frame(img, 0), inp)[0]
  f = Frame(img, 1)
  if bad == "size":
    f.data = f.data[:-10]
  elif bad == "odd":
    f.width = 127
  elif bad == "format":
    f.fmt = 7
  else:
    inp.camera_size = (256, 128)
  with caplog.at_level(logging.ERROR, logger="modeld"):
    valid, m, d = run(md, f, inp)
  assert valid is False and not m.valid and not d.valid
  assert m.modelV2.frameId == 1 and len(m.modelV2.position.x) == 0      # header only: no prediction
  assert "frame 1 skipped" in caplog.text
  inp.camera_size = None
  valid, m, _ = run(md, Frame(img, 2), inp)
  assert valid and len(m.modelV2.position.x) == 33


def test_the_daemons_wire_path_sends_the_builders_messages(tiny_model_dir):
  """The daemon's path -- process() without builders, modelV2 sent as model_bytes first, the summaries filled after
  -- gives the messages the builder path gives, for good frames and a bad one (timings aside)."""
  a, b = ModelD(tiny_model_dir), ModelD(tiny_model_dir)
  inp = sim_inputs(a)
  imgs = frames(3)

  def strip(d):   # the timings differ between the two runs
    return {k: v for k, v in d.items() if k not in ("modelExecutionTime", "visionExecutionTime", "policyExecutionTime")}

  for fid, img in enumerate(imgs + [imgs[0]]):
    f = Frame(img, fid)
    if fid == 3:
      f.data = f.data[:-10]                      # a torn frame: header-only modelV2, valid=false
    m, d, e = messaging.new_message("modelV2"), messaging.new_message("drivingModelData"), messaging.new_message("modelV2Extra")
    valid = a.process(f, inp, m, d, e)
    assert b.process(Frame(img, fid) if fid < 3 else f, inp) == valid and valid is (fid < 3)
    d2, e2 = messaging.new_message("drivingModelData"), messaging.new_message("modelV2Extra")
    b.fill_summaries(d2, e2)
    wire = messaging.log_from_bytes(b.model_bytes)
    assert wire.which() == "modelV2" and wire.valid == m.valid == valid
    assert strip(wire.modelV2.to_dict()) == strip(m.modelV2.to_dict())
    assert strip(d2.drivingModelData.to_dict()) == strip(d.drivingModelData.to_dict()) and d2.valid == d.valid
    assert strip(e2.modelV2Extra.to_dict()) == strip(e.modelV2Extra.to_dict()) and e2.valid == e.valid


def test_nan_outputs_are_never_published(tiny_model_dir):
  md = ModelD(tiny_model_dir)
  inp = sim_inputs(md)
  real = md.state.model.run_policy
  md.state.model.run_policy = lambda *a: np.full_like(real(*a), np.nan)
  valid, m, d = run(md, Frame(frames(1)[0], 0), inp)
  assert valid is False and not m.valid and not d.valid
  assert len(m.modelV2.position.x) == 33 and np.isfinite(all_floats(m)).all() and np.isfinite(all_floats(d)).all()
  assert m.modelV2.action.desiredCurvature == 0.0
  md.state.model.run_policy = lambda *a: np.where(np.arange(real(*a).size) % 2, np.inf, 0.0)[None].astype(np.float32)
  valid, m, _ = run(md, Frame(frames(1)[0], 1), inp)
  assert valid is False and np.isfinite(all_floats(m)).all()


def test_calibration_and_carstate_gate_validity(tiny_model_dir):
  md = ModelD(tiny_model_dir)
  img = frames(1)[0]
  assert run(md, Frame(img, 0), sim_inputs(md, calibrated=False))[0] is False      # default calibration meanwhile
  assert run(md, Frame(img, 1), sim_inputs(md, carstate_fresh=False))[0] is False  # stale carState
  valid, m, _ = run(md, Frame(img, 2), sim_inputs(md))
  assert valid and m.valid


def test_calibration_warps_the_frame(tiny_model_dir):
  """A camera pitched down by 2 deg: the warp moves the image; with the calibration the frame the model sees
  differs from the uncalibrated one (and modeld still runs)."""
  from common.transformations.camera import sim_camera, warp_to_model_frame
  md = ModelD(tiny_model_dir)
  spec = md.state.frame_spec
  cam = sim_camera(256, 128)
  img = frames(1, 256, 128)[0]
  a = warp_to_model_frame(img, np.zeros(3), cam, spec["width"], spec["height"], spec["focal"])
  b = warp_to_model_frame(img, np.array([0, np.radians(2), 0]), cam, spec["width"], spec["height"], spec["focal"])
  assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
  inp = Inputs(**GOOD, rpy_calib=(0.0, float(np.radians(2)), 0.0))
  assert run(md, Frame(img, 0), inp)[0]


# ---------------------------------------------------------------- model swap

def test_swap_refuses_bad_pairs_and_takes_a_good_one(model_copy, other_model_dir, nan_model_dir, caplog):
  md = ModelD(model_copy)
  inp = sim_inputs(md)
  imgs = frames(4)
  old_hash = md.state.hash
  assert run(md, Frame(imgs[0], 0), inp)[0]
  # a truncated vision file: refused with one line, the old model keeps publishing
  data = (model_copy / VISION_FILE).read_bytes()
  (model_copy / VISION_FILE).write_bytes(data[: len(data) // 2])
  assert md.files_changed()
  with caplog.at_level(logging.ERROR, logger="modeld"):
    assert md.reload() is False
  assert len([r for r in caplog.records if "refused new model" in r.message]) == 1
  assert not md.files_changed()                        # not retried until the files change again
  valid, m, _ = run(md, Frame(imgs[1], 1), inp)
  assert valid and md.state.hash == old_hash
  # a pair that loads but outputs NaN: refused by the test inference
  for f in (VISION_FILE, POLICY_FILE):
    shutil.copy(nan_model_dir / f, model_copy / f)
  assert md.files_changed() and md.reload() is False
  assert run(md, Frame(imgs[2], 2), inp)[0] and md.state.hash == old_hash
  # a missing policy file: refused
  (model_copy / POLICY_FILE).unlink()
  assert md.files_changed() and md.reload() is False and md.state.hash == old_hash
  # a good new pair: swapped in
  for f in (VISION_FILE, POLICY_FILE):
    shutil.copy(other_model_dir / f, model_copy / f)
  assert md.files_changed() and md.reload() is True
  assert md.state.hash != old_hash
  valid, m, _ = run(md, Frame(imgs[3], 3), inp)
  assert valid


def test_load_model_rejects_nan_model(nan_model_dir):
  with pytest.raises(ModelLoadError, match="non-finite"):
    load_model(nan_model_dir)


class _FakeSubMaster:
  """The SubMaster fields inputs_ready() reads."""

  def __init__(self, cam_frame_id=None, t_cam=0, t_car=0):
    self.data = {"roadCameraState": None, "carState": None}
    self.seen = {"roadCameraState": cam_frame_id is not None, "carState": True}
    self.logMonoTime = {"roadCameraState": t_cam, "carState": t_car}
    self.cam = messaging.new_message("roadCameraState").roadCameraState
    self.cam.frameId = cam_frame_id or 0

  def __getitem__(self, s):
    return self.cam


def test_inputs_ready_waits_for_the_frames_own_messages():
  from modeld.modeld import INPUT_SYNC_NS, LATE_FRAME_WINDOW, inputs_ready
  assert inputs_ready(_FakeSubMaster(None), 5)                         # no camera messages at all: never wait
  assert not inputs_ready(_FakeSubMaster(4), 5)                        # frame 5's roadCameraState not in yet
  assert inputs_ready(_FakeSubMaster(5), 5) and inputs_ready(_FakeSubMaster(7), 5)   # modeld behind: newer is fine
  # the camera restarted (frame ids back at 1): the old camera's roadCameraState is not this frame's
  assert not inputs_ready(_FakeSubMaster(1_000_000), 1)
  assert inputs_ready(_FakeSubMaster(5 + LATE_FRAME_WINDOW), 5)
  assert not inputs_ready(_FakeSubMaster(5, t_cam=INPUT_SYNC_NS + 10, t_car=0), 5)   # carState too old for it
