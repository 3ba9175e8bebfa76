"""Which device a command runs on, and the precision its forward passes use there: one policy for
training, evaluation and feature extraction."""

from __future__ import annotations

import contextlib
import re

import torch

from ..errors import VggtkError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a CUDA
    device this machine does not have, is an error naming ``--device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", str(name))
    if match is None:
        raise VggtkError(f"--device {name!r}: must be auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VggtkError(f"--device {name}: CUDA is not available on this machine")
        if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
            raise VggtkError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def mixed_precision(device: torch.device, enabled: bool | None = None):
    """bf16 autocast on CUDA by default (``enabled`` overrides); float32 elsewhere, where bf16 matmuls
    are slower on CPUs without AMX."""
    if enabled if enabled is not None else device.type == "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
