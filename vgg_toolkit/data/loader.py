"""The one entry point for training and evaluation data: ``make_loader``.

    loader = make_loader("shards/fashion-mnist", split="train", batch_size=128, augment="train",
                         seed=0, epoch=3, rank=rank, world_size=world, num_workers=2,
                         on_error="fail", start_position=0)
    mean = loader.mean_rgb                       # 0-255 units, from the manifest
    for images, labels in loader:                # uint8 (N, C, H, W), int64 (N,), on the CPU
        x = normalize_on_device(images.to(device, non_blocking=True), mean)
        ...
    loader.state_dict()                          # {"epoch", "batches", ...}: store it in a checkpoint
    loader.skipped.summary()                     # what --on-error skip dropped

Each epoch every sample is read exactly once across all ranks and workers (see ``reader``). With
``drop_last`` (the default when shuffling) every rank yields the same number of full batches,
``len(loader)``, so DDP ranks step together. ``start_position`` (a batch count, or the dict from
``state_dict()``) continues an epoch where a checkpoint stopped: the same batches, in the same order,
as an uninterrupted run, provided the world size, worker count, batch size and seed are the same.
Augmentation randomness comes from (seed, epoch, sample key) alone.

Batches are ``Batch`` objects that unpack as ``images, labels`` (or ``images, labels, boxes`` with
``with_boxes=True``: ``boxes`` a list of float32 (n, 4) tensors; ``batch.box_labels`` alongside) and
carry ``batch.keys``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import VggtkError
from .decode import LazyImage
from .device_decode import PendingDecode
from .errors import DataError, SkipLog, check_policy, handle
from .shards.manifest import Manifest
from .pipeline import Pipeline, eval_pipeline, train_pipeline
from .shards.reader import (
    ShardRef,
    assign,
    check_shard,
    derive_seed,
    parse_sample,
    resolve_source,
    sample_generator,
    shuffle_order,
    worker_sample_count,
    worker_stream,
)


@dataclass
class Batch:
    images: torch.Tensor | None  # uint8 (N, C, H, W)
    labels: torch.Tensor | None  # int64 (N,)
    keys: list[str] = field(default_factory=list)
    boxes: list[torch.Tensor] | None = None
    box_labels: list[torch.Tensor] | None = None
    with_boxes: bool = False
    skipped: dict = field(default_factory=dict)  # counts by kind since the worker's last batch
    skip_examples: list[str] = field(default_factory=list)
    error: VggtkError | None = None  # raised by a worker: handed over as data, re-raised as itself
    pending: PendingDecode | None = None  # images left encoded for the device; ``images`` holds the others

    def pin_memory(self) -> "Batch":
        """Page-locked images, so that the copy to the GPU can overlap compute (the DataLoader calls
        this in its pinning thread; without it a dataclass would pass through unpinned)."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self

    def __iter__(self):
        yield self.images
        yield self.labels
        if self.with_boxes:
            yield self.boxes

    def __len__(self) -> int:
        return len(self.keys)


def _shape(image) -> tuple[int, int, int]:
    if isinstance(image, LazyImage):
        return image.num_channels, image.size[1], image.size[0]
    return tuple(image.shape)


def _collate(samples: list[dict], with_boxes: bool) -> Batch:
    shapes = {_shape(s["image"]) for s in samples}
    if len(shapes) > 1:
        raise VggtkError(f"images in one batch differ in size ({', '.join(map(str, sorted(shapes)[:3]))}): "
                         "crop to one size, or use batch_size=1 (dense testing)")
    # Images left encoded for the device (defer_jpeg) are not in ``images``: no placeholder pixels.
    encoded = [i for i, s in enumerate(samples) if isinstance(s["image"], LazyImage)]
    decoded = [s["image"] for s in samples if not isinstance(s["image"], LazyImage)]
    images = torch.stack(decoded) if decoded else torch.zeros((0, *shapes.pop()), dtype=torch.uint8)
    batch = Batch(images, torch.tensor([s["label"] for s in samples], dtype=torch.int64),
                  [s["key"] for s in samples], with_boxes=with_boxes)
    if encoded:
        batch.pending = PendingDecode.of(encoded, [samples[i]["image"] for i in encoded])
    if any("boxes" in s for s in samples):
        batch.boxes = [s.get("boxes", torch.zeros(0, 4)) for s in samples]
        batch.box_labels = [s.get("box_labels", torch.zeros(0, dtype=torch.int64)) for s in samples]
    elif with_boxes:
        batch.boxes = [torch.zeros(0, 4) for _ in samples]
        batch.box_labels = [torch.zeros(0, dtype=torch.int64) for _ in samples]
    return batch


