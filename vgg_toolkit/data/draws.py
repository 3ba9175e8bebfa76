"""Counter-based random draws for augmentations: a sample's numbers are a hash of its seed (from (seed,
epoch, key)), a named stream and an index. One sample draws them in plain Python; a whole batch draws
the very same numbers in a few tensor operations, where a generator per sample would cost a call per
number (a quarter of a small net's training step on a 2-core CPU).

The hash is Wellons' "lowbias32" 32-bit integer mixer; tensors carry it in int64, multiplying in 16-bit
halves so no product leaves the int64 range.
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import torch

_MASK = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_STEP = 0x9E3779B9  # the golden ratio in 32 bits: successive indices land far apart before mixing
_SCALE = 2.0 ** -32


def _mix(x: int) -> int:
    x ^= x >> 16
    x = (x * _M1) & _MASK
    x ^= x >> 15
    x = (x * _M2) & _MASK
    return x ^ (x >> 16)


def _mul(x: torch.Tensor, m: int) -> torch.Tensor:
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _MASK


def _mix_t(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul(x, _M1)
    x = x ^ (x >> 15)
    x = _mul(x, _M2)
    return x ^ (x >> 16)


def _stream(stream: str) -> int:
    return zlib.crc32(stream.encode())


def _base(seed: int) -> int:
    return _mix(((seed >> 32) & _MASK) ^ _mix(seed & _MASK))


def uniforms(seed: int, stream: str, n: int) -> list[float]:
    """``n`` numbers in [0, 1) for one sample: ``seed`` (e.g. ``generator.initial_seed()``), ``stream``
    (one per op of a pipeline, so two ops never share numbers)."""
    start = _base(seed) ^ _stream(stream)
    return [_mix((start + (j + 1) * _STEP) & _MASK) * _SCALE for j in range(n)]


def seed_bases(seeds: torch.Tensor) -> torch.Tensor:
    """What ``uniforms_batch`` needs of a batch's seeds, mixed once for all the batch's streams."""
    seeds = seeds.to(torch.int64)
    return _mix_t(((seeds >> 32) & _MASK) ^ _mix_t(seeds & _MASK))


def uniforms_batch(bases: torch.Tensor, stream: str, n: int) -> torch.Tensor:
    """(B, n) float64: ``uniforms(seeds[i], stream, n)`` for every i, exactly; ``bases = seed_bases(seeds)``."""
    index = (torch.arange(1, n + 1, dtype=torch.int64) * _STEP)[None, :]
    return _mix_t(((bases ^ _stream(stream))[:, None] + index) & _MASK).to(torch.float64) * _SCALE


def normals(u: Sequence[float], n: int) -> list[float]:
    """``n`` standard normal numbers from ``2 * ceil(n / 2)`` uniforms (Box-Muller), in plain floats."""
    out = []
    for j in range(0, n, 2):
        radius = math.sqrt(-2.0 * math.log1p(-u[j]))  # 1 - u > 0: log never sees zero
        angle = 2.0 * math.pi * u[j + 1]
        out += [radius * math.cos(angle), radius * math.sin(angle)]
    return out[:n]


def normals_batch(u: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) float64: ``normals(u[i], n)`` for every row, up to the last bit of the log and cosine
    (torch's and the C library's may round them differently)."""
    radius = torch.sqrt(-2.0 * torch.log1p(-u[:, 0::2]))
    angle = 2.0 * math.pi * u[:, 1::2]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 2).flatten(1)[:, :n]
