import os
import uuid

import pytest

from cereal import messaging


@pytest.fixture
def prefix(monkeypatch):
  """A fresh messaging prefix (socket directory) for one test, removed afterwards."""
  p = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
  monkeypatch.setenv(messaging.PREFIX_ENV, p)
  yield p
  messaging.cleanup_prefix(p)
