"""The facts a shard set fixes for a run (``DataFacts``), and the paper's recipe scaled to its images.

Photos: 224 crops from images rescaled to S in [256, 512] (Sec. 3.1). Images under 64 px (Fashion-MNIST's
28x28): the same recipe at 32x32, scaled down: S in [32, 40], 32 crops, Q = 36; so a 28x28 image is first
enlarged to at least 32 and then cropped, as the paper's 224 crops come from images rescaled to S >= 224.
"""

from __future__ import annotations

from ..contract.data import DataFacts
from ..contract.scale import TrainScale
from ..errors import VggtkError
from .shards.manifest import Manifest

SMALL_SIDE = 64


def recipe(manifest: Manifest | None) -> tuple[int, TrainScale]:
    """(crop, training scale) of the paper's recipe for this data."""
    size = (manifest.extra.get("image_size") or {}) if manifest is not None else {}
    if size and size.get("max_side", 1 << 30) < SMALL_SIDE:
        return 32, TrainScale(32, 40)
    return 224, TrainScale(256, 512)


def data_facts(manifest: Manifest) -> DataFacts:
    if manifest.stats is None:
        raise VggtkError(f"{manifest.path}: no colour statistics; rebuild the shards with `vggtk shards create`")
    crop, scale = recipe(manifest)
    return DataFacts(tuple(manifest.classes), manifest.channels, tuple(manifest.stats.mean_rgb_255), crop, scale,
                     manifest.uniform_side)
