"""The shared --threads and --device options (common/cli.py) applied to torch, in one place.

common/cli.py defines the options and stays free of torch (it runs on the device); the torch tools call
set_threads / resolve_device here instead of each interpreting the values on its own.
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
