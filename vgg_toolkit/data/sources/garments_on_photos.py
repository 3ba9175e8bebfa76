"""Fashion-MNIST garments on real photos: a localisation set big enough to measure generalisation.

Each image is a crop of one of scikit-image's real photos with one Fashion-MNIST garment pasted at a
random size and place; its box is the extent of the pasted pixels, so it is exact. Train and val
garments come from Fashion-MNIST's training file (never the same garment twice), test garments from
its test file, so the dataset's own separation holds. Every image is drawn from (seed, key) alone: the
same options rebuild the same shards byte for byte.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ...errors import VggtkError
from ..shards.records import Record
from .base import Source
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_LICENCE, fashion_mnist_arrays, from_shards
from .labelme_composites import BACKGROUNDS, _background, _skimage_dir

SIDE = 56  # under 64 px: the small-image recipe (S in [32, 40], 32 crops) trains it quickly
GARMENT = (20, 48)  # the pasted garment's side, in pixels of the 56-pixel image
INK = 16  # a Fashion-MNIST pixel at least this bright belongs to the garment
LICENCE = (FASHION_MNIST_LICENCE + " Backgrounds: scikit-image's bundled photos (astronaut, hubble_deep_field: "
           "NASA, public domain; rocket: SpaceX, public domain; chelsea, coffee, grass, gravel, brick: CC0).")


def photo_canvas(rng: np.random.Generator, background: str, side: int) -> np.ndarray:
    """A random square crop of the photo, 30-100% of its shorter side, scaled to side x side RGB."""
    photo = _background(background)
    crop = min(photo.size) * rng.uniform(0.3, 1.0)
    x, y = rng.uniform(0, photo.size[0] - crop), rng.uniform(0, photo.size[1] - crop)
    return np.array(photo.resize((side, side), Image.BILINEAR, box=(x, y, x + crop, y + crop)))


def paste(canvas: np.ndarray, pixels: np.ndarray, size: int, left: int, top: int, key: str) -> list[float]:
    """Paste a 28 x 28 garment, scaled to ``size``, at (left, top) of an RGB canvas, in place: its ink (pixels
    at least INK bright) replaces the photo. Returns the box of the pasted ink, exact."""
    grey = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))
    mask = np.asarray(Image.fromarray((pixels >= INK).astype(np.uint8) * 255).resize((size, size),
                                                                                    Image.NEAREST)) > 0
    if not mask.any():
        raise VggtkError(f"{key}: the garment has no pixel brighter than {INK}")
    region = canvas[top:top + size, left:left + size]
    region[mask] = grey[mask][:, None]
    ys, xs = np.nonzero(mask)
    return [float(left + xs.min()), float(top + ys.min()), float(left + xs.max() + 1), float(top + ys.max() + 1)]


@dataclass(frozen=True)
class GarmentRef:
    key: str
    pixels: np.ndarray  # the 28 x 28 garment
    label: int
    split: str
    background: str
    seed: int

    def load(self) -> Record:
        rng = np.random.default_rng(self.seed)
        canvas = photo_canvas(rng, self.background, SIDE)
        size = int(rng.integers(GARMENT[0], GARMENT[1] + 1))
        left, top = int(rng.integers(0, SIDE - size + 1)), int(rng.integers(0, SIDE - size + 1))
        box = paste(canvas, self.pixels, size, left, top, self.key)
        out = io.BytesIO()
        Image.fromarray(canvas).save(out, "PNG", compress_level=9)
        return Record(self.key, out.getvalue(), "png", self.label, [box], [self.label],
                      meta={"background": self.background.rsplit("/", 1)[-1].split(".")[0]})


def garments_on_photos(root=None, train: int = 20000, val: int = 2000, test: int = 5000, seed: int = 0) -> Source:
    """``train`` + ``val`` garments from Fashion-MNIST's 60,000 training images, ``test`` from its 10,000
    test images (or from the 14,000 and 2,000 of a fashion-mnist shard directory given as ``root``), each
    pasted on a crop of a real photo (see the module docstring)."""
    (train_x, train_y, train_ids), (test_x, test_y, test_ids) = fashion_mnist_arrays(root)
    if train + val > len(train_x) or test > len(test_x):
        raise VggtkError(f"garments-on-photos: train + val may be at most {len(train_x):,} and test at most "
                         f"{len(test_x):,}")
    backgrounds = [str(_skimage_dir() / name) for name in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    order, test_order = rng.permutation(len(train_x)), rng.permutation(len(test_x))
    refs = []
    for split, picks, xs, ys, ids in (("train", order[:train], train_x, train_y, train_ids),
                                      ("val", order[train:train + val], train_x, train_y, train_ids),
                                      ("test", test_order[:test], test_x, test_y, test_ids)):
        for i in picks.tolist():
            refs.append(GarmentRef(f"garment_{split}_{ids[i]:05d}", xs[i], int(ys[i]), split,
                                   backgrounds[int(rng.integers(len(backgrounds)))], int(rng.integers(2**62))))
    return Source("garments-on-photos", list(FASHION_MNIST_CLASSES), refs, channels=3, info={
        "source": {"kind": "garments-on-photos", "packages": ["dataset-fashion-mnist", "scikit-image"], "seed": seed,
                   "garments": "fashion-mnist shards" if from_shards(root) else "IDX files",
                   "side": SIDE, "garment_side": list(GARMENT),
                   "note": "one Fashion-MNIST garment pasted on a crop of a real photo; box = the pasted pixels' "
                           "extent; keys give the garment's index in its Fashion-MNIST file (train/val: training "
                           "file, test: test file)"},
        "licence": LICENCE})