def _round_robin(counts: list[int]) -> list[int]:
    """Which worker each batch of a rank comes from: the DataLoader asks its workers in turn and
    passes over those that are done."""
    left, seq = list(counts), []
    while any(left):
        for w, n in enumerate(left):
            if n:
                seq.append(w)
                left[w] -= 1
    return seq


@dataclass(frozen=True)
class ReadSettings:
    """How one rank reads a split, fixed when its loader is made (see ``make_loader``)."""

    batch_size: int
    seed: int
    rank: int
    world_size: int
    num_workers: int
    shuffle: bool
    shuffle_buffer: int
    drop_last: bool
    on_error: str
    verify: str
    channels: int | None
    with_boxes: bool
    pin_memory: bool
    defer_jpeg: bool = False
    manifest_channels: int | None = None  # the manifest's, when the images are read as it says (not forced)

    @property
    def logical_workers(self) -> int:
        return max(1, self.num_workers)


class ShardDataset(IterableDataset):
    """One rank's share of one epoch, cut among DataLoader workers; yields collated ``Batch`` objects."""

    def __init__(self, refs: list[ShardRef], pipeline: Pipeline, settings: "ReadSettings", *, num_classes, epoch,
                 worker_map, start_samples):
        self.refs, self.pipeline, self.settings = refs, pipeline, settings
        self.num_classes, self.epoch = num_classes, epoch
        self.worker_map, self.start_samples = worker_map, start_samples

    def __iter__(self):
        # The DataLoader would re-raise a worker's exception with the worker's traceback in its message;
        # passing it over as a value keeps the one-line error intact.
        try:
            yield from self._batches()
        except VggtkError as err:
            if get_worker_info() is None:
                raise
            yield Batch(None, None, error=err)

    def _batches(self):
        info = get_worker_info()
        slot = info.id if info is not None else 0
        if slot >= len(self.worker_map):
            return
        logical = self.worker_map[slot]
        cfg = self.settings
        pieces = assign(self.refs, cfg.seed, self.epoch, cfg.shuffle, cfg.rank, cfg.world_size, logical,
                        cfg.logical_workers)
        n = sum(p.stop - p.start for p in pieces)
        order = shuffle_order(n, cfg.shuffle_buffer if cfg.shuffle else 0,
                              derive_seed("order", cfg.seed, self.epoch, cfg.rank, logical))
        log, reported = SkipLog(keep=1000), 0
        limit = n - self.start_samples[logical]
        if cfg.drop_last:
            limit -= limit % cfg.batch_size
        emitted, batch = 0, []

        def flush(samples):
            nonlocal reported
            out = _collate(samples, cfg.with_boxes) if samples else Batch(None, None)
            out.skipped = dict(log.counts)
            out.skip_examples = log.examples[reported:]
            reported = len(log.examples)
            log.counts.clear()
            return out

        for raw in worker_stream(pieces, order, self.start_samples[logical], cfg.on_error, log, cfg.verify):
            if emitted >= limit:
                break
            try:
                sample = parse_sample(raw, self.num_classes, cfg.channels, cfg.manifest_channels)
                sample = self.pipeline(sample, sample_generator(cfg.seed, self.epoch, sample["key"]),
                                       leave_jpeg=cfg.defer_jpeg)
                if isinstance(sample["image"], LazyImage):  # its boxes (not asked for) miss the decode's correction
                    for unused in ("boxes", "box_labels"):
                        sample.pop(unused, None)
            except DataError as err:
                handle(err, cfg.on_error, log)
                continue
            batch.append(sample)
            emitted += 1
            if len(batch) == cfg.batch_size:
                yield flush(batch)
                batch = []
        if batch and not cfg.drop_last:
            yield flush(batch)
        elif log.counts:
            yield flush([])


