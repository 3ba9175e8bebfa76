"""``vggtk shards inspect`` and ``verify``: counts per class, a contact sheet, checksums and full decodes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..decode import decode
from ..errors import DataError, SkipLog, handle
from ...runtime.files import save_png
from .manifest import Manifest
from .reader import ShardRef, check_shard, iter_raw, parse_sample

CONTACT_SHEET = "contact sheet"


def class_counts(manifest: Manifest, split: str) -> Counter:
    """Samples per label in ``split``, from the ``.cls`` members alone (no image is decoded). A label that
    is not a class of the manifest, or is missing, is an error naming its shard and member."""
    counts: Counter = Counter()
    for path in manifest.shard_locations(split):
        for raw in iter_raw(str(path)):
            if "cls" not in raw:
                raise DataError("sample has no .cls label", str(path), raw["__key__"], kind="missing label")
            try:
                label = int(raw["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise DataError(f"label is not an integer: {raw['cls'][:20]!r}", str(path), f"{raw['__key__']}.cls",
                                kind="bad label") from None
            if not 0 <= label < manifest.num_classes:
                raise DataError(f"label {label} out of range [0, {manifest.num_classes})", str(path),
                                f"{raw['__key__']}.cls", kind="bad label")
            counts[label] += 1
    return counts


def contact_sheet(manifest: Manifest, split: str, path: str | Path, count: int = 64, thumb: int = 96) -> Path:
    """A PNG grid of the first ``count`` samples of ``split``: each scaled to ``thumb`` px, its boxes drawn
    in red, its class name below."""
    samples = []
    for shard in manifest.shard_locations(split):
        for raw in iter_raw(str(shard)):
            samples.append(parse_sample(raw, manifest.num_classes))
            if len(samples) >= count:
                break
        if len(samples) >= count:
            break
    cols = max(1, min(8, len(samples)))
    rows = max(1, math.ceil(len(samples) / cols))
    label_h = 14
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        img = sample["image"].materialize()
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB")
        scale = thumb / max(pil.size)
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR)
        x0, y0 = (i % cols) * thumb, (i // cols) * (thumb + label_h)
        sheet.paste(pil, (x0, y0))
        for box in sample.get("boxes", []):
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            draw.rectangle([x0 + x1, y0 + y1, x0 + x2 - 1, y0 + y2 - 1], outline=(255, 0, 0), width=2)
        name = manifest.classes[sample["label"]] if sample["label"] < manifest.num_classes else str(sample["label"])
        draw.text((x0 + 2, y0 + thumb), name[:16], fill=(0, 0, 0))
    save_png(sheet, path, CONTACT_SHEET)
    return Path(path)


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    decoded: int = 0
    boxes: int = 0
    per_shard: list[tuple[str, int, str]] = field(default_factory=list)  # name, samples, status
    skipped: SkipLog = field(default_factory=SkipLog)

    @property
    def ok(self) -> bool:
        return self.skipped.total == 0


def verify(manifest: Manifest, splits: list[str] | None = None, on_error: str = "fail",
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every shard's sha256 and sample count against the manifest and decode every image in full.
    ``fail`` raises the first problem (naming shard and member); ``skip`` records them all. Each image's
    channels are compared with the manifest's: a colour image in a 1-channel set is a problem, and so is a
    3-channel set, checked whole, of greyscale images alone."""
    report = VerifyReport()
    colour = False
    for split in splits or list(manifest.splits):
        for info in manifest.split(split):
            path = manifest.shard_location(info.name)
            report.shards += 1
            status, n = "ok", 0
            try:
                ref = ShardRef(path, info.samples, info.sha256, info.bytes)
                check_shard(ref, "sha256")  # a local shard here; a remote one when fetched
                for raw in iter_raw(path, expect=ref):
                    n += 1
                    try:
                        sample = parse_sample(raw, manifest.num_classes, manifest_channels=manifest.channels)
                        image = decode(sample["image"].data, None, str(path), sample["image"].member)
                        colour = colour or image.shape[0] == 3
                        report.decoded += 1
                        report.boxes += len(sample.get("boxes", []))
                    except DataError as err:
                        handle(err, on_error, report.skipped)
                        status = "bad samples"
                    if progress is not None:
                        progress(1)
                if n != info.samples:
                    raise DataError(f"holds {n} samples, the manifest says {info.samples}", shard=str(path),
                                    kind="wrong sample count")
            except DataError as err:
                handle(err, on_error, None)
                report.skipped.add(err, max(1, info.samples - n))  # the shard's rest is lost, as training counts it
                status = err.kind
                if progress is not None and n < info.samples:
                    progress(info.samples - n)
            report.samples += n
            report.per_shard.append((info.name, n, status))
    whole = set(splits or manifest.splits) == set(manifest.splits)
    if manifest.channels == 3 and whole and report.ok and report.decoded and not colour:
        handle(DataError("the manifest says 3 channels and every image is greyscale: a net would be built for "
                         "colour the set does not hold; rebuild the set", shard=manifest.location,
                         kind="wrong channels"), on_error, report.skipped)
    return report
