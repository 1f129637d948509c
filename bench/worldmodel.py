"""World-model benchmarks: sampling speed with/without the KV cache, training throughput, peak memory, and the
fraction of a measured GEMM peak that training fwd/bwd reaches.

  python bench/worldmodel.py [--quick] [--threads N] [--device cpu|cuda]

Prints one JSON object on its last stdout line. All ratios are measured in the same run.
Sampling: autoregressive generation with 15 Euler steps per frame at 10 context + 5 anchor frames (the paper's
setting); "uncached" re-runs the full model over [anchors, history, frame] at every Euler step (sample.py's
reference path), "cached" runs only the new frame's tokens against cached keys/values. On CUDA "cached" replays each
frame's Euler steps as a CUDA graph (what rollout does there by default) and "cached_eager" launches them one by one.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from common.cli import add_common_args, make_parser, tool_main  # noqa: E402
from training.torch_args import resolve_device, set_threads  # noqa: E402
from training.worldmodel.dit import PRESETS, WindowBatch, build_model, count_params, get_config, rectified_flow_loss  # noqa: E402
from training.worldmodel.sample import Anchors, SampleOptions, rollout  # noqa: E402
from training.worldmodel.train import bf16_supported  # noqa: E402


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def gemm_peak_gflops(device, sizes=(512, 1024, 2048), reps: int = 5, dtype=torch.float32) -> float:
  """Best GEMM rate over a few square sizes (the fastest size differs between fp32 and bf16 kernels)."""
  peak = 0.0
  for n in sizes:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
      a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
      t = time.perf_counter()
      a @ b
      _sync(device)
      best = min(best, time.perf_counter() - t)
    peak = max(peak, 2 * n ** 3 / best / 1e9)
  return peak


def train_flops(cfg, batch: int) -> float:
  """Analytic fwd+bwd FLOPs of one training step (3x forward): linear layers of the blocks + attention matmuls."""
  P = cfg.tokens_per_frame
  L = (cfg.context_frames + 1 + cfg.anchor_frames) * P
  W, hid = cfg.width, int(cfg.width * cfg.mlp_ratio)
  per_token_linear = 2 * (4 * W * W + 2 * W * hid)                      # qkv+proj, mlp
  per_frame_adaln = 2 * 6 * W * W                                       # adaLN runs once per frame (dit.DiTBlock)
  attn = 2 * 2 * L * L * W                                              # QK^T and AV
  fwd = cfg.depth * (L * per_token_linear + (L // P) * per_frame_adaln + attn)
  return 3.0 * fwd * batch


def make_batch(cfg, B, device):
  F, A, h, w = cfg.context_frames + 1, cfg.anchor_frames, cfg.latent_h, cfg.latent_w
  return WindowBatch(latents=torch.randn(B, F, 4, h, w, device=device), transitions=torch.randn(B, F, 6, device=device),
                     t_world=torch.rand(B, F, device=device) * 50, anchors=torch.randn(B, A, 4, h, w, device=device),
                     anchor_pose=torch.randn(B, A, 6, device=device), anchor_t=torch.rand(B, A, device=device) * 50,
                     anchor_valid=torch.ones(B, dtype=torch.bool, device=device),
                     plan=torch.randn(B, 33, 15, device=device),
                     plan_mask=torch.ones(B, 33, dtype=torch.bool, device=device))


def bench_training(name, device, batch, steps, gemm_gflops, bf16: bool | None = None, **overrides) -> dict:
  """bf16=None: bf16 autocast where the trainer would use it (training.worldmodel.train.bf16_supported).
  overrides: DiTConfig fields."""
  cfg = get_config(name, **overrides)
  torch.manual_seed(0)
  m = build_model(cfg).to(device)
  opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
  b = make_batch(cfg, batch, device)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  use_bf16 = bf16_supported(device) if bf16 is None else bf16
  times = []
  for i in range(steps + 1):
    _sync(device)
    t = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
      loss, _ = rectified_flow_loss(m, b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(device)
    if i > 0:   # first step warms up
      times.append(time.perf_counter() - t)
  dt = sorted(times)[len(times) // 2]
  frames = batch * (cfg.context_frames + 1 + cfg.anchor_frames)
  out = {"params": count_params(m), "batch": batch, "bf16_autocast": use_bf16, "step_s": round(dt, 4),
         "windows_per_s": round(batch / dt, 2), "frames_per_s": round(frames / dt, 1),
         "model_tflops_per_s": round(train_flops(cfg, batch) / dt / 1e12, 4)}
  out["fraction_of_gemm_peak"] = round(train_flops(cfg, batch) / dt / 1e9 / gemm_gflops, 3)
  if device.type == "cuda":
    out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
  else:
    out["process_peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)
  return out


@torch.no_grad()
def bench_sampling(name, device, n_frames: int, steps: int = 15, modes=("cached", "uncached"),
                   steady: bool = True) -> dict:
  """modes: "cached" (KV cache; a CUDA graph per frame on CUDA), "cached_eager" (KV cache, kernels launched one by
  one), "uncached"."""
  """steady=True: per additional frame, (T(n+1) - T(1)) / n; False: only the end-to-end cost of ONE frame
  (context prefill + 15 Euler steps), for models too slow to time twice."""
  cfg = get_config(name)
  torch.manual_seed(0)
  m = build_model(cfg).to(device).eval()
  for p in m.parameters():   # non-zero adaLN so every path does real work
    p.data.normal_(0, 0.02)
  C, A, h, w = cfg.context_frames, cfg.anchor_frames, cfg.latent_h, cfg.latent_w
  kw = dict(ctx_latents=torch.randn(1, C, 4, h, w, device=device), ctx_transitions=torch.randn(1, C, 6, device=device),
            ctx_t=torch.arange(C, device=device).float()[None] * 0.2,
            future_transitions=torch.randn(1, n_frames, 6, device=device),
            future_t=(C + torch.arange(n_frames, device=device).float())[None] * 0.2,
            anchors=Anchors(torch.randn(1, A, 4, h, w, device=device), torch.randn(1, A, 6, device=device),
                            torch.full((1, A), 8.0, device=device)))
  out = {"context_frames": C, "anchor_frames": A, "euler_steps": steps, "frames": n_frames}

  def run(mode, n, repeats: int = 1):
    """Best of `repeats` wall times of a rollout of n frames (the minimum filters out other load on the machine)."""
    args = dict(kw, future_transitions=kw["future_transitions"][:, :n], future_t=kw["future_t"][:, :n])
    best = float("inf")
    for _ in range(repeats):
      _sync(device)
      t = time.perf_counter()
      opts = SampleOptions(steps=steps, with_plans=False, use_cache=mode != "uncached",
                           cuda_graph=(mode == "cached" and device.type == "cuda"))
      r = rollout(m, opts=opts, generator=torch.Generator(device=device).manual_seed(0), **args)
      _sync(device)
      best = min(best, time.perf_counter() - t)
    return best, r

  res = {}
  if not steady:
    for mode in modes:
      t1, _ = run(mode, 1)
      out[f"{mode}_s_first_frame_incl_context"] = round(t1, 3)
    return out
  for mode in modes:
    t1, _ = run(mode, 1, repeats=3)
    tn, res[mode] = run(mode, n_frames + 1, repeats=2)
    # steady state: cost of each additional frame (context setup excluded); end-to-end includes the setup
    out[f"{mode}_s_per_frame"] = round((tn - t1) / n_frames, 4)
    out[f"{mode}_frames_per_s"] = round(n_frames / max(tn - t1, 1e-9), 3)
    out[f"{mode}_end_to_end_frames_per_s"] = round((n_frames + 1) / tn, 3)
  if "cached" in modes and "uncached" in modes:
    out["kv_cache_speedup"] = round(out["cached_frames_per_s"] / out["uncached_frames_per_s"], 2)
    out["kv_cache_speedup_end_to_end"] = round(out["cached_end_to_end_frames_per_s"] /
                                               out["uncached_end_to_end_frames_per_s"], 2)
    out["max_abs_diff"] = float((res["cached"]["frames"] - res["uncached"]["frames"]).abs().max())
  if "cached_eager" in modes:
    out["kv_cache_speedup_eager"] = round(out["cached_eager_frames_per_s"] / out["uncached_frames_per_s"], 2)
    out["cuda_graph_speedup"] = round(out["cached_frames_per_s"] / out["cached_eager_frames_per_s"], 2)
    out["graph_vs_eager_max_abs_diff"] = float((res["cached"]["frames"] - res["cached_eager"]["frames"]).abs().max())
  return out


@tool_main
def main(argv=None):
  ap = make_parser("python bench/worldmodel.py", __doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="under a minute on 2 CPU cores")
  add_common_args(ap, threads=0, threads_help="torch CPU threads", device=None)
  args = ap.parse_args(argv)
  set_threads(args.threads)
  device = resolve_device(args.device)
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
  result = {"device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "params": {}}
  for name, cfg in PRESETS.items():
    with torch.device("meta"):
      result["params"][name] = count_params(build_model(cfg))
  train_bf16 = bf16_supported(device)   # training runs in the dtype the trainer would use; the peak is measured in it
  gemm = gemm_peak_gflops(device, dtype=torch.bfloat16 if train_bf16 else torch.float32)
  result["gemm_peak_gflops"] = round(gemm, 1)
  result["gemm_peak_dtype"] = "bfloat16" if train_bf16 else "float32"
  modes = ("cached", "cached_eager", "uncached") if device.type == "cuda" else ("cached", "uncached")
  result["sampling"] = {"tiny": bench_sampling("tiny", device, n_frames=6 if args.quick else 10, modes=modes)}
  if device.type == "cuda":
    result["sampling"]["250M"] = bench_sampling("250M", device, n_frames=2 if args.quick else 10, modes=modes)
  elif args.quick:
    result["sampling"]["250M"] = {"skipped": "CPU --quick: 250M generation takes tens of seconds per frame here; "
                                             "run without --quick for its cached per-frame cost"}
  else:
    result["sampling"]["250M"] = bench_sampling("250M", device, n_frames=1, modes=("cached",), steady=False)
  result["training"] = {"tiny": bench_training("tiny", device, batch=8, steps=2 if args.quick else 5,
                                               gemm_gflops=gemm)}
  if device.type == "cpu" and bf16_supported(device):   # what bf16 autocast buys on this CPU, same run
    gemm32 = gemm_peak_gflops(device, dtype=torch.float32)
    result["gemm_peak_gflops_float32"] = round(gemm32, 1)
    fp32 = bench_training("tiny", device, batch=8, steps=2 if args.quick else 5, gemm_gflops=gemm32, bf16=False)
    result["training"]["tiny_fp32"] = fp32
    result["tiny_bf16_training_speedup"] = round(fp32["step_s"] / result["training"]["tiny"]["step_s"], 2)
  if not args.quick or device.type == "cuda":
    result["training"]["small"] = bench_training("small", device, batch=4 if device.type == "cpu" else 32,
                                                 steps=2 if device.type == "cpu" else 10, gemm_gflops=gemm)
  if device.type == "cuda":
    for name in ("250M", "500M", "1B"):
      result["training"][name] = bench_training(name, device, batch=8, steps=5, gemm_gflops=gemm)
  tiny = result["sampling"]["tiny"]
  # tiny re-projects the previous latent once per generated frame (the cache keeps it for the 15 Euler steps):
  # its share of a cached frame's cost
  from training.worldmodel.pose_warp import warp_previous
  cfg = get_config("tiny")
  z = torch.randn(1, 4, cfg.latent_h, cfg.latent_w, device=device)
  tr = torch.tensor([[4.4, 0.0, 0.0, 0.0, 0.0, 0.02]], device=device)
  warp_previous(z, tr, cfg.frame_hw)
  _sync(device)
  t = time.perf_counter()
  for _ in range(50):
    warp_previous(z, tr, cfg.frame_hw)
  _sync(device)
  warp_s = (time.perf_counter() - t) / 50
  result["prev_warp_ms"] = round(1000 * warp_s, 3)
  result["prev_warp_share_of_cached_frame"] = round(warp_s / tiny["cached_s_per_frame"], 4)
  result["kv_cache_speedup_tiny"] = tiny["kv_cache_speedup"]
  result["kv_cache_target_met"] = tiny["kv_cache_speedup"] >= 5.0
  if "250M" in result["sampling"] and "kv_cache_speedup" in result["sampling"]["250M"]:
    result["kv_cache_speedup_250M"] = result["sampling"]["250M"]["kv_cache_speedup"]
    result["kv_cache_target_met"] = result["kv_cache_target_met"] and result["kv_cache_speedup_250M"] >= 5.0
  print(json.dumps(result))


if __name__ == "__main__":
  raise SystemExit(main())
