"""The process-wide torch settings of training.torch_args."""
import pytest
import torch

from training.torch_args import onednn_inference


def test_onednn_inference_restores_the_process_setting():
  before = torch.backends.mkldnn.enabled
  try:
    torch.backends.mkldnn.enabled = False                 # a process that chose the native kernels
    with onednn_inference():
      assert torch.backends.mkldnn.enabled
      conv = torch.nn.Conv2d(3, 8, 3)
      x = torch.randn(1, 3, 32, 32)
      fast = conv(x)
    assert not torch.backends.mkldnn.enabled
    assert torch.allclose(fast, conv(x), atol=1e-5)      # the same convolution on the native kernels
    with pytest.raises(RuntimeError), onednn_inference():
      raise RuntimeError("inside")
    assert not torch.backends.mkldnn.enabled
  finally:
    torch.backends.mkldnn.enabled = before
