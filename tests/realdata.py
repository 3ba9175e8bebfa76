"""Real images for tests: Fashion-MNIST samples from the bundled shards, and scikit-image's photos."""

import functools
from pathlib import Path

import torch

from vgg_toolkit.data.loader import make_loader

FASHION_SHARDS = Path(__file__).resolve().parents[1] / "shards" / "fashion-mnist"


@functools.lru_cache(maxsize=None)
def _mean_subtracted(name: str) -> torch.Tensor:
    import skimage.data

    rgb = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float()
    return rgb - rgb.mean(dim=(1, 2), keepdim=True)


def photo(name: str, short: int) -> torch.Tensor:
    """A real photograph (skimage.data.NAME) as a CHW float image, smallest side ``short``, mean RGB
    subtracted (0-255 range)."""
    from vgg_toolkit.plugins.evaluators.protocols import rescale

    return rescale(_mean_subtracted(name)[None], short)[0]


@functools.lru_cache(maxsize=None)
def fashion_sample(n: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of a split, padded from 28x28 to 32x32: uint8 (n, 1, 32, 32), int64 (n,)."""
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
