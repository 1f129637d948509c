"""Suite-wide pytest settings. The README's test command runs the suite on two xdist workers (`-n 2 --dist
worksteal`: each worker starts on its own half of the tests in collection order, so a module's tests mostly share
one worker and its fixtures, and a worker that runs dry takes tests from the other). Tests marked `long` (minutes
each) are collected first, so one worker starts them at once and the other runs the rest of the suite beside them
instead of after them. Each worker's torch/OpenMP gets one thread (two workers on two cores; more threads would
only contend); a test that wants more sets it itself."""
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):      # before any test module imports torch
  os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
  config.addinivalue_line("markers", "long: runs for minutes; scheduled before the other tests")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
  items.sort(key=lambda item: item.get_closest_marker("long") is None)   # stable: the rest keep their order
