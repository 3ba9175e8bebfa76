"""The paper's augmentations (Sec. 3.1-3.2) as transforms on one sample: ``op(sample, generator) -> sample``.

``sample["image"]`` is a uint8 (C, H, W) tensor, or a ``LazyImage`` not yet decoded: the geometric ops
(``lazy_ok = True``) only record their geometry on it, so that the pipeline decodes and resamples
once. Boxes (``sample["boxes"]``, float32 N x 4, x1 y1 x2 y2 in pixels) move with every geometric op.

All randomness comes from the generator handed in, through its seed: each random op draws
``vt.uniforms(generator.initial_seed(), self.draw_stream, n)`` (the pipeline gives each op its own
stream), so the numbers are the same whatever the image type, and ``batch(geometry)`` draws the same
ones for a whole in-memory batch at once (``vt.BatchGeometry``).
"""

from __future__ import annotations

import torch

from vgg_toolkit import (BatchGeometry, DataError, LazyImage, TrainScale, add_offset, box_area, crop, hflip,
                         image_channels, image_size, main_box, normals, normals_batch, resize, uniforms)


def _where(sample: dict) -> tuple[str | None, str | None]:
    img = sample.get("image")
    if isinstance(img, LazyImage):
        return img.shard, img.member
    return sample.get("shard"), sample.get("key")


def _set_boxes(sample: dict, boxes: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    if keep is not None and not bool(keep.all()):
        boxes = boxes[keep]
        if "box_labels" in sample:
            sample["box_labels"] = sample["box_labels"][keep]
    sample["boxes"] = boxes


class Rescale:
    """Isotropic rescale so that the smallest side is S: fixed, or drawn per image uniformly from the
    integers [Smin, Smax] (scale jittering). ``scale`` is a TrainScale (or its spec: 256, "256-512"), or
    give ``size`` (a fixed S, or Q for testing), or ``smin`` and ``smax``."""

    lazy_ok = True
    draw_stream = "rescale"

    def __init__(self, scale=None, size: int | None = None, smin: int | None = None, smax: int | None = None):
        given = [v for v in (scale, size, (smin, smax) if smin is not None or smax is not None else None)
                 if v is not None]
        if len(given) != 1:
            raise ValueError("rescale: give one of scale=, size=S, or smin= and smax= for scale jittering")
        self.scale = TrainScale.parse(given[0])

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        s = self.scale.smin
        if self.scale.jittered:
            u = uniforms(generator.initial_seed(), self.draw_stream, 1)[0]
            s += int(u * (self.scale.smax - self.scale.smin + 1))
        w, h = image_size(sample["image"])
        if w <= h:
            nw, nh = s, max(1, round(h * s / w))
        else:
            nw, nh = max(1, round(w * s / h)), s
        sample["image"] = resize(sample["image"], nw, nh)
        if "boxes" in sample:
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=sample["boxes"].dtype)
            sample["boxes"] = sample["boxes"] * scale
        return sample

    def batch(self, geometry: BatchGeometry) -> None:
        s = torch.full_like(geometry.width, self.scale.smin)
        if self.scale.jittered:
            u = geometry.uniforms(self.draw_stream, 1)[:, 0]
            s += (u * (self.scale.smax - self.scale.smin + 1)).floor().to(torch.int64)
        w, h = geometry.width.to(torch.float64), geometry.height.to(torch.float64)
        long_h = (h * s / w).round().clamp(min=1).to(torch.int64)  # round() halves to even, as Python's does
        long_w = (w * s / h).round().clamp(min=1).to(torch.int64)
        portrait = geometry.width <= geometry.height
        geometry.resize(torch.where(portrait, s, long_w), torch.where(portrait, long_h, s))


def _crop_boxes(sample: dict, x: int, y: int, w: int, h: int) -> None:
    if "boxes" not in sample:
        return
    b = sample["boxes"] - torch.tensor([x, y, x, y], dtype=sample["boxes"].dtype)
    inside = b.clone()
    inside[:, 0::2] = inside[:, 0::2].clamp(0, w)
    inside[:, 1::2] = inside[:, 1::2].clamp(0, h)
    # A box left with no area lay outside the crop: it is dropped with its label. On an image not yet
    # decoded the rest stay unclamped: the decode's whole-pixel region may show a sliver beyond the
    # crop asked for, and the boxes are moved onto the content (and clamped) only then.
    keep = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
    _set_boxes(sample, b if isinstance(sample["image"], LazyImage) else inside, keep)


