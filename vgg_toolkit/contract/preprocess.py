"""How a net's input is made from pixels: the record every weights file carries, so that every command
feeds each net what it was trained on.

A net sees ``(pixels * pixel_range / 255 - mean) / std``, channel by channel in ``channel_order``, where
``pixels`` are 0-255 RGB values rescaled with ``interpolation``. Three families are named:

- ``vggtk``: what training here uses: RGB, 0-255, the training data's mean colour, divided by 255.
- ``torchvision``: RGB, 0-1, ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225); the
  weights of torchvision and timm.
- ``caffe``: the authors' release: BGR, 0-255, minus the mean pixel (103.939, 116.779, 123.68) in BGR
  order, std 1.

Any other record is ``custom``. Normalising is affine per channel, so it may come before or after a
rescale, crop or flip: the evaluators apply it first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import VggtkError

FAMILIES = ("vggtk", "torchvision", "caffe", "custom")
CHANNEL_ORDERS = ("RGB", "BGR")
PIXEL_RANGES = (1.0, 255.0)  # the value of a full-intensity pixel: 0-1 or 0-255 inputs
# The test-time resize vggtk implements (antialiased, as torchvision's preset and PIL's resize are); a
# record asking for another filter is refused rather than fed a different one.
INTERPOLATIONS = ("bilinear",)

# Beyond these a float32 input is no longer what the record says (1/std overflows, the mean swamps the
# pixels): a record outside them is a mistake or crafted, not a convention.
STD_RANGE = (1e-4, 1e4)
MEAN_LIMIT = 1e4

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    family: str
    channel_order: str
    pixel_range: float
    mean: tuple[float, ...]  # per channel, in the net's channel order and pixel range
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def __post_init__(self):
        def bad(what: str):
            return VggtkError(f"preprocessing record: {what}")

        if self.family not in FAMILIES:
            raise bad(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise bad(f"channel order {self.channel_order!r} is not RGB or BGR")
        if self.pixel_range not in PIXEL_RANGES:
            raise bad(f"pixel range {self.pixel_range!r} is not 1 (0-1 inputs) or 255 (0-255)")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3) or not all(_number(v) for v in values):
                raise bad(f"{name} {list(values)!r} is not 1 or 3 finite numbers")
        if len(self.mean) != len(self.std):
            raise bad(f"mean has {len(self.mean)} values and std {len(self.std)}")
        if not all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in self.std):
            raise bad(f"std {list(self.std)!r} must lie in [{STD_RANGE[0]:g}, {STD_RANGE[1]:g}]")
        if not all(abs(v) <= MEAN_LIMIT for v in self.mean):
            raise bad(f"mean {list(self.mean)!r} must lie within +-{MEAN_LIMIT:g}")
        if self.interpolation not in INTERPOLATIONS:
            raise bad(f"interpolation {self.interpolation!r}: vggtk resizes with {', '.join(INTERPOLATIONS)} "
                      "(antialiased) only")

    # --- the named families --------------------------------------------------------------------
    @classmethod
    def vggtk(cls, mean_rgb_255: Sequence[float]) -> "Preprocessing":
        return cls("vggtk", "RGB", 255.0, tuple(float(v) for v in mean_rgb_255), (255.0,) * len(mean_rgb_255))

    @classmethod
    def torchvision(cls) -> "Preprocessing":
        return cls("torchvision", "RGB", 1.0, IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def caffe(cls) -> "Preprocessing":
        return cls("caffe", "BGR", 255.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0))

    @classmethod
    def named(cls, family: str, mean_rgb_255: Sequence[float] | None = None) -> "Preprocessing":
        """A named family; ``vggtk`` needs the training data's mean colour."""
        if family == "torchvision":
            return cls.torchvision()
        if family == "caffe":
            return cls.caffe()
        if family == "vggtk":
            if mean_rgb_255 is None:
                raise VggtkError("the vggtk preprocessing needs the training data's mean colour")
            return cls.vggtk(mean_rgb_255)
        raise VggtkError(f"unknown preprocessing {family!r}; known: vggtk, torchvision, caffe, or a JSON file "
                         "holding a record")

    # --- applying it ---------------------------------------------------------------------------
    def apply(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """0-255 RGB images (uint8 or float, NCHW or CHW, on any device) -> the net's input in ``dtype``.
        A 1-channel image takes the mean of a 3-value mean and std."""
        x = images.to(dtype)
        if x.data_ptr() == images.data_ptr():
            x = x.clone()  # the caller's pixels stay as they were
        channels = x.shape[-3]
        if self.channel_order == "BGR" and channels == 3:
            x = x.flip(-3)
        mean = torch.as_tensor(self.mean, dtype=dtype, device=x.device)
        std = torch.as_tensor(self.std, dtype=dtype, device=x.device)
        if channels != mean.numel():
            mean, std = mean.mean().reshape(1), std.mean().reshape(1)
        shape = (-1, 1, 1)
        if self.pixel_range != 255.0:
            x.mul_(self.pixel_range / 255.0)
        return x.sub_(mean.view(shape)).mul_(1.0 / std.view(shape))

    # --- records -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"family": self.family, "channel_order": self.channel_order, "pixel_range": self.pixel_range,
                "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_json(cls, data, where: str) -> "Preprocessing":
        """A record read from a file: every field checked, one error naming ``where``."""
        if not isinstance(data, dict):
            raise VggtkError(f"{where}: the preprocessing record is not a JSON object")
        unknown = sorted(set(data) - {"family", "channel_order", "pixel_range", "mean", "std", "interpolation"})
        if unknown:
            raise VggtkError(f"{where}: unknown preprocessing field(s) {', '.join(unknown)}")
        try:
            mean, std = data.get("mean"), data.get("std")
            if not isinstance(mean, list) or not isinstance(std, list):
                raise VggtkError("preprocessing record: mean and std must be lists of numbers")
            rng = data.get("pixel_range")
            if not _number(rng):
                raise VggtkError(f"preprocessing record: pixel range {rng!r} is not a number")
            return cls(str(data.get("family", "custom")), str(data.get("channel_order")), float(rng),
                       tuple(_floats(mean)), tuple(_floats(std)), str(data.get("interpolation", "bilinear")))
        except VggtkError as exc:
            raise VggtkError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path) -> "Preprocessing":
        """A record from a JSON file (``--preprocess FILE.json``)."""
        try:
            data = json.loads(open(path, encoding="utf-8").read())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise VggtkError(f"{path}: not a readable JSON preprocessing record ({exc})") from None
        return cls.from_json(data, str(path))

    def describe(self) -> str:
        """One line for a user: family, order, range, mean and std."""
        return (f"{self.family} ({self.channel_order}, 0-{'1' if self.pixel_range == 1.0 else '255'}, mean "
                f"{_short(self.mean)}, std {_short(self.std)})")


def parse_preprocess(value: str | None, flag: str = "--preprocess") -> Preprocessing | None:
    """A command line's preprocessing: a family's name (vggtk's needs a mean, so not here) or a JSON
    file holding a record; each error names ``flag``."""
    if value is None:
        return None
    try:
        if value.endswith(".json"):
            return Preprocessing.load(value)
        if value == "vggtk":
            raise VggtkError("vggtk's preprocessing is the training data's mean colour; give torchvision, caffe "
                             "or a JSON file holding a record")
        return Preprocessing.named(value)
    except VggtkError as exc:
        raise VggtkError(f"{flag}: {exc}") from None


PREPROCESS_HELP = ("Preprocessing of weights that record none (torchvision, timm, Caffe files): torchvision, caffe, "
                   "or a JSON file holding a record \\[default: by the file's layout].")


def _number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and abs(v) < 1e300
    except OverflowError:  # an integer of hundreds of digits
        return False


def _floats(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if not _number(v):
            raise VggtkError(f"preprocessing record: {v!r} is not a finite number")
        out.append(float(v))
    return out


def _short(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
