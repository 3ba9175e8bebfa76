"""The paper's test protocols (Sec. 3.2): centre crop, dense, multi-crop, and dense + multi-crop.

Every evaluator is a callable ``evaluator(model, images) -> posteriors`` made by its class
(``factory(**options)``). ``images`` are float, already normalised (mean RGB subtracted), NCHW, of any
size; the evaluator rescales them itself, isotropically, so that the smallest side is the test scale Q
(bilinear, antialiased), once per scale. It also accepts a list of CHW images of different sizes: they
are rescaled one size-group at a time and then batched by their *rescaled* size, which is how dense
evaluation batches without padding (padding would change the class-score map). A single CHW tensor
gives a (num_classes,) vector; a batch gives (N, num_classes).

Posteriors are softmax probabilities, averaged in probability space over flips, crops and scales.

Test scales, in order of precedence: ``scales=`` given explicitly; else the paper's defaults from the
training scale (``train_scale=`` given to the factory, else the one in the model's info, when it was
trained by vggtk): Q = S or {S-32, S, S+32} for fixed S, Q = 0.5(Smin+Smax) or {Smin, 0.5(Smin+Smax), Smax}
for jittered S (``multi_scale=True`` picks the set); else S is taken to be the crop size.

Small-image policy. The size of an input image never matters: it is rescaled (up or down) to Q, as in
the paper. What can be too small is Q itself: a test scale below the crop size would give an image
smaller than the crop (and a class-score map smaller than FC6's kernel). With ``small="upscale"`` (the
default) such a Q is raised to the crop size, i.e. the image is upscaled until its smallest side equals
the crop, never padded; scales that become equal are evaluated once, and ``scales_for(model)`` reports
the scales actually used. With ``small="error"`` such a Q is a VggtkError.

Crops lie on integer pixels and the 5x5 grid spans the image from edge to edge, mirror-symmetric by
construction. For the middle column to be centred exactly, the horizontal margin (rescaled width minus
crop) must be even, so when the width is the longer side it is rounded to the nearest such size (the
aspect ratio moves by at most one pixel). Flip averaging then gives the same posteriors for an image and
its mirror image. Only a portrait image at a Q whose margin Q - crop is odd (never with the paper's
even Q and crop) keeps its middle crops half a pixel left of centre. Dense evaluation is symmetric anyway.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from vgg_toolkit import (FullyConvolutional, TrainScale, VggtkError, center_crop, crop_at, dense_input,
                         find_model_info, grid_positions, model_form, parse_test_scales, require_fully_conv, rescale,
                         test_scales_for)

SMALL_POLICIES = ("upscale", "error")


def class_score_map(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The fully-convolutional net's class-score map, (N, classes, h, w), for whole images (no rescale)."""
    require_fully_conv(model, "class-score map")
    with model_form(model, fully_conv=True), torch.no_grad():
        return model(images)


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if out.ndim == 4:  # a class-score map: the paper averages it spatially (sum-pooling up to a constant)
        out = out.mean(dim=(2, 3))
    if out.ndim != 2:
        raise VggtkError(f"{type(model).__name__} returned scores of shape {tuple(out.shape)}; "
                         "expected (N, classes) or a class-score map (N, classes, h, w)")
    return out.float()  # averaging in float32 even when the forward ran under bf16 autocast


