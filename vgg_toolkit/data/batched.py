"""The training augmentation of a whole in-memory batch at once: each sample's pipeline runs as always,
from its own generator seeded by (seed, epoch, key), but on a ``PendingTensor`` that only records the
rescale, crop, flip and colour shift it is asked for; two batched matrix products then resample the
batch.

The draws are the very ones the per-sample path makes, so each sample gets the same S, crop, flip and
shift. The pixels agree up to rounding (the per-sample path rounds to uint8 after the rescale; here
the crop is sampled straight from the source and rounded once), and it is done only where every
sample is upsampled (the source region no larger than the output), where bilinear and antialiased
bilinear are the same filter (a tent over the two nearest source pixels). Anything else (a downscale,
an augmentation that needs pixels, outputs of different sizes) returns None and the caller runs the
per-sample path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .decode import PendingTensor

Transform = Callable[[dict, torch.Generator], dict]


def augment_batch(images: torch.Tensor, labels: Sequence[int], keys: Sequence[str], steps: Sequence[Transform],
                  generators: Sequence[torch.Generator]) -> torch.Tensor | None:
    """``images`` uint8 (B, C, H, W) through ``steps`` (a pipeline's ops), sample i with ``generators[i]``;
    uint8 (B, C, h, w), or None when the batch cannot be done at once (see the module's docstring)."""
    if not all(getattr(op, "lazy_ok", False) for op in steps):
        return None
    n, c, height, width = images.shape
    pending = []
    for label, key, generator in zip(labels, keys, generators):
        sample = {"image": PendingTensor(width, height, c), "label": label, "key": key}
        for op in steps:
            sample = op(sample, generator)
        if set(sample) != {"image", "label", "key"} or not isinstance(sample["image"], PendingTensor):
            return None  # an op added something a batch cannot carry
        pending.append(sample["image"])
    sizes = {p.size for p in pending}
    if len(sizes) != 1 or any((p.box[2] - p.box[0]) > p.size[0] or (p.box[3] - p.box[1]) > p.size[1] for p in pending):
        return None
    (w, h), = sizes
    return _resample(images, pending, w, h)


def _weights(start: torch.Tensor, end: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """(n, out, size): bilinear weights of the ``out`` output pixels over the ``size`` source pixels, the
    outputs spanning [start, end) of the source (pixel edges), edges clamped: F.interpolate's rule."""
    step = (end - start) / out
    centres = (start[:, None] + (torch.arange(out) + 0.5) * step[:, None] - 0.5).clamp(0, size - 1)
    return (1 - (centres[:, :, None] - torch.arange(size)).abs()).clamp_(min=0)


def _resample(images: torch.Tensor, pending: Sequence[PendingTensor], w: int, h: int) -> torch.Tensor:
    # The rescale and crop are separable: rows, then columns, as two batched matrix products.
    n, c, height, width = images.shape
    box = torch.tensor([p.box for p in pending], dtype=torch.float32)
    rows = _weights(box[:, 1], box[:, 3], h, height)
    cols = _weights(box[:, 0], box[:, 2], w, width)
    flipped = torch.tensor([p.flipped for p in pending])
    cols[flipped] = cols[flipped].flip(1)
    out = rows[:, None] @ images.float() @ cols.transpose(1, 2)[:, None]
    offsets = torch.tensor([p.offset if p.offset is not None else [0] * c for p in pending], dtype=torch.float32)
    # Rounded, shifted by whole levels and saturated: what rounding the resize and then adding does.
    return out.round_().add_(offsets[:, :, None, None]).clamp_(0, 255).to(torch.uint8)
