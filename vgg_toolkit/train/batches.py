"""Where the training loop's batches come from: ``BatchSource`` is what the loop needs, and two sources
provide it. ``InMemorySource`` holds a split decoded once (the bundled demo shards, Fashion-MNIST);
``ShardSource`` streams the shards every epoch, for data that does not fit in memory.

Both hand out ``Batch`` objects (uint8 NCHW ``images``, ``labels``, and for a head that learns from
boxes, each image's ``boxes`` and ``box_labels``); normalisation happens on the device. Validation
batches are whole images (not crops): the loop takes the paper's centre view of them, as
``vggtk eval center`` does. Boxes need the streaming source (in memory, only images and labels).
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator, Protocol

import torch

from ..data.batched import BatchGeometry, augment_batch, flip_and_shift
from ..data.device_decode import DeviceDecoder
from ..data.errors import DataError, SkipLog, check_labels, handle
from ..contract.preprocess import Preprocessing
from ..data.loader import Batch, make_loader, read_split
from ..data.shards.manifest import Manifest
from ..data.shards.reader import sample_generator, sample_seed
from ..runtime.distributed import DistEnv
from ..runtime.seeding import derived_seed

Transform = Callable[[dict, torch.Generator], dict]


class BatchSource(Protocol):
    def split_layout(self, env: DistEnv) -> dict:
        """What a started epoch's remaining batches depend on besides the seed (rank count, reader
        workers...); a mid-epoch resume needs the same. Empty when any layout resumes exactly."""

    def pop_skipped(self) -> tuple[int, str]:
        """Training samples this rank skipped as unreadable since the last call, and what they were."""

    def num_batches(self, global_batch: int, env: DistEnv, micro_batch: int) -> int:
        """Global batches per epoch (the same on every rank)."""

    def train_batches(self, epoch: int, start: int, env: DistEnv, global_batch: int,
                      micro_batch: int) -> Iterable[Batch]:
        """This rank's micro-batches of the epoch from global batch ``start`` on."""

    def val_batches(self, batch_size: int) -> Iterable[Batch]:
        """The whole validation split as same-size batches of whole images."""

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> the network's float input."""

    def finish(self, batch: Batch, device: torch.device, epoch: int) -> torch.Tensor:
        """A training batch on ``device``, the network's input: its images moved there (without blocking),
        what decoding and augmentation is left to do there, then ``normalize``. Rows that fail to decode
        there are dropped under ``on_error="skip"``, from the batch's labels, keys and boxes too: read
        the targets after."""


AUGMENT_CHUNK = 1 << 20  # source pixels augmented in one call


