"""In-memory SegmentData for policy tests: a straight drive at a per-segment speed whose frames encode the
speed (brightness) and lateral offset (a bright stripe's column), with consistent plan/lane/lead labels."""
import numpy as np

from common.modelconstants import IDX_N, PLAN_WIDTH, T_IDXS
from training.policy.data import SegmentData


def make_segment(cfg, n=60, speed=15.0, offset=0.0, seed=0, labels=True, name="synthetic/0"):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 40, (n, cfg.frame_h, cfg.frame_w, 3), dtype=np.uint8)
  frames += np.uint8(min(200, 8 * speed))
  col = int(np.clip(cfg.frame_w / 2 + offset * 10, 0, cfg.frame_w - 4))
  frames[:, cfg.frame_h // 2:, col:col + 3] = 255
  plan = np.zeros((n, IDX_N, PLAN_WIDTH), np.float32)
  plan[:, :, 0] = speed * T_IDXS
  plan[:, :, 1] = -offset
  plan[:, :, 3] = speed
  valid = np.ones((n, IDX_N), bool)
  valid[-5:, 20:] = False
  lanes = np.zeros((n, 2, IDX_N, 2), np.float32)
  lanes[:, 0, :, 0] = -1.8 - offset
  lanes[:, 1, :, 0] = 1.8 - offset
  edges = lanes * 2
  lead = np.zeros((n, 5), np.float32)
  lead[:, :] = [1.0, 30.0, 0.0, -1.0, 0.0]
  return SegmentData(
    name=name, frames=frames, v_ego=np.full(n, speed, np.float32), desire=np.zeros(n, np.int64), plan=plan,
    plan_valid=valid, action=np.tile(np.array([0.0, 0.1], np.float32), (n, 1)), action_valid=np.ones(n, bool),
    lane_lines=lanes, road_edges=edges, lead=lead, has_lanes=labels, has_edges=labels, has_lead=labels)
