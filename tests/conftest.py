"""Suite-wide pytest settings. The README's test command runs the suite on two xdist workers (`-n 2 --dist
loadfile`: one test file per worker at a time, so module fixtures are built once). Tests marked `long` (minutes
each) are scheduled first, so the other worker runs the rest of the suite beside them instead of after them. Each
worker's torch/OpenMP gets one thread (two workers on two cores; more threads would only contend); a test that
wants more sets it itself."""
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):      # before any test module imports torch
  os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
  config.addinivalue_line("markers", "long: runs for minutes; scheduled before the other tests")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
  items.sort(key=lambda item: item.get_closest_marker("long") is None)   # stable: the rest keep their order
