"""The switch between a classifier of Linear layers and the same weights run as convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MapLinear(nn.Linear):
    """A Linear layer over a flattened ``in_channels`` x ``kernel`` x ``kernel`` window. Given a flat
    batch (N, features) it is the Linear layer; given a feature map (N, C, H, W) it slides that window
    over the map as a convolution with the same weights (a view of them), so switching form never
    touches the state_dict."""

    def __init__(self, in_channels: int, out_features: int, kernel: int = 1):
        super().__init__(in_channels * kernel * kernel, out_features)
        self.in_channels, self.kernel = in_channels, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return super().forward(x)
        # flatten(1) of a (C, k, k) window orders the inputs channel-major, exactly as this view does
        weight = self.weight.view(self.out_features, self.in_channels, self.kernel, self.kernel)
        return F.conv2d(x, weight, self.bias)


class FullyConvForms:
    """``vt.FullyConvolutional``'s switch; the net reads ``fully_conv`` to decide whether its classifier
    gets a flat batch or the whole feature map."""

    fully_conv = False

    def to_fully_conv(self):
        """From now on ``forward`` gives a class-score map (N, classes, h, w), on any image the classifier's
        window fits in; the weights are the same."""
        self.fully_conv = True
        return self

    def to_linear(self):
        self.fully_conv = False
        return self
