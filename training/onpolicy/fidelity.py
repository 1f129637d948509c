"""Is the world model a good enough simulator? (paper §4.6, Table 1, Fig. 9)

  python -m training.onpolicy.fidelity --wm WM_RUN --policy POLICY_RUN --data SEGMENTS --out DIR
         [--windows 16] [--amplitude 0.5] [--ramp-steps 25] [--temperature 0] [--split val|all]
         [--frame-decoder DIR]

The Pose Net is the policy's own extractor read through its supervised heads (training/policy/model.py's
VisionModel: [frame(t-0.2 s), frame(t)] -> plan of the ego car + lane lines), so it measures what the policy
itself sees:
  speed        the most likely plan hypothesis' forward velocity at t = 0 (m/s)
  yaw rate     its yaw rate at t = 0 (rad/s, about z-down: + = turning right)
  lane lines   the y of the ego lane's left and right line x = --lines-at metres ahead (m, + = right); the car's
               lateral offset from the lane centre is -(y_left + y_right) / 2 there (+ = car right of the centre;
               at x = 0 it is what tools/sim/ground_truth.py calls lateral_offset). The default reads it 30 m
               ahead: x = 0 lies below the camera's view, and the tiny policy's heads, trained on a human driver
               who stays near the lane centre, hardly move there when the camera moves sideways. On procedural
               renders of the commanded deviation (below; 4 windows, a 1500-step extractor) the Pose Net saw 4% of
               a 0.5 m shift read at 0 m, 47% at 20 m and 99% at 30 m. A deviation seen x metres ahead includes the
               heading turn (d + x tan(turn)); the commanded curve is computed the same way.
All frames are the world model's model frames (its resolution), area-resized to the policy's frame for the Pose Net,
so original, VAE-reconstructed and generated frames go through exactly the same path.

Table 1 analogue: the Pose Net's MAE against the procedural world's ground truth (ground_truth/ of generated
segments) on every 5 Hz frame pair of the segments, on the original frames and on decode(encode(frames)) through the
world model's VAE. If the codec already hides what the Pose Net needs (lane lines), no world model on top of it can
show it. With --frame-decoder (training/frame_decoder.py, distilled from the codec; the world-model simulator's
frames when the on-policy run uses one) a third row: the encoder's latents through the frame decoder, and the Fig. 9
rollouts below are decoded with it, so both describe the frames the on-policy policy is shown.

Fig. 9 analogue (noise-forced rollouts): from a logged window (2 s of context latents), the world model generates
`2 * ramp_steps` frames at 5 Hz along the logged path shifted sideways by a commanded deviation d(k): a smooth
(raised-cosine) ramp from 0 to +-amplitude over ramp_steps frames, then the same ramp back to 0 (the car recovers).
The shifted path keeps the logged path's shape; each pose is moved by d(k) along the path's normal and turned by
atan(d'(s)) so the car points where it goes. Each window is rolled out three times with the same context: +A, 0 and
-A. The deviation the Pose Net measures is (offset(+A) - offset(-A)) / 2 per frame: the logged driver's own weaving
and the Pose Net's bias cancel, only the response to the command remains. It is averaged over windows and compared
with the commanded d(k). Pass: the measured deviation reaches >= 70% of the commanded peak and comes back with it
(at the end it is within 30% of the amplitude of zero). As a reference for the Pose Net itself, the same deviation is
measured on frames the procedural world renders at the commanded poses (generated segments carry their world's seed;
traffic is left out): what a perfect simulator would score with this Pose Net.

Sampling: 15 Euler steps; temperature 0 by default (one deterministic path per command, the setting at which the
world model follows the pose best, docs/worldmodel.md), --temperature 1 samples the model's own distribution. With
temperature > 0 the three commands of a window share one noise draw. No future anchor: the check is whether the
frames follow the commanded pose, not whether the model can be pulled back to the log.
--wm-predecessor log runs the same check on re-anchored rollouts (the world-model simulator's predecessor "log"):
frame n + 1 is generated from logged frame n re-projected to the commanded pose, not from the generated frame n.

Writes DIR/fidelity.json, DIR/fidelity.md (Table 1 and the Fig. 9 figures), DIR/fidelity.png (the deviation over
time) and DIR/frames.png (the first window's frames for +A and -A, above the true renders of the same poses); the last
line printed is one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from common.cli import add_common_args, emit_result, make_parser, tool_main
from common.modelconstants import PLAN_SLICES, X_IDXS, split_outputs
from common.poses import relative_poses, transitions
from training.onpolicy.sim_worldmodel import PREDECESSORS
from training.policy.model import load_policy_run
from training.torch_args import set_threads

PASS_PEAK_FRACTION = 0.7     # measured peak >= 70% of the commanded one
PASS_RETURN_FRACTION = 0.3   # |measured| at the end <= 30% of the amplitude
POSE_KEYS = ("speed", "yaw_rate", "lane_left", "lane_right", "lateral_offset")
LINES_AT_M = 30.0           # where the lane lines are read (see the module docstring)
PREDECESSOR_WORDS = {"generated": "each frame from the model's own previous one",
                     "log": "re-anchored: each frame from the logged frame before it, re-projected"}
UNITS = {"speed": "m/s", "yaw_rate": "rad/s", "lane_left": "m", "lane_right": "m", "lateral_offset": "m"}


# ------------------------------------------------------------------------------------------ the Pose Net

class PoseNet:
  """The policy's VisionModel read as a pose estimator (see the module docstring). Frames are (B, H, W, 3) uint8 at
  any resolution; they are resized to the policy's model frame (same field of view at every resolution, so this is a
  pure rescale)."""

  def __init__(self, vision, batch: int = 32, lines_at_m: float = 0.0):
    self.vision = vision.eval()
    self.lines_at_m = lines_at_m
    self.frame_hw = (vision.cfg.frame_h, vision.cfg.frame_w)
    self.layout = vision.layout
    self.batch = batch

  def resize(self, frames: np.ndarray) -> np.ndarray:
    import cv2
    h, w = self.frame_hw
    if frames.shape[1:3] == (h, w):
      return frames
    interp = cv2.INTER_AREA if frames.shape[1] > h else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])

  @torch.no_grad()
  def __call__(self, prev: np.ndarray, cur: np.ndarray) -> dict[str, np.ndarray]:
    """prev, cur (B, H, W, 3) uint8, prev 0.2 s before cur -> {key: (B,)} for POSE_KEYS."""
    if prev.shape != cur.shape or prev.ndim != 4 or prev.shape[-1] != 3:
      raise ValueError(f"PoseNet: prev {prev.shape} and cur {cur.shape} must both be (B, H, W, 3)")
    prev, cur = self.resize(prev), self.resize(cur)
    outs = []
    for a in range(0, len(cur), self.batch):
      img = np.concatenate([prev[a:a + self.batch], cur[a:a + self.batch]], axis=-1).transpose(0, 3, 1, 2)
      _, out = self.vision(torch.from_numpy(np.ascontiguousarray(img)), noise=False)
      outs.append(out.numpy())
    return read_pose(np.concatenate(outs), self.layout, self.lines_at_m)


def _lines_at(lines: np.ndarray, x: float) -> np.ndarray:
  """(B, 2, IDX_N) line y at X_IDXS -> (B, 2) at distance x (linear interpolation)."""
  j = int(np.clip(np.searchsorted(X_IDXS, x) - 1, 0, len(X_IDXS) - 2))
  w = (x - X_IDXS[j]) / (X_IDXS[j + 1] - X_IDXS[j])
  return lines[..., j] * (1 - w) + lines[..., j + 1] * w


def read_pose(out: np.ndarray, layout: dict, lines_at_m: float = 0.0) -> dict[str, np.ndarray]:
  """Vision outputs (B, N_vision) -> speed, yaw rate, the lane lines `lines_at_m` ahead and the lateral offset read
  there, each (B,)."""
  raw = split_outputs(out, layout)
  plan = raw["plan"][..., 0]                                     # (B, K, IDX_N, PLAN_WIDTH) means
  best = plan[np.arange(len(plan)), np.argmax(raw["plan_prob"], axis=-1)]   # (B, IDX_N, PLAN_WIDTH)
  lines = _lines_at(raw["lane_lines"][:, :, :, 0, 0], lines_at_m)   # (B, 2) y of left / right line
  return {"speed": best[:, 0, PLAN_SLICES["velocity"].start].astype(np.float64),
          "yaw_rate": best[:, 0, PLAN_SLICES["orientation_rate"].start + 2].astype(np.float64),
          "lane_left": lines[:, 0].astype(np.float64), "lane_right": lines[:, 1].astype(np.float64),
          "lateral_offset": -(lines[:, 0] + lines[:, 1]).astype(np.float64) / 2}


def ground_truth_pose(gt: dict, idx: np.ndarray, lines_at_m: float = 0.0) -> dict[str, np.ndarray]:
  """The same quantities from a generated segment's ground_truth/ at frames idx. The simulator's curvature is + left,
  the Pose Net's yaw rate is about z-down (+ right): yaw_rate = -curvature * speed."""
  speed = np.asarray(gt["speed"], np.float64)[idx]
  lines = _lines_at(np.asarray(gt["lane_lines"], np.float64)[idx, :, :, 0], lines_at_m)
  return {"speed": speed, "yaw_rate": -np.asarray(gt["curvature"], np.float64)[idx] * speed,
          "lane_left": lines[:, 0], "lane_right": lines[:, 1], "lateral_offset": -(lines[:, 0] + lines[:, 1]) / 2}


