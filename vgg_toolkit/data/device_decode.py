"""JPEG decoding on the training device, optional, with the workers' decoder as the fallback.

Where a GPU can decode JPEGs (torchvision's ``decode_jpeg`` on CUDA, nvJPEG), the reader's workers need
not: with ``make_loader(..., defer_jpeg=True)`` they read the shards, draw each sample's geometry and
hand over the encoded bytes with it (``Batch.pending``, a ``PendingDecode``); the batch's rows for those
images are zeros. ``decode_pending`` then decodes them on the device, reduces them as the workers would
have, takes the region the crops left, resamples it with the antialiased bilinear filter the workers
use, mirrors and shifts it, and writes the rows in place.

Where the target is at least 2x smaller the workers' libjpeg decodes at 1/2, 1/4 or 1/8 size, scaling
in the DCT; nvJPEG cannot, so the device decodes in full and averages blocks of that size, the nearest
filter in pixels (on the bundled photos at S <= 64: 0.37 levels from the workers' pixels on average,
against 3.6 when resampling the full decode directly). Decoders also differ in their inverse DCT and
chroma upsampling, by a level or so. An image the device decoder rejects (a CMYK JPEG, say) is decoded
here on the CPU with the workers' own code, to their very pixels; one that neither decodes is a
``DataError`` naming its shard and member.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .decode import LazyImage, _saturating_add, _to_tensor, dct_reduction
from .errors import DataError

# encoded images (uint8, 1-D, on the CPU) and 1 or 3 channels -> uint8 (C, H, W) images on the device;
# raises when any image fails (decode_pending then tries them one at a time)
Decoder = Callable[[list[torch.Tensor], int], list[torch.Tensor]]


@dataclass
class PendingDecode:
    """The images of a batch left encoded: their ``rows`` in the batch, bytes, and the geometry the
    pipeline asked of each (``LazyImage``'s fields: the source region ``box`` in pixel edges, mirror,
    whole levels per channel). All come out ``width`` x ``height`` with ``channels`` channels."""

    rows: list[int]
    data: list[bytes]
    box: list[tuple[float, float, float, float]]
    flipped: list[bool]
    offset: list[list[int] | None]
    channels: int
    width: int
    height: int
    where: list[tuple[str | None, str | None]]  # (shard, member), for errors

    @classmethod
    def of(cls, rows: Sequence[int], images: Sequence[LazyImage]) -> "PendingDecode":
        w, h = images[0].size
        return cls(list(rows), [im.data for im in images], [im.box for im in images],
                   [im.flipped for im in images], [im.offset for im in images], images[0].num_channels, w, h,
                   [(im.shard, im.member) for im in images])

    def __len__(self) -> int:
        return len(self.rows)

    def on_cpu(self, i: int) -> torch.Tensor:
        """Image ``i`` decoded as a worker would have: the same code, the same pixels."""
        shard, member = self.where[i]
        image = LazyImage(self.data[i], self.channels, shard, member)
        image.box, image.size, image.flipped, image.offset = self.box[i], (self.width, self.height), \
            self.flipped[i], self.offset[i]
        return image.materialize()


def jpeg_decoder(device: torch.device) -> tuple[Decoder | None, str]:
    """torchvision's nvJPEG decoder for ``device``, or None and why there is none."""
    if device.type != "cuda":
        return None, f"JPEG decoding on the device needs a CUDA device, and training runs on {device.type}"
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # not installed, or a build whose compiled ops do not match this torch
        return None, f"JPEG decoding on the device needs torchvision ({type(exc).__name__}: {exc})"
    try:  # a small JPEG: fails now, not in the first batch, where the build has no nvJPEG
        from PIL import Image

        probe = io.BytesIO()
        Image.new("RGB", (8, 8), (90, 120, 200)).save(probe, "JPEG")
        decode_jpeg([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)], device=device)
    except Exception as exc:
        return None, f"torchvision cannot decode JPEGs on {device} ({type(exc).__name__}: {exc})"

    def decode(data: list[torch.Tensor], channels: int) -> list[torch.Tensor]:
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        return decode_jpeg(data, mode=mode, device=device)

    return decode, ""


def pillow_decoder(device: torch.device | str = "cpu") -> Decoder:
    """nvJPEG's contract met with PIL on the CPU (each image whole, at full size, no DCT scaling), the
    result moved to ``device``: the stand-in where there is no GPU decoder, for the tests and the
    rehearsal of the GPU check. Slower than the workers' own decode; not for training."""
    from PIL import Image

    def decode(data: list[torch.Tensor], channels: int) -> list[torch.Tensor]:
        out = []
        for encoded in data:
            img = Image.open(io.BytesIO(encoded.numpy().tobytes())).convert("L" if channels == 1 else "RGB")
            out.append(_to_tensor(img).to(device))
        return out

    return decode


def decode_pending(images: torch.Tensor, pending: PendingDecode, decoder: Decoder | None) -> list[tuple[int, DataError]]:
    """Decode ``pending``'s images into their rows of ``images`` (uint8 (N, C, H, W), on the device), in
    place. Returns the rows that did not decode, with why; the caller drops or raises them."""
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in pending.data]
    decoded: list[torch.Tensor | None] = [None] * len(pending)
    if decoder is not None:
        try:
            decoded = list(decoder(encoded, pending.channels))
        except Exception:  # one bad image fails the whole call: try them one by one
            for i, data in enumerate(encoded):
                try:
                    decoded[i] = decoder([data], pending.channels)[0]
                except Exception:
                    pass
    failed = []
    for i, row in enumerate(pending.rows):
        try:
            if decoded[i] is not None and decoded[i].shape[0] == pending.channels:
                images[row] = _geometry(decoded[i].to(images.device), pending, i)
            else:
                images[row] = pending.on_cpu(i).to(images.device)
        except DataError as err:
            failed.append((row, err))
    return failed


def _geometry(image: torch.Tensor, pending: PendingDecode, i: int) -> torch.Tensor:
    """A fully decoded image (C, H, W) -> the region the pipeline asked for, as the workers make it:
    reduced by the factor their decoder would have scaled by in the DCT (here by averaging, its nearest
    pixel-domain filter), then the whole-pixel region nearest the box, antialiased bilinear, rounded,
    mirrored, shifted."""
    w, h = pending.width, pending.height
    reduce = dct_reduction(pending.box[i], (w, h))
    if reduce > 1:
        image = F.avg_pool2d(image[None].float(), reduce, ceil_mode=True)[0].round_().to(torch.uint8)
    ih, iw = image.shape[-2:]
    left, top, right, bottom = (v / reduce for v in pending.box[i])
    left, top = min(max(0, round(left)), iw - 1), min(max(0, round(top)), ih - 1)
    right, bottom = max(left + 1, min(iw, round(right))), max(top + 1, min(ih, round(bottom)))
    region = image[:, top:bottom, left:right]
    if region.shape[-2:] != (h, w):
        region = F.interpolate(region[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                               antialias=True)[0].round_().clamp_(0, 255).to(torch.uint8)
    if pending.flipped[i]:
        region = region.flip(-1)
    offset = pending.offset[i]
    return region if offset is None else _saturating_add(region.contiguous(), offset)
