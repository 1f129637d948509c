"""Shared fixtures: tiny exported model pairs (untrained, built here by training's exporter) and a messaging prefix."""
import os
import shutil
import uuid

import pytest

from cereal import messaging


def _export(out, seed: int, nan_weight: bool = False):
  torch = pytest.importorskip("torch")
  from training.export.export import export_policy
  from training.policy.model import TemporalPolicy, VisionModel, get_config
  torch.set_num_threads(1)
  torch.manual_seed(seed)
  cfg = get_config("tiny")
  vision, temporal = VisionModel(cfg).eval(), TemporalPolicy(cfg).eval()
  if nan_weight:   # a model that loads fine but whose every output is NaN
    with torch.no_grad():
      next(temporal.parameters()).fill_(float("nan"))
  export_policy(vision, temporal, out, commit="modeldtest")
  return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
  return _export(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
  """A second valid pair (other weights), to swap in."""
  return _export(tmp_path_factory.mktemp("other_model"), seed=1)


@pytest.fixture(scope="session")
def nan_model_dir(tmp_path_factory):
  return _export(tmp_path_factory.mktemp("nan_model"), seed=0, nan_weight=True)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
  """A writable copy of the tiny pair (tests swap files in it)."""
  d = tmp_path / "model"
  shutil.copytree(tiny_model_dir, d)
  return d


@pytest.fixture
def prefix(monkeypatch):
  p = f"md{os.getpid()}_{uuid.uuid4().hex[:8]}"
  monkeypatch.setenv(messaging.PREFIX_ENV, p)
  yield p
  messaging.cleanup_prefix(p)
