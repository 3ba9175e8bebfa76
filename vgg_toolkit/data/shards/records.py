"""One sample as it is stored in a shard: key, encoded image, label, optional boxes."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

IMAGE_EXTS = ("jpg", "jpeg", "png")
_KEY_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def quantize_boxes(boxes) -> list[list[float]]:
    """Round box coordinates to the nearest float32, so the float32 tensors the reader hands out equal
    what the shard stores, bit for bit (the rounding moves a coordinate by under 1e-4 px below 2048)."""
    return [[float(np.float32(v)) for v in box] for box in boxes]


def box_problem(boxes, width: int, height: int) -> str | None:
    """What is wrong with the first bad box (``x1 y1 x2 y2`` in pixels of a ``width`` x ``height``
    image), or None: a box has finite corners, positive width and height, and lies in the image."""
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        text = f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            return f"{text} has a coordinate that is not a number"
        if not (x1 < x2 and y1 < y2):
            return f"{text} is empty or inverted (x1 < x2 and y1 < y2 are needed)"
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            return f"{text} lies outside the {width}x{height} image"
    return None


def label_problem(record: "Record", num_classes: int) -> str | None:
    """What is wrong with the first label or box label outside the ``num_classes`` classes, or None: the reader
    refuses such a sample, so a set holding one would fail its own verify."""
    if not 0 <= record.label < num_classes:
        return f"label {record.label} out of range for {num_classes} classes"
    bad = next((v for v in record.box_labels or [] if not 0 <= v < num_classes), None)
    return None if bad is None else f"box label {bad} out of range for {num_classes} classes"


def safe_key(text: str) -> str:
    """A WebDataset key: the reader splits member names at the first dot, so keys hold none (nor slashes)."""
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "sample"


@dataclass
class Record:
    key: str
    image: bytes
    ext: str  # "png" or "jpg"
    label: int
    boxes: list[list[float]] | None = None  # x1, y1, x2, y2 in pixels of the stored image
    box_labels: list[int] | None = None
    meta: dict = field(default_factory=dict)  # extra JSON fields (for example the source file)

    def __post_init__(self):
        if not _KEY_OK.match(self.key):
            raise ValueError(f"sample key {self.key!r} may hold only letters, digits, '_' and '-'")
        self.ext = "jpg" if self.ext.lower() == "jpeg" else self.ext.lower()
        if self.ext not in IMAGE_EXTS:
            raise ValueError(f"{self.key}: image extension {self.ext!r} is not one of {', '.join(IMAGE_EXTS)}")
        if self.boxes is not None:
            self.boxes = quantize_boxes(self.boxes)
            if self.box_labels is None:
                self.box_labels = [self.label] * len(self.boxes)
            if len(self.box_labels) != len(self.boxes):
                raise ValueError(f"{self.key}: {len(self.boxes)} boxes but {len(self.box_labels)} box labels")

    def members(self) -> list[tuple[str, bytes]]:
        """The tar members of this sample, in the order they are written."""
        out = [(f"{self.key}.{self.ext}", self.image), (f"{self.key}.cls", str(int(self.label)).encode())]
        if self.boxes is not None or self.meta:
            body = dict(self.meta)
            if self.boxes is not None:
                body["boxes"] = self.boxes
                body["labels"] = [int(v) for v in self.box_labels]
            out.append((f"{self.key}.json", json.dumps(body, sort_keys=True).encode()))
        return out
