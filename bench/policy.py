"""Per-frame latency of the driving policy (vision + policy, through modeld's per-frame loop) for each FastViT
variant, in PyTorch, onnxruntime and tinygrad, on 1 and 2 CPU threads; with the model's FLOPs (counted by
torch.utils.flop_counter on the reparameterized graph) and the fraction of a measured float32 GEMM peak.

  python bench/policy.py [--quick] [--variants tiny T8 T12 SA12] [--frames 60]

Target (issue 6): the deployed (tiny / T8-class) model at 20 Hz with p99 < 25 ms on one core.
Weights are random (latency does not depend on them); BN/layer-scale branches are folded exactly as export does.
tinygrad reads its thread count (NUM_CPU_THREADS) at import, so each tinygrad measurement runs in a child
process; --quick measures tinygrad on 1 thread only (its clang compile of T8 takes ~20 s).
Last stdout line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import make_parser, tool_main  # noqa: E402

TARGET_P99_MS = 25.0


def gemm_peak_gflops(threads: int, n: int = 1024, reps: int = 10) -> float:
  import torch
  torch.set_num_threads(threads)
  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def count_flops(vision, temporal) -> dict:
  """FLOPs (2 * multiply-adds) of one frame: vision on one stacked image + policy on one history window."""
  import torch
  from torch.utils.flop_counter import FlopCounterMode
  cfg = vision.cfg
  img = torch.zeros(1, 6, cfg.frame_h, cfg.frame_w, dtype=torch.uint8)
  with torch.no_grad():
    with FlopCounterMode(display=False) as fc:
      vision(img, noise=False)
    v = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
      temporal(torch.zeros(1, cfg.history, cfg.feature_dim), torch.zeros(1, cfg.history), torch.zeros(1, cfg.history, 3))
    p = fc.get_total_flops()
  return {"vision_gflops": v / 1e9, "policy_gflops": p / 1e9, "total_gflops": (v + p) / 1e9}


def time_runner(runner, frames: int, warmup: int) -> dict:
  rng = np.random.default_rng(0)
  spec = runner.frame_spec
  imgs = [rng.integers(0, 256, (spec["height"], spec["width"], 3), dtype=np.uint8) for _ in range(4)]
  runner.reset()
  for i in range(warmup):
    runner.run(imgs[i % 4], 20.0, 0)
  ts = []
  for i in range(frames):
    t = time.perf_counter()
    runner.run(imgs[i % 4], 20.0, 0)
    ts.append((time.perf_counter() - t) * 1e3)
  ts = np.array(ts)
  return {"p50_ms": float(np.percentile(ts, 50)), "p99_ms": float(np.percentile(ts, 99)), "mean_ms": float(ts.mean())}


def worker_tinygrad(model_dir: str, frames: int) -> dict:
  from modeld.model_runner import DrivingModel
  t = time.perf_counter()
  dm = DrivingModel(model_dir, "tinygrad")
  for i in range(3):  # JIT capture
    dm.run(np.zeros((dm.height, dm.width, 3), np.uint8), 20.0, 0)
  compile_s = time.perf_counter() - t
  return {**time_runner(dm, frames, warmup=2), "compile_s": compile_s}


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python bench/policy.py", __doc__)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--variants", nargs="+", default=None)
  ap.add_argument("--frames", type=int, default=None)
  ap.add_argument("--thread-counts", nargs="+", type=int, default=[1, 2], metavar="N",
                  help="the CPU thread counts to measure torch and onnxruntime at")
  ap.add_argument("--no-tinygrad", action="store_true")
  ap.add_argument("--tinygrad-threads", nargs="+", type=int, default=None, help="default: 1 with --quick, else --thread-counts")
  ap.add_argument("--_worker", nargs=2, metavar=("MODEL_DIR", "FRAMES"), help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args._worker:
    print(json.dumps(worker_tinygrad(args._worker[0], int(args._worker[1]))))
    return 0

  import torch

  from modeld.model_runner import DrivingModel
  from training.export.export import export_policy
  from training.policy.evaluate import TorchDrivingModel
  from training.policy.model import TemporalPolicy, VisionModel, get_config

  variants = args.variants or (["tiny", "T8"] if args.quick else ["tiny", "T8", "T12", "SA12"])
  frames = args.frames or (20 if args.quick else 200)
  tg_threads = args.tinygrad_threads or ([1] if args.quick else args.thread_counts)
  peak = {t: gemm_peak_gflops(t) for t in args.thread_counts}
  results = {"gemm_peak_gflops": {str(t): p for t, p in peak.items()}, "frames": frames, "variants": {}}
  tmp = Path(tempfile.mkdtemp(prefix="bench_policy_"))
  for name in variants:
    cfg = get_config(name)
    torch.manual_seed(0)
    vision, temporal = VisionModel(cfg).eval(), TemporalPolicy(cfg).eval()
    export_policy(vision, temporal, tmp / name, commit="bench")
    vision.reparameterize()
    r = {"frame": f"{cfg.frame_h}x{cfg.frame_w}x6", **count_flops(vision, temporal), "latency": {}}
    for th in args.thread_counts:
      torch.set_num_threads(th)
      with torch.inference_mode():
        r["latency"][f"torch_{th}t"] = time_runner(TorchDrivingModel(vision, temporal), frames, warmup=3)
      r["latency"][f"onnxruntime_{th}t"] = time_runner(DrivingModel(tmp / name, "onnxruntime", num_threads=th), frames, warmup=3)
    if not args.no_tinygrad:
      for th in tg_threads:
        env = {**os.environ, "NUM_CPU_THREADS": str(th)}
        p = subprocess.run([sys.executable, __file__, "--_worker", str(tmp / name), str(frames)], env=env,
                           capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
          r["latency"][f"tinygrad_{th}t"] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        else:
          r["latency"][f"tinygrad_{th}t"] = json.loads(p.stdout.strip().splitlines()[-1])
    for key, lat in r["latency"].items():
      if "p50_ms" in lat:
        th = int(key.rsplit("_", 1)[1][:-1])
        lat["gflops_per_s"] = r["total_gflops"] / (lat["p50_ms"] / 1e3)
        lat["frac_of_gemm_peak"] = lat["gflops_per_s"] / peak[th]
    best1 = min((v["p99_ms"] for k, v in r["latency"].items() if k.endswith("_1t") and "p99_ms" in v), default=None)
    r["best_p99_1t_ms"] = best1
    r["meets_20hz_p99_25ms_1core"] = best1 is not None and best1 < TARGET_P99_MS
    results["variants"][name] = r
    lat_txt = "  ".join(f"{k}: p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f} ms ({100 * v['frac_of_gemm_peak']:.0f}% peak)"
                        for k, v in r["latency"].items() if "p50_ms" in v)
    print(f"{name:5s} {r['total_gflops']:.3f} GFLOP/frame  {lat_txt}", file=sys.stderr)
  deployed = [v for k, v in results["variants"].items() if k in ("tiny", "T8")]
  results["deployed_target_met"] = bool(deployed) and all(v["meets_20hz_p99_25ms_1core"] for v in deployed)
  print(json.dumps(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
