"""Augmentation pipelines: registered augmentations composed in order, with decoding fused in.

Ops that declare ``lazy_ok = True`` (the built-in rescale / crop / flip) run on the undecoded
``LazyImage``; the image is decoded just before the first op that does not, or at the end. A
third-party augmentation therefore always receives a uint8 (C, H, W) tensor, as the hook promises.

Default recipes (``train_pipeline`` / ``eval_pipeline``), chosen from the manifest's image sizes:

- ImageNet-sized photos: train = rescale S ~ U[256, 512], random 224 crop, flip, colour shift;
  eval = rescale Q = 384 (= (Smin + Smax) / 2), centre 224 crop (or no crop for dense testing).
- Small images (largest side under 64, e.g. Fashion-MNIST's 28x28): the same recipe at 32x32, scaled
  down: train = rescale S ~ U[32, 40], random 32 crop, flip, colour shift; eval = rescale Q = 36,
  centre 32 crop. So a 28x28 image is first enlarged to at least 32 and then cropped, as the paper's
  224 crops come from images rescaled to S >= 224.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import VggtkError
from .decode import materialize
from .shards.manifest import Manifest

Step = Callable[[dict, torch.Generator], dict]


def _resolve(step) -> tuple[str, Step]:
    if callable(step) and not isinstance(step, (str, tuple, dict)):
        return type(step).__name__, step
    if isinstance(step, str):
        name, options = step, {}
    elif isinstance(step, tuple) and len(step) == 2:
        name, options = step
    elif isinstance(step, dict) and "name" in step:
        options = dict(step)
        name = options.pop("name")
    else:
        raise VggtkError(f"an augmentation step is a callable, a name, (name, options) or {{'name': ...}}, not {step!r}")
    from ..host.manager import get_host

    entry = get_host().registry("augmentations").get(name)
    try:
        return entry.name, entry.factory(**options)
    except (TypeError, ValueError) as exc:
        raise VggtkError(f"augmentation {entry.name!r} rejected its options {options}: {exc}") from None


class Pipeline:
    """``pipeline(sample, generator) -> sample`` with ``sample["image"]`` a uint8 (or float) tensor."""

    def __init__(self, steps: Sequence = ()):
        resolved = [_resolve(s) for s in steps]
        self.names = [n for n, _ in resolved]
        self.steps = [op for _, op in resolved]

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        for op in self.steps:
            if not getattr(op, "lazy_ok", False):
                materialize(sample)
            sample = op(sample, generator)
        return materialize(sample)

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names) or 'decode'})"


def _small(manifest: Manifest | None) -> bool:
    size = (manifest.extra.get("image_size") or {}) if manifest is not None else {}
    return bool(size) and size.get("max_side", 1 << 30) < 64


def recipe(manifest: Manifest | None) -> dict:
    """Crop size, training scale range and test scale for this data (see the module docstring)."""
    if _small(manifest):
        return {"crop": 32, "smin": 32, "smax": 40, "q": 36}
    return {"crop": 224, "smin": 256, "smax": 512, "q": 384}


def train_pipeline(manifest: Manifest | None = None, crop: int | None = None, smin: int | None = None,
                   smax: int | None = None, flip: bool = True, color_shift: bool = True,
                   alphastd: float = 0.1) -> Pipeline:
    """The paper's training augmentation: rescale (fixed S when smin == smax), random crop, flip, colour shift."""
    r = recipe(manifest)
    crop, smin, smax = crop or r["crop"], smin or r["smin"], smax or r["smax"]
    steps: list = [("rescale", {"size": smin} if smin == smax else {"smin": smin, "smax": smax}),
                   ("random_crop", {"size": crop})]
    if flip:
        steps.append(("random_flip", {"p": 0.5}))
    if color_shift:
        if manifest is None or manifest.stats is None:
            raise VggtkError("the colour shift needs the training set's RGB statistics: read shards through their "
                             "manifest, or pass color_shift=False")
        steps.append(("color_shift", {"eigval": manifest.stats.eigval, "eigvec": manifest.stats.eigvec,
                                      "alphastd": alphastd}))
    return Pipeline(steps)


def eval_pipeline(manifest: Manifest | None = None, q: int | None = None, crop: int | None = 0,
                  dense: bool = False) -> Pipeline:
    """Testing: rescale to Q, then the centre crop (``crop=0`` picks the recipe's size) or, dense, no crop."""
    r = recipe(manifest)
    steps: list = [("rescale", {"size": q or r["q"]})]
    steps.append(("identity", {}) if dense else ("center_crop", {"size": crop or r["crop"]}))
    return Pipeline(steps)