def _kept(box: torch.Tensor, x: int, y: int, size: int) -> float:
    """The fraction of ``box``'s area inside the ``size`` square crop at (x, y)."""
    window = torch.tensor([x, y, x + size, y + size], dtype=box.dtype)
    inside = torch.cat([torch.maximum(box[:2], window[:2]), torch.minimum(box[2:], window[2:])])
    whole = float(box_area(box))
    return float(box_area(inside)) / whole if whole > 0 else 0.0


class _Crop:
    lazy_ok = True

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"crop size must be positive, not {size}")
        self.size = size

    def _check(self, sample: dict) -> tuple[int, int]:
        w, h = image_size(sample["image"])
        if w < self.size or h < self.size:
            shard, member = _where(sample)
            raise DataError(f"image of {w}x{h} is smaller than the {self.size}x{self.size} crop "
                            f"(rescale first, with S >= {self.size})", shard, member, kind="image smaller than crop")
        return w, h

    def _fits(self, geometry: BatchGeometry) -> bool:
        """Every image of the batch holds the crop (else the per-sample path names the one that does not)."""
        return not bool((geometry.width < self.size).any() | (geometry.height < self.size).any())


class RandomCrop(_Crop):
    """One random ``size`` x ``size`` crop (224 in the paper; 32 for 28x28 Fashion-MNIST rescaled up).

    With boxes, the crop must keep at least ``min_visible`` of the sample's object (its largest box of
    its own class): up to ``tries`` crops are drawn, from the sample's own generator (so the same crop
    for the same sample in every run), and the first that keeps enough is taken, else the one that
    keeps the most. Without boxes one crop is drawn, as always.
    """

    def __init__(self, size: int, min_visible: float = 0.5, tries: int = 10):
        super().__init__(size)
        if not 0.0 <= min_visible <= 1.0 or tries < 1:
            raise ValueError(f"random_crop: min_visible must lie in [0, 1] and tries be >= 1, got {min_visible}, {tries}")
        self.min_visible, self.tries = min_visible, tries

    draw_stream = "random_crop"

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        w, h = self._check(sample)
        target = None
        if "boxes" in sample and len(sample["boxes"]):
            target = main_box(sample["boxes"], sample["box_labels"], sample["label"])
        tries = self.tries if target is not None else 1
        u = uniforms(generator.initial_seed(), self.draw_stream, 2 * tries)
        best = None
        for t in range(tries):
            x = int(u[2 * t] * (w - self.size + 1))
            y = int(u[2 * t + 1] * (h - self.size + 1))
            kept = 1.0 if target is None else _kept(target, x, y, self.size)
            if best is None or kept > best[2]:
                best = (x, y, kept)
            if kept >= self.min_visible:
                break
        x, y, _ = best
        sample["image"] = crop(sample["image"], x, y, self.size, self.size)
        _crop_boxes(sample, x, y, self.size, self.size)
        return sample

    def batch(self, geometry: BatchGeometry) -> bool:
        if not self._fits(geometry):
            return False
        u = geometry.uniforms(self.draw_stream, 2)
        x = (u[:, 0] * (geometry.width - self.size + 1)).floor().to(torch.int64)
        y = (u[:, 1] * (geometry.height - self.size + 1)).floor().to(torch.int64)
        geometry.crop(x, y, self.size, self.size)
        return True


