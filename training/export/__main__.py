"""python -m training.export --run RUN --out DIR

Loads the newest checkpoint of a policy run (training.policy.model.load_policy_run), reparameterizes the FastViT and
writes driving_vision.onnx + driving_policy.onnx with metadata (see training/export/export.py), then checks that
onnxruntime reproduces PyTorch on a random input before reporting success: a non-finite output or a difference
above ORT_TOLERANCE (relative to the output's scale) fails the export (exit 1), whatever the files look like.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from common.cli import emit_result, make_parser, tool_main
from common.modelconstants import DESIRE_LEN
from training.export.export import export_policy
from training.policy.model import PolicyExport, load_policy_run

ORT_TOLERANCE = 1e-3   # max |ort - torch| / max(1, max |torch|), per output


@tool_main
def main(argv=None) -> int:
  ap = make_parser("python -m training.export", __doc__)
  ap.add_argument("--run", type=Path, required=True)
  ap.add_argument("--out", type=Path, required=True)
  args = ap.parse_args(argv)
  try:
    vision, temporal, ck = load_policy_run(args.run)
  except ValueError as e:   # no usable checkpoint in --run
    print(f"error: {e}", file=sys.stderr)
    return 1
  paths = export_policy(vision, temporal, args.out)
  from modeld.model_runner import DrivingModel
  dm = DrivingModel(args.out, "onnxruntime")
  cfg = vision.cfg
  img = np.random.default_rng(0).integers(0, 256, (1, 6, cfg.frame_h, cfg.frame_w), dtype=np.uint8)
  with torch.no_grad():
    _, ref = vision.reparameterize()(torch.from_numpy(img), noise=False)
  _, got = dm.run_vision(img)
  rng = np.random.default_rng(1)
  T, D = cfg.history, cfg.feature_dim
  feats = rng.normal(size=(1, T, D)).astype(np.float32)
  v_ego = rng.uniform(0, 35, (1, T)).astype(np.float32)
  desire = np.eye(DESIRE_LEN, dtype=np.float32)[rng.integers(0, DESIRE_LEN, (1, T))]
  with torch.no_grad():
    pol_ref = PolicyExport(temporal)(*(torch.from_numpy(a) for a in (feats, v_ego, desire)))
  pol_got = dm.run_policy(feats, v_ego, desire)
  errs = {}
  for name, g, r in (("vision", got, ref.numpy()), ("policy", pol_got, pol_ref.numpy())):
    with np.errstate(invalid="ignore", over="ignore"):
      errs[name] = float(np.abs(g - r).max())
    if not (np.isfinite(g).all() and np.isfinite(r).all()):
      print(f"error: {args.run}: exported {name} model gives non-finite outputs (NaN/inf weights?); "
            f"{paths[name]} is not usable", file=sys.stderr)
      return 1
    if not errs[name] <= ORT_TOLERANCE * max(1.0, float(np.abs(r).max())):
      print(f"error: {paths[name]}: onnxruntime differs from torch by {errs[name]:.3g} (tolerance "
            f"{ORT_TOLERANCE:g} x output scale)", file=sys.stderr)
      return 1
  emit_result({"vision": str(paths["vision"]), "policy": str(paths["policy"]), "step": ck["step"],
               "model_name": dm.model_name, "ort_vs_torch_max_abs": errs["vision"],
               "policy_ort_vs_torch_max_abs": errs["policy"]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
