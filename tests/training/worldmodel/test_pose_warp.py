"""pose_warp: the previous latent re-projected into the next view, checked against independent pinhole geometry."""
import numpy as np
import pytest
import torch

from common.modelconstants import MODEL_FRAME_FOCAL, MODEL_FRAME_W
from common.transformations.camera import MODEL_FRAME_CY_FRAC
from common.transformations.orientation import euler2rot
from training.worldmodel.pose_warp import euler2rot_torch, source_pixels, warp_previous

HW = (128, 256)
FOCAL = MODEL_FRAME_FOCAL * HW[1] / MODEL_FRAME_W
CX, CY = HW[1] / 2, MODEL_FRAME_CY_FRAC * HW[0]


def project(X):
  """car-frame point (x fwd, y right, z down) -> model-frame pixel."""
  return np.array([CX + FOCAL * X[1] / X[0], CY + FOCAL * X[2] / X[0]])


def test_euler_matches_numpy():
  rpy = np.random.default_rng(0).normal(0, 0.5, (5, 3))
  assert np.allclose(euler2rot_torch(torch.tensor(rpy)).numpy(), euler2rot(rpy), atol=1e-12)


def test_zero_transition_is_identity():
  z = torch.randn(3, 4, 16, 32)
  assert torch.allclose(warp_previous(z, torch.zeros(3, 6), HW), z, atol=1e-5)


@pytest.mark.parametrize("trans", [(4.5, 0.1, 0.0, 0.0, 0.0, 0.03), (5.0, -0.2, 0.02, 0.001, 0.004, -0.05)])
def test_road_and_far_cells_come_from_where_geometry_says(trans):
  """For a cell of the next frame, find the 3D point it sees (road or infinity), move it into the previous frame with
  the transition (next frame's pose in the previous frame) and project it: source_pixels must agree."""
  src = source_pixels(torch.tensor([trans], dtype=torch.float64), HW)[0].numpy()   # (16,32,2)
  R, t = euler2rot(np.array(trans[3:])), np.array(trans[:3])
  checked = {"road": 0, "far": 0}
  for v, u in [(12, 16), (15, 3), (14, 28), (2, 16), (0, 0)]:
    px, py = (u + 0.5) * 8 - 0.5, (v + 0.5) * 8 - 0.5
    ray = np.array([1.0, (px - CX) / FOCAL, (py - CY) / FOCAL])
    if ray[2] > 0 and 1.22 / ray[2] * np.linalg.norm(ray) < 150:
      want = project(R @ (1.22 / ray[2] * ray) + t)
      checked["road"] += 1
    else:
      want = project(R @ ray)
      checked["far"] += 1
    assert np.allclose(src[v, u], want, atol=1e-6), (v, u)
  assert checked["road"] >= 3 and checked["far"] >= 2


def test_turning_right_moves_content_left_by_focal_tan():
  yaw = 0.04
  z = torch.zeros(1, 1, 16, 32)
  z[0, 0, :, 20] = 1.0                                            # a vertical line at latent column 20
  out = warp_previous(z, torch.tensor([[0, 0, 0, 0, 0, yaw]]), HW)
  cols = torch.arange(32, dtype=torch.float32)
  row = out[0, 0, 1]                                              # sky row: rotation only
  centre = float((row * cols).sum() / row.sum())
  # the column's pixel x = 20.5*8-0.5; after a right turn it is at the pixel whose source is that x
  x_prev = 20.5 * 8 - 0.5
  x_next = CX + FOCAL * np.tan(np.arctan((x_prev - CX) / FOCAL) - yaw)
  assert centre == pytest.approx((x_next + 0.5) / 8 - 0.5, abs=0.1)
  assert centre < 20


def test_driving_forward_moves_the_road_down():
  z = torch.zeros(1, 1, 16, 32)
  z[0, 0, 10, :] = 1.0                                            # a horizontal stripe on the road
  out = warp_previous(z, torch.tensor([[3.0, 0, 0, 0, 0, 0]]), HW)
  rows = torch.arange(16, dtype=torch.float32)
  col = out[0, 0, :, 16]
  assert float((col * rows).sum() / col.sum()) > 10.5             # closer: lower in the image


def test_bicubic_keeps_more_detail_than_bilinear():
  """A sideways shift by half a latent cell: bilinear averages neighbouring cells (a low-pass), bicubic keeps more
  of a fine pattern; with no motion both are the identity. The config's mode reaches the model's warp, and saved
  configs from before the field keep bilinear."""
  from training.worldmodel.dit import DiTConfig, get_config
  z = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0))
  assert torch.allclose(warp_previous(z, torch.zeros(1, 6), HW, mode="bicubic"), z, atol=1e-5)
  yaw = float(np.arctan(4.0 / FOCAL))            # about half a latent cell (4 px) at the image centre
  t = torch.tensor([[0, 0, 0, 0, 0, yaw]])
  inner = (slice(None), slice(None), slice(2, 14), slice(4, 28))
  energy = {m: float(warp_previous(z, t, HW, mode=m)[inner].diff(dim=-1).pow(2).mean())
            for m in ("bilinear", "bicubic")}
  assert energy["bicubic"] > 1.3 * energy["bilinear"]
  with pytest.raises(ValueError, match="mode"):
    warp_previous(z, t, HW, mode="nearest")
  with pytest.raises(ValueError, match="warp_mode"):
    get_config("tiny", warp_mode="lanczos")
  bicubic = get_config("tiny", warp_mode="bicubic")
  assert DiTConfig.from_dict(bicubic.to_dict()) == bicubic
  saved = {k: v for k, v in bicubic.to_dict().items() if k != "warp_mode"}
  assert DiTConfig.from_dict(saved).warp_mode == "bilinear"
  from training.worldmodel.dit import build_model
  model = build_model(get_config("tiny", warp_mode="bicubic", depth=1, width=32, heads=2, plan_hidden=32,
                                 plan_blocks=1))
  assert torch.equal(model.log_predecessor(z, t), warp_previous(z, t, HW, mode="bicubic"))
  assert not torch.allclose(model.log_predecessor(z, t), warp_previous(z, t, HW, mode="bilinear"))


def test_bad_shapes():
  with pytest.raises(ValueError, match="transition"):
    warp_previous(torch.zeros(2, 4, 16, 32), torch.zeros(3, 6), HW)
  with pytest.raises(ValueError, match="do not match"):
    warp_previous(torch.zeros(2, 4, 8, 16), torch.zeros(2, 6), HW)
