"""Learning-rate schedule of every trainer (training.trainer: the VAE, the world model, both policy stages, the
on-policy learner)."""
from __future__ import annotations

import math


def warmup_cosine(peak: float, step: int, warmup: int, progress: float, min_frac: float = 0.0) -> float:
  """Linear warm-up to `peak` over `warmup` steps, times a cosine decay from 1 to `min_frac` (the floor, a fraction
  of `peak`; 0 by default) as `progress` (fraction of the run done: steps or wall time, the caller decides) goes
  0 -> 1."""
  warm = min(1.0, (step + 1) / max(1, warmup))
  decay = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
  return peak * warm * (min_frac + (1 - min_frac) * decay)
