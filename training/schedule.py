"""Learning-rate schedule shared by the VAE and world-model trainers."""
from __future__ import annotations

import math


def warmup_cosine(peak: float, step: int, warmup: int, progress: float) -> float:
  """Linear warm-up to `peak` over `warmup` steps, times a cosine decay to 0 as `progress` (fraction of the run done:
  steps or wall time, the caller decides) goes 0 -> 1."""
  warm = min(1.0, (step + 1) / max(1, warmup))
  return peak * warm * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
