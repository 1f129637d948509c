"""The frozen codec on a CPU (training.vae.FrozenVAE): encode and decode throughput of the tiny preset's
AutoencoderKL at its 128x256 frames, as FrozenVAE runs it (oneDNN's convolution kernels, CPU_CHUNK frames at a time)
against the whole batch in one call and against torch's native kernels, and its GFLOP/s against a float32 matmul
measured in the same run. The codec is built untrained from its preset: the cost of a frame does not depend on the
weights. Every latent of the world model's cache is one encode; every frame the world-model simulator shows the policy
is one decode.

  python bench/codec.py [--quick] [--batch N] [--threads T]

Last stdout line: one JSON object.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli import add_common_args, make_parser, tool_main  # noqa: E402
from training.torch_args import set_threads  # noqa: E402
from training.vae import VAE_PRESETS, FrozenVAE, load_vae, make_autoencoder  # noqa: E402


def ms_per_frame(fn, x: torch.Tensor, seconds: float) -> float:
  """Mean ms per frame of fn(x) (x holds the batch) over at least `seconds` after one warm-up call."""
  fn(x)
  n, t0 = 0, time.perf_counter()
  while n == 0 or time.perf_counter() - t0 < seconds:
    fn(x)
    n += 1
  return (time.perf_counter() - t0) / n / x.shape[0] * 1e3


def matmul_gflops(seconds: float, size: int = 1024) -> float:
  a, b = torch.randn(size, size), torch.randn(size, size)
  ms = ms_per_frame(lambda x: torch.mm(a, b), torch.zeros(1), seconds)
  return 2 * size ** 3 / (ms * 1e-3) / 1e9


def gflop_per_frame(fn, x: torch.Tensor) -> float:
  with FlopCounterMode(display=False) as counter:
    fn(x[:1])
  return counter.get_total_flops() / 1e9


@tool_main
def main(argv=None) -> None:
  ap = make_parser("python bench/codec.py")
  ap.add_argument("--quick", action="store_true", help="0.5 s per measurement instead of 3")
  ap.add_argument("--batch", type=int, default=16, help="frames per call (default 16)")
  add_common_args(ap, threads=0, threads_help="torch intra-op threads (0: one per core)", seed=0)
  args = ap.parse_args(argv)
  if args.batch < 1:
    ap.error("--batch must be >= 1")
  set_threads(args.threads)
  torch.manual_seed(args.seed)
  seconds = 0.5 if args.quick else 3.0
  cfg = VAE_PRESETS["tiny"]
  with tempfile.TemporaryDirectory() as d:
    make_autoencoder(cfg).save_pretrained(d)
    vae = load_vae(d)
  imgs = torch.rand(args.batch, 3, cfg.frame_h, cfg.frame_w) * 2 - 1
  lat = vae.encode(imgs)
  chunks = dict(FrozenVAE.CPU_CHUNK)
  out: dict = {"threads": torch.get_num_threads(), "batch": args.batch, "frame": f"{cfg.frame_h}x{cfg.frame_w}",
               "cpu_chunk": chunks, "quick": args.quick}
  peak = matmul_gflops(seconds)
  out["matmul_gflops"] = round(peak, 1)
  for what, fn, x in (("encode", vae.encode, imgs), ("decode", vae.decode, lat)):
    as_run = ms_per_frame(fn, x, seconds)
    FrozenVAE.CPU_CHUNK = {**chunks, what: args.batch}
    whole = ms_per_frame(fn, x, seconds)
    FrozenVAE.CPU_CHUNK = chunks
    FrozenVAE.onednn, torch.backends.mkldnn.enabled = False, False    # the process's kernels, set to the native ones
    native = ms_per_frame(fn, x, seconds)
    FrozenVAE.onednn, torch.backends.mkldnn.enabled = True, True
    gflop = gflop_per_frame(fn, x)
    out.update({f"{what}_ms_per_frame": round(as_run, 2), f"{what}_whole_batch_ms_per_frame": round(whole, 2),
                f"{what}_native_kernels_ms_per_frame": round(native, 2),
                f"{what}_chunked_over_whole_batch": round(whole / as_run, 2),
                f"{what}_onednn_over_native": round(native / as_run, 2),
                f"{what}_frames_per_s": round(1e3 / as_run, 1), f"{what}_gflop_per_frame": round(gflop, 3),
                f"{what}_share_of_matmul_peak": round(gflop / (as_run * 1e-3) / peak, 2)})
    print(f"{what}: {as_run:.1f} ms/frame as run (chunks of {chunks[what]}), {whole:.1f} in one batch of "
          f"{args.batch}, {native:.1f} on the native kernels; {gflop:.2f} GFLOP, "
          f"{gflop / (as_run * 1e-3):.0f} GFLOP/s against a {peak:.0f} GFLOP/s matmul")
  print(json.dumps(out))


if __name__ == "__main__":
  raise SystemExit(main())
