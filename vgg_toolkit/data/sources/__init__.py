"""Where samples come from before they are shards: an image folder, a CSV / JSON list, or a packaged
source (Fashion-MNIST from Debian's ``dataset-fashion-mnist``; the localisation set, see ``localisation``).

A source gives class names and a list of ``Ref``s: small, picklable descriptions of one sample whose
``load()`` returns the ``Record`` to write (reading or encoding happens then, in writer threads).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import VggtkError
from ..shards.records import Record, safe_key

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_ENV = "VGGTK_FASHION_MNIST"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
FASHION_MNIST_LICENCE = (
    "Fashion-MNIST, Copyright (c) 2017 Zalando SE (https://github.com/zalandoresearch/fashion-mnist), "
    "MIT licence; read from Debian's dataset-fashion-mnist package.")
SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Source:
    name: str
    classes: list[str]
    refs: list  # objects with .key, .split (or None) and .load() -> Record
    channels: int | None = None  # 1 for greyscale data, 3 for colour, None: look at the images
    info: dict = field(default_factory=dict)  # goes into the manifest (description, licence)


# -- files on disk ----------------------------------------------------------------------------------

def _encode_as_stored(path: Path) -> tuple[bytes, str]:
    """JPEG and PNG bytes go into the shard untouched (so a round trip is bit-exact); other formats
    are converted to PNG, losslessly."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg", ".png"):
        return data, "png" if suffix == ".png" else "jpg"
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, "PNG", compress_level=9)
    return out.getvalue(), "png"


@dataclass(frozen=True)
class FileRef:
    key: str
    path: str
    label: int
    split: str | None = None
    boxes: tuple | None = None
    box_labels: tuple | None = None

    def load(self) -> Record:
        try:
            data, ext = _encode_as_stored(Path(self.path))
        except OSError as exc:
            raise VggtkError(f"{self.path}: cannot read image ({exc})") from None
        return Record(self.key, data, ext, self.label,
                      [list(b) for b in self.boxes] if self.boxes is not None else None,
                      list(self.box_labels) if self.box_labels is not None else None,
                      meta={"source": Path(self.path).name})


