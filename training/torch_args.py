"""The shared --threads and --device options (common/cli.py) applied to torch, in one place, and the process-wide
torch settings a tool makes at its set-up.

common/cli.py defines the options and stays free of torch (it runs on the device); the torch tools call
set_threads / resolve_device here instead of each interpreting the values on its own. Process-wide switches belong
in a tool's main, never in a constructor: building a model or a trainer leaves the process's settings as they were.
"""
from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def onednn_inference():
  """oneDNN's convolution kernels inside the block, whatever the process chose (torch.backends.mkldnn.enabled: torch's
  default is on, and every tool here leaves it on), and the process's setting back after it. The world-model
  simulator's VAE decodes and encodes a frame per step under it: on 2 CPU cores oneDNN's forward is 2-3x faster than
  the native kernels on its 128x256 frames (bench/onpolicy.py), with outputs equal to float rounding."""
  before = torch.backends.mkldnn.enabled
  torch.backends.mkldnn.enabled = True
  try:
    yield
  finally:
    torch.backends.mkldnn.enabled = before