class InMemorySource:
    """Train and validation images held as uint8 NCHW tensors.

    Every global batch is a slice of one permutation drawn from (seed, epoch); rank r takes the r-th part
    of it. So a run on N ranks sees exactly the global batches a single process sees, which is what makes
    DDP reproduce single-process training, and a resumed run continues mid-epoch exactly.

    ``train_transform(sample, generator)`` augments one sample (``image`` uint8 CHW, ``label``, ``key``);
    its generator is seeded from (seed, epoch, sample key), as in the streaming reader, so the same sample
    gets the same crop, flip and colour shift whatever the rank count, resume point or reader. ``keys``
    default to the sample's index.
    """

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, preprocessing: Preprocessing, train_transform: Transform | None = None, seed: int = 0,
                 keys: list[str] | None = None, skipped: SkipLog | None = None):
        self.train_images, self.train_labels = train
        self.val_images, self.val_labels = val
        check_labels(self.train_labels, num_classes, "the training split")
        check_labels(self.val_labels, num_classes, "the validation split")
        self.keys = keys if keys is not None else [str(i) for i in range(len(self.train_labels))]
        self.seed, self.train_transform, self.preprocessing = seed, train_transform, preprocessing
        self._skipped = skipped or SkipLog()

    def _augment(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, index: torch.Tensor) -> torch.Tensor:
        keys = [self.keys[i] for i in index.tolist()]
        steps = getattr(self.train_transform, "steps", None)  # a Pipeline's ops: the batch is resampled at once
        if steps is not None:
            batch = augment_batch(images, steps, [sample_seed(self.seed, epoch, key) for key in keys])
            if batch is not None:
                return batch
        out = []
        for image, label, key in zip(images, labels.tolist(), keys):
            sample = {"image": image, "label": label, "key": key}
            out.append(self.train_transform(sample, sample_generator(self.seed, epoch, key))["image"])
        return torch.stack(out)

    def split_layout(self, env: DistEnv) -> dict:
        return {}  # global batches depend on the seed alone, not on the rank count

    def pop_skipped(self) -> tuple[int, str]:
        """What was dropped as unreadable when the training split was decoded: reported with the first
        epoch this process trains, since nothing is read afterwards."""
        log, self._skipped = self._skipped, SkipLog()
        return log.total, (f"{log.summary()}; first: {log.examples[0]}" if log.total else "")

    def num_batches(self, global_batch: int, env: DistEnv | None = None, micro_batch: int | None = None) -> int:
        return len(self.train_images) // global_batch  # the last partial batch is dropped

    def train_batches(self, epoch: int, start: int, env: DistEnv, global_batch: int,
                      micro_batch: int) -> Iterator[Batch]:
        order = torch.randperm(len(self.train_images),
                               generator=torch.Generator().manual_seed(derived_seed(self.seed, "order", epoch)))
        per_rank = global_batch // env.world_size
        indices = []  # of each micro-batch this rank computes, in order
        for b in range(start, self.num_batches(global_batch)):
            mine = order[b * global_batch + env.rank * per_rank: b * global_batch + (env.rank + 1) * per_rank]
            indices += [mine[m:m + micro_batch] for m in range(0, per_rank, micro_batch)]
        # Several micro-batches are augmented at once where their pixels fit AUGMENT_CHUNK: a sample's
        # augmentation depends on its own seed alone, and per call costs fall with the batch (a 28x28
        # batch of 1,024 costs 0.6x per image what one of 128 does).
        per_call = max(1, AUGMENT_CHUNK // max(1, micro_batch * self.train_images[0].numel()))
        for first in range(0, len(indices), per_call):
            group = indices[first:first + per_call]
            index = torch.cat(group)
            images, labels = self.train_images[index], self.train_labels[index]
            if self.train_transform is not None:
                images = self._augment(images, labels, epoch, index)
            for part, rows in zip(images.split([len(g) for g in group]), labels.split([len(g) for g in group])):
                yield Batch(part, rows)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self.val_images), batch_size):
            yield Batch(self.val_images[i:i + batch_size], self.val_labels[i:i + batch_size])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.apply(images)

    def finish(self, batch: Batch, device: torch.device, epoch: int) -> torch.Tensor:
        return self.normalize(batch.images.to(device, non_blocking=True))  # augmented whole, in memory

    @classmethod
    def from_shards(cls, manifest: Manifest, train_transform: Transform, seed: int, workers: int,
                    on_error: str, preprocessing: Preprocessing) -> "InMemorySource":
        """Decode the train and val splits once, up front."""

        def decoded(batches, what: str, log: SkipLog):
            batches = list(batches)
            if not batches:  # every sample skipped under --on-error skip (or none there)
                raise DataError(f"no {what} sample was readable ({log.summary()}; first: {log.examples[0]})"
                                if log.total else f"no {what} sample", shard=manifest.location)
            return (torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])), \
                [key for b in batches for key in b.keys]

        # The training split's skips are reported with the first epoch, so it is read without read_split's
        # line on stderr: a split of which nothing is readable is said in one line.
        loader = make_loader(manifest, "train", batch_size=1024, augment="none", shuffle=False, drop_last=False,
                             rank=0, world_size=1, num_workers=workers, on_error=on_error)
        train, keys = decoded(loader, "training", loader.skipped)
        val_skipped = SkipLog()
        val, _ = decoded(read_split(manifest, "val", batch_size=1024, workers=workers, on_error=on_error,
                                    skipped=val_skipped), "validation", val_skipped)
        return cls(train, val, manifest.num_classes, preprocessing, train_transform, seed, keys, loader.skipped)


