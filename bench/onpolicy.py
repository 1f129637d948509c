"""On-policy training throughput: simulated frames per second of each simulator (procedural, reprojective, world
model with its own frames as predecessors, world model re-anchored: `worldmodel_log`, its predecessor "log") with 1
actor (in-process) running one episode at a time and running --actor-batch episodes in lock-step with its networks
batched (RolloutConfig.actor_batch), and with 2 Ray actors batched, and learner updates
per second, measured in one run. The re-anchored world model is also measured with its VAE on torch's native convolution
kernels (as it runs: oneDNN's, training.vae.FrozenVAE). `worldmodel_log_fd` is
the re-anchored world model with the policy's frames made by a frame decoder (training/frame_decoder.py; the main
job's on-policy run) instead of the codec's decode: --frame-decoder DIR, or an untrained one of the default size built
for the world model's codec (its cost does not depend on the weights); also with 2 Ray actors.

  python bench/onpolicy.py [--quick] [--seconds S] [--actor-batch N] [--policy RUN] [--wm RUN] [--data DIR]
                           [--frame-decoder DIR]

Without --policy / --wm / --data it builds its own inputs: one generated 15 s segment rendered in the tiny policy's
128x64 model frame, an untrained tiny policy and an untrained world model at the policy's frame (3 context frames,
2-layer DiT, 8 Euler steps) -- the cost of a frame does not depend on the weights. A "frame" is one simulator step
(0.2 s of driving: render or generate, expert label, policy forward). Episodes of 10 steps. Ratios: batched / one
episode at a time and 2 actors / 1 actor (both batched) per simulator, world model / procedural, re-anchored /
own-frame world model, oneDNN / native codec (those three one episode at a time), frame decoder / codec (re-anchored,
batched).
Last stdout line: one JSON object.
"""
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import make_parser, tool_main
from training.checkpoint import load_latest, save_checkpoint
from training.onpolicy.actor import (
  RayActorPool,
  RolloutConfig,
  RolloutWorker,
  WorkerSpec,
  init_local_ray,
)
from training.onpolicy.learner import LearnerConfig, ReplayBuffer, onpolicy_loss
from training.policy.model import PolicyConfig, TemporalPolicy, VisionModel, get_config
from training.vae import FrozenVAE


def build_inputs(root: Path):
  from common.transformations.camera import model_frame_camera
  from tools.sim.generate import write_segment
  from training.vae import VAETrainConfig, make_autoencoder
  from training.worldmodel.dit import build_model
  from training.worldmodel.dit import get_config as wm_config
  cfg = get_config("tiny")
  seg = write_segment(root / "data", seed=11, index=0, duration=15,
                      camera=model_frame_camera(cfg.frame_w, cfg.frame_h, cfg.frame_focal))
  torch.manual_seed(0)
  save_checkpoint(root / "policy", 1, {"vision": VisionModel(cfg).state_dict(), "temporal": TemporalPolicy(cfg).state_dict()},
                  None, {"policy": cfg.to_dict()}, {"stage": "temporal"})
  ae = make_autoencoder(VAETrainConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=8))
  ae.register_to_config(scaling_factor=2.0)
  ae.save_pretrained(str(root / "vae"))
  wcfg = wm_config("tiny", latent_h=8, latent_w=16, patch=2, depth=2, width=64, heads=4, plan_hidden=64, plan_blocks=1,
                   context_frames=3, anchor_frames=2)
  save_checkpoint(root / "wm", 1, {"model": build_model(wcfg).state_dict()}, None,
                  {"model": wcfg.to_dict(), "vae": str(root / "vae"), "args": {"ema": 0.999}}, {})
  return root / "policy", root / "wm", [seg]


