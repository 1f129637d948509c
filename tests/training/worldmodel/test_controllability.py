"""pose_controllability measures what it claims: a world model whose view turns exactly as camera geometry says
passes, with fraction_of_expected ~ 1; one that ignores steering, or turns the wrong way, fails."""
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import training.worldmodel.evaluate as evaluate_mod
from training.data.frames import model_frame_focal
from training.worldmodel.evaluate import CONTROL_MIN_FRACTION, pose_controllability

H, W, C, FPS = 128, 256, 3, 5.0


class IdentityCodec:
  """'Latents' are the images themselves (3,H,W) in [-1, 1]."""

  def decode(self, lat):
    return lat


def _scene(seed):
  rng = np.random.default_rng(seed)
  img = cv2.GaussianBlur(rng.uniform(-1, 1, (H, W)).astype(np.float32), (0, 0), 2.0)
  return torch.from_numpy(img / np.abs(img).max()).expand(3, H, W).clone()


def _fake_rollout(gain):
  """A sampler that shows the last context frame turned by gain x the geometric shift of the future yaw."""
  focal = model_frame_focal(W)

  def rollout(model, ctx_latents, ctx_transitions, ctx_t, future_transitions, future_t, **kw):
    yaw = torch.cumsum(future_transitions[0, :, 5], 0)            # z-down: negative = left turn
    frames = [torch.roll(ctx_latents[0, -1], int(round(-gain * focal * math.tan(float(y)))), dims=-1) for y in yaw]
    return {"frames": torch.stack(frames)[None]}
  return rollout


@pytest.mark.parametrize("gain,passes", [(1.0, True), (0.0, False), (-1.0, False), (0.1, False)])
def test_controllability_verdict_follows_the_measured_shift(monkeypatch, gain, passes):
  monkeypatch.setattr(evaluate_mod, "rollout", _fake_rollout(gain))
  model = SimpleNamespace(cfg=SimpleNamespace(context_frames=C, fps=FPS, frame_hw=(H, W), warp_cam_height=1.22,
                                              warp_max_depth=150.0, warp_mode="bilinear"))
  items = [{"latents": torch.stack([_scene(s)] * (C + 1)), "t_world": torch.arange(C + 1) / FPS,
            "transitions": torch.zeros(C + 1, 6)} for s in range(2)]   # turning on the spot: rotation only
  out = pose_controllability(model, IdentityCodec(), items, [(0, 0), (1, 0)])
  assert out["moves_as_expected"] is passes
  assert out["fraction_of_expected"] == pytest.approx(gain, abs=0.05)
  assert out["moves_in_turn_direction"] is (gain > 0)
  # the geometric reference (the last frame re-projected to the turned poses) moves with the camera whatever the model
  assert out["geometry_fraction_of_expected"] == pytest.approx(1.0, abs=0.1)
  assert CONTROL_MIN_FRACTION == 0.25


def test_a_shift_estimate_without_a_peak_is_dropped_not_averaged(monkeypatch):
  """cv2.phaseCorrelate returns an impossible shift (tens of frame widths, with a response near 0) when it finds no
  peak; one such value must not decide the verdict."""
  monkeypatch.setattr(evaluate_mod, "rollout", _fake_rollout(1.0))
  real, calls = cv2.phaseCorrelate, []

  def flaky(a, b, window=None):
    calls.append(1)
    r = real(a, b, window)
    return ((-13480.3, r[0][1]), 3e-6) if len(calls) == 3 else r
  monkeypatch.setattr(cv2, "phaseCorrelate", flaky)
  model = SimpleNamespace(cfg=SimpleNamespace(context_frames=C, fps=FPS, frame_hw=(H, W), warp_cam_height=1.22,
                                              warp_max_depth=150.0, warp_mode="bilinear"))
  items = [{"latents": torch.stack([_scene(s)] * (C + 1)), "t_world": torch.arange(C + 1) / FPS,
            "transitions": torch.zeros(C + 1, 6)} for s in range(3)]
  out = pose_controllability(model, IdentityCodec(), items, [(0, 0), (1, 0), (2, 0)])
  assert out["shifts_without_peak"] == 1 and out["moves_as_expected"]
  assert out["fraction_of_expected"] == pytest.approx(1.0, abs=0.05)
