"""Sources on disk: an image folder (one subfolder per class) or a CSV / JSON list of images."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ...errors import VggtkError
from ..decode import SIXTEEN_BIT, decode_failure, to_8bit
from ..shards.records import Record, safe_key
from .base import SPLITS, Source

ORIENTATION = 0x0112  # the EXIF tag of how the camera was turned
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _encode_as_stored(path: Path) -> tuple[bytes, str]:
    """JPEG and PNG bytes go into the shard untouched (so a round trip is bit-exact), unless decoding them
    as they are would give the wrong pixels: a photo whose EXIF orientation says it is turned, or a
    16-bit PNG. Those, and other formats, are stored as PNG of what they show, losslessly."""
    data = path.read_bytes()
    suffix = path.suffix.lower()
    with Image.open(io.BytesIO(data)) as img:
        turned = suffix in (".jpg", ".jpeg") and img.getexif().get(ORIENTATION, 1) not in (1, None)
        if suffix in (".jpg", ".jpeg", ".png") and not turned and img.mode not in SIXTEEN_BIT:
            return data, "png" if suffix == ".png" else "jpg"
        img.load()
        img = to_8bit(ImageOps.exif_transpose(img))
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, "PNG", compress_level=9)
    return out.getvalue(), "png"


@dataclass(frozen=True)
class FileRef:
    key: str
    path: str
    label: int
    split: str | None = None
    boxes: tuple | None = None
    box_labels: tuple | None = None

    def load(self) -> Record:
        try:
            data, ext = _encode_as_stored(Path(self.path))
        except OSError as exc:
            if exc.errno is not None:  # the file system's error, not the content's
                raise VggtkError(f"{self.path}: cannot read image ({exc.strerror})") from None
            raise VggtkError(f"{self.path}: {decode_failure(exc)}") from None
        except Exception as exc:  # PIL raises many types for a broken or hostile file
            raise VggtkError(f"{self.path}: {decode_failure(exc)}") from None
        return Record(self.key, data, ext, self.label,
                      [list(b) for b in self.boxes] if self.boxes is not None else None,
                      list(self.box_labels) if self.box_labels is not None else None,
                      meta={"source": Path(self.path).name})


def _unique_keys(stems: list[str]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for stem in stems:
        key = safe_key(stem)
        seen[key] += 1
        out.append(key if seen[key] == 1 else f"{key}-{seen[key]}")
    return out


def image_folder(root: str | Path) -> Source:
    """``root/CLASS/*.jpg`` (one subfolder per class), or ``root/{train,val,test}/CLASS/*``."""
    root = Path(root)
    split_dirs = [d for d in SPLITS if (root / d).is_dir()]
    bases = [(root / d, d) for d in split_dirs] if split_dirs else [(root, None)]
    classes = sorted({c.name for base, _ in bases for c in base.iterdir() if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise VggtkError(f"{root}: no class subfolders (expected {root}/CLASS/image.jpg)")
    index = {c: i for i, c in enumerate(classes)}
    found = []
    for base, split in bases:
        for cls in classes:
            folder = base / cls
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
                    found.append((path, index[cls], split, str(path.relative_to(root).with_suffix(""))))
    if not found:
        raise VggtkError(f"{root}: no images in the class subfolders")
    used = {label for _, label, _, _ in found}
    empty = [c for c in classes if index[c] not in used]
    if empty:  # it would become a class no image has: a net with an output nothing trains
        folder = next(base / empty[0] for base, _ in bases if (base / empty[0]).is_dir())
        why = (" (it holds a vggtk shard set: write the shards outside the source folder)"
               if (folder / "manifest.json").is_file() else "")
        raise VggtkError(f"{folder}: a class folder with no images{why}; remove it or add its images"
                         + (f" ({len(empty)} such folders: {', '.join(empty[:5])})" if len(empty) > 1 else ""))
    keys = _unique_keys([f[3] for f in found])
    refs = [FileRef(k, str(p), label, split) for k, (p, label, split, _) in zip(keys, found)]
    return Source(root.name, classes, refs, info={"source": {"kind": "image folder", "path": root.name}})


def _parse_label(value, classes: list[str] | None, names: dict, where: str):
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        return int(value)
    if classes is not None and value not in classes:
        raise VggtkError(f"{where}: label {value!r} is not one of the listed classes")
    return names.setdefault(str(value), len(names)) if classes is None else classes.index(value)


def image_list(path: str | Path) -> Source:
    """A CSV (columns ``path,label`` and optionally ``boxes``, ``box_labels``, ``split``; boxes as JSON
    ``[[x1, y1, x2, y2], ...]`` in pixels) or a JSON list of such objects, or ``{"classes": [...],
    "samples": [...]}``. Labels are class indices or names; image paths are relative to the list."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            classes = data.get("classes") if isinstance(data, dict) else None
            rows = data["samples"] if isinstance(data, dict) else data
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            classes = None
    except (OSError, ValueError, KeyError) as exc:
        raise VggtkError(f"{path}: unreadable image list ({exc})") from None
    names: dict[str, int] = {}
    found = []
    for i, row in enumerate(rows):
        where = f"{path}:{i + 2 if path.suffix.lower() != '.json' else i}"
        if "path" not in row or "label" not in row:
            raise VggtkError(f"{where}: each entry needs 'path' and 'label'")
        label = _parse_label(row["label"], classes, names, where)
        boxes = row.get("boxes")
        box_labels = row.get("box_labels")
        try:
            if isinstance(boxes, str):
                boxes = json.loads(boxes) if boxes.strip() else None
            if isinstance(box_labels, str):
                box_labels = json.loads(box_labels) if box_labels.strip() else None
        except ValueError as exc:
            raise VggtkError(f"{where}: boxes are not JSON ({exc})") from None
        if boxes is not None and (not isinstance(boxes, list) or any(len(b) != 4 for b in boxes)):
            raise VggtkError(f"{where}: boxes must be a list of [x1, y1, x2, y2]")
        if box_labels is not None:
            box_labels = [_parse_label(v, classes, names, where) for v in box_labels]
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise VggtkError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        image = (path.parent / row["path"]).resolve()
        found.append((image, label, split, boxes, box_labels, str(Path(row["path"]).with_suffix(""))))
    if not found:
        raise VggtkError(f"{path}: the list is empty")
    if classes is None:
        if names:
            classes = sorted(names, key=names.get)
        else:
            classes = [str(i) for i in range(max(f[1] for f in found) + 1)]
    keys = _unique_keys([f[5] for f in found])
    refs = [FileRef(k, str(p), label, split, tuple(map(tuple, boxes)) if boxes else None,
                    tuple(box_labels) if box_labels else None)
            for k, (p, label, split, boxes, box_labels, _) in zip(keys, found)]
    return Source(path.stem, list(classes), refs, info={"source": {"kind": "image list", "path": path.name}})
