"""A frozen VGG as a feature network for losses and metrics: named taps (the paper's ``reluB_K``,
``convB_K``, ``poolB``), images in a stated range, the net's recorded preprocessing applied inside so that
each weights family is fed as it was trained."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..contract.model import FeatureTaps, model_info
from ..contract.preprocess import Preprocessing
from ..errors import VggtkError

# What a full-intensity pixel is in each range, and where black sits: x -> (x - low) * 255 / (high - low).
INPUT_RANGES = {"0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0), "0-255": (0.0, 255.0)}


def to_pixels(images: torch.Tensor, input_range: str) -> torch.Tensor:
    """Images in ``input_range`` -> 0-255 values, differentiably (no clamping: a loss may push outside)."""
    low, high = INPUT_RANGES[input_range]
    if (low, high) == (0.0, 255.0):
        return images
    return (images - low) * (255.0 / (high - low))


def check_range(input_range: str) -> str:
    if input_range not in INPUT_RANGES:
        raise VggtkError(f"input range {input_range!r}: one of {', '.join(INPUT_RANGES)}")
    return input_range


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (dropout off, BatchNorm on its running statistics) and no parameter gradients, in place:
    gradients still flow to the input."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class VGGFeatures(nn.Module):
    """``features(images) -> {tap: tensor}``: a net's outputs at named taps, for RGB images (N x 3 x H x W,
    float) in ``input_range`` ("0-1", "-1-1" or "0-255"). The net is frozen in place; its recorded
    preprocessing (``vt.model_info(net).preprocessing``, or ``preprocessing``) makes its input, so
    torchvision, timm, Caffe and vggtk weights each see what they were trained on. Only as much of the
    trunk runs as the deepest tap needs."""

    def __init__(self, net: nn.Module, taps: Iterable[str], input_range: str = "0-1",
                 preprocessing: Preprocessing | None = None):
        super().__init__()
        if not isinstance(net, FeatureTaps):
            raise VggtkError(f"{type(net).__name__} has no named feature taps")
        self.taps = tuple(dict.fromkeys(taps))
        if not self.taps:
            raise VggtkError("name at least one tap")
        unknown = [t for t in self.taps if t not in net.feature_taps]
        if unknown:
            raise VggtkError(f"unknown tap(s) {', '.join(unknown)}; known: {', '.join(net.feature_taps)}")
        self.input_range = check_range(input_range)
        self.channels = model_info(net).in_chans or 3
        self.preprocessing = preprocessing or model_info(net).input_preprocessing()
        self.net = freeze(net)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return self  # stays in eval mode: a loss network's dropout and BatchNorm statistics never move

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4 or not images.is_floating_point():
            raise VggtkError(f"expected float images N x C x H x W, got {tuple(images.shape)} {images.dtype}")
        if images.shape[1] != self.channels:
            raise VggtkError(f"the net takes {self.channels}-channel images, got {images.shape[1]} channels")
        x = self.preprocessing.apply(to_pixels(images, self.input_range), dtype=images.dtype)
        return self.net.forward_features(x, self.taps)
