"""The prepared GPU script rehearsed on CPU: the same code, on tiny shapes, in Triton's interpreter, so
that the first GPU minutes never go to a script that was never run."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the real check runs instead")
def test_the_gpu_check_runs_end_to_end_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    gpu_check = _module()
    from vgg_toolkit.kernels import conv3x3, conv3x3_backward

    # Every config of each kernel, 2 dtypes x 2 batches x the 4 tiny layers (the input gradient skips the first).
    checks = 4 * (len(conv3x3.FORWARD_CONFIGS) * (4 + 3) + len(conv3x3_backward.WGRAD_CONFIGS) * 4)
    assert len(gpu_check.TINY_LAYERS) == 4 and f"{checks} checks" in out and ", 0 failed," in out
    for table in ("| kernel | config |", "| layer | Cin | Cout | HxW |", "| conv backend | images/s |"):
        assert table in out
    assert "| triton | " in out and " 13 | " in out  # the training step ran with all 13 convs fused


def test_a_wrong_kernel_result_fails_its_check(monkeypatch):
    gpu_check = _module()
    from vgg_toolkit.kernels import conv3x3

    real = conv3x3.conv_bias_relu
    monkeypatch.setattr(conv3x3, "conv_bias_relu", lambda x, w, b: real(x, w, b) * 1.01)  # 1% off
    rows = gpu_check.check_config(("fwd", 0, True, (1,)))
    assert rows and not any(r["ok"] for r in rows if r["dtype"] == "fp32")
    monkeypatch.setattr(conv3x3, "conv_bias_relu", real)
    assert all(r["ok"] for r in gpu_check.check_config(("fwd", 0, True, (1,))))


def test_forcing_a_config_runs_it_alone_and_restores_the_tuner():
    gpu_check = _module()
    from vgg_toolkit.kernels import conv3x3

    kernel = conv3x3.conv_bias_relu_kernel
    before = list(kernel.configs)
    with gpu_check.forced(kernel, conv3x3.FORWARD_CONFIGS[3]):
        assert kernel.configs == [conv3x3.FORWARD_CONFIGS[3]] and kernel.cache == {}
    assert kernel.configs == before


def test_the_gpu_decode_check_rehearses_on_cpu():
    """Its second part, JPEG decoding on the device, with PIL standing in for nvJPEG."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_decode_check.py"), "--rehearse",
                           "--images", "64"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Pixels against the workers' decode: 0." in done.stdout  # levels, on average: under one
    assert "| the device, `DeviceDecoder.assemble` |" in done.stdout


def test_the_gpu_decode_check_says_why_there_is_no_decoder():
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the real check runs instead")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_decode_check.py")], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 1 and "no GPU JPEG decoder: " in done.stdout
