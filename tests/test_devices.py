"""One device and precision policy for train, eval and extract-features."""

import pytest
import torch

from vgg_toolkit.runtime.devices import mixed_precision, pick_device
from vgg_toolkit.errors import VggtkError


def test_forward_passes_are_float32_on_cpu_unless_asked():
    a = torch.randn(4, 4)
    with mixed_precision(torch.device("cpu")):
        assert (a @ a).dtype == torch.float32
    with mixed_precision(torch.device("cpu"), enabled=True):
        assert (a @ a).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(VggtkError, match="--device cuda:1: CUDA is not available on this machine"):
        pick_device("cuda:1")
