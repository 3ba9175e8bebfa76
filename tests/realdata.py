"""Real images for tests: Fashion-MNIST samples, padded from 28x28 to 32x32, as uint8 tensors."""

import functools
import gzip
from pathlib import Path

import numpy as np
import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def fashion_sample(n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    images = torch.from_numpy(_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")[:n].copy())[:, None]
    labels = torch.from_numpy(_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    return torch.nn.functional.pad(images, (2, 2, 2, 2)), labels