# ------------------------------------------------------------------------------------------ Table 1

def _to_uint8(x: torch.Tensor) -> np.ndarray:
  from training.vae import tensor_to_images
  return tensor_to_images(x)


def _area(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """(N, H, W, 3) uint8 area-resized to hw (the simulator's path from the codec's frame to the policy's)."""
  import cv2
  if frames.shape[1:3] == tuple(hw):
    return frames
  return np.stack([cv2.resize(f, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) for f in frames])


def decode_frames(vae, lat: torch.Tensor, frame_decoder=None) -> np.ndarray:
  """(N, 4, h, w) latents -> (N, H, W, 3) uint8 frames: the codec's decode at its resolution, or the frame decoder's
  at the policy's."""
  return _to_uint8(vae.decode(lat)) if frame_decoder is None else frame_decoder.images(lat)


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray, batch: int = 32, frame_decoder=None) -> np.ndarray:
  """decode(encode(frames)) through the codec (or its encoder and the frame decoder), (N, H, W, 3) uint8 -> uint8."""
  from training.vae import images_to_tensor
  out = [decode_frames(vae, vae.encode(images_to_tensor(frames[a:a + batch])), frame_decoder)
         for a in range(0, len(frames), batch)]
  return np.concatenate(out) if out else frames[:0]


