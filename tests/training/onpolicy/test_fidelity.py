"""training/onpolicy/fidelity.py: the Pose Net reads the policy's heads with the right signs, the commanded
deviation is the path the world model is asked to drive, the deviation check passes a world model that follows the
pose and fails one that does not, and the CLI runs on tiny models and a generated segment."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import training.worldmodel.sample as sample_mod
from common.modelconstants import PLAN_SLICES, X_IDXS, layout_size, vision_output_layout
from common.poses import compose_transitions
from training.onpolicy import fidelity
from training.onpolicy.fidelity import (
  PoseNet,
  deviate_poses,
  deviation_profile,
  deviation_rollouts,
  ground_truth_pose,
  read_pose,
)
from training.policy.model import VisionModel, get_config

torch.set_num_threads(1)


def test_read_pose_picks_the_best_hypothesis_and_the_lane_centre():
  layout = vision_output_layout()
  out = np.zeros((2, layout_size(layout)), np.float32)
  a, b, shape = layout["plan"]
  plan = out[:, a:b].reshape(2, *shape)
  plan[:, 1, 0, PLAN_SLICES["velocity"].start, 0] = [12.0, 30.0]          # hypothesis 1 ...
  plan[:, 1, 0, PLAN_SLICES["orientation_rate"].start + 2, 0] = [0.1, -0.2]
  plan[:, 0, 0, PLAN_SLICES["velocity"].start, 0] = 99.0                   # ... not 0
  a, b, _ = layout["plan_prob"]
  out[:, a + 1] = 5.0
  a, b, shape = layout["lane_lines"]
  lanes = out[:, a:b].reshape(2, *shape)
  lanes[0, :, 0, 0, 0] = [-2.3, 1.3]       # car 0.5 m right of the lane centre
  lanes[1, :, 0, 0, 0] = [-1.6, 2.0]       # 0.2 m left
  p = read_pose(out, layout)
  np.testing.assert_allclose(p["speed"], [12, 30])
  np.testing.assert_allclose(p["yaw_rate"], [0.1, -0.2], atol=1e-6)
  np.testing.assert_allclose(p["lateral_offset"], [0.5, -0.2], atol=1e-6)
  np.testing.assert_allclose(p["lane_left"], [-2.3, -1.6], atol=1e-6)
  lanes[0, :, 5, 0, 0] = [-3.3, 0.3]       # read 5th point ahead (X_IDXS[5]): 1.5 m right there
  p = read_pose(out, layout, lines_at_m=float(X_IDXS[5]))
  np.testing.assert_allclose(p["lateral_offset"][0], 1.5, atol=1e-6)
  p = read_pose(out, layout, lines_at_m=float(X_IDXS[5] + X_IDXS[4]) / 2)   # halfway: interpolated
  np.testing.assert_allclose(p["lateral_offset"][0], 0.75, atol=1e-6)                # (0 + 1.5) / 2


def test_ground_truth_pose_follows_the_simulator_conventions():
  n = 3
  lanes = np.zeros((n, 2, 33, 2))
  lanes[:, 0, 0, 0], lanes[:, 1, 0, 0] = -2.0, 1.6
  gt = {"speed": np.full(n, 20.0), "curvature": np.full(n, 0.01), "lane_lines": lanes}
  p = ground_truth_pose(gt, np.array([1, 2]))
  np.testing.assert_allclose(p["yaw_rate"], [-0.2, -0.2])                 # left curve = negative about z-down
  np.testing.assert_allclose(p["lateral_offset"], [0.2, 0.2])             # right of the centre


def test_pose_net_resizes_and_batches():
  vision = VisionModel(get_config("tiny"))
  pn = PoseNet(vision, batch=3)
  rng = np.random.default_rng(0)
  big = rng.integers(0, 255, (5, 128, 256, 3), dtype=np.uint8)
  a = pn(big[:4], big[1:])
  small = pn.resize(big)
  b = pn(small[:4], small[1:])
  assert small.shape == (5, 64, 128, 3) and set(a) == set(fidelity.POSE_KEYS)
  for k in a:
    assert a[k].shape == (4,)
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="PoseNet"):
    pn(big[:2], big[:3])


def test_commanded_deviation_seen_ahead_includes_the_turn():
  cmd = np.array([0.1, 0.5, 0.1])
  np.testing.assert_allclose(fidelity.commanded_at(cmd, np.array([0.01, 0.0, -0.01]), 30.0),
                             [0.1 + 30 * np.tan(0.01), 0.5, 0.1 - 30 * np.tan(0.01)])


def test_deviation_profile_ramps_out_and_back_smoothly():
  d = deviation_profile(25, 0.5)
  assert d.shape == (50,) and d[24] == pytest.approx(0.5) and d.argmax() == 24 and d[-1] == pytest.approx(0.0)
  assert np.all(np.diff(d[:25]) > 0) and np.all(np.diff(d[24:]) < 0)
  assert np.abs(np.diff(d)).max() < 0.5 * np.pi / 2 / 25 + 1e-9            # raised cosine: no jumps
  with pytest.raises(ValueError):
    deviation_profile(0)


@pytest.mark.parametrize("yaw_rate", [0.0, 0.05])
def test_deviated_path_is_the_logged_one_moved_along_its_normal(yaw_rate):
  n, v, dt = 40, 20.0, 0.2
  yaw = yaw_rate * dt * np.arange(n + 1)
  xy = np.cumsum(np.stack([np.cos(yaw), np.sin(yaw)], -1) * v * dt, 0) - np.array([[v * dt, 0.0]])
  poses = np.zeros((n + 1, 6))
  poses[:, :2], poses[:, 5] = xy, yaw
  d = np.concatenate([[0.0], deviation_profile(20, 0.5)])
  dev = deviate_poses(poses, d)
  off = ((dev[:, :2] - xy) * np.stack([-np.sin(yaw), np.cos(yaw)], -1)).sum(-1)   # along the path's right normal
  np.testing.assert_allclose(off, d, atol=1e-9)
  along = ((dev[:, :2] - xy) * np.stack([np.cos(yaw), np.sin(yaw)], -1)).sum(-1)
  np.testing.assert_allclose(along, 0, atol=1e-9)
  turn = dev[:, 5] - yaw                                                   # pointing where the deviated path goes
  assert turn[10] > 0 and turn[30] < 0 and np.abs(turn).max() < 0.02
  with pytest.raises(ValueError):
    deviate_poses(poses, d[:-1])


# ---------------------------------------------------------------- the deviation check on known world models

H, W, C, FPS = 32, 64, 3, 5.0


class IdentityCodec:
  def encode(self, img):
    return img

  def decode(self, lat):
    return lat


class OffsetPoseNet:
  """Reads the lateral offset a fake frame encodes in its brightness (see _fake_rollout)."""
  lines_at_m = 0.0

  def __call__(self, prev, cur):
    return {"lateral_offset": (cur.reshape(len(cur), -1).mean(1) - 128.0) / 100.0}


def _fake_rollout(gain, calls):
  """A world model whose frame k shows gain x the lateral position of the commanded pose k (relative to "now"), as
  brightness; gain 0 ignores the pose."""
  def rollout(model, ctx, ctx_tr, ctx_t, future_transitions, future_t, **kw):
    calls.append(kw["opts"].temperature)
    frames = []
    for b in range(future_transitions.shape[0]):
      tr = np.concatenate([np.zeros((1, 6)), future_transitions[b].numpy()])
      y = compose_transitions(tr)[1:, 1]
      frames.append(torch.from_numpy(np.clip((gain * y * 100.0) / 127.5, -1, 1)).float()[:, None, None, None]
                    .expand(-1, 3, H, W))
    return {"frames": torch.stack(frames)}
  return rollout


def _straight_dataset(n_frames=80):
  from common.transformations.orientation import euler2quat
  t = np.arange(n_frames) / 20.0
  pos = np.zeros((n_frames, 3))
  pos[:, 0] = 6378137.0                      # on the ECEF x axis, driving north (+z) at 15 m/s
  pos[:, 2] = 15.0 * t
  quat = np.tile(euler2quat(np.array([0.0, -np.pi / 2, 0.0])), (n_frames, 1))
  seg = SimpleNamespace(positions=pos, quats=quat, calib=np.zeros(3), times=t, t0=0.0)
  item = {"frames": torch.zeros(C + 1, 3, H, W), "transitions": torch.zeros(C + 1, 6),
          "t_world": torch.arange(C + 1) / FPS}
  return SimpleNamespace(index=[(0, 12), (0, 16)], step_of=lambda si: 4, _seg=lambda si: seg,
                         __getitem__=None, items=[item, item])


class _DS:
  def __init__(self):
    self.ns = _straight_dataset()
    self.index = self.ns.index

  def __getitem__(self, k):
    return self.ns.items[k]

  def step_of(self, si):
    return 4

  def _seg(self, si):
    return self.ns._seg(si)


@pytest.mark.parametrize("gain,passes", [(1.0, True), (0.8, True), (0.5, False), (0.0, False), (-1.0, False)])
def test_deviation_check_passes_a_model_that_follows_the_pose(monkeypatch, gain, passes):
  calls = []
  monkeypatch.setattr(sample_mod, "rollout", _fake_rollout(gain, calls))
  model = SimpleNamespace(cfg=SimpleNamespace(context_frames=C, fps=FPS))
  ds = _DS()
  res = deviation_rollouts(model, IdentityCodec(), OffsetPoseNet(), ds, [(0, 12), (1, 16)], ramp_steps=5,
                           amplitude=0.5, progress=False)
  assert res["passes"] is passes
  assert res["peak_fraction"] == pytest.approx(gain, abs=0.02)
  np.testing.assert_allclose(res["measured_m"], gain * np.asarray(res["commanded_m"]), atol=0.01)
  assert res["commanded_m"][4] == pytest.approx(0.5) and len(res["t_s"]) == 10
  assert calls == [0.0, 0.0]                 # temperature 0: the three commands are one batch per window
  # the first window's frames, now then 1..N, for the picture: the fake's brightness is gain x the commanded offset
  ex = res["example_frames"]
  assert res["example_window"] == (0, 12) and set(ex) == {"plus", "zero", "minus"}
  assert all(v.shape == (11, H, W, 3) and v.dtype == np.uint8 for v in ex.values())
  peak = {n: float(ex[n][5].mean()) for n in ex}   # frame 5: the commanded peak
  if gain > 0:
    assert peak["plus"] > peak["zero"] + 10 > peak["minus"] + 20


def test_with_noise_the_three_commands_share_one_draw(monkeypatch):
  calls = []
  monkeypatch.setattr(sample_mod, "rollout", _fake_rollout(1.0, calls))
  model = SimpleNamespace(cfg=SimpleNamespace(context_frames=C, fps=FPS))
  res = deviation_rollouts(model, IdentityCodec(), OffsetPoseNet(), _DS(), [(0, 12)], ramp_steps=3, amplitude=0.5,
                           temperature=1.0, progress=False)
  assert calls == [1.0, 1.0, 1.0] and res["passes"]


def test_fig9_measures_the_frame_decoders_frames_when_given_one(monkeypatch):
  """With a frame decoder the rollouts' frames are its images of the latents, not the codec's decode: one that shows
  half of each frame's contrast halves the measured deviation."""
  from training.vae import tensor_to_images
  monkeypatch.setattr(sample_mod, "rollout", _fake_rollout(1.0, []))
  seen = []

  class HalfContrast:
    def images(self, lat):
      seen.append(tuple(lat.shape))
      return tensor_to_images(lat * 0.5)

  model = SimpleNamespace(cfg=SimpleNamespace(context_frames=C, fps=FPS))
  res = deviation_rollouts(model, IdentityCodec(), OffsetPoseNet(), _DS(), [(0, 12)], ramp_steps=5, amplitude=0.5,
                           progress=False, frame_decoder=HalfContrast())
  assert res["decoder"] == "frame_decoder" and len(seen) == 3
  # half the contrast of the codec's frames (the identity codec here): about 10 dB from it
  assert 5 < res["frame_decoder_vs_codec_psnr_db"] < 30
  assert res["peak_fraction"] == pytest.approx(0.5, abs=0.02) and not res["passes"]


