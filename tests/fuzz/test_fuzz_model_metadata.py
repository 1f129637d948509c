"""Model metadata parsing: any JSON (or non-JSON) value under any metadata key of an exported model gives
ModelLoadError naming the file, or a model that loads; never another exception. Metadata is outside the
content hash, so a value is all that changes."""
import json

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modeld.model_runner as model_runner
from modeld.model_runner import POLICY_FILE, REQUIRED_METADATA, VISION_FILE, DrivingModel, ModelLoadError

pytestmark = pytest.mark.timeout(180)

KEYS = [k for k in REQUIRED_METADATA if k != "content_hash"] + ["x_idxs", "bottleneck_bits", "config"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                    max_leaves=8)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  cfg = get_config("tiny")
  torch.manual_seed(0)
  out = tmp_path_factory.mktemp("export")
  export_policy(VisionModel(cfg).eval(), TemporalPolicy(cfg).eval(), out, commit="fuzz")
  return out, {f: onnx.load(out / f) for f in (VISION_FILE, POLICY_FILE)}


class _NoSession:
  """The runtime session is not what is fuzzed here: skip building it (0.5 s per model)."""

  def __init__(self, *args, **kwargs):
    pass


@settings(max_examples=25)
@given(st.sampled_from([VISION_FILE, POLICY_FILE]), st.sampled_from(KEYS),
       st.one_of(JSON.map(json.dumps), st.text(max_size=12)))
def test_any_metadata_value(export_dir, tmp_path_factory, monkeypatch, fname, key, value):
  src, models = export_dir
  d = tmp_path_factory.mktemp("m")
  for f, m in models.items():
    if f == fname:
      m2 = onnx.ModelProto()
      m2.CopyFrom(m)
      for p in m2.metadata_props:
        if p.key == key:
          p.value = value
      (d / f).write_bytes(m2.SerializeToString())
    else:
      (d / f).symlink_to(src / f)
  monkeypatch.setattr(model_runner, "_OrtSession", _NoSession)
  try:
    DrivingModel(d)
  except ModelLoadError as e:
    assert str(d) in str(e)


def test_intact_export_loads(export_dir):
  assert DrivingModel(export_dir[0]).model_name == "worldpilot-fastvit-tiny"