def _unique_keys(stems: list[str]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for stem in stems:
        key = safe_key(stem)
        seen[key] += 1
        out.append(key if seen[key] == 1 else f"{key}-{seen[key]}")
    return out


def image_folder(root: str | Path) -> Source:
    """``root/CLASS/*.jpg`` (one subfolder per class), or ``root/{train,val,test}/CLASS/*``."""
    root = Path(root)
    split_dirs = [d for d in SPLITS if (root / d).is_dir()]
    bases = [(root / d, d) for d in split_dirs] if split_dirs else [(root, None)]
    classes = sorted({c.name for base, _ in bases for c in base.iterdir() if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise VggtkError(f"{root}: no class subfolders (expected {root}/CLASS/image.jpg)")
    index = {c: i for i, c in enumerate(classes)}
    found = []
    for base, split in bases:
        for cls in classes:
            folder = base / cls
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
                    found.append((path, index[cls], split, str(path.relative_to(root).with_suffix(""))))
    if not found:
        raise VggtkError(f"{root}: no images in the class subfolders")
    keys = _unique_keys([f[3] for f in found])
    refs = [FileRef(k, str(p), label, split) for k, (p, label, split, _) in zip(keys, found)]
    return Source(root.name, classes, refs, info={"source": {"kind": "image folder", "path": root.name}})


def _parse_label(value, classes: list[str] | None, names: dict, where: str):
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return int(value)
    if classes is not None and value not in classes:
        raise VggtkError(f"{where}: label {value!r} is not one of the listed classes")
    return names.setdefault(str(value), len(names)) if classes is None else classes.index(value)


def image_list(path: str | Path) -> Source:
    """A CSV (columns ``path,label`` and optionally ``boxes``, ``box_labels``, ``split``; boxes as JSON
    ``[[x1, y1, x2, y2], ...]`` in pixels) or a JSON list of such objects, or ``{"classes": [...],
    "samples": [...]}``. Labels are class indices or names; image paths are relative to the list."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            classes = data.get("classes") if isinstance(data, dict) else None
            rows = data["samples"] if isinstance(data, dict) else data
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            classes = None
    except (OSError, ValueError, KeyError) as exc:
        raise VggtkError(f"{path}: unreadable image list ({exc})") from None
    names: dict[str, int] = {}
    found = []
    for i, row in enumerate(rows):
        where = f"{path}:{i + 2 if path.suffix.lower() != '.json' else i}"
        if "path" not in row or "label" not in row:
            raise VggtkError(f"{where}: each entry needs 'path' and 'label'")
        label = _parse_label(row["label"], classes, names, where)
        boxes = row.get("boxes")
        box_labels = row.get("box_labels")
        try:
            if isinstance(boxes, str):
                boxes = json.loads(boxes) if boxes.strip() else None
            if isinstance(box_labels, str):
                box_labels = json.loads(box_labels) if box_labels.strip() else None
        except ValueError as exc:
            raise VggtkError(f"{where}: boxes are not JSON ({exc})") from None
        if boxes is not None and (not isinstance(boxes, list) or any(len(b) != 4 for b in boxes)):
            raise VggtkError(f"{where}: boxes must be a list of [x1, y1, x2, y2]")
        if box_labels is not None:
            box_labels = [_parse_label(v, classes, names, where) for v in box_labels]
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise VggtkError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        image = (path.parent / row["path"]).resolve()
        found.append((image, label, split, boxes, box_labels, str(Path(row["path"]).with_suffix(""))))
    if not found:
        raise VggtkError(f"{path}: the list is empty")
    if classes is None:
        if names:
            classes = sorted(names, key=names.get)
        else:
            classes = [str(i) for i in range(max(f[1] for f in found) + 1)]
    keys = _unique_keys([f[5] for f in found])
    refs = [FileRef(k, str(p), label, split, tuple(map(tuple, boxes)) if boxes else None,
                    tuple(box_labels) if box_labels else None)
            for k, (p, label, split, boxes, box_labels, _) in zip(keys, found)]
    return Source(path.stem, list(classes), refs, info={"source": {"kind": "image list", "path": path.name}})


# -- Fashion-MNIST ----------------------------------------------------------------------------------

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


def fashion_mnist(root: str | Path | None = None, train: int = 12000, val: int = 2000, test: int = 2000,
                  seed: int = 0) -> Source:
    """A class-balanced subset of Fashion-MNIST: ``train`` and ``val`` drawn from its training file,
    ``test`` from its test file, each the same number per class, 28x28 greyscale PNG."""
    root = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_ROOT)
    if not root.is_dir():
        raise VggtkError(f"{root}: Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or set "
                         f"{FASHION_MNIST_ENV} / --data-root to a folder with its IDX files)")
    files = {}
    for part in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        ubyte = "idx3-ubyte" if "images" in part else "idx1-ubyte"
        candidates = [root / f"{part}-{ubyte}.gz", root / f"{part}-{ubyte}"]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise VggtkError(f"{root}: {part}-{ubyte}(.gz) is missing")
        files[part] = read_idx(hit)
    for n, name in ((train, "train"), (val, "val"), (test, "test")):
        if n % 10:
            raise VggtkError(f"the {name} size ({n}) must be a multiple of 10 (the same count per class)")
    rng = np.random.default_rng(seed)
    tr_x, tr_y = files["train-images"], files["train-labels"]
    te_x, te_y = files["t10k-images"], files["t10k-labels"]
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


PACKAGED = {
    "fashion-mnist": "class-balanced Fashion-MNIST subset (Debian dataset-fashion-mnist): 28x28 greyscale PNG",
    "localisation": "real objects on real photos with exact boxes (labelme-examples, scikit-image photos)",
}


def open_source(src: str, data_root: str | None = None, **options) -> Source:
    """A folder, a ``.csv`` / ``.json`` list, or the name of a packaged source (``PACKAGED``)."""
    if src == "fashion-mnist" and not Path(src).exists():
        return fashion_mnist(data_root, **options)
    if src == "localisation" and not Path(src).exists():
        from .localisation import localisation_source

        return localisation_source(data_root, **options)
    path = Path(src)
    if path.is_dir():
        return image_folder(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        return image_list(path)
    raise VggtkError(f"{src}: not an image folder, a .csv / .json list, nor a packaged source "
                     f"({', '.join(PACKAGED)})")
