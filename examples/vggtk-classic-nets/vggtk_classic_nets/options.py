"""What the factories of every net share: the size below which a net takes its small-input stem,
channel widths under ``width``, the checks of the common options, and the recipe for small images."""

from __future__ import annotations

import vgg_toolkit as vt

# Below this side a net takes its small-input (CIFAR-style) stem; vggtk trains images under 64 px at
# a 32 px crop, where the papers' stems would shrink the map to a few pixels before the first block.
SMALL_INPUT = 64


def is_small(input_size: int) -> bool:
    return input_size < SMALL_INPUT


def channels(paper: int, width: float) -> int:
    """The paper's channel count times ``width``: at least 1, and a multiple of 8 above 8 so narrow nets
    still fill whole vector lanes. Every paper count is a multiple of 8, so width 1 keeps them all."""
    scaled = paper * width
    if scaled <= 8:
        return max(1, int(scaled + 0.5))
    return 8 * int(scaled / 8 + 0.5)


def check_options(num_classes: int, in_chans: int, input_size: int, width: float,
                  dropout: float | None = None) -> None:
    """ValueError for an option no net can be built with (vggtk reports it as the user's error)."""
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans), ("input_size", input_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if dropout is not None and not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def small_image_defaults(facts: vt.DataFacts) -> dict:
    """A quarter-width net for images under 64 px: enough for 10-class 32x32 data, and four to sixteen
    times cheaper than the paper's widths."""
    return {"width": 0.25} if facts.small_images else {}
