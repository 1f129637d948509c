"""World-model simulator (`--sim worldmodel`, paper §3 / §5.1): the DiT generates the frame the car sees at the pose
its actions lead to, and its Plan Head is the expert.

Reset at logged frame c (simulator.Simulator.reset places the car at the logged pose of c plus the deviation):
  context   the C logged frames at 5 Hz ending 0.2 s BEFORE c (c - 4C ... c - 4), VAE-encoded, with their logged
            transitions and times, and the future anchor of that window taken from the log at f_s ~ U(T, 9 s)
            (training.data.dataset.WorldModelDataset, deterministic per window, exactly as in training), prefilled
            into the KV cache in one pass;
  frame 0   generated at once for the car's reset pose: the transition from the logged pose at c - 4 to it (the
            logged 0.2 s of motion plus the injected lateral offset / heading, reached in that one step);
  step      every 0.2 s the transition between the car's last two poses (vehicle model, simulator.py) conditions
            the next frame; the finished latent is appended to the KV cache (sliding window of C frames).
The rollout ends when the anchor is less than the training windows' shortest anchor offset T (WindowConfig.anchor_min_s,
2 s) ahead of the frame the Plan Head plans from (Observation.done): the paper ends it at f_s, but our Plan Head is
trained only on anchors 2-9 s ahead, and from a deviated car with the anchor under 2 s away its prior (the
minimum-jerk path to the anchor pose at the anchor's time) asks for impossible returns: in a world-model run 7 % of the
labels had |curvature| > 0.05 1/m, almost all in an episode's last 2 s (docs/experiments.md, 2026-12-03,
re-anchored rollouts). The reset frame, 0.2 s after the last context frame, may have the anchor 1.8 s ahead.

Predecessor (`predecessor`): what each new frame is generated from besides the KV cache of the frames before it.
  "generated"  the model's own previous frame re-projected by the car's transition: the paper's autoregressive
               rollout. Over a rollout the tiny world model loses most of a lateral deviation this way (Fig. 9: 13 %
               of a commanded 0.5 m; docs/experiments.md, 2026-12-03, re-anchored rollouts): the frames drift back
               to the log.
  "log"        a re-anchored rollout: the LOGGED frame nearest to the car's previous pose, re-projected to the car's
               pose now (DiT.log_predecessor; the same road-plane + infinity warp the model's predecessor goes
               through in training). The network still generates the frame (it fills in what the warp gets wrong,
               attends to the generated frames in its cache and is conditioned on the car's transition), but the
               deviation is carried by the warp of a real frame instead of being integrated over its own frames
               (Fig. 9: 178 %). Only for world models that re-project their predecessor (output="denoiser", tiny).

Rolling anchor (`rolling_anchor`, `--set wm_rolling_anchor=true`): when the anchor comes within 2 s, a new one is taken
from the log, f_s ~ U(2 s, 9 s) after the logged frame of the current time (clipped to the log's end, as in training),
with its poses relative to that logged frame, and the rollout goes on with the Plan Head planning to it; it ends only
when the log has no anchor 2 s ahead left, or after RolloutConfig.episode_steps. With one anchor per rollout the
episodes last 3.5 s on average (median 17 of the 40 steps), so most of the states the learner sees have a history
padded from the reset; the frames already cached keep the keys/values they got under the earlier anchor.

Nearer anchors (`anchor_max_s`, `--set wm_anchor_max_s=S`; default None): the reset's anchor and every rolling one
drawn 2 s to S s ahead instead of the training windows' 2-9 s (the reset's replaces the window's own draw). The Plan
Head plans to its anchor, so how hard its label corrects an offset depends on how far ahead that anchor is: over the
main job's expert-check windows, its first label from 1 m off the log corrects by 0.19e-3 1/m per metre with 2-9 s
anchors, 1.92e-3 with 2-4 s and 2.71e-3 with 2-3 s (the reprojective expert's 0.8 s return: 2.48e-3;
docs/experiments.md, 2026-12-06, session after stop 42). 2-S s lies inside the range both the DiT and the Plan Head
were trained on. Meant with a rolling anchor: without one the episode ends when its first anchor is 2 s ahead, at
most S - 2 s after the reset.
Sampling: `steps` Euler steps from tau = 1 to 0 per frame (default 8: on 2 CPU cores the cost of a frame is linear in
the steps, and 8 keep the lane lines of the tiny model about as sharp as its training default of 15) with the
starting noise scaled by `temperature` (default 0.8: slightly below the model's own distribution, fewer
hallucinated scene changes over a rollout, while the frames still vary). Both are options (WorldModelSimulator
arguments; RolloutConfig.wm_euler_steps, wm_temperature).
Batched rollouts (generate_frames; RolloutConfig.actor_batch): an actor's simulators share one model, VAE, set of
logged windows and logged latents (`share`), and simulator.step_batch makes their next frames together: the Euler
steps and the caching pass of the DiT run once over their stacked KV caches (grouped by cache layout), the VAE
decodes the latents together (a few at a time on a CPU: FrozenVAE.CPU_CHUNK). Each draws its noise from its own generator, so
an episode's frames are the ones it makes alone (tests/training/onpolicy/test_worldmodel_sim.py). On a CPU batching
shrinks the DiT's share of a frame; the VAE's decode, the largest share, costs the same per frame in any batch.

Frames: the VAE decodes the latent to the world model's model frame (e.g. 128x256 at focal 455), which is resized by
area averaging to the policy's frame (tiny: 64x128 at focal 227.5): both are the same 512x256 @ 910 px model frame
scaled (common.transformations.camera.scaled_model_frame), which is how the policy's own training frames were made.
With a frame decoder (`frame_decoder`, RolloutConfig.wm_frame_decoder: a training.frame_decoder folder distilled from
this world model's codec) the policy's frame is made from the latent directly, trained to match that decode + resize;
on a CPU it costs a fraction of the codec's decode (training/frame_decoder.py).
Cost: the VAE runs on oneDNN's convolution kernels (FrozenVAE; the actor's process is otherwise on the native
ones). The logged frames' latents (contexts, anchors, "log" predecessors) are read from the world-model run's
latent cache where it holds the segment (its config's latent_root: the latents the DiT was trained on), and
otherwise encoded once per actor and kept (`_latents`).
Expert: the Plan Head's most probable hypothesis (denormalised) in the current car frame, planned from the newest
frame with the anchor poses re-expressed relative to the car's pose at that step (the cache holds them relative to
the last context frame); the expert action comes from it through common.drive_helpers like in the other simulators.
`python -m training.onpolicy.expert_check --sim worldmodel` measures whether this expert steers back to the log.
Expert "log" (`expert`, `--wm-expert log`): the geometric simulators' label instead of the Plan Head's, the smooth
return to the logged path at the logged speeds (simulator.return_plan, the reprojective simulator's expert), on the
world model's frames. A diagnostic: with everything else the world-model run's, it separates what the frames cost
from what the Plan Head's labels cost. The paper's method is the Plan Head. This label needs no anchor, so the rollout
does not end at it: from the time it would end, the anchors are dropped from the cache and the frames are generated
without future anchoring (as in the anchor_drop_prob share of the training windows), and the episode runs its
RolloutConfig.episode_steps.
Synthetic lane changes (simulator.Simulator.lane_change_mode): "start" places the car one lane over, so the Plan
Head's return to the anchor is the lane change; "shift" keeps the car in the logged lane and moves the anchor's poses
one lane width to the desire's side (perpendicular to each anchor pose) before the Plan Head plans to them, so the
expert's plan leads into the neighbour lane from a frame that looks like any lane-keep start. The anchor in the KV
cache, which conditions the generated frames, stays where the log has it.
Every rollout also ends when the car is MAX_OFFSET (2.5 m) farther from the log than at the reset, as in the other
simulators.
A speed of its own (Deviation.speed, RolloutConfig.wm_speed_range; `any_speed`): the world model renders any
transition, so an episode may start at another speed than the log's, as the procedural simulator's do. The car then
follows the log by POSITION, not by time: its progress is the logged frame nearest to it (the reference path, the
logged speed profile and the anchors are read there), the anchors are re-cached so that they are as far ahead of
the car in time as the log has them ahead of that frame (the Plan Head plans to them at the logged speed, as it was
trained), and the Plan Head's path is driven at the logged speed profile shifted by the episode's speed shift
(simulator.return_plan on the plan's own path), like the geometric experts' labels. Why: logged segments can tie speed
to place on the route, and policies trained at the logged speeds then learn the curvature from the speed input
(docs/experiments.md, 2026-12-05; off by default: it removed that dependence but not the row's lane departures).
Lateral offset (for the metrics only): from the logged path, as in the reprojective simulator.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from common.drive_helpers import action_from_plan
from common.modelconstants import PLAN_SLICES
from tools.sim.ground_truth import wrap_angle
from training.onpolicy.simulator import (
  RETURN_SPEED,
  RETURN_TIME,
  SIM_DT,
  SUBSTEPS,
  Observation,
  Simulator,
  check_return,
  nearest_logged_frame,
  policy_image,
  return_plan,
  world_to_car,
)

log = logging.getLogger(__name__)

PREDECESSORS = ("generated", "log")
EXPERTS = ("plan_head", "log")


class WorldModelSimulator(Simulator):
  name = "worldmodel"
  any_speed = True       # it renders any transition (module docstring: a speed of its own)
  lane_change_modes = ("start", "shift")    # "shift": the Plan Head plans to the anchor moved one lane over

  def __init__(self, frame_spec: dict, wm_run, vehicle=None, seed: int = 0, steps: int = 8, temperature: float = 0.8,
               device: str | None = None, predecessor: str = "generated", expert: str = "plan_head",
               return_time: float = RETURN_TIME, return_speed: float | None = RETURN_SPEED,
               rolling_anchor: bool = False, anchor_max_s: float | None = None, frame_decoder=None,
               share: WorldModelSimulator | None = None):
    super().__init__(frame_spec, vehicle, seed)
    from training.worldmodel.evaluate import load_worldmodel_run
    if predecessor not in PREDECESSORS:
      raise ValueError(f"predecessor {predecessor!r}: choose one of {PREDECESSORS}")
    if expert not in EXPERTS:
      raise ValueError(f"expert {expert!r}: choose one of {EXPERTS}")
    check_return(return_time, return_speed)
    self.predecessor, self.expert = predecessor, expert
    self.return_time, self.return_speed = float(return_time), return_speed
    self.rolling_anchor = bool(rolling_anchor)
    from training.data.dataset import WindowConfig
    if anchor_max_s is not None and not anchor_max_s > WindowConfig().anchor_min_s:
      raise ValueError(f"anchor_max_s={anchor_max_s}: expected more than the shortest anchor offset "
                       f"({WindowConfig().anchor_min_s} s)")
    self.anchor_max_s = anchor_max_s
    if share is not None:      # another episode slot of the same actor: one model, VAE and set of logged latents
      if Path(wm_run).resolve() != share.wm_run:
        raise ValueError(f"share: {wm_run} is not the world model of the simulator shared ({share.wm_run})")
      self.device = share.device
      self.model, self.vae, self.cfg, self.run_cfg = share.model, share.vae, share.cfg, share.run_cfg
      if (Path(frame_decoder).resolve() if frame_decoder else None) != share.frame_decoder_dir:
        raise ValueError(f"share: frame decoder {frame_decoder} is not the shared simulator's "
                         f"({share.frame_decoder_dir})")
      self.frame_decoder, self.frame_decoder_dir = share.frame_decoder, share.frame_decoder_dir
    else:
      self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
      self.model, self.vae, self.cfg, self.run_cfg = load_worldmodel_run(wm_run, self.device)
      self.frame_decoder, self.frame_decoder_dir = None, None
      if frame_decoder:
        self.frame_decoder = self._load_frame_decoder(frame_decoder)
        self.frame_decoder_dir = Path(frame_decoder).resolve()
    self.wm_run = Path(wm_run).resolve()
    if predecessor == "log" and self.cfg.output != "denoiser":
      raise ValueError(f"{wm_run}: re-anchored rollouts (predecessor 'log') need a world model that re-projects its "
                       f"predecessor (output='denoiser'); this one has output={self.cfg.output!r}")
    self.steps, self.temperature = steps, temperature
    self.generator = torch.Generator(device=self.device).manual_seed(seed)
    self.taus = torch.linspace(1.0, 0.0, steps + 1, device=self.device)
    self._datasets: dict = {} if share is None else share._datasets
    # segment -> logged frame -> latent (_latents)
    self._latent_memo: dict[str, dict[int, torch.Tensor]] = {} if share is None else share._latent_memo
    # segment -> its latents in the world-model run's latent cache (memory-mapped), or None (_cached_latents)
    self._latent_stores: dict = {} if share is None else share._latent_stores
    if abs(self.cfg.fps * SIM_DT - 1.0) > 1e-6:
      raise ValueError(f"{wm_run}: world model runs at {self.cfg.fps} Hz, the simulators step at {1 / SIM_DT:.0f} Hz")

  def _load_frame_decoder(self, path):
    """The frame decoder at `path` (training.frame_decoder), which must be distilled from this world model's codec and
    make frames of the policy's size from its latents."""
    from training.frame_decoder import load_frame_decoder
    return load_frame_decoder(path, self.vae, self.device, (self.cfg.latent_h, self.cfg.latent_w),
                              (int(self.frame_spec["height"]), int(self.frame_spec["width"])))

  def max_steps(self, seg, frame: int) -> int:
    """0 unless a world-model window of the segment ends at the frame before `frame` (the dataset's windows sit on
    its own frame grid, so not every frame past the context can start a rollout)."""
    if frame < SUBSTEPS * self.cfg.context_frames or frame - SUBSTEPS not in self._dataset(seg)[1]:
      return 0
    return super().max_steps(seg, frame)

  def _dataset(self, seg):
    from training.data.dataset import WindowConfig, WorldModelDataset
    key = str(seg.path)
    if key not in self._datasets:
      wc = WindowConfig(context_frames=self.cfg.context_frames, anchor_frames=self.cfg.anchor_frames, fps=self.cfg.fps,
                        frame_hw=self.cfg.frame_hw)
      ds = WorldModelDataset([seg.path], None, wc, None, deterministic=True, seed=int(self.rng.integers(2 ** 31)))
      frames = ds._seg(0).frames            # decode + warp each video frame once per actor, not once per reset
      decode, memo = frames.frame, {}
      frames.frame = lambda i: memo[i] if i in memo else memo.setdefault(i, decode(i))
      self._datasets[key] = (ds, {c: k for k, (_, c) in enumerate(ds.index)})
    return self._datasets[key]

  @torch.no_grad()
  def _start(self) -> None:
    seg, C = self.seg, self.cfg.context_frames
    ds, where = self._dataset(seg)
    c = self.frame0 - SUBSTEPS                       # the last context frame
    if c not in where:
      raise ValueError(f"{seg.path}: no world-model window ends at frame {c} (needs {C} frames of context and a "
                       f"future frame; reset at frames >= {SUBSTEPS * C})")
    item = ds[where[c]]
    if self.anchor_max_s is not None:                # a nearer anchor than the window's (module docstring)
      d = ds._seg(0)
      a_idx, pose, valid = ds.future_anchor(0, c, self.rng.uniform(ds.cfg.anchor_min_s, self.anchor_max_s))
      item = {**item, "anchor_index": torch.from_numpy(a_idx), "anchor_pose": torch.from_numpy(pose).float(),
              "anchor_t": torch.from_numpy(d.times[a_idx] - d.t0).float(), "anchor_valid": torch.tensor(valid)}
    dev = self.device
    lat = self._latents(item["frame_index"][:C])[None]                          # (1,C,4,h,w)
    self.cache = self.model.new_cache()
    kw = {}
    self.t_end = self.t_done = None
    self.by_position = self.dev.speed is not None    # follow the log by position (module docstring)
    self.progress, self.clock_shift, self.cached_shift = self.frame0, 0.0, 0.0
    self._anchor = None          # (latents, poses, logged times) of the cached anchor, for re-caching
    if bool(item["anchor_valid"]):
      kw = {"anchors": self._latents(item["anchor_index"])[None],
            "anchor_pose": item["anchor_pose"][None].to(dev), "anchor_t": item["anchor_t"][None].to(dev)}
      self._anchor = (kw["anchors"], kw["anchor_pose"], kw["anchor_t"])
      self._set_anchor_end(float(item["anchor_t"][0]))                           # f_s
    self.model.prefill(self.cache, lat, item["transitions"][None, :C].to(dev), item["t_world"][None, :C].to(dev), **kw)
    self.t_now = float(item["t_world"][C - 1])
    x, y, _, _, _, yaw = seg.pose_world[c]
    self.prev_pose = np.array([x, y, yaw])
    self.anchor_origin = self.prev_pose.copy()                   # the anchor poses are relative to logged frame c
    self.anchor_pose_c = item["anchor_pose"].numpy().astype(np.float64) if kw else None   # (A,6)
    self.log_frame = c                               # predecessor "log": the last logged frame used
    self._advance()                                  # frame 0: at the car's reset pose

  @torch.no_grad()
  def _roll_anchor(self) -> bool:
    """Rolling anchor: a new future anchor from the log, f_s ~ U(T, 9 s) after the logged frame of the time now
    (WorldModelDataset.future_anchor, as in training); False when the log has no anchor T ahead left."""
    ds = self._dataset(self.seg)[0]
    d, cfg = ds._seg(0), ds.cfg
    if self.by_position:
      j = self.progress                                          # the logged frame the car has reached
    else:
      j = int(np.argmin(np.abs(d.times - d.t0 - self.t_now)))    # the logged frame of the time now
    a_idx, pose, valid = ds.future_anchor(0, j, self.rng.uniform(cfg.anchor_min_s, self.anchor_max_s or cfg.anchor_max_s))
    if not valid:
      return False
    dev = self.device
    anchor_t = torch.from_numpy(d.times[a_idx] - d.t0).float()[None].to(dev)
    self._anchor = (self._latents(a_idx)[None], torch.from_numpy(pose).float()[None].to(dev), anchor_t)
    self._cache_anchor()
    x, y, _, _, _, yaw = self.seg.pose_world[j]
    self.anchor_origin = np.array([x, y, yaw])
    self.anchor_pose_c = pose.astype(np.float64)
    self._plan_now()
    return True

  def _set_anchor_end(self, t_end: float) -> None:
    """The cached anchor's time f_s (world clock) and the time the rollout ends at (module docstring)."""
    self.t_end = t_end
    self.t_done = t_end - max(self._dataset(self.seg)[0].cfg.anchor_min_s - SIM_DT, 0.0)

  @torch.no_grad()
  def _cache_anchor(self) -> None:
    """Cache self._anchor with its logged times moved by the clock shift: as far ahead of the car as the log has
    them ahead of the car's progress."""
    lat, pose, t_log = self._anchor
    self.cached_shift = self.clock_shift
    self.model.cache_anchors(self.cache, lat, pose, t_log - self.clock_shift)
    self._set_anchor_end(float(t_log[0, 0]) - self.clock_shift)

  def _follow_progress(self, pose: np.ndarray) -> None:
    """By position: the logged frame nearest to the car, and how far the log's clock there is ahead of the world
    model's (clock_shift, s); the anchors are re-cached when it moved by more than a quarter step."""
    self.progress = nearest_logged_frame(self.seg.pose_world, pose[:2], self.progress)
    d = self._dataset(self.seg)[0]._seg(0)
    self.clock_shift = float(d.times[self.progress] - d.t0) - self.t_now
    if self._anchor is not None and abs(self.clock_shift - self.cached_shift) > SIM_DT / 4:
      self._cache_anchor()

  @property
  def logged_index(self) -> int:
    """By position: the logged frame the car has reached; else the logged frame at the same time since the reset."""
    return min(self.progress, len(self.seg) - 1) if self.by_position else super().logged_index

  def _transition(self, pose: np.ndarray, origin: np.ndarray) -> torch.Tensor:
    """(1,6) the car's pose (x, y, yaw) in the car frame of `origin` (x, y, yaw): the flat-road transition."""
    rel = world_to_car(pose[None, :2], origin)[0]
    return torch.tensor([[rel[0], rel[1], 0.0, 0.0, 0.0, wrap_angle(pose[2] - origin[2])]], dtype=torch.float32,
                        device=self.device)

  def _cached_latents(self):
    """The current segment's latents from the world-model run's latent cache (training.data.latent_cache, written by
    its training: the same VAE, frame size and warp, stored as float16, the values the DiT was trained on), or None
    when the run has no finished store for this segment or it does not hold one latent per logged frame."""
    key = str(self.seg.path)
    if key not in self._latent_stores:
      from training.data.latent_cache import load_latents, segment_store
      root, arr = self.run_cfg.get("latent_root"), None
      store = segment_store(Path(root), self.seg.path) if root else None
      if store is not None and (store / "done.json").exists():
        arr = load_latents(store)
        n = len(self._dataset(self.seg)[0]._seg(0).times)
        if len(arr) != n:
          log.warning("%s: %d cached latents for %d frames; encoding the frames instead", store, len(arr), n)
          arr = None
      self._latent_stores[key] = arr
    return self._latent_stores[key]

  def _latents(self, idx) -> torch.Tensor:
    """(n,4,h,w) latents of the current segment's logged frames idx: read from the world-model run's latent cache
    where it holds the segment (_cached_latents), else encoded by the VAE. The VAE's encoding of a logged frame (its
    posterior mean) depends on nothing else, so each is encoded once per simulator and kept for every later reset in
    that segment (contexts, anchors and "log" predecessors overlap from one episode to the next); the frames not yet
    kept are encoded in one batch."""
    cached = self._cached_latents()
    if cached is not None:
      idx = np.asarray(idx, dtype=np.int64)
      return torch.from_numpy(np.asarray(cached[idx], dtype=np.float32)).to(self.device)
    kept = self._latent_memo.setdefault(str(self.seg.path), {})
    idx = [int(j) for j in idx]
    new = sorted({j for j in idx if j not in kept})
    if new:
      lat = self.vae.encode(self._dataset(self.seg)[0]._seg(0).images(new).to(self.device))
      kept.update(zip(new, lat))
    return torch.stack([kept[j] for j in idx])

  def _logged_latent(self, j: int) -> torch.Tensor:
    """(1,4,h,w) latent of logged frame j."""
    return self._latents([j])

  def _log_predecessor(self, pose: np.ndarray, prev_pose: np.ndarray) -> torch.Tensor:
    """Predecessor "log": the logged frame nearest to where the car was 0.2 s ago, re-projected to where it is."""
    self.log_frame = j = nearest_logged_frame(self.seg.pose_world, prev_pose, self.log_frame)
    x, y, _, _, _, yaw = self.seg.pose_world[j]
    return self.model.log_predecessor(self._logged_latent(j), self._transition(pose, np.array([x, y, yaw])))

  def _frame_inputs(self) -> tuple:
    """A new frame's first part (generate_frames): the car's transition since the last frame, the world time, the
    starting noise and the predecessor. Returns (noise (1,C,h,w), predecessor (1,C,h,w), transition (1,6), t (1,))."""
    pose, prev_pose = self.car_pose(), self.prev_pose
    tr = self._transition(pose, prev_pose)
    self.prev_pose = pose
    self.t_now += SIM_DT
    if self.by_position:
      self._follow_progress(pose)
    t = torch.tensor([self.t_now], dtype=torch.float32, device=self.device)
    x = self.temperature * torch.randn((1, *self.cache.last_frame.shape[1:]), generator=self.generator,
                                       device=self.device)
    if self.predecessor == "log":
      prev = self._log_predecessor(pose, prev_pose)
    else:
      prev = self.model.frame_predecessor(self.cache, x, tr)
    return x, prev, tr, t

  def _past_anchor(self) -> bool:
    """Expert "log": past the anchor's reach the frames are generated without it (module docstring). Returns whether
    the anchor was dropped here."""
    if self.expert == "log" and self.t_done is not None and self.t_now >= self.t_done - 1e-6 \
        and self.cache.anchor is not None:
      self.cache.set_anchors([None] * len(self.model.blocks), None)
      self._anchor = None
      return True
    return False

  @torch.no_grad()
  def _plan_now(self) -> None:
    """The Plan Head's most probable plan from the newest frame, to the cached anchor as seen from the car now."""
    from training.mhp import best_hypothesis
    from training.worldmodel.plan_head import denormalize_plan
    p = self.model.plan(self._hid, self._tr, self._anchor_from(self.car_pose()), self._t)
    self.plan = denormalize_plan(best_hypothesis(p.logits, p.mean))[0].cpu().numpy().astype(np.float64)

  def _anchor_from(self, pose: np.ndarray):
    """The cached anchor with its poses re-expressed relative to the car's pose (x, y, yaw) now. The Plan Head was
    trained on anchor poses relative to the frame it plans from; the cache holds them relative to the last context
    frame, which is right only while the car is still there; left there, they tell the Plan Head that the anchor
    moves with the car."""
    anchor = self.cache.anchor
    if anchor is None or self.anchor_pose_c is None:
      return anchor
    rel = world_to_car(pose[None, :2], self.anchor_origin)[0]     # the car in the frame of logged frame c
    dyaw = wrap_angle(pose[2] - self.anchor_origin[2])
    ap = self.anchor_pose_c.copy()
    if self.lane_shift:              # a "shift" lane change: the anchor is asked for one lane over, to its right
      ap[:, :2] += self.lane_shift * np.stack([-np.sin(ap[:, 5]), np.cos(ap[:, 5])], axis=1)
    ap[:, :2] = world_to_car(ap[:, :2], np.array([rel[0], rel[1], dyaw]))
    ap[:, 5] = ap[:, 5] - dyaw
    return dataclasses.replace(anchor, pose=torch.as_tensor(ap[None], dtype=anchor.pose.dtype, device=anchor.pose.device))

  def _advance(self) -> None:
    generate_frames([self])

  @classmethod
  def _advance_batch(cls, sims: list) -> None:
    generate_frames(sims)

  def _at_own_speed(self, plan: np.ndarray) -> np.ndarray:
    """The Plan Head's plan; by position, its path driven at the logged speed profile of the car's progress shifted
    by the episode's speed shift (the Plan Head plans at the logged speed: _cache_anchor)."""
    if not self.by_position:
      return plan
    P = PLAN_SLICES["position"].start
    return return_plan(plan[:, P:P + 2], self._expert_speeds(), plan[:, P + 2], self.return_time, self.return_speed)

  def _make_obs(self) -> Observation:
    seg, pose = self.seg, self.car_pose()
    j = min(self.logged_index, len(seg) - 1)
    ahead = 600 if self.by_position else 260         # 30 s / 13 s of log: 10 s of the plan at a speed of its own
    ref = world_to_car(self.logged_reference(max(j - 40, 0), j + ahead), pose)
    ref = ref[np.argsort(ref[:, 0])]
    offset = -float(np.interp(0.0, ref[:, 0], ref[:, 1]))
    self._end_lane_change(offset)
    v = self.vehicle.state.v
    plan = self._log_return(ref) if self.expert == "log" else self._at_own_speed(self.plan)
    done = self.max_offset is not None and abs(offset) > self.max_offset     # as in the other simulators
    if self.expert == "plan_head" and not done and self.t_done is not None and self.t_now >= self.t_done - 1e-6:
      done = True
      if self.rolling_anchor and self._roll_anchor():
        done, plan = False, self._at_own_speed(self.plan)    # the label of this frame, planned to the new anchor
    return Observation(self.image, float(v), int(self.desire), plan.astype(np.float32),
                       action_from_plan(plan, v).astype(np.float32), offset, self.k * SIM_DT, done=done)


