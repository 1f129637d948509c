"""On-policy training of a behaviour-cloned policy inside a simulator (paper §5.1): Ray actors roll the policy out,
the simulator's expert labels every visited state, the learner (training.onpolicy.learner on training.trainer)
updates the temporal model.

  python -m training.onpolicy.train --sim {worldmodel,reprojective,procedural} --policy RUN --out RUN
        [--wm RUN] [--actors N] [--address auto] [--resume] [--minutes M] [--max-steps N] [--data DIR ...]
        [--set FIELD=VALUE ...] [--config FILE]

  --policy   a training.policy.train run (its newest checkpoint: frozen extractor + the temporal model to train on)
  --wm       a training.worldmodel.train run with a Plan Head (--sim worldmodel)
  --data     dataset dirs whose segments rollouts start from (default: the policy run's split.json "train" segments);
             a segment without enough log ahead for the simulator (simulator.max_steps) is not started from
  --demo-batch N   also take N windows per update from the behaviour-cloning data (the policy run's split.json
             "train" segments, their logged labels): DAgger's aggregate with the expert's own data set (learner.py)
  --actors   N Ray actors (ray.init() locally on 2 CPUs, or the cluster at --address); 0 = one in-process actor
  --minutes / --max-steps   budget: whichever is reached first ends the run (the cosine schedule spans it)
  --set      RolloutConfig / LearnerConfig / RunConfig fields (after the options above have set theirs)

The run directory is a policy run like any other (ckpt_* with states "vision" and "temporal" and config["policy"]),
so `python -m training.export --run OUT --out DIR` exports it; metrics.csv + curves.png hold the learner's loss
("train") and the rollouts' mean |lateral offset|, expert-vs-policy action error, policy lag and frames/s
("rollout"); replay.npz the replay buffer (restored by --resume).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from common.cli import add_common_args, apply_sets, emit_result, make_parser, tool_main
from training.data.dataset import WindowConfig
from training.onpolicy.actor import (
  LocalActorPool,
  RayActorPool,
  RolloutConfig,
  WorkerSpec,
  init_local_ray,
)
from training.onpolicy.learner import LearnerConfig, OnPolicyTask
from training.onpolicy.sim_worldmodel import PREDECESSORS
from training.torch_args import set_threads
from training.trainer import RunConfig, Trainer

log = logging.getLogger("training.onpolicy.train")


def default_segments(policy_run: Path) -> list[Path]:
  split = policy_run / "split.json"
  if not split.exists():
    raise ValueError(f"{split}: missing; pass --data DIR")
  try:
    return [Path(p) for p in json.loads(split.read_text())["train"]]
  except (json.JSONDecodeError, KeyError) as e:
    raise ValueError(f"{split}: unreadable ({e}); pass --data DIR") from e


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.onpolicy.train", __doc__)
  ap.add_argument("--sim", required=True, choices=("worldmodel", "reprojective", "procedural"))
  ap.add_argument("--policy", type=Path, required=True, help="behaviour-cloned policy run (training.policy.train)")
  ap.add_argument("--wm", type=Path, default=None, help="world-model run (training.worldmodel.train), --sim worldmodel")
  ap.add_argument("--out", type=Path, required=True)
  ap.add_argument("--data", type=Path, nargs="+", default=None,
                  help="dataset dir(s) whose segments rollouts start from (default: the policy run's train split)")
  ap.add_argument("--actors", type=int, default=2, help="Ray actors (0 = in-process, no Ray)")
  ap.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray on 2 CPUs")
  ap.add_argument("--resume", action="store_true")
  ap.add_argument("--minutes", type=float, default=None)
  ap.add_argument("--max-steps", type=int, default=2000)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--lr", type=float, default=1e-4)
  ap.add_argument("--episode-steps", type=int, default=40, help="simulator steps (0.2 s) per episode")
  ap.add_argument("--expert-mix", type=float, default=RolloutConfig.expert_mix,
                  help="DAgger beta: executed action = beta expert + (1 - beta) policy, beta ~ U(0, this)")
  ap.add_argument("--wm-predecessor", default=RolloutConfig.wm_predecessor, choices=PREDECESSORS,
                  help="--sim worldmodel: each frame generated from the model's own previous frame (the paper's "
                       "rollout) or from the logged frame re-projected to the car (re-anchored; sim_worldmodel.py)")
  ap.add_argument("--demo-batch", type=int, default=LearnerConfig.demo_batch,
                  help="windows of the behaviour-cloning data per update, beside --batch-size on-policy windows")
  ap.add_argument("--replay-ratio", type=float, default=8.0, help="at most this many sampled states per received state")
  ap.add_argument("--min-buffer-steps", type=int, default=200, help="states collected before the first update")
  ap.add_argument("--log-every", type=int, default=10)
  ap.add_argument("--eval-every", type=int, default=50)
  ap.add_argument("--ckpt-every", type=int, default=100)
  add_common_args(ap, threads=1, threads_help="torch threads of the learner", seed=0,
                  sets=(RolloutConfig, LearnerConfig, RunConfig))
  args = ap.parse_args(argv)
  if args.actors < 0:
    ap.error("--actors must be >= 0")
  if args.demo_batch < 0:
    ap.error("--demo-batch must be >= 0")
  if args.sim == "worldmodel" and args.wm is None:
    ap.error("--sim worldmodel needs --wm RUN")
  if args.out.exists() and any(args.out.glob("ckpt_*.json")) and not args.resume:
    ap.error(f"--out {args.out} already holds checkpoints; pass --resume or choose a new directory")
  rc, lc, run = apply_sets(
    ap, args.set, RolloutConfig(episode_steps=args.episode_steps, expert_mix=args.expert_mix,
                           wm_predecessor=args.wm_predecessor),
    LearnerConfig(batch_size=args.batch_size, demo_batch=args.demo_batch, min_buffer_steps=args.min_buffer_steps,
                  max_replay_ratio=args.replay_ratio),
    RunConfig(max_steps=args.max_steps, minutes=args.minutes, lr=args.lr, warmup=20, weight_decay=0.01, grad_clip=1.0,
              log_every=args.log_every, eval_every=args.eval_every, ckpt_every=args.ckpt_every, seed=args.seed))
  set_threads(args.threads)

  from tools.lib.route import scan_segments
  from training.onpolicy.learner import Demonstrations
  from training.onpolicy.simulator import load_logged_segment
  from training.policy.data import load_segment
  from training.policy.model import load_policy_run
  from training.policy.train import compute_features
  try:
    vision, temporal, ck = load_policy_run(args.policy)
    if args.data is not None:
      segs = [p for root in args.data for p in scan_segments(root, progress=False)[0]]
    else:
      segs = default_segments(args.policy)
    if not segs:
      raise ValueError(f"{' '.join(map(str, args.data or [args.policy]))}: no segments to start rollouts from")
    cache = args.out / "cache"
    for p in segs:                       # decode + warp once here, before actors read the cache
      load_logged_segment(p, vision.cfg, cache)
    demos = None
    if lc.demo_batch > 0:
      demo_paths = default_segments(args.policy)
      demo_segs = [load_segment(p, vision.cfg, cache) for p in demo_paths]
      feats, outs = compute_features(vision, demo_segs, progress=True)
      for s in demo_segs:                # the learner needs their features and labels, not their frames
        s.frames = s.frames[:0]
      demos = Demonstrations(demo_segs, feats, outs, vision.layout)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  vision.requires_grad_(False)
  config = {"policy": vision.cfg.to_dict(),
            "onpolicy": {"sim": args.sim, "policy_run": str(args.policy), "policy_step": ck["step"],
                         "wm_run": str(args.wm) if args.wm else None, "actors": args.actors,
                         "segments": [str(p) for p in segs], "rollout": asdict(rc), "learner": asdict(lc),
                         "demo_segments": [str(p) for p in demo_paths] if demos is not None else []},
            "train": asdict(run)}
  torch.manual_seed(args.seed)
  task = OnPolicyTask(vision.cfg, vision, temporal, None, lc, args.out, config, seed=args.seed, demos=demos)
  trainer = Trainer(task, run, args.out, desc=f"on-policy {args.sim}")
  if args.resume:
    try:
      trainer.resume()
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  spec = WorkerSpec(args.sim, vision.cfg.to_dict(), [str(p) for p in segs], str(cache), asdict(rc),
                    str(args.wm) if args.wm else None, args.seed)
  ray = None
  try:
    if args.actors == 0:
      task.pool = LocalActorPool(spec, vision.state_dict(), 1)
    else:
      import ray
      os.environ.setdefault("RAY_DEDUP_LOGS", "0")
      if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
      else:
        init_local_ray(num_cpus=2)
      per_actor = min(1.0, float(ray.available_resources().get("CPU", 2)) / args.actors)
      task.pool = RayActorPool(spec, vision.state_dict(), args.actors, per_actor)
    result = trainer.fit()
  finally:
    if task.pool is not None:
      task.pool.close()
    if ray is not None and ray.is_initialized():
      ray.shutdown()
  out = {"run": str(args.out), "step": trainer.step, "sim": args.sim,
         "wm_predecessor": rc.wm_predecessor if args.sim == "worldmodel" else None,
         "wm_expert": rc.wm_expert if args.sim == "worldmodel" else None,
         "wm_rolling_anchor": rc.wm_rolling_anchor if args.sim == "worldmodel" else None,
         "wm_euler_steps": rc.wm_euler_steps if args.sim == "worldmodel" else None,
         "wm_temperature": rc.wm_temperature if args.sim == "worldmodel" else None,
         # the farthest Plan Head anchor, seconds ahead (without wm_anchor_max_s: the training windows')
         "wm_anchor_max_s": (rc.wm_anchor_max_s or WindowConfig().anchor_max_s) if args.sim == "worldmodel" else None,
         "speed_range": rc.speed_range if args.sim == "procedural" else rc.wm_speed_range if args.sim == "worldmodel"
         else None, "rep_codec": rc.rep_codec if args.sim == "reprojective" else None, "demo_batch": lc.demo_batch,
         "received_trajectories": task.buffer.received_trajectories, "received_states": task.buffer.received_steps,
         "actor_restarts": task.pool.restarts if task.pool else 0, **{k: v for k, v in result.get("rollout", {}).items()}}
  emit_result(out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