def _dist_defaults(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    return (0 if rank is None else rank), (1 if world_size is None else world_size)


def _worker_init(_):
    torch.set_num_threads(1)  # the workers are the parallelism; threads inside them would oversubscribe


class ShardLoader:
    """Iterable over one rank's batches for one epoch. See the module docstring."""

    def __init__(self, refs, manifest, pipeline, settings: "ReadSettings", epoch: int, start_position):
        self.refs, self.manifest, self.pipeline, self.settings = refs, manifest, pipeline, settings
        self.skipped = SkipLog(keep=20)
        self.set_epoch(epoch, start_position)

    # -- sizes ------------------------------------------------------------------------------------
    def _worker_batches(self, rank: int) -> list[int]:
        out = []
        for w in range(self.settings.logical_workers):
            n = worker_sample_count(self.refs, self.settings.world_size, self.settings.logical_workers, rank, w)
            size = self.settings.batch_size
            out.append(n // size if self.settings.drop_last else -(-n // size))
        return out

    def __len__(self) -> int:
        """Batches per epoch on this rank; with drop_last, the same on every rank."""
        if self.settings.drop_last:
            return min(sum(self._worker_batches(r)) for r in range(self.settings.world_size))
        return sum(self._worker_batches(self.settings.rank))

    @property
    def samples(self) -> int:
        """Samples of this split across all ranks."""
        return sum(r.samples for r in self.refs)

    @property
    def num_classes(self) -> int | None:
        return self.manifest.num_classes if self.manifest is not None else None

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes if self.manifest is not None else []

    @property
    def mean_rgb(self) -> list[float]:
        """The training split's mean RGB in 0-255 units (for ``normalize_on_device``)."""
        if self.manifest is None or self.manifest.stats is None:
            raise VggtkError("no mean RGB: these shards were not read through a manifest with statistics")
        return self.manifest.stats.mean_rgb_255

    # -- position ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_position=0) -> None:
        """Move to ``epoch``; ``start_position`` batches of it are taken as already consumed."""
        if isinstance(start_position, dict):
            for k in ("world_size", "num_workers", "batch_size", "seed"):
                if k in start_position and start_position[k] != getattr(self.settings, k):
                    raise VggtkError(f"cannot resume mid-epoch: the position was stored with {k}="
                                     f"{start_position[k]}, this run has {getattr(self.settings, k)} "
                                     "(use the same setting, or resume at an epoch boundary)")
            if start_position.get("epoch", epoch) != epoch:
                raise VggtkError(f"the position belongs to epoch {start_position['epoch']}, not {epoch}")
            start_position = int(start_position.get("batches", 0))
        start = int(start_position)
        total = len(self)
        if not 0 <= start <= total:
            raise VggtkError(f"start position {start} is outside this epoch's {total} batches")
        self.epoch, self.start, self.position = epoch, start, start
        seq = _round_robin(self._worker_batches(self.settings.rank))
        done = [0] * self.settings.logical_workers
        for w in seq[:start]:
            done[w] += 1
        # Hand DataLoader worker j the logical worker whose batch would come j-th after the stop, so
        # that the DataLoader's own round robin continues the interrupted sequence.
        order: list[int] = []
        for w in seq[start:]:
            if w not in order:
                order.append(w)
        self._worker_map = order if start else list(range(self.settings.logical_workers))
        self._start_samples = [d * self.settings.batch_size for d in done]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.position,
                **{k: getattr(self.settings, k) for k in ("world_size", "num_workers", "batch_size", "seed")}}

    # -- iteration --------------------------------------------------------------------------------
    def _dataset(self) -> ShardDataset:
        return ShardDataset(self.refs, self.pipeline, self.settings, num_classes=self.num_classes, epoch=self.epoch,
                            worker_map=self._worker_map, start_samples=self._start_samples)

    def _prehash(self) -> None:
        """Check this rank's shards here, once per process: forked workers inherit the cache and do not
        hash them again every epoch. A bad shard is left for the worker to report under the policy."""
        for w in range(self.settings.logical_workers):
            cfg = self.settings
            for piece in assign(self.refs, cfg.seed, self.epoch, cfg.shuffle, cfg.rank, cfg.world_size, w,
                                cfg.logical_workers):
                try:
                    check_shard(piece.shard, self.settings.verify)
                except DataError:
                    pass

    def __iter__(self):
        dataset = self._dataset()
        if self.settings.num_workers > 0 and self.settings.verify == "sha256":
            self._prehash()
        if self.settings.num_workers > 0:
            batches = DataLoader(dataset, batch_size=None, num_workers=self.settings.num_workers,
                                 pin_memory=self.settings.pin_memory,
                                 worker_init_fn=_worker_init, prefetch_factor=2)
        else:
            batches = dataset
        limit = len(self) if self.settings.drop_last else None
        for batch in batches:
            if batch.error is not None:
                raise batch.error
            if batch.skipped:
                self.skipped.merge(batch.skipped, batch.skip_examples)
            if batch.images is None:
                continue
            if limit is not None and self.position >= limit:
                continue  # drain the workers so their skip counts arrive; ranks stop together
            self.position += 1
            yield batch


def make_loader(source, split: str = "train", batch_size: int = 128, augment="auto", seed: int = 0,
                epoch: int = 0, rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                on_error: str = "fail", start_position=0, *, shuffle: bool | None = None,
                shuffle_buffer: int = 1000, drop_last: bool | None = None, channels: int | None = None,
                with_boxes: bool = False, verify: str = "sha256", pin_memory: bool | None = None,
                defer_jpeg: bool = False) -> ShardLoader:
    """Batches of one split for one rank.

    source: a shard directory / ``manifest.json`` / ``Manifest`` (``split`` picks the split), a brace
        pattern such as ``shards/x/train-{000000..000003}.tar.gz``, or a list of shard paths.
    augment: "auto" (the paper's training recipe for split "train", single centre crop otherwise; see
        ``pipeline``), "train", "eval", "dense" (rescale to Q, no crop; use batch_size=1), "none"
        (decode only), a ``Pipeline``, or a list of steps (names, (name, options) or callables).
    seed, epoch: the shuffle order and every augmentation draw derive from them (and the sample key).
    rank, world_size: default to torch.distributed's when it is initialised, else 0 and 1.
    num_workers: DataLoader worker processes doing decode + augmentation (0: in this process).
    on_error: "fail" raises a one-line DataError naming the shard and member; "skip" drops the
        sample and counts it in ``loader.skipped``.
    start_position: batches of this epoch already consumed (int), or ``loader.state_dict()``.
    shuffle: default True for "train"; drop_last: default = shuffle.
    channels: 1 or 3 to force greyscale or RGB; None keeps the data's (``manifest.channels``; a colour
        image in a set whose manifest says 1 channel is then bad data, kind "wrong channels").
    verify: "sha256" checks each shard against the manifest the first time a process opens it;
        "size" checks only the size; "none" skips both.
    defer_jpeg: JPEGs that every augmentation op can take undecoded are left encoded, for the training
        device to decode: ``batch.pending`` holds them, ``batch.images`` only the other rows, and
        ``device_decode.DeviceDecoder.assemble`` puts the batch together. Not with ``with_boxes``.
    """
    check_policy(on_error)
    if verify not in ("sha256", "size", "none"):
        raise VggtkError(f"verify must be sha256, size or none, not {verify!r}")
    if batch_size < 1:
        raise VggtkError(f"batch size must be positive, not {batch_size}")
    refs, manifest = resolve_source(source, split)
    if verify == "none":
        refs = [ShardRef(r.path, r.samples) for r in refs]
    elif verify == "size":
        refs = [ShardRef(r.path, r.samples, None, r.size) for r in refs]
    if defer_jpeg and with_boxes:
        raise VggtkError("defer_jpeg cannot be used with with_boxes: boxes follow the workers' decode")
    rank, world_size = _dist_defaults(rank, world_size)
    if not 0 <= rank < world_size:
        raise VggtkError(f"rank {rank} is outside world size {world_size}")
    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    drop_last = shuffle if drop_last is None else drop_last
    pipeline = _pipeline(augment, manifest, is_train)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    manifest_channels = None
    if channels is None and manifest is not None:
        channels = manifest_channels = manifest.channels
    settings = ReadSettings(batch_size, seed, rank, world_size, num_workers, shuffle, shuffle_buffer, drop_last,
                            on_error, verify, channels, with_boxes, pin_memory, defer_jpeg, manifest_channels)
    return ShardLoader(refs, manifest, pipeline, settings, epoch, start_position)


def _pipeline(augment, manifest: Manifest | None, is_train: bool) -> Pipeline:
    if isinstance(augment, Pipeline):
        return augment
    if augment == "auto":
        augment = "train" if is_train else "eval"
    if augment == "train":
        return train_pipeline(manifest, color_shift=manifest is not None and manifest.stats is not None)
    if augment == "eval":
        return eval_pipeline(manifest)
    if augment == "dense":
        return eval_pipeline(manifest, dense=True)
    if augment in ("none", None):
        return Pipeline([])
    if isinstance(augment, str):
        raise VggtkError(f"augment must be auto, train, eval, dense, none, a Pipeline or a list of steps, "
                         f"not {augment!r}")
    return Pipeline(list(augment))


def normalize_on_device(images: torch.Tensor, mean, scale: float = 1.0 / 255.0,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, C, H, W) on the device -> ``(images - mean) * scale`` in ``dtype``.

    ``mean``: the training split's mean RGB in 0-255 units (``loader.mean_rgb``), or a ``Manifest``.
    A 1-channel batch subtracts the mean of the three. ``scale=1`` keeps the paper's 0-255 units
    (Caffe subtracted the mean only); the default 1/255 keeps inputs within about [-0.5, 0.5].
    """
    if isinstance(mean, Manifest):
        if mean.stats is None:
            raise VggtkError(f"{mean.path}: no colour statistics")
        mean = mean.stats.mean_rgb_255
    m = torch.as_tensor(mean, dtype=dtype, device=images.device).reshape(-1)
    if images.shape[1] != m.numel():
        m = m.mean().reshape(1)
    return images.to(dtype).sub_(m.view(1, -1, 1, 1)).mul_(scale)


def read_split(data, split: str, *, batch_size: int = 64, workers: int = 0, on_error: str = "fail",
               limit: int | None = None, skipped: SkipLog | None = None, with_boxes: bool = False) -> Iterator[Batch]:
    """Every image of a split once, in shard order, decoded with no augmentation: for evaluation, feature
    extraction and in-memory training. Batches hold ``batch_size`` images of one size; when a split's
    images differ in size they come one at a time (a batch is never padded). At most ``limit`` images.
    What ``--on-error skip`` dropped is reported on stderr once the split is read, and added to
    ``skipped`` when given."""
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    if limit is not None and limit < 1:
        raise VggtkError(f"limit must be at least 1, got {limit}")
    loader = make_loader(manifest, split, batch_size=batch_size if manifest.uniform_side else 1, augment="none",
                         shuffle=False, drop_last=False, rank=0, world_size=1, num_workers=workers,
                         on_error=on_error, with_boxes=with_boxes)
    seen = 0
    try:
        for batch in loader:
            if limit is not None and seen + len(batch) > limit:
                keep = limit - seen
                batch = Batch(batch.images[:keep], batch.labels[:keep], batch.keys[:keep],
                              batch.boxes[:keep] if batch.boxes is not None else None,
                              batch.box_labels[:keep] if batch.box_labels is not None else None, batch.with_boxes)
            yield batch
            seen += len(batch)
            if limit is not None and seen >= limit:
                return
    finally:
        if loader.skipped.total:
            print(f"{manifest.location} {split}: {loader.skipped.summary()}", file=sys.stderr)
            if skipped is not None:
                skipped.merge(loader.skipped.counts, loader.skipped.examples)
