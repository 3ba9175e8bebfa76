"""JPEG decoding on the training device, optional, with the workers' decoder as the fallback.

Where a GPU can decode JPEGs (torchvision's ``decode_jpeg`` on CUDA, nvJPEG), the reader's workers need
not: with ``make_loader(..., defer_jpeg=True)`` they read the shards, draw each sample's geometry and
hand over the encoded bytes with it (``Batch.pending``, a ``PendingDecode``); ``batch.images`` then
holds only the rows the workers decoded (other formats), so no placeholder pixels cross the worker
queue or the bus. ``DeviceDecoder.assemble`` puts the batch together on the device: it decodes the
pending images there, reduces them as the workers would have, takes the region the crops left,
resamples it with the antialiased bilinear filter the workers use, mirrors and shifts it.

Where the target is at least 2x smaller the workers' libjpeg decodes at 1/2, 1/4 or 1/8 size, scaling
in the DCT; nvJPEG cannot, so the device decodes in full and averages blocks of that size, the nearest
filter in pixels (on the bundled photos at S <= 64: 0.37 levels from the workers' pixels on average,
against 3.6 when resampling the full decode directly). Decoders also differ in their inverse DCT and
chroma upsampling, by a level or so. An image the device decoder refuses (a CMYK JPEG, say) is decoded
here on the CPU with the workers' own code, to their very pixels, and counted (``refused``); when the
device decoder refuses a whole batch it is switched off (``active``), and a ``ShardSource`` has the
workers decode again from its next epoch on.
An image that no decoder reads is a ``DataError`` naming its shard and member.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .decode import LazyImage, _saturating_add, _to_tensor, dct_reduction, whole_pixel_region
from .errors import DataError

# encoded images (uint8, 1-D, on the CPU), 1 or 3 channels, a device -> uint8 (C, H, W) images on that
# device; raises when any image fails (then each is tried alone)
Decode = Callable[[list[torch.Tensor], int, torch.device], list[torch.Tensor]]


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


class DeviceDecoder:
    """Decodes the pending images of batches on the device they train on (``decode``: a ``Decode``),
    with the workers' code as the fallback; counts what it had to decode on the CPU."""

    def __init__(self, decode: Decode, name: str):
        self.decode, self.name = decode, name
        self.active = True  # off once the device has refused a whole batch
        self.refused, self.why = 0, ""  # images decoded on the CPU instead, and why the first was refused

    def _on_device(self, encoded: list[torch.Tensor], channels: int, device: torch.device) -> list:
        if not self.active:
            return [None] * len(encoded)
        try:
            return list(self.decode(encoded, channels, device))
        except Exception as exc:  # one bad image fails the whole call: try them one by one
            first = exc
        out = []
        for data in encoded:
            try:
                out.append(self.decode([data], channels, device)[0])
            except Exception:
                out.append(None)
        if all(o is None for o in out):
            self.active = False
        self.why = self.why or f"{type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}"
        return out

    def assemble(self, images: torch.Tensor, pending: PendingDecode, size: int,
                 device: torch.device) -> tuple[torch.Tensor, list[tuple[int, DataError]]]:
        """The whole batch of ``size`` rows on ``device``: ``images`` (the rows the workers decoded, in
        order) and the pending ones decoded here. Returns it and the rows no decoder read, with why."""
        out = torch.empty((size, pending.channels, pending.height, pending.width), dtype=torch.uint8, device=device)
        mine = set(pending.rows)
        others = [r for r in range(size) if r not in mine]
        if others:
            out[torch.tensor(others, device=device)] = images.to(device, non_blocking=True)
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in pending.data]
        decoded = self._on_device(encoded, pending.channels, device)
        failed = []
        for i, row in enumerate(pending.rows):
            try:
                if decoded[i] is not None and decoded[i].shape[0] == pending.channels:
                    out[row] = _geometry(decoded[i].to(device), pending, i)
                else:
                    out[row] = pending.on_cpu(i).to(device)
                    self.refused += 1
            except DataError as err:
                failed.append((row, err))
        return out, failed


def jpeg_decoder(device: torch.device) -> tuple[DeviceDecoder | None, str]:
    """torchvision's nvJPEG decoder for training on ``device``, or None and why there is none. Each batch
    is decoded on the device it is assembled on (a DDP rank's own GPU). Whether this build of
    torchvision decodes on the GPU shows at the first batch: where it does not, that batch is decoded on
    the CPU and the workers decode from the next epoch on."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, f"JPEG decoding on the device needs a CUDA device, and training runs on {device.type}"
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # not installed, or a build whose compiled ops do not match this torch
        return None, f"JPEG decoding on the device needs torchvision ({type(exc).__name__}: {exc})"

    def decode(data: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB, device=device)

    return DeviceDecoder(decode, "nvJPEG"), ""


def pillow_decoder() -> DeviceDecoder:
    """nvJPEG's contract met with PIL on the CPU (each image whole, at full size, no DCT scaling), the
    result moved to the device: the stand-in where there is no GPU decoder, for the tests and the
    rehearsal of the GPU check. Slower than the workers' own decode; not for training."""
    from PIL import Image

    def decode(data: list[torch.Tensor], channels: int, device: torch.device) -> list[torch.Tensor]:
        out = []
        for encoded in data:
            img = Image.open(io.BytesIO(encoded.numpy().tobytes())).convert("L" if channels == 1 else "RGB")
            out.append(_to_tensor(img).to(device))
        return out

    return DeviceDecoder(decode, "PIL")


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
    left, top, right, bottom = whole_pixel_region([v / reduce for v in pending.box[i]], iw, ih)
    region = image[:, top:bottom, left:right]
    if region.shape[-2:] != (h, w):
        region = F.interpolate(region[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                               antialias=True)[0].round_().clamp_(0, 255).to(torch.uint8)
    if pending.flipped[i]:
        region = region.flip(-1)
    offset = pending.offset[i]
    return region if offset is None else _saturating_add(region.contiguous(), offset)
