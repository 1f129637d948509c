import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def default_cpu_kernels():
  """Every world-model test runs with torch's default CPU kernels (oneDNN on), whatever a test run earlier in the same
  pytest session left switched (the native-kernel checks of test_vae.py and test_torch_args.py restore it, a failing
  one might not), and the bit-exact reference checks (test_reference.py,
  test_train.py) are pinned to the default ones. Module-scoped, so that it also covers the modules' own fixtures
  (autouse fixtures are set up first in their scope): the latents test_train.py's runs read are encoded under it."""
  with torch.backends.mkldnn.flags(enabled=True):
    yield