def pose_net_table(posenet: PoseNet, vae, segments: list[Path], frame_hw: tuple[int, int], step: int = 4,
                   max_pairs_per_segment: int | None = None, progress: bool = True, frame_decoder=None) -> dict:
  """Pose Net MAE on original vs VAE-reconstructed frames against ground_truth/ (Table 1 analogue). Every `step`-th
  frame i (5 Hz) with its predecessor i - step of each segment that has ground truth; frames at the world model's
  resolution frame_hw. With a frame decoder also "frame_decoder": the encoder's latents through it."""
  from tools.lib.segment import Segment
  from training.data.frames import SegmentFrames
  rows = ("original", "reconstructed") + (("frame_decoder",) if frame_decoder is not None else ())
  err = {name: {k: [] for k in POSE_KEYS} for name in rows}
  used = []
  for seg_path in tqdm(segments, desc="pose net: original vs VAE frames", disable=not progress):
    gt = Segment(seg_path).ground_truth
    if gt is None:
      continue
    fr = SegmentFrames(seg_path, frame_hw)
    try:
      idx = np.arange(step, fr.num_frames, step)
      if max_pairs_per_segment is not None and len(idx) > max_pairs_per_segment:
        idx = idx[np.linspace(0, len(idx) - 1, max_pairs_per_segment).round().astype(int)]
      need = np.unique(np.concatenate([idx - step, idx]))
      frames = np.stack([fr.frame(int(i)) for i in need])
    finally:
      fr.close()
    pos = {int(i): k for k, i in enumerate(need)}
    a, b = [pos[int(i) - step] for i in idx], [pos[int(i)] for i in idx]
    truth = ground_truth_pose(gt, idx, posenet.lines_at_m)
    versions = {"original": frames, "reconstructed": reconstruct(vae, frames)}
    if frame_decoder is not None:
      versions["frame_decoder"] = reconstruct(vae, frames, frame_decoder=frame_decoder)
    for name, imgs in versions.items():
      meas = posenet(imgs[a], imgs[b])
      for k in POSE_KEYS:
        err[name][k].append(np.abs(meas[k] - truth[k]))
    used.append(Path(seg_path).parent.name)
  if not used:
    raise ValueError("pose_net_table: none of the segments has ground_truth/ (generated segments needed)")
  out = {"segments": used, "pairs": int(sum(len(e) for e in err["original"]["speed"]))}
  for name in err:
    out[name] = {k: float(np.concatenate(v).mean()) for k, v in err[name].items()}
  for name in rows[1:]:
    out[f"{name}_over_original"] = {k: out[name][k] / max(out["original"][k], 1e-12) for k in POSE_KEYS}
  return out


# ------------------------------------------------------------------------------------------ Fig. 9

def deviation_profile(ramp_steps: int = 25, amplitude: float = 0.5) -> np.ndarray:
  """(2 * ramp_steps,) commanded lateral deviation of the generated frames 1..2R (m, + = right): a raised-cosine ramp
  from 0 to `amplitude` over R frames, then back to 0 over R frames."""
  if ramp_steps < 1:
    raise ValueError(f"ramp_steps must be >= 1, got {ramp_steps}")
  k = np.arange(1, 2 * ramp_steps + 1)
  return amplitude * 0.5 * (1 - np.cos(np.pi * np.minimum(k, 2 * ramp_steps - k) / ramp_steps))


def deviate_poses(poses: np.ndarray, d: np.ndarray) -> np.ndarray:
  """poses (N+1, 6) of a path (x forward / north, y right / east, yaw about z-down: the car frame of its first row or
  the simulator's NED world), d (N+1,) lateral deviations (m, + = right, d[0] = 0 at the start) -> the path moved by d
  along its normal, each pose turned by atan(dd/ds) so that the car points along the deviated path. The first pose is
  kept as it is: the rollout starts from the logged "now", so every transition is relative to it."""
  P = np.asarray(poses, np.float64).copy()
  d = np.asarray(d, np.float64)
  if P.ndim != 2 or P.shape[1] != 6 or d.shape != (len(P),):
    raise ValueError(f"deviate_poses: poses {P.shape} must be (N+1, 6) and d {d.shape} (N+1,)")
  yaw = P[:, 5]
  s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(P[:, :2], axis=0), axis=1))])
  slope = np.gradient(d, s) if s[-1] > 1e-6 else np.zeros_like(d)
  P[:, 0] -= np.sin(yaw) * d
  P[:, 1] += np.cos(yaw) * d
  P[:, 5] = yaw + np.arctan(slope)
  P[0] = poses[0]
  return P


