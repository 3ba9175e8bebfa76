"""Image decoding, fused with the geometric augmentations.

A ``LazyImage`` holds the encoded bytes and the geometry asked of it so far (rescale, crop, flip).
It reads only the header until ``materialize()``, which then decodes once, at reduced size when the
target is at least 2x smaller (PIL's JPEG draft mode: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT),
and resamples only the region that survives the crops, once, with torch's antialiased bilinear
filter on uint8 (the same filter as PIL's, several times faster). That region is snapped to whole
source pixels; the sub-pixel difference is reported as ``correction`` and ``materialize(sample)``
moves the boxes by it, so boxes stay on the content. Geometric ops call ``resize``, ``crop``
and ``hflip`` below, which act on a ``LazyImage`` or on a uint8 (C, H, W) tensor alike, so an
augmentation gives the same geometry whether or not it runs fused.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import DataError

# The files taken for images when a folder is read: what PIL decodes that cameras and tools write.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def decode_failure(exc: Exception) -> str:
    """Why an image did not decode, in words that name no Python object."""
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))
    return f"cannot decode image ({type(exc).__name__}: {text})"


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # how PIL opens 16-bit greyscale PNGs


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit greyscale, by its high byte: PIL's own conversion clips every
    value above 255, which turns most of such an image white."""
    if img.mode not in SIXTEEN_BIT:
        return img
    values = np.asarray(img).astype(np.int64)
    return Image.fromarray((values >> 8).clip(0, 255).astype(np.uint8), "L")


def _pil_mode(channels: int | None, mode: str) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    # keep what the file holds, as 1 or 3 channels
    return "L" if mode in ("L", "LA", "I;16", "I", "F", "1") else "RGB"


def stored_channels(mode: str) -> int:
    """1 or 3: the channels an image of PIL ``mode`` decodes to when none are forced (what it holds)."""
    return 1 if _pil_mode(None, mode) == "L" else 3


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    if arr.ndim == 2:
        return torch.from_numpy(arr.copy()).unsqueeze(0)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # a copy: a 1x1 image's view is already contiguous


class Geometry:
    """Geometry asked of an image and not yet applied: the region of the source it covers (``box``, pixel
    edges), the ``size`` it will have, a mirror, and whole levels to add per channel (colour shift)."""

    __slots__ = ("src_size", "box", "size", "flipped", "offset")

    def _start(self, w: int, h: int) -> None:
        self.src_size = (w, h)
        self.box = (0.0, 0.0, float(w), float(h))
        self.size = (w, h)
        self.flipped = False
        self.offset: list[int] | None = None  # whole levels added to each channel, saturating (colour shift)

    def _resize(self, w: int, h: int) -> "Geometry":
        self.size = (int(w), int(h))
        return self

    def _crop(self, x: int, y: int, w: int, h: int) -> "Geometry":
        cw, ch = self.size
        if self.flipped:  # crop coordinates are in the mirrored image
            x = cw - x - w
        l, t, r, b = self.box
        sx, sy = (r - l) / cw, (b - t) / ch
        self.box = (l + x * sx, t + y * sy, l + (x + w) * sx, t + (y + h) * sy)
        self.size = (int(w), int(h))
        return self

    def _hflip(self) -> "Geometry":
        self.flipped = not self.flipped
        return self

    def _add(self, offset: list[int]) -> "Geometry":
        if self.offset is not None:  # two shifts: add them, as the tensor path would (up to saturation)
            offset = [a + b for a, b in zip(self.offset, offset)]
        self.offset = [int(v) for v in offset]
        return self