def dense_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Spatially averaged class scores (logits) of the fully-convolutional net on whole images."""
    with model_form(model, fully_conv=True), torch.no_grad():
        return _scores(model, images)


def _summed_softmax(model: nn.Module, views: Sequence[Callable[[], torch.Tensor]], batch_size: int) -> torch.Tensor:
    """Sum over views of softmax posteriors; each view makes a same-size (B, C, h, w) batch on demand.

    Views are concatenated so that one forward sees about ``batch_size`` rows, and are built only when
    their forward comes, so 50 crops per image never sit in memory at once.
    """
    total = None
    i = 0
    while i < len(views):
        first = views[i]()
        rows = first.shape[0]
        group = [first] + [v() for v in views[i + 1:i + max(1, batch_size // rows)]]
        x = torch.cat(group) if len(group) > 1 else first
        probs = torch.cat([_scores(model, chunk).softmax(dim=1) for chunk in x.split(batch_size)])
        part = probs.view(len(group), rows, -1).sum(dim=0)
        total = part if total is None else total + part
        i += len(group)
    return total


# --- protocols ------------------------------------------------------------------------------------------
class Protocol:
    """What every protocol shares: options, test scales, the small-image policy, batching of inputs.

    Options (all keyword-only, all optional):
        scales: test scales Q (ints, or a string such as "256,384,512"); overrides the defaults below.
        train_scale: the training scale S (int) or (Smin, Smax), for the paper's default test scales.
        multi_scale: with the defaults, use three scales instead of one.
        crop_size: crop side (and the size the Linear classifier needs); default ``model.input_size``.
        small: "upscale" or "error", what to do with a Q below the crop size (module docstring).
        flip: also evaluate the horizontally flipped image and average the posteriors.
        batch_size: rows (crops or whole images) per forward pass.
    """

    name = "protocol"
    uses_fully_conv = False
    accepts_lists = True  # the runner may hand over images of different sizes in one list

    def __init__(self, *, scales: Iterable[int] | str | None = None, train_scale=None, multi_scale: bool = False,
                 crop_size: int | None = None, small: str = "upscale", flip: bool = True, batch_size: int = 64):
        if scales is not None:
            scales = parse_test_scales(scales)
        if train_scale is not None:
            train_scale = TrainScale.parse(train_scale)
        if small not in SMALL_POLICIES:
            raise VggtkError(f"unknown small-image policy {small!r}; known: {', '.join(SMALL_POLICIES)}")
        if crop_size is not None and crop_size < 1:
            raise VggtkError(f"crop_size must be positive, got {crop_size}")
        if batch_size < 1:
            raise VggtkError(f"batch_size must be positive, got {batch_size}")
        self.scales, self.train_scale, self.multi_scale = scales, train_scale, multi_scale
        self.crop_size, self.small, self.flip, self.batch_size = crop_size, small, flip, batch_size

    # -- configuration resolved against a model
    def crop_for(self, model: nn.Module) -> int:
        info = find_model_info(model)
        crop = self.crop_size or (info.input_size if info is not None else None)
        if not crop:
            raise VggtkError(f"{type(model).__name__} carries no model info; give the evaluator crop_size=")
        return int(crop)

    def train_scale_for(self, model: nn.Module) -> TrainScale | None:
        """The training scale the default test scales come from (None when it is unknown)."""
        info = find_model_info(model)
        return self.train_scale if self.train_scale is not None else (info.train_scale if info else None)

    def scales_for(self, model: nn.Module) -> tuple[int, ...]:
        """The test scales this evaluator really uses on ``model``, after the small-image policy."""
        crop = self.crop_for(model)
        if self.small == "error":
            asked = self.scales or (self.train_scale_for(model) or TrainScale.parse(crop)).test_scales(self.multi_scale)
            small = [q for q in asked if q < crop]
            if small:
                raise VggtkError(f"test scale Q={small[0]} is smaller than the {crop}-pixel crop "
                                 "(use larger --scales, or the 'upscale' small-image policy)")
        return test_scales_for(model, self.scales, self.multi_scale, self.train_scale_for(model), crop)

    def views_per_image(self, model: nn.Module) -> int:
        """Forward-pass inputs per image over all scales (crops, or whole images for dense)."""
        return len(self.scales_for(model)) * self._views_per_scale()

    def _views_per_scale(self) -> int:
        return 2 if self.flip else 1

    def describe(self) -> str:
        return self.name

    # -- evaluation
    def __call__(self, model: nn.Module, images) -> torch.Tensor:
        single = isinstance(images, torch.Tensor) and images.ndim == 3
        items = _as_items(images[None] if single else images, _device_of(model))
        scales = self.scales_for(model)
        crop = self.crop_for(model)
        total = None
        for q in scales:
            part = self._at_scale(model, items, q, crop)
            total = part if total is None else total + part
        posteriors = total / len(scales)
        return posteriors[0] if single else posteriors

    def _at_scale(self, model: nn.Module, items, q: int, crop: int) -> torch.Tensor:
        out: torch.Tensor | None = None
        with model_form(model, fully_conv=self.uses_fully_conv), torch.no_grad():
            for index, batch in _groups_at_scale(items, q, crop):
                probs = self._posteriors(model, batch, crop)
                if out is None:
                    out = probs.new_empty((items.count, probs.shape[1]))
                out[index] = probs
        return out

    def _posteriors(self, model: nn.Module, batch: torch.Tensor, crop: int) -> torch.Tensor:
        raise NotImplementedError


def _flipped_views(view: Callable[[], torch.Tensor], flip: bool) -> list[Callable[[], torch.Tensor]]:
    return [view, lambda: view().flip(-1)] if flip else [view]


class CenterCrop(Protocol):
    """Rescale to Q, one centre crop (and, with ``flip=True``, its mirror image; off by default as in
    the paper's single-crop baseline)."""

    name = "center"

    def __init__(self, *, flip: bool = False, **options):
        super().__init__(flip=flip, **options)

    def describe(self) -> str:
        return "centre crop" + (" + flip" if self.flip else "")

    def _posteriors(self, model, batch, crop):
        views = _flipped_views(lambda: center_crop(batch, crop), self.flip)
        return _summed_softmax(model, views, self.batch_size) / len(views)


class Dense(Protocol):
    """The fully-convolutional net on the whole rescaled image; class-score map averaged spatially;
    softmax posteriors averaged with the horizontally flipped image. The rescaled image is trimmed,
    centred, to a multiple of the net's output stride: the pools would otherwise drop its last rows and
    columns, and the score map's windows would not be centred (at Q = 36 with 32-pixel windows, the one
    window would sit at the top left instead of in the middle)."""

    name = "dense"
    uses_fully_conv = True

    def _posteriors(self, model, batch, crop):
        if isinstance(model, FullyConvolutional):  # windows centred on the image, not anchored top left
            batch = dense_input(model, batch)
        views = _flipped_views(lambda: batch, self.flip)
        return _summed_softmax(model, views, self.batch_size) / len(views)


class MultiCrop(Protocol):
    """A ``grid`` x ``grid`` regular grid of crops x 2 flips per scale: 50 per scale, 150 over 3 scales."""

    name = "multicrop"

    def __init__(self, *, grid: int = 5, **options):
        super().__init__(**options)
        if grid < 1:
            raise VggtkError(f"grid must be positive, got {grid}")
        self.grid = grid

    def describe(self) -> str:
        return f"multi-crop {self.grid}x{self.grid}" + ("x2" if self.flip else "")

    def _views_per_scale(self) -> int:
        return self.grid * self.grid * (2 if self.flip else 1)

    def _posteriors(self, model, batch, crop):
        tops = grid_positions(batch.shape[-2], crop, self.grid)
        lefts = grid_positions(batch.shape[-1], crop, self.grid)
        views: list[Callable[[], torch.Tensor]] = []
        for top in tops:
            for left in lefts:
                views += _flipped_views(lambda t=top, l=left: crop_at(batch, t, l, crop), self.flip)
        return _summed_softmax(model, views, self.batch_size) / len(views)


class Combined(Protocol):
    """The average of the dense and multi-crop posteriors (the paper's best single-net protocol)."""

    name = "combined"

    def __init__(self, *, grid: int = 5, **options):
        super().__init__(**options)
        self.dense = Dense(**options)
        self.multicrop = MultiCrop(grid=grid, **options)

    def describe(self) -> str:
        return f"dense + {self.multicrop.describe()}"

    def views_per_image(self, model):
        return self.dense.views_per_image(model) + self.multicrop.views_per_image(model)

    def __call__(self, model, images):
        return 0.5 * (self.dense(model, images) + self.multicrop(model, images))


# --- inputs -----------------------------------------------------------------------------------------------
class _Items:
    """The images of one call: either one NCHW batch or a list of CHW images of any sizes."""

    def __init__(self, batch: torch.Tensor | None, images: list[torch.Tensor] | None):
        self.batch, self.images = batch, images
        self.count = batch.shape[0] if batch is not None else len(images)


def _device_of(model: nn.Module):
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_items(images, device) -> _Items:
    def prep(t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).to(device)
        return t if t.is_floating_point() else t.float()

    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise VggtkError(f"images must be CHW, NCHW or a list of CHW tensors, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise VggtkError("no images to evaluate")
        return _Items(prep(images), None)
    images = [prep(t) for t in images]
    if not images:
        raise VggtkError("no images to evaluate")
    bad = [tuple(t.shape) for t in images if t.ndim != 3]
    if bad:
        raise VggtkError(f"a list of images must hold CHW tensors, got shape {bad[0]}")
    return _Items(None, images)


def _groups_at_scale(items: _Items, q: int, crop: int):
    """(indices, same-size batch rescaled to q) groups covering every image once."""
    if items.batch is not None:
        yield slice(None), rescale(items.batch, q, crop)
        return
    by_raw: dict[tuple, list[int]] = {}
    for i, t in enumerate(items.images):
        by_raw.setdefault(tuple(t.shape), []).append(i)
    # images of different raw sizes often share a rescaled size (same aspect ratio): batch them together
    by_rescaled: dict[tuple, list[tuple[list[int], torch.Tensor]]] = {}
    for index in by_raw.values():
        batch = rescale(torch.stack([items.images[i] for i in index]), q, crop)
        by_rescaled.setdefault(tuple(batch.shape[1:]), []).append((index, batch))
    for parts in by_rescaled.values():
        index = [i for idx, _ in parts for i in idx]
        batch = torch.cat([b for _, b in parts]) if len(parts) > 1 else parts[0][1]
        yield torch.tensor(index, device=batch.device), batch
