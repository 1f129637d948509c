"""Reprojective simulator (`--sim reprojective`), the classic baseline of paper §3: the logged frame nearest to the car
is re-projected to the car's deviated pose, and the expert is a smooth return to the logged path.

Re-projection (training.worldmodel.pose_warp.source_pixels at full resolution, cv2.remap): every pixel of the
deviated view casts its ray; a ray that meets the flat road plane (camera CAM_HEIGHT above it) within 150 m sees the
road there (plane-induced homography), any other ray sees the scene at infinity (rotation only). The source frame is
the logged model frame (already in the policy's frame spec, as the policy was trained on it). Everything that is not
road or far away (cars, poles, trees, the road's own elevation) is re-projected as if it were, and pixels the
logged camera never saw repeat the image border: the usual artifacts of this simulator, left in on purpose.
Generated segments carry no depth maps in ground_truth/, so the flat road + infinity model is all there is.

Codec (`codec`, RolloutConfig.rep_codec, a VAE folder; a diagnostic): each re-projected frame is resized to the
VAE's frame (bilinear), encoded (posterior mean), decoded, clamped and area-resized back to the policy's frame, the way
a world model's latents reach the policy. With everything else the reprojective run's, it measures what the codec
alone costs, apart from what generating the frames costs (the world-model row).

Logged frame used: the one whose logged position is nearest to the car (searched forward from the previous one),
so the view follows where the car is, not the clock. Expert reference: the logged camera positions from there on
(simulator.return_plan), at the logged speed profile; in a "shift" lane change the same path one lane over
(Simulator.logged_reference).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from tools.sim.vehicle import CAM_HEIGHT
from training.onpolicy.simulator import (
  RETURN_SPEED,
  RETURN_TIME,
  ReferencePathSimulator,
  nearest_logged_frame,
  policy_image,
  world_to_car,
)
from training.worldmodel.pose_warp import source_pixels

AHEAD_FRAMES = 260        # logged frames (13 s) of path handed to the expert
SEARCH_FRAMES = 40        # frames searched ahead of the last nearest frame


def reproject(frame: np.ndarray, dx: float, dy: float, dyaw: float, cam_height: float = CAM_HEIGHT) -> np.ndarray:
  """(H, W, 3) model frame seen from a camera displaced by (dx forward, dy right) metres and turned dyaw rad (+ right)
  in the logged camera's car frame."""
  H, W = frame.shape[:2]
  transition = torch.tensor([[dx, dy, 0.0, 0.0, 0.0, dyaw]], dtype=torch.float64)
  src = source_pixels(transition, (H, W), downsample=1, cam_height=cam_height)[0].numpy().astype(np.float32)
  return cv2.remap(np.ascontiguousarray(frame), src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ReprojectiveSimulator(ReferencePathSimulator):
  name = "reprojective"
  lane_change_modes = ("start", "shift")

  def __init__(self, frame_spec: dict, vehicle=None, seed: int = 0, return_time: float = RETURN_TIME,
               return_speed: float | None = RETURN_SPEED, codec=None):
    super().__init__(frame_spec, vehicle, seed, return_time, return_speed)
    self.codec = None
    if codec is not None:
      from training.vae import load_vae
      self.codec = load_vae(codec)

  @torch.no_grad()
  def _through_codec(self, img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> the same frame after the codec's encode + decode at its own resolution."""
    from training.data.frames import images_to_tensor
    h, w = self.codec.frame_hw
    big = img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return policy_image(self.codec.decode(self.codec.encode(images_to_tensor(big)[None])), self.frame_spec)

  def _start(self) -> None:
    seg = self.seg
    if seg.frames.shape[1:3] != (int(self.frame_spec["height"]), int(self.frame_spec["width"])):
      raise ValueError(f"{seg.path}: logged frames {seg.frames.shape[1:3]} are not the policy's frame "
                       f"{self.frame_spec['height']}x{self.frame_spec['width']}")
    self.nearest = self.frame0

  def _nearest_frame(self, pose: np.ndarray) -> int:
    self.nearest = nearest_logged_frame(self.seg.pose_world, pose, self.nearest, SEARCH_FRAMES)
    return self.nearest

  def _observe(self):
    seg = self.seg
    pose = self.car_pose()
    j = self._nearest_frame(pose)
    log_pose = seg.pose_world[j, [0, 1, 5]]
    rel = world_to_car(pose[None, :2], log_pose)[0]
    dyaw = float((pose[2] - log_pose[2] + np.pi) % (2 * np.pi) - np.pi)
    img = reproject(seg.frames[j], float(rel[0]), float(rel[1]), dyaw)
    if self.codec is not None:
      img = self._through_codec(img)
    ref = world_to_car(self.logged_reference(max(j - 5, 0), j + AHEAD_FRAMES), pose)
    ref = ref[np.argsort(ref[:, 0])]
    offset = -float(np.interp(0.0, ref[:, 0], ref[:, 1]))     # + = car right of the logged path
    return img, ref, None, offset