class CenterCrop(_Crop):
    """The central ``size`` x ``size`` crop (single-crop testing)."""

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        w, h = self._check(sample)
        x, y = (w - self.size) // 2, (h - self.size) // 2
        sample["image"] = crop(sample["image"], x, y, self.size, self.size)
        _crop_boxes(sample, x, y, self.size, self.size)
        return sample

    def batch(self, geometry: BatchGeometry) -> bool:
        if not self._fits(geometry):
            return False
        geometry.crop((geometry.width - self.size) // 2, (geometry.height - self.size) // 2, self.size, self.size)
        return True


class RandomFlip:
    """Horizontal flip with probability ``p``."""

    lazy_ok = True
    device_ok = True  # a streamed batch may flip on the training device, after the decode
    draw_stream = "random_flip"

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must lie in [0, 1], not {p}")
        self.p = p

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        if uniforms(generator.initial_seed(), self.draw_stream, 1)[0] < self.p:
            w, _ = image_size(sample["image"])
            sample["image"] = hflip(sample["image"])
            if "boxes" in sample:
                b = sample["boxes"].clone()
                b[:, 0], b[:, 2] = w - sample["boxes"][:, 2], w - sample["boxes"][:, 0]
                sample["boxes"] = b
        return sample

    def batch(self, geometry: BatchGeometry) -> None:
        geometry.hflip(geometry.uniforms(self.draw_stream, 1)[:, 0] < self.p)


class ColorShift:
    """Krizhevsky's PCA colour shift: add ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, alphastd^2)
    drawn once per image. ``eigval``/``eigvec`` are those of the training set's RGB covariance in [0, 1]
    units (the manifest's ``stats``); the shift is applied in 0-255 units, rounded to whole levels and
    saturated, so the image stays uint8. A 1-channel image gets the mean of the three channel shifts
    (for greyscale data the statistics are those of the grey value repeated, so the three are equal).
    On an undecoded image the shift is applied after decoding and resampling, as a lookup table."""

    lazy_ok = True
    device_ok = True
    draw_stream = "color_shift"

    def __init__(self, eigval, eigvec, alphastd: float = 0.1):
        eigval = torch.as_tensor(eigval, dtype=torch.float64).reshape(3)
        eigvec = torch.as_tensor(eigvec, dtype=torch.float64).reshape(3, 3)
        # shift = eigvec @ (alpha * alphastd * eigval) * 255, folded into one matrix applied to alpha as
        # plain floats: this runs for every training sample, where tensor ops cost more than the arithmetic.
        rgb = (eigvec * (eigval * float(alphastd) * 255.0)).tolist()
        self._rows = {3: rgb, 1: [[sum(row[k] for row in rgb) / 3 for k in range(3)]]}  # grey: the channels' mean

    def _shift(self, u: list[float], channels: int) -> list[float]:
        alpha = normals(u, 3)
        return [row[0] * alpha[0] + row[1] * alpha[1] + row[2] * alpha[2] for row in self._rows[channels]]

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        img = sample["image"]
        shift = self._shift(uniforms(generator.initial_seed(), self.draw_stream, 4), image_channels(img))
        if not isinstance(img, torch.Tensor) or img.dtype == torch.uint8:  # pending geometry, or uint8
            sample["image"] = add_offset(img, [round(v) for v in shift])
        else:
            sample["image"] = img + torch.tensor(shift, dtype=img.dtype).view(-1, 1, 1)
        return sample

    def batch(self, geometry: BatchGeometry) -> None:
        # The shift a sample alone gets, up to the last bit of the normals: rounded to whole levels, the
        # two differ only if a shift lies within that bit of a half level.
        alpha = normals_batch(geometry.uniforms(self.draw_stream, 4), 3)
        rows = torch.tensor(self._rows[geometry.channels], dtype=torch.float64)
        geometry.add((alpha @ rows.T).round().to(torch.int64))


class SubtractMean:
    """Subtract the training set's mean RGB (``mean`` in 0-255 units): the image becomes float32.
    Training hands uint8 batches to the device instead and subtracts there (``normalize_on_device``)."""

    lazy_ok = False

    def __init__(self, mean):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        img = sample["image"].float()
        mean = self.mean if img.shape[0] == self.mean.numel() else self.mean.mean().reshape(1)
        sample["image"] = img - mean.view(-1, 1, 1)
        return sample


class Channels:
    """Make a greyscale image 3-channel (the grey value repeated), or an RGB one 1-channel (ITU-R 601 luma)."""

    lazy_ok = False

    def __init__(self, channels: int = 3):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {channels}")
        self.channels = channels

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        img = sample["image"]
        if img.shape[0] == self.channels:
            return sample
        if self.channels == 3:
            sample["image"] = img.expand(3, -1, -1).contiguous()
        else:
            luma = (img.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
            sample["image"] = luma.round().clamp(0, 255).to(img.dtype) if img.dtype == torch.uint8 else luma
        return sample


class Identity:
    """Leave the image whole (dense testing runs the fully-convolutional net on the uncropped image)."""

    lazy_ok = True

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        return sample

    def batch(self, geometry: BatchGeometry) -> None:
        """Nothing to record: the batch stays whole."""
