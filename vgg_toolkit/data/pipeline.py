"""Augmentation pipelines: registered augmentations composed in order, with decoding fused in.

Ops that declare ``lazy_ok = True`` (the built-in rescale / crop / flip) run on the undecoded
``LazyImage``; the image is decoded just before the first op that does not, or at the end. A
third-party augmentation therefore always receives a uint8 (C, H, W) tensor, as the hook promises.

Default pipelines (``train_pipeline`` / ``eval_pipeline``) follow the data's recipe (``facts.recipe``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import VggtkError
from ..contract.scale import TrainScale
from .decode import LazyImage, materialize
from .facts import recipe
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
        for i, (name, op) in enumerate(resolved):
            if hasattr(op, "draw_stream"):  # an op's numbers are its own, even beside another of its kind
                op.draw_stream = f"{i}:{name}"

    def split_at(self, n: int) -> tuple["Pipeline", list]:
        """The first ``n`` ops as a pipeline, and the rest; every op keeps its stream of draws."""
        head = Pipeline()
        head.names, head.steps = self.names[:n], self.steps[:n]
        return head, self.steps[n:]

    def __call__(self, sample: dict, generator: torch.Generator, *, leave_jpeg: bool = False) -> dict:
        """``leave_jpeg``: a JPEG that every op could take undecoded is returned still encoded, a
        ``LazyImage``, for the training device to decode (``device_decode``); its boxes, if any, have not
        had the decode's sub-pixel correction and are not to be used."""
        for op in self.steps:
            if not getattr(op, "lazy_ok", False):
                materialize(sample)
            sample = op(sample, generator)
        image = sample.get("image")
        if leave_jpeg and isinstance(image, LazyImage) and image.format == "JPEG":
            return sample
        return materialize(sample)

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names) or 'decode'})"


def train_pipeline(manifest: Manifest | None = None, crop: int | None = None, scale: TrainScale | None = None,
                   flip: bool = True, color_shift: bool = True, alphastd: float = 0.1) -> Pipeline:
    """The paper's training augmentation: rescale to S (fixed, or jittered per image), random crop, flip,
    colour shift. ``crop`` and ``scale`` default to the data's recipe (``facts.recipe``)."""
    recipe_crop, recipe_scale = recipe(manifest)
    steps: list = [("rescale", {"scale": scale or recipe_scale}), ("random_crop", {"size": crop or recipe_crop})]
    if flip:
        steps.append(("random_flip", {"p": 0.5}))
    if color_shift:
        if manifest is None or manifest.stats is None:
            raise VggtkError("the colour shift needs the training set's RGB statistics: read shards through their "
                             "manifest, or pass color_shift=False")
        steps.append(("color_shift", {"eigval": manifest.stats.eigval, "eigvec": manifest.stats.eigvec,
                                      "alphastd": alphastd}))
    return Pipeline(steps)


def eval_pipeline(manifest: Manifest | None = None, q: int | None = None, crop: int | None = None,
                  dense: bool = False) -> Pipeline:
    """Testing on uint8 images: rescale to Q (default: the recipe's single test scale), then the centre crop
    (default: the recipe's size) or, dense, no crop."""
    recipe_crop, recipe_scale = recipe(manifest)
    steps: list = [("rescale", {"size": q or recipe_scale.test_scales()[0]})]
    steps.append(("identity", {}) if dense else ("center_crop", {"size": crop or recipe_crop}))
    return Pipeline(steps)
