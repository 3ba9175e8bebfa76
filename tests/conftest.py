import os

import pytest
import torch

# Triton reads this when a kernel is defined: on a machine without CUDA every kernel runs in
# Triton's interpreter, so it must be set before any test imports vgg_toolkit.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests must be reproducible on a 2-core CI machine whatever the developer's box has.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def host():
    """A fresh plugin host, discarded after the test so inline plugins never leak."""
    from vgg_toolkit import plugin_manager

    plugin_manager.reset_host()
    try:
        yield plugin_manager.get_host()
    finally:
        plugin_manager.reset_host()
