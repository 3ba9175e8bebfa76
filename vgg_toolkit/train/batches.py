"""A batch source for data that fits in memory (the bundled demo shards, Fashion-MNIST).

Every global batch is a slice of one permutation drawn from (seed, epoch); rank r takes the r-th
part of it. So a run on N ranks sees exactly the global batches a single process sees, which is
what makes DDP reproduce single-process training, and a resumed run continues mid-epoch exactly.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..data.loader import normalize_on_device
from ..data.shards.reader import sample_generator
from ..runtime.distributed import DistEnv
from ..errors import VggtkError
from ..runtime.seeding import derived_seed

Transform = Callable[[dict, torch.Generator], dict]


class InMemorySource:
    """Train and validation images held as uint8 NCHW tensors.

    ``train_transform(sample, generator)`` augments one sample (``image`` uint8 CHW, ``label``,
    ``key``); its generator is seeded from (seed, epoch, sample key), as in the streaming reader, so
    the same sample gets the same crop, flip and colour shift whatever the rank count, resume point
    or reader. ``keys`` default to the sample's index. ``val_transform`` is
    applied once, up front. Normalisation (mean subtraction, scaling to [0, 1] units) happens on the
    device, on whole batches.
    """

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, mean: list[float], train_transform: Transform | None = None,
                 val_transform: Transform | None = None, seed: int = 0, keys: list[str] | None = None):
        self.train_images, self.train_labels = train
        self.keys = keys if keys is not None else [str(i) for i in range(len(self.train_labels))]
        self.num_classes, self.seed = num_classes, seed
        self.train_transform = train_transform
        for name, labels in (("train", train[1]), ("val", val[1])):
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise VggtkError(f"{name} labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
        self.val_images = self._apply(val_transform, val[0], val[1], epoch=-1) if val_transform else val[0]
        self.val_labels = val[1]
        self.mean = list(mean)

    def _apply(self, transform: Transform, images: torch.Tensor, labels: torch.Tensor, epoch: int,
               index: torch.Tensor | None = None) -> torch.Tensor:
        keys = [str(i) for i in range(len(images))] if index is None else [self.keys[i] for i in index.tolist()]
        out = []
        for image, label, key in zip(images, labels, keys):
            sample = {"image": image, "label": int(label), "key": key}
            out.append(transform(sample, sample_generator(self.seed, epoch, key))["image"])
        return torch.stack(out)

    def split_layout(self, env: DistEnv) -> dict:
        return {}  # global batches depend on the seed alone, not on the rank count

    def pop_skipped(self) -> tuple[int, str]:
        return 0, ""  # bad samples were dropped, and reported, when the split was decoded

    def num_batches(self, global_batch: int, env: DistEnv | None = None, micro_batch: int | None = None) -> int:
        return len(self.train_images) // global_batch  # the last partial batch is dropped

    def train_batches(self, epoch: int, start: int, env: DistEnv, global_batch: int,
                      micro_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.train_images),
                               generator=torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch)))
        per_rank = global_batch // env.world_size
        for b in range(start, self.num_batches(global_batch)):
            mine = order[b * global_batch + env.rank * per_rank: b * global_batch + (env.rank + 1) * per_rank]
            for m in range(0, per_rank, micro_batch):
                index = mine[m:m + micro_batch]
                images = self.train_images[index]
                if self.train_transform is not None:
                    images = self._apply(self.train_transform, images, self.train_labels[index], epoch, index)
                yield images, self.train_labels[index]

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_images), batch_size):
            yield self.val_images[i:i + batch_size], self.val_labels[i:i + batch_size]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_on_device(images, self.mean)
