"""The training augmentation of a whole in-memory batch at once.

Where every op of the pipeline offers ``batch(geometry)``, the ops draw each sample's numbers from its
own seed (``draws.uniforms_batch``: the very numbers the op draws for that sample alone) and record
rescale, crop, flip and colour shift for the whole batch as tensors on a ``BatchGeometry``. Two batched
matrix products then resample the batch.

The pixels agree with the per-sample path up to rounding (the per-sample path rounds to uint8 after the
rescale; here the crop is sampled straight from the source and rounded once), and it is done only where
every sample is upsampled (the source region no larger than the output), where bilinear and
antialiased bilinear are the same filter (a tent over the two nearest source pixels). Anything else (a
downscale, an augmentation that needs pixels, outputs of different sizes) returns None and the caller
runs the per-sample path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .draws import seed_bases, uniforms_batch

Transform = Callable[[dict, torch.Generator], dict]


class BatchGeometry:
    """The geometry asked of a batch of same-size images, one row per sample, as ``Geometry`` records it
    for one: the source region (``box``, float64 pixel edges), the current ``width``/``height``, the
    mirror, and whole levels added per channel. The methods do ``Geometry``'s arithmetic in float64,
    operation for operation, so a sample's region is the same to the last bit either way."""

    def __init__(self, n: int, channels: int, width: int, height: int, seeds: Sequence[int]):
        self.channels = channels
        self.box = torch.tensor([[0.0, 0.0, float(width), float(height)]], dtype=torch.float64).repeat(n, 1)
        self.width = torch.full((n,), width, dtype=torch.int64)
        self.height = torch.full((n,), height, dtype=torch.int64)
        self.flipped = torch.zeros(n, dtype=torch.bool)
        self.offset: torch.Tensor | None = None  # (n, channels) int64
        self._bases = seed_bases(torch.tensor(list(seeds), dtype=torch.int64))

    def uniforms(self, stream: str, n: int) -> torch.Tensor:
        """(B, n) float64: for each sample, what ``vt.uniforms(its seed, stream, n)`` gives."""
        return uniforms_batch(self._bases, stream, n)

    def resize(self, width: torch.Tensor, height: torch.Tensor) -> None:
        self.width, self.height = width.to(torch.int64), height.to(torch.int64)

    def crop(self, x: torch.Tensor, y: torch.Tensor, w: int, h: int) -> None:
        """Crop ``w`` x ``h`` at (x, y), per-sample int64 positions in the current (mirrored) image."""
        x = torch.where(self.flipped, self.width - x - w, x)
        cw, ch = self.width.to(torch.float64), self.height.to(torch.float64)
        left, top, right, bottom = self.box.unbind(1)
        sx, sy = (right - left) / cw, (bottom - top) / ch
        xf, yf = x.to(torch.float64), y.to(torch.float64)
        self.box = torch.stack([left + xf * sx, top + yf * sy, left + (xf + w) * sx, top + (yf + h) * sy], 1)
        self.width = torch.full_like(self.width, w)
        self.height = torch.full_like(self.height, h)

    def hflip(self, which: torch.Tensor) -> None:
        self.flipped = self.flipped ^ which

    def add(self, offset: torch.Tensor) -> None:
        """Add whole levels, (B, channels) int64, saturating when the batch is resampled."""
        self.offset = offset if self.offset is None else self.offset + offset


def flip_and_shift(images: torch.Tensor, geometry: BatchGeometry) -> torch.Tensor:
    """A uint8 (B, C, H, W) batch, on any device, mirrored and shifted as ``geometry`` records (ops that
    only flip or shift: the region must be the whole image). What the per-sample path does after its
    resample, so the pixels are the same."""
    flipped = geometry.flipped.to(images.device)[:, None, None, None]
    images = torch.where(flipped, images.flip(-1), images)
    if geometry.offset is None:
        return images
    offset = geometry.offset.to(images.device, torch.int16)[:, :, None, None]
    return (images.to(torch.int16) + offset).clamp_(0, 255).to(torch.uint8)


def augment_batch(images: torch.Tensor, steps: Sequence[Transform], seeds: Sequence[int]) -> torch.Tensor | None:
    """``images`` uint8 (B, C, H, W) through ``steps`` (a pipeline's ops), sample i with the generator of
    ``seeds[i]``; uint8 (B, C, h, w), or None when the batch cannot be done at once (module docstring)."""
    if not all(callable(getattr(op, "batch", None)) for op in steps):
        return None
    n, c, height, width = images.shape
    geometry = BatchGeometry(n, c, width, height, seeds)
    if not all(op.batch(geometry) is not False for op in steps):
        return None
    return _resample(images, geometry.box, geometry.width, geometry.height, geometry.flipped, geometry.offset)


def _weights(start: torch.Tensor, end: torch.Tensor, out: int, size: int,
             mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """(n, out, size): bilinear weights of the ``out`` output pixels over the ``size`` source pixels, the
    outputs spanning [start, end) of the source (pixel edges), edges clamped: F.interpolate's rule; the
    outputs in reverse order for the ``mirrored`` rows."""
    step = (end - start) / out
    centres = (start[:, None] + (torch.arange(out) + 0.5) * step[:, None] - 0.5).clamp(0, size - 1)
    if mirrored is not None:
        centres = torch.where(mirrored[:, None], centres.flip(1), centres)
    if size == 1:
        return torch.ones(len(start), out, 1)
    # A tent over the two nearest source pixels, set as two entries per row: building the dense
    # (n, out, size) tent by arithmetic cost half the resample.
    low = centres.floor().clamp_(max=size - 2)
    frac = (centres - low)[:, :, None]
    low = low.to(torch.int64)[:, :, None]
    weights = torch.zeros(len(start), out, size).scatter_(2, low, 1 - frac)
    return weights.scatter_(2, low + 1, frac)


def _resample(images: torch.Tensor, box: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor,
              flipped: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor | None:
    n, c, height, width = images.shape
    w, h = int(widths[0]), int(heights[0])
    box = box.to(torch.float32)
    if bool((widths != w).any() | (heights != h).any()) or bool(
            ((box[:, 2] - box[:, 0]) > w).any() | ((box[:, 3] - box[:, 1]) > h).any()):
        return None  # outputs of different sizes, or a downscale
    # The rescale and crop are separable: rows, then columns, as two batched matrix products.
    rows = _weights(box[:, 1], box[:, 3], h, height)
    cols = _weights(box[:, 0], box[:, 2], w, width, flipped)
    out = (rows[:, None] @ images.float() @ cols.transpose(1, 2)[:, None]).round_()
    if offsets is not None:
        # Shifted by whole levels and saturated: what rounding the resize and then adding does.
        out.add_(offsets.to(torch.float32)[:, :, None, None])
    return out.clamp_(0, 255).to(torch.uint8)
