"""Sources on disk: an image folder (one subfolder per class) or a CSV / JSON list of images."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ...errors import VggtkError
from ..decode import IMAGE_SUFFIXES, SIXTEEN_BIT, decode_failure, to_8bit
from ..shards.records import Record, safe_key
from .base import SPLITS, Source

ORIENTATION = 0x0112  # the EXIF tag of how the camera was turned


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
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
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


_INDEX = re.compile(r"-?[0-9]{1,18}")  # longer digits index no class (and int() refuses 4300 and more)


class _Labels:
    """A list's labels as class indices. A label is an index (a whole number, or its digits) or a class name:
    one of the listed classes, or, when the list lists none, a new class in order of appearance. Such a list
    uses names alone or indices alone: mixed, a name would take an index that another label already means."""

    def __init__(self, classes: list[str] | None):
        self.classes, self.names = classes, {}
        self.first_index: str | None = None  # the entry of the first index label, to name in an error

    def read(self, value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
            raise VggtkError(f"{where}: label {value!r:.40} is neither a class index nor a class name")
        if isinstance(value, int) or _INDEX.fullmatch(value.strip()):
            if self.classes is None and self.names:
                raise VggtkError(f"{where}: label {value!r:.40} is a class index and earlier labels are class names; "
                                 "without \"classes\" a list uses names or indices, not both")
            self.first_index = self.first_index or where
            return int(value)
        if self.classes is not None:
            if value not in self.classes:
                raise VggtkError(f"{where}: label {value!r:.40} is not one of the listed classes")
            return self.classes.index(value)
        if self.first_index is not None:
            raise VggtkError(f"{where}: label {value!r:.40} is a class name and {self.first_index} gives a class "
                             "index; without \"classes\" a list uses names or indices, not both")
        return self.names.setdefault(value, len(self.names))

    def inferred(self, used: set[int], path: Path) -> list[str]:
        """The classes of a list that lists none: its names, or its indices 0..max, each used by a label (a class
        no entry has would be an output nothing trains, and a stray large index would make millions)."""
        if self.names:
            return sorted(self.names, key=self.names.get)
        top = max(used, default=-1)
        missing = next((i for i in range(top + 1) if i not in used), None) if top >= 0 else 0
        if missing is not None:
            raise VggtkError(f"{path}: no label is class index {missing}, and the list names no classes; number "
                             "the classes from 0 without gaps, or list them (\"classes\" in a JSON list)")
        return [str(i) for i in range(top + 1)]


def _rows(path: Path) -> tuple[list, list[str] | None]:
    """The entries of a CSV or JSON list, and its listed classes (None when it lists none)."""
    try:
        if path.suffix.lower() != ".json":
            with open(path, newline="") as f:
                return list(csv.DictReader(f)), None
        data = json.loads(path.read_text())
    except (OSError, ValueError, csv.Error, RecursionError) as exc:
        raise VggtkError(f"{path}: unreadable image list ({exc})") from None
    if isinstance(data, list):
        return data, None
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise VggtkError(f"{path}: a JSON image list is a list of entries or {{\"classes\": [...], \"samples\": "
                         "[...]}")
    classes = data.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
            raise VggtkError(f"{path}: \"classes\" must be a list of class names, not {classes!r:.40}")
        twice = next((c for c, n in Counter(classes).items() if n > 1), None)
        if twice is not None:
            raise VggtkError(f"{path}: \"classes\" lists {twice!r:.40} twice")
    return data["samples"], classes


def _json_field(row: dict, name: str, where: str):
    """A field of an entry that holds JSON in a CSV list (and JSON itself in a JSON list); None when empty."""
    value = row.get(name)
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except (ValueError, RecursionError) as exc:
            raise VggtkError(f"{where}: {name} are not JSON ({exc})") from None
    return value


def _boxes(row: dict, where: str) -> list[list[float]] | None:
    boxes = _json_field(row, "boxes", where)
    if boxes is None:
        return None
    if not isinstance(boxes, list) or not all(isinstance(b, list) and len(b) == 4 for b in boxes):
        raise VggtkError(f"{where}: boxes must be a list of [x1, y1, x2, y2]")
    for i, box in enumerate(boxes):
        for v in box:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise VggtkError(f"{where}: box {i} holds {v!r:.40}, not a number")
    try:
        return [[float(v) for v in box] for box in boxes]
    except OverflowError:
        raise VggtkError(f"{where}: a box coordinate is too large to be a number of pixels") from None


def _box_labels(row: dict, boxes: list | None, labels: _Labels, where: str) -> list[int] | None:
    box_labels = _json_field(row, "box_labels", where)
    if box_labels is None:
        return None
    if not isinstance(box_labels, list) or len(box_labels) != len(boxes or []):
        count = len(box_labels) if isinstance(box_labels, list) else "no list of"
        raise VggtkError(f"{where}: {count} box labels for {len(boxes or [])} boxes; box_labels is a list with "
                         "one label per box")
    return [labels.read(v, where) for v in box_labels]


def _image_path(row: dict, where: str) -> str:
    value = row["path"]
    if not isinstance(value, str) or "\x00" in value or not Path(value).name:
        raise VggtkError(f"{where}: path {value!r:.60} is not a file name")
    return value


def image_list(path: str | Path) -> Source:
    """A CSV (columns ``path,label`` and optionally ``boxes``, ``box_labels``, ``split``; boxes as JSON
    ``[[x1, y1, x2, y2], ...]`` in pixels) or a JSON list of such objects, or ``{"classes": [...],
    "samples": [...]}``. Labels are class indices or names; image paths are relative to the list."""
    path = Path(path)
    rows, classes = _rows(path)
    labels = _Labels(classes)
    found = []
    for i, row in enumerate(rows):
        where = f"{path}:{i + 2 if path.suffix.lower() != '.json' else i}"
        if not isinstance(row, dict):
            raise VggtkError(f"{where}: an entry is an object with 'path' and 'label', not {row!r:.40}")
        if "path" not in row or "label" not in row:
            raise VggtkError(f"{where}: each entry needs 'path' and 'label'")
        image_path = _image_path(row, where)
        label = labels.read(row["label"], where)
        boxes = _boxes(row, where)
        box_labels = _box_labels(row, boxes, labels, where)
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise VggtkError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        image = (path.parent / image_path).resolve()
        found.append((image, label, split, boxes, box_labels, str(Path(image_path).with_suffix(""))))
    if not found:
        raise VggtkError(f"{path}: the list is empty")
    if classes is None:
        classes = labels.inferred({v for f in found for v in [f[1], *(f[4] or [])] if v >= 0}, path)
    keys = _unique_keys([f[5] for f in found])
    refs = [FileRef(k, str(p), label, split, tuple(map(tuple, boxes)) if boxes else None,
                    tuple(box_labels) if box_labels else None)
            for k, (p, label, split, boxes, box_labels, _) in zip(keys, found)]
    return Source(path.stem, list(classes), refs, info={"source": {"kind": "image list", "path": path.name}})