# ---------------------------------------------------------------- the CLI on tiny models and a generated segment

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  from tests.training.onpolicy.tiny_runs import make_policy_run, make_vae, make_wm_run
  from tools.sim.generate import main as generate
  root = tmp_path_factory.mktemp("fidelity")
  assert generate(["--out", str(root / "data"), "--segments", "1", "--seed", "3", "--duration", "5",
                   "--resolution", "256x128", "--workers", "1"]) == 0
  vae = make_vae(root / "vae")
  return root, make_wm_run(root / "wm", vae), make_policy_run(root / "pol", temporal=False)   # the extractor suffices


def test_cli_writes_table_plot_and_one_json_line(runs, capsys):
  root, wm, pol = runs
  out = root / "out"
  assert fidelity.main(["--wm", str(wm), "--policy", str(pol), "--data", str(root / "data"), "--out", str(out),
                        "--windows", "2", "--ramp-steps", "2", "--steps", "2", "--max-pairs", "4"]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(last["table1_original"]) == set(fidelity.POSE_KEYS) and last["windows"] == 2
  res = json.loads((out / "fidelity.json").read_text())
  assert res["table1"]["pairs"] == 4 and len(res["deviation"]["measured_m"]) == 4
  assert all(np.isfinite(v) for v in res["table1"]["reconstructed"].values())
  assert (out / "fidelity.png").stat().st_size > 5000 and "Table 1" in (out / "fidelity.md").read_text()
  ref = res["deviation"]["procedural"]                  # a generated segment: the true-render reference is there too
  assert ref["windows"] == 2 and len(ref["measured_m"]) == 4 and "procedural world renders" in (out / "fidelity.md").read_text()
  assert "example_frames" not in res["deviation"] and "example_frames" not in ref   # pictures, not JSON
  assert (out / "frames.png").stat().st_size > 5000 and "frames.png" in (out / "fidelity.md").read_text()


def test_frames_figure_puts_the_true_renders_under_the_world_models_frames(tmp_path):
  """Rows: world model +A, true render +A, world model -A, true render -A (without renders: the two world-model
  rows); columns: start, half-way up, peak, half-way back, end."""
  import matplotlib.image as mpimg
  R = 4
  dev = {"ramp_steps": R, "fps": 5.0, "amplitude_m": 0.5, "predecessor": "log"}
  frames = {n: np.full((2 * R + 1, 16, 32, 3), v, np.uint8) for n, v in (("plus", 200), ("zero", 128), ("minus", 60))}
  renders = {n: np.full((2 * R + 1, 32, 64, 3), v, np.uint8) for n, v in (("plus", 220), ("minus", 30))}
  fidelity.frames_figure(dev, frames, renders, tmp_path / "with.png")
  fidelity.frames_figure(dev, frames, None, tmp_path / "without.png")
  with_, without = mpimg.imread(tmp_path / "with.png"), mpimg.imread(tmp_path / "without.png")
  assert with_.shape[0] > 1.6 * without.shape[0] and with_.shape[1] == without.shape[1]
  with pytest.raises(KeyError):
    fidelity.frames_figure(dev, {"plus": frames["plus"]}, None, tmp_path / "bad.png")


def test_table_only_with_a_codec_and_no_world_model(runs, capsys):
  root, _, pol = runs
  out = root / "out_table"
  assert fidelity.main(["--vae", str(root / "vae"), "--policy", str(pol), "--data", str(root / "data"), "--out",
                        str(out), "--max-pairs", "3", "--windows", "1", "--ramp-steps", "2"]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["pairs"] == 3 and set(last["table1_reconstructed"]) == set(fidelity.POSE_KEYS)
  res = json.loads((out / "fidelity.json").read_text())
  assert res["deviation"] is None and res["procedural_reference"]["windows"] == 1 and last["procedural_windows"] == 1
  with pytest.raises(SystemExit) as e:
    fidelity.main(["--policy", str(pol), "--data", str(root / "data"), "--out", str(out)])
  assert e.value.code == 2


def test_the_segment_world_is_rebuilt_and_renders_its_video(runs):
  root, _, _ = runs
  from training.data.frames import SegmentFrames
  from training.onpolicy.fidelity import _SegmentWorld
  seg = next((root / "data").glob("*/0"))
  world, video = _SegmentWorld(seg, (128, 256)), SegmentFrames(seg, (128, 256))
  i = 40
  same = np.abs(world.render(world.pose_world[i]).astype(int) - video.frame(i)).mean()
  moved = deviate_poses(world.pose_world[i - 1:i + 1], np.array([0.0, 0.5]))[1]
  off = np.abs(world.render(moved).astype(int) - video.frame(i)).mean()
  assert same < 8 and off > same + 1, (same, off)       # same world and pose; 0.5 m to the side is visibly different


def test_cli_errors(runs, tmp_path, capsys):
  root, wm, pol = runs
  with pytest.raises(SystemExit) as e:
    fidelity.main(["--wm", str(tmp_path / "nope"), "--policy", str(pol), "--data", str(root / "data"),
                   "--out", str(tmp_path)])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:
    fidelity.main(["--wm", str(wm), "--policy", str(pol), "--data", str(root / "data"), "--out", str(tmp_path),
                   "--amplitude", "0"])
  assert e.value.code == 2
  assert fidelity.main(["--wm", str(pol), "--policy", str(pol), "--data", str(root / "data"),
                        "--out", str(tmp_path)]) == 1                      # a policy run is not a world model
  assert fidelity.main(["--wm", str(wm), "--policy", str(wm), "--data", str(root / "data"),
                        "--out", str(tmp_path)]) == 1                      # nor a world model a Pose Net
  assert "error:" in capsys.readouterr().err


def test_re_anchored_rollouts_start_each_frame_from_the_logged_frame_before_it(runs, monkeypatch, capsys):
  """--wm-predecessor log: frame n + 1 of each command is generated from logged frame n re-projected to that command's
  pose n + 1. For the zero command that is the logged transition n -> n + 1 (the warp training applies to the logged
  predecessor), the +-A commands get other predecessors; the CLI names the rollouts it ran."""
  from common.poses import relative_poses, transitions
  from training.worldmodel.evaluate import eval_windows
  from training.worldmodel.evaluate import load_worldmodel_run as load_wm
  root, wm, pol = runs
  model, vae, cfg, _ = load_wm(wm, "cpu")
  ds, wins = eval_windows(root / "data", "all", cfg, 4, 1, None, 0)
  seen = []
  real = sample_mod.rollout
  monkeypatch.setattr(sample_mod, "rollout", lambda *a, **kw: seen.append(kw["predecessors"]) or real(*a, **kw))
  vision, _, _ = fidelity.load_policy_run(pol, need_temporal=False)
  deviation_rollouts(model, vae, PoseNet(vision), ds, wins, ramp_steps=2, steps=2, progress=False, predecessor="log")
  (k, c), = wins
  preds = seen[0]
  assert preds.shape == (3, 4, 4, cfg.latent_h, cfg.latent_w)
  seg = ds._seg(ds.index[k][0])
  idx = c + ds.step_of(ds.index[k][0]) * np.arange(5)
  logged = relative_poses(seg.positions[idx], seg.quats[idx], 0, seg.calib)
  lat = vae.encode(seg.images(idx[:-1]))
  want = model.log_predecessor(lat, torch.from_numpy(transitions(logged)[1:]).float())
  torch.testing.assert_close(preds[1], want, atol=1e-5, rtol=0)
  assert not torch.allclose(preds[0, 1:], preds[2, 1:], atol=1e-3)
  out = root / "out_log"
  assert fidelity.main(["--wm", str(wm), "--policy", str(pol), "--data", str(root / "data"), "--out", str(out),
                        "--windows", "1", "--ramp-steps", "2", "--steps", "2", "--max-pairs", "2",
                        "--wm-predecessor", "log"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predecessor"] == "log"
  assert "re-anchored" in (out / "fidelity.md").read_text()


def test_cli_with_a_frame_decoder_adds_its_row_and_decodes_the_rollouts_with_it(runs, capsys, tmp_path):
  import torch

  from training.frame_decoder import FrameDecoder, FrameDecoderConfig, save_frame_decoder
  from training.vae import load_vae
  root, wm, pol = runs
  vae = load_vae(root / "vae")
  torch.manual_seed(0)
  save_frame_decoder(FrameDecoder(FrameDecoderConfig.for_upsample(4)), tmp_path / "fd", vae, (64, 128))
  out = tmp_path / "out"
  args = ["--wm", str(wm), "--policy", str(pol), "--data", str(root / "data"), "--windows", "1", "--ramp-steps", "2",
          "--steps", "2", "--max-pairs", "4"]
  assert fidelity.main([*args, "--out", str(out), "--frame-decoder", str(tmp_path / "fd")]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["decoder"] == "frame_decoder" and set(last["table1_frame_decoder"]) == set(fidelity.POSE_KEYS)
  assert np.isfinite(last["frame_decoder_vs_codec_psnr_db"])
  res = json.loads((out / "fidelity.json").read_text())
  assert res["frame_decoder"] == str(tmp_path / "fd") and "frame_decoder_over_original" in res["table1"]
  md = (out / "fidelity.md").read_text()
  assert "encoder + frame decoder" in md and "frames from the frame decoder" in md
  save_frame_decoder(FrameDecoder(FrameDecoderConfig.for_upsample(2)), tmp_path / "small", vae, (32, 64))
  assert fidelity.main([*args, "--out", str(out), "--frame-decoder", str(tmp_path / "small")]) == 1
  assert "the policy sees 64" in capsys.readouterr().err
