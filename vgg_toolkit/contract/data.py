"""Facts derived from the data: the classes, channels and mean colour of a shard set, and the paper's
recipe scaled to its image size. Recorded with a run; a user's configuration cannot override them."""

from __future__ import annotations

from dataclasses import dataclass

from .scale import TrainScale


@dataclass(frozen=True)
class DataFacts:
    classes: tuple[str, ...]
    channels: int  # 1 (greyscale) or 3
    mean_rgb: tuple[float, float, float]  # the training split's mean, 0-255
    crop: int  # the recipe's crop: 224 for photos, 32 for images under 64 px
    scale: TrainScale  # the recipe's training scale: [256, 512], or [32, 40] for small images
    uniform_side: int | None = None  # the side of every image when all are square and of one size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def small_images(self) -> bool:
        return self.crop < 64

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "channels": self.channels, "mean_rgb": list(self.mean_rgb),
                "crop": self.crop, "scale": self.scale.to_json(), "uniform_side": self.uniform_side}
