"""Which device a command runs on, and the precision its forward passes use there: one policy for
training, evaluation and feature extraction."""

from __future__ import annotations

import contextlib

import torch

from ..errors import VggtkError


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VggtkError(f"device {name!r} requested but CUDA is not available")
    return device


def mixed_precision(device: torch.device, enabled: bool | None = None):
    """bf16 autocast on CUDA by default (``enabled`` overrides); float32 elsewhere, where bf16 matmuls
    are slower on CPUs without AMX."""
    if enabled if enabled is not None else device.type == "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
