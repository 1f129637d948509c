"""The extractor's training step (training.policy.train's ExtractorTask: FastViT + bottleneck + auxiliary heads on a
batch of stacked frames, forward, backward and AdamW) on oneDNN's convolution kernels, as the trainer runs it, against
torch's native kernels; with its FLOPs (torch.utils.flop_counter) as a share of a float32 matmul measured in the
same run (bench/policy.py's gemm_peak_gflops). The batch has the layout the trainer's batches have (stacked from HWC
frames: channels-last strides).

  python bench/policy_train.py [--quick] [--preset tiny] [--batch 16] [--threads 1]

Weights and frames are random (the step's cost does not depend on them). Last stdout line: one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.policy import gemm_peak_gflops  # noqa: E402
from common.cli import add_common_args, make_parser, tool_main  # noqa: E402
from training.torch_args import set_threads  # noqa: E402


def trainer_batch(cfg, batch: int, rng: np.random.Generator) -> torch.Tensor:
  """(B, 6, H, W) uint8 built as training.policy.data.vision_batch builds it: HWC frame pairs concatenated,
  transposed and stacked, so the tensor keeps channels-last strides."""
  frames = rng.integers(0, 256, (batch, 2, cfg.frame_h, cfg.frame_w, 3), dtype=np.uint8)
  return torch.from_numpy(np.stack([np.concatenate([f[0], f[1]], axis=-1).transpose(2, 0, 1) for f in frames]))


def make_step(cfg, img: torch.Tensor):
  from training.policy.model import VisionModel
  torch.manual_seed(0)
  model = VisionModel(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

  def step():
    z, aux = model(img)
    loss = z.pow(2).mean() + aux.pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
  return step


def ms_per_step(step, seconds: float, warmup: int = 3) -> float:
  for _ in range(warmup):
    step()
  n, t0 = 0, time.perf_counter()
  while n < 3 or time.perf_counter() - t0 < seconds:
    step()
    n += 1
  return (time.perf_counter() - t0) / n * 1e3


@tool_main
def main(argv=None) -> int:
  ap = make_parser(__doc__)
  ap.add_argument("--quick", action="store_true", help="short timings (under a minute)")
  ap.add_argument("--preset", default="tiny", help="training.policy.model preset")
  ap.add_argument("--batch", type=int, default=16, help="frames per step (the trainer's BATCH_SIZE)")
  add_common_args(ap, threads=1, threads_help="torch threads (the main job trains the policy on 1)")
  args = ap.parse_args(argv)
  if args.batch < 1:
    ap.error("--batch must be >= 1")
  set_threads(args.threads)
  from training.policy.model import get_config
  cfg = get_config(args.preset)
  seconds = 3.0 if args.quick else 15.0
  img = trainer_batch(cfg, args.batch, np.random.default_rng(0))
  with FlopCounterMode(display=False) as fc:
    make_step(cfg, img)()
  gflop = fc.get_total_flops() / 1e9
  peak = gemm_peak_gflops(torch.get_num_threads())
  out = {"preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(), "quick": args.quick,
         "frame": f"{cfg.frame_h}x{cfg.frame_w}", "gflop_per_step": round(gflop, 3), "matmul_gflops": round(peak, 1)}
  for name, onednn in (("onednn", True), ("native", False)):
    with torch.backends.mkldnn.flags(enabled=onednn):
      ms = ms_per_step(make_step(cfg, img), seconds)
    out[f"{name}_ms_per_step"] = round(ms, 1)
    out[f"{name}_share_of_matmul_peak"] = round(gflop / (ms * 1e-3) / peak, 3)
    print(f"{name}: {ms:.1f} ms/step ({args.batch} frames), {gflop / (ms * 1e-3):.1f} GFLOP/s "
          f"against a {peak:.0f} GFLOP/s matmul")
  out["onednn_over_native"] = round(out["native_ms_per_step"] / out["onednn_ms_per_step"], 2)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
