"""Garments in scenes: a localisation set whose geometry lets the paper's protocols differ.

Each 128 x 128 image is a crop of a real photo with one Fashion-MNIST garment pasted on it, its side drawn
log-uniform over 24-112 px and placed anywhere it fits, so objects are small and large, central and at the
edges: at a fixed S = 96 (a centre crop of two thirds of the side) the centre crop holds at least 90% of
the box for about a third of the objects, while dense evaluation sees every one. Half of the images hold a
second garment of another class, placed so that the two never overlap: a distractor, for per-class
regression to tell apart. The image's class and first box are the main garment's; the distractor's box
follows with its own class. Boxes are the pasted pixels' extent, so they are exact.

Backgrounds: scikit-image's bundled photos and, where Debian's labelme-examples is installed, its
unannotated photos; never the photos `vggtk predict`'s tests and documentation run (astronaut, chelsea,
coffee). Train and val garments come from Fashion-MNIST's training file, test garments from its test file;
every image is drawn from (seed, key) alone.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...errors import VggtkError
from ..shards.records import Record
from .base import Source
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_LICENCE, fashion_mnist_arrays, from_shards
from .garments_on_photos import paste, photo_canvas
from .labelme_composites import LABELME_ROOT, _skimage_dir

SIDE = 128
GARMENT = (24, 112)  # the main garment's side, log-uniform, in pixels of the 128-pixel image
DISTRACTOR_SHARE = 0.5
PLACEMENTS = 50  # tries to put the distractor where it does not touch the main garment
SKIMAGE = ["rocket.jpg", "hubble_deep_field.jpg", "grass.png", "gravel.png", "brick.png"]
LABELME = ["classification/data_annotated/0001.jpg", "classification/data_annotated/0002.jpg"] + [
    f"video_annotation/data_annotated/{i:08d}.jpg" for i in range(100, 105)]
LICENCE = (FASHION_MNIST_LICENCE + " Backgrounds: scikit-image's bundled photos (hubble_deep_field: NASA, public "
           "domain; rocket: SpaceX, public domain; grass, gravel, brick: CC0) and, where installed, labelme-examples' "
           "photos (labelme by Kentaro Wada, GPL-3+).")


def log_uniform(rng: np.random.Generator, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def layout(rng: np.random.Generator, distractor: bool) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """(size, left, top) of the main garment's square and, when asked and it fits, of a distractor's square
    that does not overlap it."""
    size = log_uniform(rng, *GARMENT)
    main = (size, int(rng.integers(0, SIDE - size + 1)), int(rng.integers(0, SIDE - size + 1)))
    if not distractor:
        return main, None
    for _ in range(PLACEMENTS):
        other = log_uniform(rng, GARMENT[0], GARMENT[1])
        left, top = int(rng.integers(0, SIDE - other + 1)), int(rng.integers(0, SIDE - other + 1))
        if left >= main[1] + size or main[1] >= left + other or top >= main[2] + size or main[2] >= top + other:
            return main, (other, left, top)
    return main, None  # no room beside a large garment: the image keeps it alone


@dataclass(frozen=True)
class SceneRef:
    key: str
    pixels: np.ndarray  # the main garment, 28 x 28
    label: int
    other: tuple[np.ndarray, int] | None  # a distractor garment of another class and its label
    split: str
    background: str
    seed: int

    def load(self) -> Record:
        rng = np.random.default_rng(self.seed)
        canvas = photo_canvas(rng, self.background, SIDE)
        main, second = layout(rng, self.other is not None)
        boxes, labels = [paste(canvas, self.pixels, *main, self.key)], [self.label]
        if second is not None:
            boxes.append(paste(canvas, self.other[0], *second, self.key))
            labels.append(self.other[1])
        out = io.BytesIO()
        Image.fromarray(canvas).save(out, "PNG", compress_level=9)
        return Record(self.key, out.getvalue(), "png", self.label, boxes, labels,
                      meta={"background": self.background.rsplit("/", 1)[-1].split(".")[0]})


def backgrounds() -> list[str]:
    from pathlib import Path

    found = [str(_skimage_dir() / name) for name in SKIMAGE]
    root = Path(LABELME_ROOT)
    found += [str(root / name) for name in LABELME if (root / name).is_file()]
    return found


def garments_in_scenes(root=None, train: int = 8000, val: int = 1000, test: int = 2000, seed: int = 0) -> Source:
    """``train`` + ``val`` scenes from Fashion-MNIST's training images, ``test`` from its test images (or from
    a fashion-mnist shard directory given as ``root``); see the module docstring."""
    (train_x, train_y, train_ids), (test_x, test_y, test_ids) = fashion_mnist_arrays(root)
    if train + val > len(train_x) or test > len(test_x):
        raise VggtkError(f"garments-in-scenes: train + val may be at most {len(train_x):,} and test at most "
                         f"{len(test_x):,}")
    photos = backgrounds()
    rng = np.random.default_rng(seed)
    order, test_order = rng.permutation(len(train_x)), rng.permutation(len(test_x))
    refs = []
    for split, picks, xs, ys, ids in (("train", order[:train], train_x, train_y, train_ids),
                                      ("val", order[train:train + val], train_x, train_y, train_ids),
                                      ("test", test_order[:test], test_x, test_y, test_ids)):
        for i in picks.tolist():
            other = None
            if rng.random() < DISTRACTOR_SHARE:  # a garment of another class, from the same file and split
                j = int(rng.integers(len(xs)))
                while int(ys[j]) == int(ys[i]):
                    j = int(rng.integers(len(xs)))
                other = (xs[j], int(ys[j]))
            refs.append(SceneRef(f"scene_{split}_{ids[i]:05d}", xs[i], int(ys[i]), other, split,
                                 photos[int(rng.integers(len(photos)))], int(rng.integers(2**62))))
    return Source("garments-in-scenes", list(FASHION_MNIST_CLASSES), refs, channels=3, info={
        "source": {"kind": "garments-in-scenes", "packages": ["dataset-fashion-mnist", "scikit-image",
                                                              "labelme-examples (optional)"], "seed": seed,
                   "garments": "fashion-mnist shards" if from_shards(root) else "IDX files", "side": SIDE,
                   "garment_side": list(GARMENT), "distractor_share": DISTRACTOR_SHARE,
                   "backgrounds": [p.rsplit("/", 1)[-1] for p in photos],
                   "note": "a Fashion-MNIST garment of log-uniform side pasted anywhere on a crop of a real photo, "
                           "half the images with a non-overlapping garment of another class; boxes = the pasted "
                           "pixels' extent, the main garment's first"},
        "licence": LICENCE})