class LazyImage(Geometry):
    """Encoded image plus pending geometry. ``size`` is the (width, height) it will have once decoded."""

    __slots__ = ("data", "channels", "shard", "member", "src_mode", "format", "reduced", "correction", "_pil")

    def __init__(self, data: bytes, channels: int | None = None, shard: str | None = None, member: str | None = None):
        self.data, self.channels, self.shard, self.member = data, channels, shard, member
        try:
            self._pil = Image.open(io.BytesIO(data))  # reads the header only; decoded by materialize()
            src_size, self.src_mode, self.format = self._pil.size, self._pil.mode, self._pil.format
        except Exception as exc:
            raise DataError(decode_failure(exc), shard, member,
                            kind="corrupt image") from None
        self._start(*src_size)
        self.reduced = 1  # the JPEG draft reduction the last decode used (1, 2, 4 or 8)
        # (ax, bx, ay, by): where a point of the asked-for geometry (x, y) lies in the decoded image,
        # (ax x + bx, ay y + by); None when they are the same. See _resample.
        self.correction: tuple[float, float, float, float] | None = None

    @property
    def num_channels(self) -> int:
        return 1 if _pil_mode(self.channels, self.src_mode) == "L" else 3

    def materialize(self) -> torch.Tensor:
        """Decode once, resample once: a uint8 (C, H, W) tensor."""
        try:
            return self._decode()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(decode_failure(exc), self.shard, self.member,
                            kind="corrupt image") from None

    def _resample(self, img: Image.Image, box, w: int, h: int) -> torch.Tensor:
        # The asked-for region has fractional edges, which torch's resampler cannot take; it resamples
        # the nearest whole-pixel region instead, which shifts and scales the content by at most half
        # a source pixel. ``correction`` records that map, and ``materialize(sample)`` moves the boxes
        # by it, so boxes stay exactly on the content.
        out, (left, top, right, bottom) = _resample_region(img, box, w, h)
        sx, sy = (right - left) / w, (bottom - top) / h
        ax, ay = (box[2] - box[0]) / w / sx, (box[3] - box[1]) / h / sy
        self.correction = (ax, (box[0] - left) / sx, ay, (box[1] - top) / sy)
        return out

    def _decode(self) -> torch.Tensor:
        w, h = self.size
        l, t, r, b = self.box
        mode = _pil_mode(self.channels, self.src_mode)
        img = self._pil if self._pil is not None else Image.open(io.BytesIO(self.data))
        self._pil = None  # a PIL image decodes once
        reduce = 1
        if img.format == "JPEG":
            want = dct_reduction(self.box, self.size)
            if want > 1:
                sw, sh = self.src_size
                img.draft(mode if mode in ("L", "RGB") else None, (max(1, sw // want), max(1, sh // want)))
                reduce = max(1, round(self.src_size[0] / img.size[0]))
                self.reduced = reduce
            elif mode == "L" and img.mode != "L":
                img.draft("L", img.size)  # libjpeg outputs greyscale directly
        img.load()
        img = to_8bit(img)
        if img.mode != mode:
            img = img.convert(mode)
        box = (l / reduce, t / reduce, r / reduce, b / reduce)
        iw, ih = img.size
        whole = box == (0.0, 0.0, float(iw), float(ih))
        integral = all(float(v).is_integer() for v in box)
        if whole and (w, h) == (iw, ih):
            out = _to_tensor(img)  # nothing to resample: pixels come out exactly as stored
        elif integral and (w, h) == (int(box[2] - box[0]), int(box[3] - box[1])):
            out = _to_tensor(img.crop(tuple(int(v) for v in box)))  # a pure crop stays exact
        else:
            out = self._resample(img, box, w, h)
        if self.flipped:
            out = out.flip(-1)
            if self.correction is not None:
                ax, bx, ay, by = self.correction
                self.correction = (ax, w * (1 - ax) - bx, ay, by)
        return out if self.offset is None else _saturating_add(out, self.offset)


def dct_reduction(box, size) -> int:
    """How much a JPEG decode may reduce in the DCT for this geometry: the largest power of two up to 8
    that keeps at least one decoded pixel per output pixel."""
    l, t, r, b = box
    step = min((r - l) / size[0], (b - t) / size[1])
    return 1 << max(0, min(3, int(math.floor(math.log2(step))) if step >= 2 else 0))


def whole_pixel_region(box, iw: int, ih: int) -> tuple[int, int, int, int]:
    """The region of whole pixels nearest ``box`` (pixel edges) in an ``iw`` x ``ih`` image, at least one
    pixel: the content then moves by at most half a source pixel. The device decode takes the same."""
    left, top = min(max(0, round(box[0])), iw - 1), min(max(0, round(box[1])), ih - 1)
    right, bottom = max(left + 1, min(iw, round(box[2]))), max(top + 1, min(ih, round(box[3])))
    return left, top, right, bottom


def _resample_region(img: Image.Image, box, w: int, h: int):
    """Resample the whole-pixel region nearest ``box`` to (w, h) with torch's antialiased bilinear
    filter (several times faster than PIL's on uint8). Returns the tensor and the region used."""
    left, top, right, bottom = whole_pixel_region(box, *img.size)
    region = torch.from_numpy(np.array(img.crop((left, top, right, bottom))))  # unpacks only the region
    x = region.permute(2, 0, 1)[None] if region.ndim == 3 else region[None, None]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0].contiguous()
    return out, (left, top, right, bottom)


def decode(data: bytes, channels: int | None = None, shard: str | None = None, member: str | None = None) -> torch.Tensor:
    """Decode the whole image at full size: uint8 (C, H, W), C = 1 or 3 (``channels`` forces one)."""
    return LazyImage(data, channels, shard, member).materialize()


# -- geometry on a LazyImage or a uint8 (C, H, W) tensor ------------------------------------------

def image_size(img) -> tuple[int, int]:
    """(width, height)."""
    if isinstance(img, Geometry):
        return img.size
    return int(img.shape[-1]), int(img.shape[-2])


def image_channels(img) -> int:
    """1 or 3, for an image pending (lazy) or a (C, H, W) tensor."""
    return img.num_channels if isinstance(img, Geometry) else int(img.shape[0])


def resize(img, w: int, h: int):
    if isinstance(img, Geometry):
        return img._resize(w, h)
    if (int(img.shape[-1]), int(img.shape[-2])) == (w, h):
        return img
    # antialias=True matches PIL's resampling on downscale (PIL filters with a support scaled to the ratio);
    # uint8 goes through torch's uint8 kernel, the one the fused path uses.
    if img.dtype == torch.uint8 and img.device.type == "cpu":
        return F.interpolate(img.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False,
                             antialias=True)[0]
    out = F.interpolate(img.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(img.dtype) if img.dtype == torch.uint8 else out.to(img.dtype)


def crop(img, x: int, y: int, w: int, h: int):
    if isinstance(img, Geometry):
        return img._crop(x, y, w, h)
    return img[..., y:y + h, x:x + w]


def hflip(img):
    if isinstance(img, Geometry):
        return img._hflip()
    return img.flip(-1)


def _saturating_add(img: torch.Tensor, offset: list[int]) -> torch.Tensor:
    # Clamp first, then add: stays in uint8 (no widening copy) and cannot wrap around.
    img = img.clone() if img._base is not None or not img.is_contiguous() else img
    for c, d in enumerate(offset):
        if d > 0:
            img[c].clamp_(max=255 - min(d, 255)).add_(min(d, 255))
        elif d < 0:
            img[c].clamp_(min=min(-d, 255)).sub_(min(-d, 255))
    return img


def add_offset(img, offset: list[int]):
    """Add whole levels ``offset[c]`` to channel c of a uint8 image, saturating at 0 and 255."""
    if isinstance(img, Geometry):
        return img._add(offset)
    return _saturating_add(img.clone(), offset)


def materialize(sample: dict) -> dict:
    """Turn a lazy ``sample["image"]`` into its tensor, moving ``sample["boxes"]`` by the sub-pixel
    correction the decode reports and clamping them to the image (in place; returns the sample)."""
    img = sample.get("image")
    if isinstance(img, LazyImage):
        sample["image"] = img.materialize()
        if "boxes" in sample and len(sample["boxes"]):
            ax, bx, ay, by = img.correction if img.correction is not None else (1.0, 0.0, 1.0, 0.0)
            h, w = sample["image"].shape[-2:]
            boxes = sample["boxes"].clone()
            # Crops leave a lazy image's boxes unclamped (augment ops): moved first, then clamped.
            boxes[:, 0::2] = (boxes[:, 0::2] * ax + bx).clamp(0, w)
            boxes[:, 1::2] = (boxes[:, 1::2] * ay + by).clamp(0, h)
            sample["boxes"] = boxes
    return sample


def on_white(img: Image.Image) -> Image.Image:
    """An image with transparency composited on white: dropping the alpha channel would show whatever
    colour its transparent pixels happen to hold."""
    if img.mode not in ("RGBA", "LA", "PA", "P") or (img.mode == "P" and "transparency" not in img.info):
        return img
    rgba = img.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    return flat.convert("L" if img.mode in ("LA",) else "RGB")


def read_image(path, channels: int | None = None) -> torch.Tensor:
    """An image file as uint8 (C, H, W): upright by its EXIF orientation, 16-bit greyscale scaled to 8 bits,
    transparent pixels composited on white, 1 or 3 channels (``channels`` forces one). A file that is not a readable image is a VggtkError
    naming it."""
    from PIL import ImageOps

    from ..errors import VggtkError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise VggtkError(f"{path}: cannot read image ({exc.strerror})") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = on_white(to_8bit(ImageOps.exif_transpose(img)))
            return _to_tensor(img.convert(_pil_mode(channels, img.mode)))
    except Exception as exc:  # PIL raises many types for a broken or hostile file
        raise VggtkError(f"{path}: {decode_failure(exc)}") from None