@torch.no_grad()
def deviation_rollouts(model, vae, posenet: PoseNet, ds, windows, ramp_steps: int = 25, amplitude: float = 0.5,
                       steps: int = 15, temperature: float = 0.0, seed: int = 0, device="cpu",
                       progress: bool = True, predecessor: str = "generated", frame_decoder=None) -> dict:
  """Noise-forced rollouts (see the module docstring) on `windows` of a WorldModelDataset without a latent cache
  (frames are encoded here with the world model's VAE). Returns commanded and measured deviations per frame.
  predecessor "log": each frame is generated from the logged frame before it re-projected to the commanded pose
  (a re-anchored rollout, training.onpolicy.sim_worldmodel) instead of from the model's own previous frame.
  frame_decoder: the frames are made by it (at the policy's size) instead of the codec's decode.
  The first window's frames (now, then 1..N; uint8) of each command are returned under "example_frames" with that
  window's (index, start) as "example_window" (frames_figure); both are left out of fidelity.json."""
  from training.worldmodel.sample import SampleOptions, rollout
  C, fps = model.cfg.context_frames, model.cfg.fps
  cmd = deviation_profile(ramp_steps, amplitude)
  N = len(cmd)
  meas = {"plus": [], "zero": [], "minus": []}
  cmd_x, agree = [], []
  examples: dict[str, np.ndarray] = {}
  g = torch.Generator(device=device)
  opts = SampleOptions(steps=steps, temperature=temperature, with_plans=False)
  for w, (k, c) in enumerate(tqdm(windows, desc="deviation rollouts", disable=not progress)):
    item = ds[k]
    ctx = vae.encode(item["frames"][:C].to(device))[None]                       # (1, C, 4, h, w)
    si = ds.index[k][0]
    seg = ds._seg(si)
    st = ds.step_of(si)
    idx = c + st * np.arange(0, N + 1)
    logged = relative_poses(seg.positions[idx], seg.quats[idx], 0, seg.calib)   # (N+1, 6), "now" first
    fut_t = torch.from_numpy(seg.times[idx[1:]] - seg.t0).float()
    trans, to_log = [], []
    for sign in (1, 0, -1):
      dev = deviate_poses(logged, np.concatenate([[0.0], sign * cmd]))
      trans.append(transitions(dev)[1:])
      if predecessor == "log":   # the commanded pose of frame n + 1 in the car frame of logged frame n
        to_log.append([transitions(np.stack([logged[n], dev[n + 1]]))[1] for n in range(N)])
      if sign == 1:
        cmd_x.append(commanded_at(cmd, dev[1:, 5] - logged[1:, 5], posenet.lines_at_m))
    trans = torch.from_numpy(np.stack(trans)).float().to(device)               # (3, N, 6)
    ctx_tr, ctx_t = item["transitions"][None, :C].to(device), item["t_world"][None, :C].to(device)
    fut_t = fut_t[None].to(device)
    preds = None
    if predecessor == "log":
      logged_lat = vae.encode(seg.images(idx[:-1]).to(device))                   # (N, 4, h, w): frames 0..N-1
      to_log = torch.from_numpy(np.asarray(to_log)).float().to(device)           # (3, N, 6)
      preds = torch.stack([model.log_predecessor(logged_lat, to_log[j]) for j in range(3)])   # (3, N, 4, h, w)
    if temperature == 0:   # no noise: the three commands are one batch
      lat = rollout(model, ctx.expand(3, -1, -1, -1, -1), ctx_tr.expand(3, -1, -1), ctx_t.expand(3, -1), trans,
                    fut_t.expand(3, -1), opts=opts, predecessors=preds)["frames"]
    else:                  # one noise draw for the three commands: the same generator state for each
      lat = []
      for j in range(3):
        g.manual_seed(seed * 100003 + w)
        lat.append(rollout(model, ctx, ctx_tr, ctx_t, trans[j:j + 1], fut_t, opts=opts, generator=g,
                           predecessors=None if preds is None else preds[j:j + 1])["frames"][0])
      lat = torch.stack(lat)                                                   # (3, N, 4, h, w)
    last = ctx[0, C - 1:C]
    for j, name in enumerate(("plus", "zero", "minus")):
      imgs = decode_frames(vae, torch.cat([last, lat[j]]), frame_decoder)        # (N+1, H, W, 3): now, then 1..N
      if frame_decoder is not None and w == 0:   # how closely it follows the codec on generated latents
        ref = _area(_to_uint8(vae.decode(torch.cat([last, lat[j]]))), imgs.shape[1:3])
        agree.append(float(np.mean((imgs.astype(np.float64) - ref) ** 2)))
      meas[name].append(posenet(imgs[:-1], imgs[1:])["lateral_offset"])
      if w == 0:
        examples[name] = imgs
  plus, zero, minus = (np.stack(meas[n]) for n in ("plus", "zero", "minus"))     # (W, N)
  return {"windows": len(windows), "ramp_steps": ramp_steps, "amplitude_m": amplitude, "fps": fps,
          "euler_steps": steps, "temperature": temperature, "predecessor": predecessor,
          "decoder": "codec" if frame_decoder is None else "frame_decoder",
          # PSNR (dB) of the frame decoder's frames against the codec's decode, area-resized, on the first window's
          # generated latents
          "frame_decoder_vs_codec_psnr_db": round(10 * np.log10(255.0 ** 2 / max(float(np.mean(agree)), 1e-12)), 2)
          if agree else None,
          "t_s": [round((j + 1) / fps, 3) for j in range(N)],
          "lines_at_m": posenet.lines_at_m, "commanded_at_car_m": [round(float(x), 4) for x in cmd],
          "measured_plus_m": [round(float(x), 4) for x in (plus - zero).mean(0)],
          "measured_minus_m": [round(float(x), 4) for x in (minus - zero).mean(0)],
          **_deviation_stats(np.mean(cmd_x, 0), plus, minus, amplitude),
          "example_window": tuple(int(v) for v in windows[0]), "example_frames": examples}


def commanded_at(cmd: np.ndarray, turn: np.ndarray, x: float) -> np.ndarray:
  """The commanded deviation as the lane lines `x` metres ahead show it: the car's offset plus its heading turn
  (rad, + right) times x (lines ahead move by -(d + x tan turn) in the car frame)."""
  return cmd + x * np.tan(turn)


