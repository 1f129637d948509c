import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def default_cpu_kernels():
  """Every world-model test runs with torch's default CPU kernels (oneDNN on). The policy and on-policy tools turn
  oneDNN off for their whole process (training.torch_args.use_native_cpu_convolutions says why; the on-policy
  actor in its constructor); run in-process earlier in the same pytest session, that would change the convolution
  kernels here, and the bit-exact reference checks (test_reference.py,
  test_train.py) are pinned to the default ones. Module-scoped, so that it also covers the modules' own fixtures
  (autouse fixtures are set up first in their scope): the latents test_train.py's runs read are encoded under it."""
  with torch.backends.mkldnn.flags(enabled=True):
    yield
