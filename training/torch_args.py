"""The shared --threads and --device options (common/cli.py) applied to torch, in one place, and the process-wide
torch settings a tool makes at its set-up.

common/cli.py defines the options and stays free of torch (it runs on the device); the torch tools call
set_threads / resolve_device here instead of each interpreting the values on its own. Process-wide switches belong
in a tool's main, never in a constructor: building a model or a trainer leaves the process's settings as they were.
"""
from __future__ import annotations

import torch


def set_threads(threads: int | None) -> None:
  """--threads N: torch's intra-op threads; 0 or None leaves torch's default (one per core)."""
  if threads:
    torch.set_num_threads(threads)


def resolve_device(device: str | None) -> torch.device:
  """--device D: that torch device; None is cuda when available, else cpu."""
  if device:
    return torch.device(device)
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_native_cpu_convolutions(device: torch.device | str = "cpu") -> None:
  """For the policy networks on CPU, process-wide: torch's native convolution kernels instead of oneDNN's. oneDNN's
  CPU convolution backward can abort ("double free") on some inputs of these networks (camera frames; uniform noise
  does not trigger it); the native kernels are about 10% slower. No effect on other devices."""
  if torch.device(device).type == "cpu":
    torch.backends.mkldnn.enabled = False