class ShardSource:
    """Streams shards through :func:`make_loader` every epoch: for data that does not fit in memory.
    Ranks read disjoint ranges of samples, so DDP sees the same samples per epoch as one process but
    grouped into different global batches (the in-memory source keeps the groups too).

    With a ``decoder`` (``device_decode.jpeg_decoder``) and no boxes, the workers leave JPEGs encoded and
    ``finish`` decodes them on the training device; once the device refuses a whole batch, the workers
    decode again from the next epoch on."""

    def __init__(self, manifest: Manifest, train_transform: Transform, seed: int, workers: int, on_error: str,
                 with_boxes: bool = False, decoder: DeviceDecoder | None = None,
                 preprocessing: Preprocessing | None = None):
        self.manifest, self.seed, self.workers, self.on_error = manifest, seed, workers, on_error
        self.with_boxes = with_boxes
        self.decoder = None if with_boxes else decoder
        # The pipeline's last ops that only flip and shift colours run on the training device, a batch
        # at once; the workers decode, rescale and crop. Boxes would have to flip too: then all stays.
        self.train_transform, self.device_ops = train_transform, []
        steps = getattr(train_transform, "steps", None)
        if steps is not None and not with_boxes:
            n = len(steps)
            while n and getattr(steps[n - 1], "device_ok", False) and callable(getattr(steps[n - 1], "batch", None)):
                n -= 1
            self.train_transform, self.device_ops = train_transform.split_at(n)
        self.preprocessing = preprocessing or Preprocessing.vggtk(manifest.stats.mean_rgb_255)
        self._skipped = SkipLog()

    def split_layout(self, env: DistEnv) -> dict:
        # Samples are dealt to ranks x reader workers, so a started epoch continues only on the same grid.
        return {"world_size": env.world_size, "workers": max(1, self.workers)}

    def pop_skipped(self) -> tuple[int, str]:
        log, self._skipped = self._skipped, SkipLog()
        return log.total, (f"{log.summary()}; first: {log.examples[0]}" if log.total else "")

    def _train_loader(self, epoch: int, env: DistEnv, micro_batch: int, start: int = 0):
        return make_loader(self.manifest, "train", batch_size=micro_batch, augment=self.train_transform,
                           seed=self.seed, epoch=epoch, rank=env.rank, world_size=env.world_size,
                           num_workers=self.workers, on_error=self.on_error, start_position=start,
                           with_boxes=self.with_boxes, defer_jpeg=self.decoder is not None and self.decoder.active)

    def num_batches(self, global_batch: int, env: DistEnv, micro_batch: int) -> int:
        accum = global_batch // (env.world_size * micro_batch)
        return len(self._train_loader(0, env, micro_batch)) // accum

    def train_batches(self, epoch, start, env, global_batch, micro_batch):
        accum = global_batch // (env.world_size * micro_batch)
        limit = (self.num_batches(global_batch, env, micro_batch) - start) * accum
        loader = self._train_loader(epoch, env, micro_batch, start * accum)
        for i, batch in enumerate(loader):
            if i >= limit:
                break
            yield batch
        self._skipped.merge(loader.skipped.counts, loader.skipped.examples)

    def val_batches(self, batch_size):
        yield from read_split(self.manifest, "val", batch_size=batch_size, workers=self.workers,
                              on_error=self.on_error, with_boxes=self.with_boxes)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.apply(images)

    def finish(self, batch: Batch, device: torch.device, epoch: int) -> torch.Tensor:
        if batch.pending is not None:
            images = self._decode(batch, device)
        else:
            images = batch.images.to(device, non_blocking=True)
        if self.device_ops:
            n, c, h, w = images.shape
            geometry = BatchGeometry(n, c, w, h, [sample_seed(self.seed, epoch, key) for key in batch.keys])
            for op in self.device_ops:
                op.batch(geometry)
            images = flip_and_shift(images, geometry)
        return self.normalize(images)

    def _decode(self, batch: Batch, device: torch.device) -> torch.Tensor:
        decoder = self.decoder
        was_active, refused = decoder.active, decoder.refused
        images, failed = decoder.assemble(batch.images, batch.pending, len(batch), device)
        batch.pending = None
        if decoder.refused and not refused:
            print(f"--decode device: {decoder.name} refused an image ({decoder.why}); such images are decoded on "
                  "the CPU in the training process", file=sys.stderr)
        if was_active and not decoder.active:
            print(f"--decode device: {decoder.name} refused a whole batch; the workers decode from the next epoch "
                  "on", file=sys.stderr)
        if not failed:
            batch.images = images
            return images
        for _, err in failed:
            handle(err, self.on_error, self._skipped)  # raises under "fail"
        if len(failed) == len(batch):
            raise DataError(f"no image of this batch of {len(batch)} decodes ({failed[0][1]}); with --decode device "
                            "a damaged JPEG is found only on the device, after the batch was formed: decode in the "
                            "workers (--decode workers) to skip it there", kind="corrupt image")
        bad = {row for row, _ in failed}
        keep = [i for i in range(len(batch)) if i not in bad]
        batch.labels, batch.keys = batch.labels[keep], [batch.keys[i] for i in keep]
        if batch.boxes is not None:
            batch.boxes, batch.box_labels = [batch.boxes[i] for i in keep], [batch.box_labels[i] for i in keep]
        batch.images = images[torch.tensor(keep, device=device)]
        return batch.images


IN_MEMORY_LIMIT = 2 << 30  # decoded bytes of the training split below which it is decoded once, up front


def source_for(manifest: Manifest, train_transform: Transform, seed: int, workers: int, on_error: str,
               preprocessing: Preprocessing, with_boxes: bool = False,
               decoder: DeviceDecoder | None = None) -> BatchSource:
    """In memory when every image has one size, the training split fits in IN_MEMORY_LIMIT and no boxes
    are needed; else streamed (JPEGs decoded on the device by ``decoder``, when given). Batches reach the
    net made into its input by ``preprocessing``."""
    side = manifest.uniform_side
    if not with_boxes and side is not None and manifest.samples("train") * manifest.channels * side ** 2 \
            < IN_MEMORY_LIMIT:
        return InMemorySource.from_shards(manifest, train_transform, seed, workers, on_error, preprocessing)
    return ShardSource(manifest, train_transform, seed, workers, on_error, with_boxes, decoder, preprocessing)

