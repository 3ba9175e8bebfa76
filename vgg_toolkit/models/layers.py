"""Layers that architectures may use to get the engine's guarantees."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class BatchSlicedDropout(nn.Dropout):
    """Dropout whose mask for a sample depends on the sample's row in the *global* batch, not on which
    rank or micro-batch computes it.

    Inside :func:`global_rows`, every rank draws the mask of the whole global batch from the same
    per-step seed and keeps its own rows, so data parallelism and gradient accumulation apply exactly
    the masks one process would. Elsewhere it is plain dropout.
    """

    rows: tuple[int, int] | None = None  # (offset of this micro-batch, rows of the global batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.rows is None:
            return super().forward(x)
        offset, total = self.rows
        keep = torch.rand((total, *x.shape[1:]), device=x.device)[offset:offset + x.shape[0]] >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


@contextlib.contextmanager
def global_rows(model: nn.Module, offset: int, total: int):
    """Tell every BatchSlicedDropout of ``model`` which rows of the global batch it is computing."""
    layers = [m for m in model.modules() if isinstance(m, BatchSlicedDropout)]
    for m in layers:
        m.rows = (offset, total)
    try:
        yield
    finally:
        for m in layers:
            m.rows = None