def _deviation_stats(cmd: np.ndarray, plus: np.ndarray, minus: np.ndarray, amplitude: float) -> dict:
  """cmd (N,) commanded deviation where the Pose Net reads it; plus / minus (W, N): its offsets under +A and -A
  commands -> measured deviation and the verdict (the peak is where the car's own offset peaks: no turn there)."""
  per_window = (plus - minus) / 2
  measured = per_window.mean(0)
  peak = len(cmd) // 2 - 1
  res = {"commanded_m": [round(float(x), 4) for x in cmd], "measured_m": [round(float(x), 4) for x in measured],
         "measured_std_m": [round(float(x), 4) for x in per_window.std(0)],
         "peak_fraction": float(measured[peak] / amplitude), "max_fraction": float(measured.max() / amplitude),
         "end_fraction": float(abs(measured[-1]) / amplitude),
         "correlation": float(np.corrcoef(cmd, measured)[0, 1]) if measured.std() > 0 else 0.0}
  res["passes"] = bool(res["peak_fraction"] >= PASS_PEAK_FRACTION and res["end_fraction"] <= PASS_RETURN_FRACTION)
  return res


class _SegmentWorld:
  """The procedural world a generated segment was driven in (camera.json's seed, generate.py's road length), rendered
  by the segment's own camera and warped to the world model's frame exactly like its video (SegmentFrames)."""

  def __init__(self, seg_path: Path, frame_hw: tuple[int, int]):
    from tools.lib.segment import Segment
    from tools.sim.render import Renderer
    from tools.sim.road import RoadConfig
    from tools.sim.world import World, WorldConfig
    from training.data.frames import SegmentFrames
    seg = Segment(seg_path)
    cam_file = Path(seg_path) / "camera.json"
    cam = json.loads(cam_file.read_text()) if cam_file.is_file() else {}
    if "seed" not in cam or seg.ground_truth is None:
      raise ValueError(f"{seg_path}: not a generated segment (camera.json seed and ground_truth/ needed)")
    world = World(int(cam["seed"]), WorldConfig(road=RoadConfig(length=seg.num_frames / 20.0 * 35.0 + 400.0)))
    self.frames = SegmentFrames(seg_path, frame_hw)
    self.renderer = Renderer(world.road, world.appearance, self.frames.camera, seed=int(cam["seed"]))
    self.pose_world = np.asarray(seg.ground_truth["pose_world"], np.float64)

  def render(self, pose6: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 model frame seen from camera pose6 (traffic left out)."""
    return self.frames._convert(self.renderer.render(pose6), 0)


def procedural_reference(posenet: PoseNet, ds, windows, frame_hw: tuple[int, int], ramp_steps: int = 25,
                         amplitude: float = 0.5, progress: bool = True) -> dict | None:
  """The same deviation measured on frames the procedural world renders at the commanded poses (the ground-truth
  simulator, traffic left out): how much of the commanded deviation the Pose Net itself can see. None when no window
  comes from a generated segment. The first such window's renders (now, then 1..N) of +A and -A are returned under
  "example_frames", its (index, start) as "example_window" (frames_figure)."""
  cmd = deviation_profile(ramp_steps, amplitude)
  N = len(cmd)
  worlds: dict = {}
  plus, minus, cmd_x = [], [], []
  example_window, examples = None, {}
  for k, c in tqdm(windows, desc="procedural reference", disable=not progress):
    si = ds.index[k][0]
    if si not in worlds:
      try:
        worlds[si] = _SegmentWorld(ds.segments[si], frame_hw)
      except ValueError:
        worlds[si] = None
    wd = worlds[si]
    if wd is None:
      continue
    idx = c + ds.step_of(si) * np.arange(0, N + 1)
    for sign, acc in ((1, plus), (-1, minus)):
      poses = deviate_poses(wd.pose_world[idx], np.concatenate([[0.0], sign * cmd]))   # NED: same axes
      if sign == 1:
        cmd_x.append(commanded_at(cmd, poses[1:, 5] - wd.pose_world[idx][1:, 5], posenet.lines_at_m))
      imgs = np.stack([wd.render(p) for p in poses])
      acc.append(posenet(imgs[:-1], imgs[1:])["lateral_offset"])
      if example_window in (None, (int(k), int(c))):
        example_window = (int(k), int(c))
        examples["plus" if sign == 1 else "minus"] = imgs
  if not plus:
    return None
  return {"windows": len(plus), **_deviation_stats(np.mean(cmd_x, 0), np.stack(plus), np.stack(minus), amplitude),
          "example_window": example_window, "example_frames": examples}


# ------------------------------------------------------------------------------------------ outputs

def plot(dev: dict, path: Path, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = np.asarray(dev["t_s"])
  cmd, m, sd = (np.asarray(dev[k]) for k in ("commanded_m", "measured_m", "measured_std_m"))
  fig, ax = plt.subplots(figsize=(7, 3.6))
  for sign, style in ((1, "-"), (-1, "--")):
    ax.plot(t, sign * cmd, "k" + style, lw=1.5, label=f"commanded {'+' if sign > 0 else '-'}{dev['amplitude_m']:.2f} m "
            f"(as the lines {dev['lines_at_m']:g} m ahead show it)")
  ax.plot(t, m, "C0-", lw=2, label="measured by the Pose Net, (+A - (-A)) / 2")
  ax.fill_between(t, m - sd, m + sd, color="C0", alpha=0.2, label="± 1 std over windows")
  ax.plot(t, dev["measured_plus_m"], "C1:", lw=1, label="measured +A, relative to the 0 command")
  ax.plot(t, dev["measured_minus_m"], "C2:", lw=1, label="measured -A, relative to the 0 command")
  if dev.get("procedural"):
    ax.plot(t, dev["procedural"]["measured_m"], "C4-", lw=1.2,
            label=f"measured on true renders (procedural world, {dev['procedural']['windows']} windows)")
  ax.axhline(PASS_PEAK_FRACTION * dev["amplitude_m"], color="grey", lw=0.7, ls="-.", label="70% of commanded")
  ax.set_xlabel("time after the last context frame (s)")
  ax.set_ylabel("lateral deviation (m, + right)")
  ax.set_title(title or f"noise-forced rollouts: {dev['windows']} windows, temperature {dev['temperature']:g}, "
               f"peak {dev['peak_fraction']:.0%} of commanded", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6.5, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def frames_figure(dev: dict, examples: dict, reference: dict | None, path: Path) -> None:
  """Fig. 9 in pictures: one window's frames at the start, half-way up the ramp, at the peak, half-way back and at the
  end, rows: the world model's frames for +A and -A, each above the procedural world's true render of the same
  commanded poses when `reference` ({"plus", "minus"} frames of the same window) is given. A dashed line marks the
  image's centre column, against which the road's sideways shift shows."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  R, fps, amp = dev["ramp_steps"], dev["fps"], dev["amplitude_m"]
  cmd = np.concatenate([[0.0], deviation_profile(R, amp)])
  cols = sorted({0, R // 2, R, (3 * R) // 2, 2 * R})
  rows = []
  for name, sign in (("plus", 1), ("minus", -1)):
    side = "right" if sign > 0 else "left"
    rows.append((f"world model\n{'+' if sign > 0 else '-'}{amp:g} m ({side})", examples[name], sign, True))
    if reference is not None:
      rows.append((f"true render\n{'+' if sign > 0 else '-'}{amp:g} m ({side})", reference[name], sign, False))
  fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.3 * len(cols), 1.45 * len(rows) + 0.5), squeeze=False)
  for r, (label, imgs, sign, titled) in enumerate(rows):   # each world-model row names its times and commands
    for c, j in enumerate(cols):
      ax = axes[r, c]
      ax.imshow(imgs[j], interpolation="bilinear")
      ax.axvline((imgs.shape[2] - 1) / 2, color="w", lw=0.6, ls="--", alpha=0.7)
      ax.set_xticks([])
      ax.set_yticks([])
      if titled:
        ax.set_title(f"t = {j / fps:g} s, commanded {sign * cmd[j] + 0.0:+.2f} m", fontsize=7)
      if c == 0:
        ax.set_ylabel(label, fontsize=7)
  fig.suptitle(f"Fig. 9 in frames: one window, the car moved {amp:g} m right and left and back "
               f"({PREDECESSOR_WORDS[dev.get('predecessor', 'generated')]})", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(res: dict) -> str:
  tab = res["table1"]
  lines = ["# World model fidelity (paper §4.6)", "",
           f"World model `{res['wm']}` (step {res['wm_step']}, {res['wm_weights']} weights), codec `{res['vae']}`, "
           f"Pose Net = extractor + heads of policy `{res['policy']}` (step {res['policy_step']}), lane lines read "
           f"{res.get('lines_at_m', 0):g} m ahead, data `{res['data']}`.", "",
           f"## Table 1 analogue: Pose Net MAE against the simulator's ground truth ({tab['pairs']} frame pairs, "
           f"{len(tab['segments'])} segments)", "",
           "| frames | " + " | ".join(f"{k} ({UNITS[k]})" for k in POSE_KEYS) + " |",
           "|---|" + "---|" * len(POSE_KEYS)]
  rows = [n for n in ("original", "reconstructed", "frame_decoder") if n in tab]
  words = {"original": "original", "reconstructed": "reconstructed", "frame_decoder": "encoder + frame decoder"}
  for name in rows:
    lines.append(f"| {words[name]} | " + " | ".join(f"{tab[name][k]:.4f}" for k in POSE_KEYS) + " |")
  for name in rows[1:]:
    lines.append(f"| {words[name]} / original | " + " | ".join(f"{tab[f'{name}_over_original'][k]:.2f}"
                                                              for k in POSE_KEYS) + " |")
  dev = res["deviation"]
  if dev is None:
    ref = res.get("procedural_reference")
    if ref:
      lines += ["", f"## The Pose Net on the procedural world's true renders of a commanded ±{res['amplitude_m']} m "
                f"deviation ({ref['windows']} windows, no world model)", "",
                f"- measured at the commanded peak: {ref['peak_fraction']:.0%}; at the end: {ref['end_fraction']:.0%} of "
                f"the amplitude; correlation with the command {ref['correlation']:.2f}"]
    return "\n".join(lines + [""])
  lines += ["", f"## Fig. 9 analogue: commanded ±{dev['amplitude_m']} m over {dev['ramp_steps']} steps, then back "
            f"({dev['windows']} windows, {dev['euler_steps']} Euler steps, temperature {dev['temperature']:g}, "
            f"{PREDECESSOR_WORDS[dev.get('predecessor', 'generated')]}"
            + (f", frames from the frame decoder: {dev['frame_decoder_vs_codec_psnr_db']:.1f} dB against the codec's "
               f"decode on the first window's generated latents" if dev.get("decoder") == "frame_decoder" else "")
            + ")", "",
            f"- measured at the commanded peak: **{dev['peak_fraction']:.0%}** of commanded (pass: >= "
            f"{PASS_PEAK_FRACTION:.0%}); largest: {dev['max_fraction']:.0%}",
            f"- at the end: {dev['end_fraction']:.0%} of the amplitude away from zero (pass: <= "
            f"{PASS_RETURN_FRACTION:.0%}); correlation with the command {dev['correlation']:.2f}",
            f"- verdict: **{'passes' if dev['passes'] else 'falls short'}**"]
  ref = dev.get("procedural")
  if ref:
    lines.append(f"- the same Pose Net on frames the procedural world renders at the commanded poses (the ground-truth "
                 f"simulator, {ref['windows']} windows): {ref['peak_fraction']:.0%} at the peak, {ref['end_fraction']:.0%} "
                 f"at the end" + (f"; the world model reaches {dev['peak_fraction'] / ref['peak_fraction']:.0%} of "
                                  f"that" if ref["peak_fraction"] > 0.1 else ""))
  lines += ["", "![deviation](fidelity.png)", "", "![one window's frames](frames.png)", ""]
  return "\n".join(lines)


def run(wm_dir, policy_dir, data, out_dir, windows: int = 16, ramp_steps: int = 25, amplitude: float = 0.5,
        temperature: float = 0.0, steps: int = 15, split: str = "val", seed: int = 0, max_pairs: int | None = 60,
        vae_dir=None, weights: str = "auto", device="cpu", progress: bool = True, lines_at_m: float = LINES_AT_M,
        predecessor: str = "generated", frame_decoder_dir=None) -> dict:
  from tools.lib.route import scan_segments
  from training.worldmodel.evaluate import eval_windows
  from training.worldmodel.evaluate import load_worldmodel_run as load_wm
  t0 = time.monotonic()
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if wm_dir is None:   # the Table 1 analogue alone: the codec, no world model
    from training.vae import load_vae
    if vae_dir is None:
      raise ValueError("without a world model (--wm) the codec must be given (--vae)")
    vae = load_vae(vae_dir, device)
    model, cfg, run_cfg = None, SimpleNamespace(frame_hw=vae.frame_hw), {"step": None, "weights_used": None,
                                                                          "vae": str(vae_dir)}
  else:
    try:
      model, vae, cfg, run_cfg = load_wm(wm_dir, device, weights, vae_dir)
    except KeyError as e:
      raise ValueError(f"{wm_dir}: not a world-model run (its checkpoint config lacks {e})") from e
  vision, _, pck = load_policy_run(policy_dir, need_temporal=False)   # an extractor-stage run is enough
  posenet = PoseNet(vision, lines_at_m=lines_at_m)
  frame_decoder = None
  if frame_decoder_dir is not None:
    from training.frame_decoder import load_frame_decoder
    frame_decoder = load_frame_decoder(frame_decoder_dir, vae, device,
                                       tuple(n // vae.downsample for n in cfg.frame_hw), posenet.frame_hw)
  segs, _ = scan_segments(data, progress=False)
  if not segs:
    raise ValueError(f"{data}: no segments")
  table = pose_net_table(posenet, vae, segs, cfg.frame_hw, max_pairs_per_segment=max_pairs, progress=progress,
                         frame_decoder=frame_decoder)
  res = {"wm": None if wm_dir is None else str(wm_dir), "wm_step": run_cfg["step"], "wm_weights": run_cfg["weights_used"],
         "vae": run_cfg.get("vae_used", run_cfg["vae"]), "policy": str(policy_dir), "policy_step": pck["step"],
         "frame_decoder": None if frame_decoder_dir is None else str(frame_decoder_dir),
         "data": str(data), "lines_at_m": lines_at_m, "amplitude_m": amplitude, "table1": table, "deviation": None}
  if model is None:   # no world model: the Pose Net's own reference on the procedural world's true renders
    from training.worldmodel.dit import get_config as wm_config
    wcfg = wm_config("tiny")
    try:
      ds, wins = eval_windows(data, "all", wcfg, 2 * ramp_steps, windows, None, seed)
      ref = procedural_reference(posenet, ds, wins, cfg.frame_hw, ramp_steps, amplitude, progress)
    except ValueError:
      ref = None
    if ref is not None:   # pictures of the world model's frames need a world model: the renders are not kept
      ref.pop("example_frames")
      ref.pop("example_window")
    res["procedural_reference"] = ref
    res["seconds"] = round(time.monotonic() - t0, 1)
    (out_dir / "fidelity.json").write_text(json.dumps(res, indent=1))
    (out_dir / "fidelity.md").write_text(markdown(res))
    return res
  used_split = split
  try:
    ds, wins = eval_windows(data, split, cfg, 2 * ramp_steps, windows, None, seed)
  except ValueError:
    if split != "val":
      raise
    ds, wins = eval_windows(data, "all", cfg, 2 * ramp_steps, windows, None, seed)
    used_split = "all (no usable val windows)"
  dev = deviation_rollouts(model, vae, posenet, ds, wins, ramp_steps, amplitude, steps, temperature, seed, device,
                           progress, predecessor, frame_decoder)
  dev["split"] = used_split
  examples, window = dev.pop("example_frames"), dev.pop("example_window")
  ref = procedural_reference(posenet, ds, wins, cfg.frame_hw, ramp_steps, amplitude, progress)
  reference = None
  if ref is not None:
    ref_examples, ref_window = ref.pop("example_frames"), ref.pop("example_window")
    reference = ref_examples if ref_window == window else None
    dev["procedural"] = ref
  res.update(deviation=dev, seconds=round(time.monotonic() - t0, 1))
  (out_dir / "fidelity.json").write_text(json.dumps(res, indent=1))
  plot(dev, out_dir / "fidelity.png")
  frames_figure(dev, examples, reference, out_dir / "frames.png")
  (out_dir / "fidelity.md").write_text(markdown(res))
  return res


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.onpolicy.fidelity", __doc__)
  ap.add_argument("--wm", type=Path, default=None, help="world-model run (training.worldmodel.train); without it "
                  "only the Table 1 analogue is measured, for the codec given with --vae")
  ap.add_argument("--policy", required=True, type=Path, help="policy run (training.policy.train); its extractor is "
                  "the Pose Net")
  ap.add_argument("--data", required=True, type=Path, help="generated segments (with ground_truth/)")
  ap.add_argument("--out", required=True, type=Path)
  ap.add_argument("--windows", type=int, default=16, help="logged windows for the deviation rollouts")
  ap.add_argument("--amplitude", type=float, default=0.5, help="commanded lateral deviation (m)")
  ap.add_argument("--ramp-steps", type=int, default=25, help="5 Hz frames to reach it (and as many to come back)")
  ap.add_argument("--temperature", type=float, default=0.0, help="scale of each frame's starting noise (0: "
                  "deterministic, 1: the model's distribution)")
  ap.add_argument("--steps", type=int, default=15, help="Euler steps per frame")
  ap.add_argument("--split", default="val", choices=("val", "all"), help="windows from the validation routes of "
                  "--data (all of them when none is usable) or from every segment")
  ap.add_argument("--lines-at", type=float, default=LINES_AT_M, metavar="M", help="read the lane lines (and the "
                  "lateral offset) this many metres ahead (0: at the car, below the camera's view)")
  ap.add_argument("--max-pairs", type=int, default=60, help="frame pairs per segment for the Table 1 analogue")
  ap.add_argument("--vae", type=Path, default=None, help="decode with this VAE (same encoder as the run's)")
  ap.add_argument("--frame-decoder", type=Path, default=None, help="a frame decoder distilled from the codec "
                  "(training.frame_decoder): Table 1's third row, and the Fig. 9 rollouts' frames made by it")
  ap.add_argument("--weights", default="auto", choices=("auto", "ema", "model"))
  ap.add_argument("--wm-predecessor", default="generated", choices=PREDECESSORS,
                  help="each frame generated from the model's own previous frame (the paper's rollout) or from the "
                       "logged frame before it re-projected to the commanded pose (re-anchored, as "
                       "training.onpolicy.sim_worldmodel's predecessor 'log')")
  add_common_args(ap, threads=1, threads_help="torch CPU threads", seed=0)
  args = ap.parse_args(argv)
  if args.wm is None and args.vae is None:
    ap.error("give --wm (and optionally --vae), or --vae alone for the Table 1 analogue")
  for name in ("wm", "policy", "data", "vae"):
    if getattr(args, name) is not None and not getattr(args, name).is_dir():
      ap.error(f"--{name} {getattr(args, name)}: not a directory")
  if args.windows < 1 or args.ramp_steps < 1 or args.steps < 1 or args.max_pairs < 1:
    ap.error("--windows, --ramp-steps, --steps and --max-pairs must be >= 1")
  if not args.amplitude > 0 or args.temperature < 0:
    ap.error("--amplitude must be > 0 and --temperature >= 0")
  set_threads(args.threads)
  try:
    res = run(args.wm, args.policy, args.data, args.out, args.windows, args.ramp_steps, args.amplitude,
              args.temperature, args.steps, args.split, args.seed, args.max_pairs, args.vae, args.weights,
              lines_at_m=args.lines_at, predecessor=args.wm_predecessor, frame_decoder_dir=args.frame_decoder)
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(markdown(res))
  dev, tab = res["deviation"], res["table1"]
  if dev is None:
    ref = res.get("procedural_reference") or {}
    emit_result({"table1_original": tab["original"], "table1_reconstructed": tab["reconstructed"],
                 "pairs": tab["pairs"], "vae": res["vae"], "procedural_peak_fraction": ref.get("peak_fraction"),
                 "procedural_end_fraction": ref.get("end_fraction"), "procedural_windows": ref.get("windows"),
                 "out": str(args.out)})
    return 0
  emit_result({"table1_original": tab["original"], "table1_reconstructed": tab["reconstructed"],
               "table1_frame_decoder": tab.get("frame_decoder"), "decoder": dev["decoder"],
               "frame_decoder_vs_codec_psnr_db": dev["frame_decoder_vs_codec_psnr_db"],
               "deviation_peak_fraction": dev["peak_fraction"], "deviation_end_fraction": dev["end_fraction"],
               "deviation_correlation": dev["correlation"], "passes": dev["passes"], "windows": dev["windows"],
               "procedural_peak_fraction": dev.get("procedural", {}).get("peak_fraction"),
               "temperature": dev["temperature"], "predecessor": dev["predecessor"], "wm_step": res["wm_step"],
               "out": str(args.out)})
  return 0


if __name__ == "__main__":
  sys.exit(main())
