"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package: a class-balanced subset, 28x28 PNG."""

from __future__ import annotations

import gzip
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import VggtkError
from ..shards.records import Record
from .base import Source

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_ENV = "VGGTK_FASHION_MNIST"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
FASHION_MNIST_LICENCE = (
    "Fashion-MNIST, Copyright (c) 2017 Zalando SE (https://github.com/zalandoresearch/fashion-mnist), "
    "MIT licence; read from Debian's dataset-fashion-mnist package.")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a uint8 array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise VggtkError(f"{path}: unreadable IDX file ({exc})") from None


@dataclass(frozen=True)
class ArrayRef:
    key: str
    pixels: np.ndarray  # H x W uint8
    label: int
    split: str | None = None

    def load(self) -> Record:
        out = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(out, "PNG", compress_level=9)
        return Record(self.key, out.getvalue(), "png", self.label)


def _stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator, exclude=frozenset()) -> list[int]:
    picked = []
    for c in range(int(labels.max()) + 1):
        pool = np.array([i for i in np.flatnonzero(labels == c) if i not in exclude])
        if len(pool) < per_class:
            raise VggtkError(f"class {c} has only {len(pool)} images, {per_class} asked")
        picked.extend(rng.choice(pool, per_class, replace=False).tolist())
    return sorted(picked)


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``root``, else $VGGTK_FASHION_MNIST, else the Debian package."""
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT)


def from_shards(root: str | Path | None = None) -> bool:
    return (fashion_mnist_root(root) / "manifest.json").is_file()


def fashion_mnist_arrays(root: str | Path | None = None):
    """((train images, labels, indices), (test images, labels, indices)) of Debian's Fashion-MNIST files,
    uint8 arrays; the indices are each image's place in its IDX file."""
    root = fashion_mnist_root(root)
    if not root.is_dir():
        raise VggtkError(f"{root}: Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or set "
                         f"{FASHION_MNIST_ENV} / --data-root to a folder with its IDX files, or to a "
                         f"fashion-mnist shard directory such as the bundled shards/fashion-mnist)")
    if from_shards(root):
        return _arrays_from_shards(root)
    files = {}
    for part in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        ubyte = "idx3-ubyte" if "images" in part else "idx1-ubyte"
        candidates = [root / f"{part}-{ubyte}.gz", root / f"{part}-{ubyte}"]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise VggtkError(f"{root}: {part}-{ubyte}(.gz) is missing")
        files[part] = read_idx(hit)
    return ((files["train-images"], files["train-labels"], np.arange(len(files["train-labels"]))),
            (files["t10k-images"], files["t10k-labels"], np.arange(len(files["t10k-labels"]))))


def _arrays_from_shards(root: Path):
    """The same, from shards this source wrote (keys name the index in the IDX file): the bundled subset
    lets the sources built on Fashion-MNIST run where the Debian package cannot be installed. The third
    array of each pair gives each image's index in its IDX file."""
    from ..decode import decode
    from ..shards.manifest import Manifest
    from ..shards.reader import iter_raw

    manifest = Manifest.load(root)
    if manifest.classes != FASHION_MNIST_CLASSES:
        raise VggtkError(f"{manifest.path}: not Fashion-MNIST shards (classes {manifest.classes[:3]}...)")
    parts = {"train": ([], [], []), "t10k": ([], [], [])}
    for split in ("train", "val", "test"):
        for path in manifest.shard_locations(split):
            for raw in iter_raw(str(path)):
                file, _, index = raw["__key__"].rpartition("_")
                part = parts.get(file.removeprefix("fmnist_"))
                if part is None or not index.isdigit():
                    raise VggtkError(f"{path}: {raw['__key__']} is not a Fashion-MNIST key (fmnist_train_N or "
                                     f"fmnist_t10k_N)")
                part[0].append(decode(raw["png"], 1, path, f"{raw['__key__']}.png")[0].numpy())
                part[1].append(int(raw["cls"]))
                part[2].append(int(index))
    return tuple((np.stack(x), np.array(y, dtype=np.uint8), np.array(i)) for x, y, i in parts.values())


def _idx_only(root):
    """Only the IDX files define the balanced subset; a subset of it cannot rebuild itself."""
    if from_shards(root):
        raise VggtkError(f"{fashion_mnist_root(root)}: the fashion-mnist source draws from the IDX files; "
                         "shards are no source for it")
    return fashion_mnist_arrays(root)


def fashion_mnist(root: str | Path | None = None, train: int = 12000, val: int = 2000, test: int = 2000,
                  seed: int = 0) -> Source:
    """A class-balanced subset of Fashion-MNIST: ``train`` and ``val`` drawn from its training file,
    ``test`` from its test file, each the same number per class, 28x28 greyscale PNG."""
    (tr_x, tr_y, _), (te_x, te_y, _) = _idx_only(root)
    for n, name in ((train, "train"), (val, "val"), (test, "test")):
        if n % 10:
            raise VggtkError(f"the {name} size ({n}) must be a multiple of 10 (the same count per class)")
    rng = np.random.default_rng(seed)
    train_idx = _stratified(tr_y, train // 10, rng)
    val_idx = _stratified(tr_y, val // 10, rng, exclude=frozenset(train_idx))
    test_idx = _stratified(te_y, test // 10, rng)
    refs = [ArrayRef(f"fmnist_train_{i:05d}", tr_x[i], int(tr_y[i]), "train") for i in train_idx]
    refs += [ArrayRef(f"fmnist_train_{i:05d}", tr_x[i], int(tr_y[i]), "val") for i in val_idx]
    refs += [ArrayRef(f"fmnist_t10k_{i:05d}", te_x[i], int(te_y[i]), "test") for i in test_idx]
    return Source("fashion-mnist", list(FASHION_MNIST_CLASSES), refs, channels=1, info={
        "source": {"kind": "fashion-mnist", "package": "dataset-fashion-mnist", "seed": seed,
                   "note": "train and val from train-images-idx3-ubyte, test from t10k-images-idx3-ubyte; "
                           "keys give the index in those files"},
        "licence": FASHION_MNIST_LICENCE})
