"""Export a trained policy to the two ONNX files modeld runs.

  driving_vision.onnx   img (1, 6, H, W) uint8                     -> hidden_state (1, D), outputs (1, N_vision)
  driving_policy.onnx   features (1, T, D), v_ego (1, T),
                        desire (1, T, DESIRE_LEN)                  -> outputs (1, N_policy)

The FastViT is reparameterized first (single convs, no BN). ``metadata_props`` of each file (all values are
strings; JSON where structured):

  format_version, model_name, model_kind ("vision" | "policy"), inputs / outputs ([{name, shape, dtype}]),
  output_slices (name -> [start, stop, shape], see common.modelconstants), t_idxs, x_idxs,
  frame_spec ({width, height, focal, stack, stack_gap_frames, layout}), history ({steps, hz, stride_frames}),
  feature_dim, bottleneck_bits, bottleneck_noise_std, config (PolicyConfig), training_commit, content_hash.

content_hash = sha256 of the serialized model with metadata_props emptied, so a reader can check that the
weights it loads are the ones this metadata describes (modeld does).
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import warnings
from pathlib import Path

import onnx
import torch

from common.modelconstants import DESIRE_LEN, MODEL_FREQ, T_IDXS, X_IDXS, layout_to_json
from training.policy.model import (
  FRAME_STACK,
  FRAME_STACK_GAP,
  HISTORY_STRIDE,
  PolicyConfig,
  PolicyExport,
  TemporalPolicy,
  VisionExport,
  VisionModel,
)

FORMAT_VERSION = "1"
OPSET = 17
VISION_FILE, POLICY_FILE = "driving_vision.onnx", "driving_policy.onnx"


def training_commit(repo: Path | None = None) -> str:
  repo = repo or Path(__file__).resolve().parents[2]
  try:
    r = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"
  return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def content_hash(model: onnx.ModelProto) -> str:
  m = onnx.ModelProto()
  m.CopyFrom(model)
  del m.metadata_props[:]
  return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def io_specs(cfg: PolicyConfig) -> dict:
  """Input/output names, shapes, dtypes of both files (the contract modeld checks)."""
  from common.modelconstants import layout_size, policy_output_layout, vision_output_layout
  T, D = cfg.history, cfg.feature_dim
  return {
    "vision": {
      "inputs": [{"name": "img", "shape": [1, 3 * FRAME_STACK, cfg.frame_h, cfg.frame_w], "dtype": "uint8"}],
      "outputs": [{"name": "hidden_state", "shape": [1, D], "dtype": "float32"},
                  {"name": "outputs", "shape": [1, layout_size(vision_output_layout())], "dtype": "float32"}],
    },
    "policy": {
      "inputs": [{"name": "features", "shape": [1, T, D], "dtype": "float32"},
                 {"name": "v_ego", "shape": [1, T], "dtype": "float32"},
                 {"name": "desire", "shape": [1, T, DESIRE_LEN], "dtype": "float32"}],
      "outputs": [{"name": "outputs", "shape": [1, layout_size(policy_output_layout())], "dtype": "float32"}],
    },
  }


def _to_onnx(module: torch.nn.Module, args: tuple, specs: dict) -> onnx.ModelProto:
  buf = io.BytesIO()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                      input_names=[s["name"] for s in specs["inputs"]],
                      output_names=[s["name"] for s in specs["outputs"]])
  return onnx.load_from_string(buf.getvalue())


def _attach_metadata(model: onnx.ModelProto, meta: dict[str, object]) -> onnx.ModelProto:
  del model.metadata_props[:]
  meta = dict(meta)
  meta["content_hash"] = content_hash(model)
  for k, v in meta.items():
    p = model.metadata_props.add()
    p.key, p.value = k, v if isinstance(v, str) else json.dumps(v)
  return model


def export_policy(vision: VisionModel, temporal: TemporalPolicy, out_dir, commit: str | None = None) -> dict[str, Path]:
  """Reparameterize (a copy of) the models, export both ONNX files with metadata, check them. Returns paths."""
  import copy
  cfg = vision.cfg
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  vision = copy.deepcopy(vision).eval().reparameterize()
  temporal = copy.deepcopy(temporal).eval()
  specs = io_specs(cfg)
  common = {
    "format_version": FORMAT_VERSION,
    "model_name": f"worldpilot-fastvit-{cfg.name}",
    "t_idxs": [float(t) for t in T_IDXS], "x_idxs": [float(x) for x in X_IDXS],
    "frame_spec": {**cfg.frame_spec, "stack": FRAME_STACK, "stack_gap_frames": FRAME_STACK_GAP,
                   "layout": "NCHW uint8 RGB, channels [frame(t-gap) RGB, frame(t) RGB]"},
    "history": {"steps": cfg.history, "hz": MODEL_FREQ // HISTORY_STRIDE, "stride_frames": HISTORY_STRIDE},
    "feature_dim": cfg.feature_dim, "bottleneck_bits": cfg.bottleneck_bits,
    "bottleneck_noise_std": vision.bottleneck.noise_std, "config": cfg.to_dict(),
    "training_commit": commit if commit is not None else training_commit(),
  }
  img = torch.zeros(1, 3 * FRAME_STACK, cfg.frame_h, cfg.frame_w, dtype=torch.uint8)
  feats = torch.zeros(1, cfg.history, cfg.feature_dim)
  v = torch.zeros(1, cfg.history)
  desire = torch.zeros(1, cfg.history, DESIRE_LEN)
  paths = {}
  for kind, module, args, layout, fname in (
      ("vision", VisionExport(vision), (img,), vision.layout, VISION_FILE),
      ("policy", PolicyExport(temporal), (feats, v, desire), temporal.layout, POLICY_FILE)):
    model = _to_onnx(module, args, specs[kind])
    meta = {**common, "model_kind": kind, "inputs": specs[kind]["inputs"], "outputs": specs[kind]["outputs"],
            "output_slices": layout_to_json(layout)}
    model = _attach_metadata(model, meta)
    onnx.checker.check_model(model)
    path = out_dir / fname
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    paths[kind] = path
  return paths
