"""Real images for tests: Fashion-MNIST samples from the bundled shards, padded from 28x28 to
32x32, as uint8 tensors (N, 1, 32, 32) with int64 labels."""

import functools
from pathlib import Path

import torch

from vgg_toolkit.data.loader import make_loader

FASHION_SHARDS = Path(__file__).resolve().parents[1] / "shards" / "fashion-mnist"


@functools.lru_cache(maxsize=None)
def fashion_sample(n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    loader = make_loader(FASHION_SHARDS, split, batch_size=min(n, 1000), augment="none", shuffle=False,
                         drop_last=False)
    images, labels, taken = [], [], 0
    for x, y in loader:
        images.append(x)
        labels.append(y)
        taken += len(y)
        if taken >= n:
            break
    images, labels = torch.cat(images)[:n], torch.cat(labels)[:n]
    if len(labels) < n:
        raise ValueError(f"{FASHION_SHARDS} split {split!r} holds only {len(labels)} samples, not {n}")
    return torch.nn.functional.pad(images, (2, 2, 2, 2)), labels