def _grouped_prefixes(sims: list[WorldModelSimulator]) -> list[tuple[list[int], list]]:
  """The simulators' KV caches stacked into batches: [(indices into sims, per-layer (k, v) (B,H,L,hd) or None)], one
  group per cache layout (the same number of cached frames and anchors; one group when every episode is past its
  reset's prefill). A simulator alone in its group uses its cache's own buffers."""
  groups: dict = {}
  for i, s in enumerate(sims):
    pre = s.cache.prefixes()
    key = tuple(None if p is None else tuple(p[0].shape) for p in pre)
    groups.setdefault(key, []).append((i, pre))
  out = []
  for members in groups.values():
    idx = [i for i, _ in members]
    if len(members) == 1:
      out.append((idx, members[0][1]))
      continue
    stacked = [None if kv is None else tuple(torch.cat([pre[layer][j] for _, pre in members]) for j in (0, 1))
               for layer, kv in enumerate(members[0][1])]
    out.append((idx, stacked))
  return out


@torch.no_grad()
def generate_frames(sims: list[WorldModelSimulator]) -> None:
  """Each simulator's next frame, the networks run once for all of them (batched rollouts inside an actor): the DiT's
  Euler steps and the pass that caches the finished frame over the stacked KV caches, the VAE's decode over the stacked
  latents; the rest (transitions, noise, predecessors, the Plan Head's plan) per simulator. Every simulator draws its
  own noise from its own generator, so a simulator's frames do not depend on which others share its batch (equal to
  stepping it alone to float precision). The simulators must share one model (`share`) and sampling settings."""
  from training.worldmodel.sample import euler_frame
  first = sims[0]
  m, taus = first.model, first.taus
  for s in sims[1:]:
    if s.model is not m or s.steps != first.steps:
      raise ValueError("generate_frames: the simulators of a batch share one model (WorldModelSimulator(share=...)) "
                       "and one number of Euler steps")
  inputs = [s._frame_inputs() for s in sims]      # per simulator: (noise, predecessor, transition, t)
  groups = _grouped_prefixes(sims)
  xs: list = [None] * len(sims)
  for idx, prefixes in groups:
    x, prev, tr, t = (torch.cat([inputs[i][j] for i in idx]) for j in range(4))
    out = euler_frame(m, x, prev, tr, t, prefixes, taus)
    for b, i in enumerate(idx):
      xs[i] = out[b:b + 1]
  if any([s._past_anchor() for s in sims]):       # a cache lost its anchor: its layout changed
    groups = _grouped_prefixes(sims)
  for idx, prefixes in groups:
    frame, prev, tr, t = (torch.cat([xs[i] for i in idx]),
                          *(torch.cat([inputs[i][j] for i in idx]) for j in (1, 2, 3)))
    hidden, _, new_kv = m.frame_pass(frame, prev, tr, torch.zeros(len(idx), device=frame.device), t, prefixes)
    for b, i in enumerate(idx):
      s = sims[i]
      s.cache.append([(k[b:b + 1], v[b:b + 1]) for k, v in new_kv], xs[i])
      s._hid, s._tr, s._t = hidden[b:b + 1], inputs[i][2], inputs[i][3]
      if s.expert == "plan_head":
        s._plan_now()
  if first.frame_decoder is not None:               # the policy's frames straight from the latents
    images = first.frame_decoder.images(torch.cat(xs))
    for b, s in enumerate(sims):
      s.image = images[b]
    return
  decoded = first.vae.decode(torch.cat(xs))          # a few frames at a time on a CPU (FrozenVAE.CPU_CHUNK)
  for b, s in enumerate(sims):
    s.image = policy_image(decoded[b:b + 1], s.frame_spec)
