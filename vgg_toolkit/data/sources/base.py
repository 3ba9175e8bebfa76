"""What every source of samples hands to the shard writer: class names and a list of refs, small
picklable descriptions of one sample whose ``load()`` returns the ``Record`` to write (reading or
encoding happens then, in writer threads)."""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass
class Source:
    name: str
    classes: list[str]
    refs: list  # objects with .key, .split (or None) and .load() -> Record
    channels: int | None = None  # 1 for greyscale data, 3 for colour, None: look at the images
    info: dict = field(default_factory=dict)  # goes into the manifest (description, licence)
