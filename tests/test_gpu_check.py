"""The prepared GPU script rehearsed on CPU: the same code, on tiny shapes, in Triton's interpreter, so
that the first GPU minutes never go to a script that was never run."""

import importlib.util
import json
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
def test_the_gpu_check_runs_end_to_end_and_keeps_every_phase_when_one_fails(tmp_path):
    """The whole command on tiny shapes, with the speed phase made to fail: every other phase's rows and
    tables survive, the summary says which failed, and the exit status says so too."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path), "--fail-phase", "speed"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    gpu_check = _module()
    from vgg_toolkit.kernels import conv3x3, conv3x3_backward

    assert out.startswith("## GPU check on ") and "; code " in out and "Estimate: at most 520 s" in out
    # Every config of each kernel, 2 dtypes x 2 batches x the 4 tiny layers (the input gradient skips the first).
    checks = 4 * (len(conv3x3.FORWARD_CONFIGS) * (4 + 3) + len(conv3x3_backward.WGRAD_CONFIGS) * 4)
    assert len(gpu_check.TINY_LAYERS) == 4 and f"Correctness: {checks} checks" in out and f"{checks} checks" in out
    assert ", 0 failed." in out and "| fp32 (TF32) triton | fp32 cuDNN | bf16 triton | bf16 cuDNN |" in out
    status = {p: json.loads((tmp_path / f"{p}.json").read_text())["status"] for p in gpu_check.PHASES}
    assert status == {"correctness": "ok", "speed": "failed", "train": "ok", "cli": "ok", "decode": "ok"}
    assert len(gpu_check.read_rows(tmp_path, "correctness")) == checks
    assert "| speed | failed |" in out and "--fail-phase speed: the forced failure" in out
    assert "| triton | " in out and " 13 | " in out  # the training step ran with all 13 convs fused
    cli = gpu_check.read_rows(tmp_path, "cli")
    assert [r["command"] for r in cli] == ["train --conv-backend torch", "train --conv-backend triton",
                                          "loss curves, triton against torch", "train --decode device (bundled photos)",
                                          "eval --methods dense", "eval --methods multicrop",
                                          "predict (4 bundled photos)", "distance --conv-backend torch",
                                          "distance --conv-backend triton", "distances, triton against torch"]
    assert all(r["ok"] for r in cli), cli
    assert "- refused by the device decoder (decoded by the workers' code instead): 0 of 64" in out


def test_the_driver_refuses_an_installed_package_that_is_not_the_trees(monkeypatch, capsys):
    gpu_check = _module()
    monkeypatch.setattr(gpu_check, "installed_hash", lambda: "0" * 16)
    assert gpu_check.main(["--tiny", "--phases", "train"]) == 2
    assert "is not this tree's" in capsys.readouterr().err


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
    assert "- pixels against the workers' decode: 0." in done.stdout  # levels, on average: under one
    assert "- refused by the device decoder (decoded by the workers' code instead): 0 of 64" in done.stdout
    assert "- the device, `DeviceDecoder.assemble`: " in done.stdout


def test_the_gpu_decode_check_says_why_there_is_no_decoder():
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the real check runs instead")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_decode_check.py")], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 1 and "- GPU JPEG decoder: none: " in done.stdout
