"""VGG as a loss or a metric: frozen feature taps fed by each net's own preprocessing, content and style
losses with one documented Gram normalisation, and LPIPS-VGG as the reference computes it."""

from .features import INPUT_RANGES, VGGFeatures, freeze
from .lpips import LPIPS, read_heads
from .perceptual import gram, perceptual_loss, style_loss, unit_channels

__all__ = ["INPUT_RANGES", "VGGFeatures", "freeze", "LPIPS", "read_heads", "gram", "perceptual_loss",
           "style_loss", "unit_channels"]