def untrained_frame_decoder(wm_run: Path, frame_hw: tuple[int, int], out: Path) -> Path:
  """A frame decoder of the default size for the world model's codec and the policy's frame, random weights."""
  from training.frame_decoder import FrameDecoder, FrameDecoderConfig, save_frame_decoder
  from training.vae import load_vae
  from training.worldmodel.dit import DiTConfig
  run_cfg = load_latest(wm_run)["config"]
  wcfg = DiTConfig.from_dict(run_cfg["model"])
  torch.manual_seed(0)
  fd = FrameDecoder(FrameDecoderConfig.for_upsample(frame_hw[0] // wcfg.latent_h))
  return save_frame_decoder(fd, out, load_vae(run_cfg["vae"]), frame_hw)


def frames_per_second_local(spec, vision_state, temporal_state, seconds: float) -> float:
  w = RolloutWorker(spec, vision_state)
  w.rollouts((temporal_state, 0))                  # warm-up: world / renderer / caches built
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    n += sum(len(t) for t in w.rollouts())
  return n / (time.perf_counter() - t0)


@contextlib.contextmanager
def native_codec():
  """The world-model simulator's VAE on torch's native convolution kernels instead of oneDNN's."""
  before = FrozenVAE.onednn
  FrozenVAE.onednn = False
  try:
    yield
  finally:
    FrozenVAE.onednn = before


def frames_per_second_ray(spec, vision_state, temporal_state, seconds: float, n_actors: int) -> float:
  pool = RayActorPool(spec, vision_state, n_actors, 1.0)
  pool.publish(temporal_state, 0)
  try:
    got = 0
    while got < n_actors:                           # every actor warmed up
      got += len(pool.poll(block=True))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
      n += sum(len(t) for t in pool.poll(block=True))
    return n / (time.perf_counter() - t0)
  finally:
    pool.close()


def learner_updates_per_second(spec, vision_state, temporal_state, seconds: float, cfg) -> float:
  w = RolloutWorker(spec, vision_state)
  buf = ReplayBuffer(10_000)
  while buf.steps < 64:
    for t in w.rollouts((temporal_state, 0)):
      buf.add(t)
  temporal = TemporalPolicy(cfg)
  temporal.load_state_dict(temporal_state)
  opt = torch.optim.AdamW(temporal.parameters(), lr=1e-4)
  rng = np.random.default_rng(0)
  lc = LearnerConfig()
  noise = VisionModel(cfg).bottleneck.noise_std
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    f, v, d, tgt, _ = buf.sample(lc.batch_size, cfg.history, rng)
    loss, _ = onpolicy_loss(temporal, noise, f, v, d, tgt)
    opt.zero_grad()
    loss.backward()
    opt.step()
    n += 1
  return n / (time.perf_counter() - t0)


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python bench/onpolicy.py", __doc__)
  ap.add_argument("--quick", action="store_true", help="1 s per measurement")
  ap.add_argument("--seconds", type=float, default=15.0)
  ap.add_argument("--policy", type=Path, default=None)
  ap.add_argument("--wm", type=Path, default=None)
  ap.add_argument("--data", type=Path, nargs="+", default=None, help="generated segment dirs")
  sims = ["procedural", "reprojective", "worldmodel", "worldmodel_log", "worldmodel_log_fd"]
  ap.add_argument("--sims", nargs="+", default=sims, choices=sims)
  ap.add_argument("--frame-decoder", type=Path, default=None,
                  help="worldmodel_log_fd's frame decoder (default: an untrained one of the default size)")
  ap.add_argument("--actor-batch", type=int, default=4,
                  help="episodes per actor in the batched measurement (RolloutConfig.actor_batch)")
  args = ap.parse_args(argv)
  secs = 1.0 if args.quick else args.seconds
  torch.set_num_threads(1)
  tmp = tempfile.TemporaryDirectory()
  if args.policy is None or args.wm is None or args.data is None:
    policy, wm, segs = build_inputs(Path(tmp.name))
  policy = args.policy or policy
  wm = args.wm or wm
  segs = args.data or segs
  ck = load_latest(policy)
  cfg = PolicyConfig.from_dict(ck["config"]["policy"])
  vision_state, temporal_state = ck["state"]["vision"], ck["state"]["temporal"]
  rollout = {**RolloutConfig().__dict__, "episode_steps": 10, "min_steps": 5}
  result = {"seconds_per_measurement": secs, "actor_batch": args.actor_batch, "frames_per_s": {}}
  init_local_ray(num_cpus=2)
  import ray
  try:
    for sim in args.sims:
      base = "worldmodel" if sim.startswith("worldmodel") else sim
      wm_rollout = {}
      if sim.startswith("worldmodel_log"):
        wm_rollout["wm_predecessor"] = "log"
      if sim == "worldmodel_log_fd":
        fd = args.frame_decoder or untrained_frame_decoder(wm, (cfg.frame_h, cfg.frame_w), Path(tmp.name) / "fd")
        wm_rollout["wm_frame_decoder"] = str(fd)
      spec = WorkerSpec(base, cfg.to_dict(), [str(s) for s in segs], str(Path(tmp.name) / "cache"),
                        {**rollout, **wm_rollout}, str(wm) if base == "worldmodel" else None)
      batched = replace(spec, rollout={**spec.rollout, "actor_batch": args.actor_batch})
      one = frames_per_second_local(spec, vision_state, temporal_state, secs)
      one_b = frames_per_second_local(batched, vision_state, temporal_state, secs)
      res = result["frames_per_s"][sim] = {"1_actor": round(one, 2), "1_actor_batched": round(one_b, 2),
                                           "batched_over_single": round(one_b / one, 2)}
      native = ""
      if sim == "worldmodel_log":
        with native_codec():
          nat = frames_per_second_local(spec, vision_state, temporal_state, secs)
        res["1_actor_native_codec"] = round(nat, 2)
        result["worldmodel_log_onednn_over_native_codec"] = round(one / nat, 3)
        native = f" ({nat:.1f} with 1 actor and the codec on native kernels)"
      two = frames_per_second_ray(batched, vision_state, temporal_state, secs, 2)
      res.update({"2_actors_batched": round(two, 2), "scaling_2_over_1": round(two / one_b, 2)})
      print(f"{sim}: {one:.1f} frames/s with 1 actor, {one_b:.1f} with {args.actor_batch} episodes batched, "
            f"{two:.1f} with 2 Ray actors batched{native}", flush=True)
    spec = WorkerSpec("procedural", cfg.to_dict(), [str(s) for s in segs], str(Path(tmp.name) / "cache"), rollout)
    result["learner_updates_per_s"] = round(learner_updates_per_second(spec, vision_state, temporal_state, secs, cfg), 2)
    fps = result["frames_per_s"]
    if "worldmodel" in fps and "procedural" in fps:
      result["worldmodel_over_procedural"] = round(fps["worldmodel"]["1_actor"] / fps["procedural"]["1_actor"], 3)
    if "worldmodel_log_fd" in fps and "worldmodel_log" in fps:
      result["frame_decoder_over_codec"] = round(fps["worldmodel_log_fd"]["1_actor_batched"]
                                                 / fps["worldmodel_log"]["1_actor_batched"], 3)
      result["frame_decoder_over_codec_2_actors"] = round(fps["worldmodel_log_fd"]["2_actors_batched"]
                                                          / fps["worldmodel_log"]["2_actors_batched"], 3)
    if "worldmodel" in fps and "worldmodel_log" in fps:
      result["worldmodel_log_over_worldmodel"] = round(fps["worldmodel_log"]["1_actor"] / fps["worldmodel"]["1_actor"],
                                                       3)
  finally:
    ray.shutdown()
    tmp.cleanup()
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
