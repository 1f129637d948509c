import pytest
import torch


@pytest.fixture(autouse=True)
def native_cpu_convolutions():
  """The policy tests run with the kernels the policy tools set up (training.torch_args.use_native_cpu_convolutions),
  and give the process back its own setting afterwards."""
  with torch.backends.mkldnn.flags(enabled=False):
    yield
