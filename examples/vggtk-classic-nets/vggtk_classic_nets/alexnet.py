"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2013): five convolutions, three
overlapping max-pools and three fully connected layers, in one layout that differs only in the first two
convolutions and the order of pool and LRN after them.

The 3x3 stride-2 pools are unpadded and round up, as Caffe's do: ZFNet's published map sizes at 224
(110 -> 55 -> 26 -> 13 -> 6) come out only so, and an input side that is a multiple of the output stride
(what dense evaluation trims images to) still reaches pool5 with the classifier's window whole.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch
from torch import nn

import vgg_toolkit as vt

from .fully_conv import FullyConvForms, MapLinear
from .inputs import InputError, check_taps
from .options import channels, check_options, is_small, small_image_defaults
from .weight_init import init_weights

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # Krizhevsky et al., Sec. 3.3; ZFNet keeps it

# (out channels, kernel, stride, padding) of conv1..conv5. ZFNet's paddings are not in its paper; these
# give its Figure 3 sizes at 224: conv1 pad 1 (110), conv2 pad 0 (26), the 3x3 convs pad 1.
CONVS = {
    "alexnet": ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)),
    "zfnet": ((96, 7, 2, 1), (256, 5, 2, 0), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)),
}
# Below 64 px the strided convs run at stride 1, padded to keep the size, so a 32 px input still
# reaches pool5 as a 4x4 map instead of vanishing.
SMALL_CONVS = {
    "alexnet": {1: (96, 11, 1, 5)},
    "zfnet": {1: (96, 7, 1, 3), 2: (256, 5, 1, 2)},
}
# What follows conv1 and conv2: AlexNet normalises before pooling, ZFNet after.
AFTER_FIRST_TWO = {"alexnet": ("relu", "lrn", "pool"), "zfnet": ("relu", "pool", "lrn")}
TAPS = ("pool5", "fc6", "fc7")


def _trunk(layout: str, in_chans: int, width: float, small: bool, batch_norm: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    c_in = in_chans
    for i, spec in enumerate(CONVS[layout], 1):
        c, k, s, p = SMALL_CONVS[layout].get(i, spec) if small else spec
        c = channels(c, width)
        layers.append((f"conv{i}", nn.Conv2d(c_in, c, k, s, p, bias=not batch_norm)))
        if batch_norm:
            layers.append((f"bn{i}", nn.BatchNorm2d(c)))
        for kind in AFTER_FIRST_TWO[layout] if i <= 2 else ("relu",):
            layers.append((f"{kind}{i}", _layer(kind)))
        c_in = c
    layers.append(("pool5", _layer("pool")))
    return nn.Sequential(OrderedDict(layers))


def _layer(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrn":
        return nn.LocalResponseNorm(**LRN)
    return nn.MaxPool2d(3, 2, ceil_mode=True)


def _walk(trunk: nn.Sequential, side: int) -> tuple[int, int, int]:
    """(side of pool5's map, total stride, receptive field of one of its units) for a square input of
    ``side``; ValueError naming the first window that does not fit in its input."""
    stride, field = 1, 1
    for name, m in trunk.named_children():
        if not isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            continue
        k, s, p = (m.kernel_size[0], m.stride[0], m.padding[0]) if isinstance(m, nn.Conv2d) else \
            (m.kernel_size, m.stride, m.padding)
        if side + 2 * p < k:
            raise ValueError(f"{name} gets a {side}x{side} map, smaller than its {k}x{k} window")
        span = side + 2 * p - k
        side = (-(-span // s) if getattr(m, "ceil_mode", False) else span // s) + 1
        field += (k - 1) * stride
        stride *= s
    return side, stride, field


def _least_side(trunk: nn.Sequential, side: int) -> int:
    """The smallest input side from ``side`` up that the trunk takes (the small-input trunks take any
    side from 12 px, so the search ends)."""
    while True:
        try:
            _walk(trunk, side)
            return side
        except ValueError:
            side += 1


class Classifier(nn.Module):
    """FC6, FC7 (ReLU, dropout) and FC8; fed a flat batch they are Linear layers, fed pool5's map the
    same weights slide over it as a ``grid`` x ``grid`` convolution and two 1x1 ones."""

    def __init__(self, in_channels: int, grid: int, fc_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.grid = grid
        self.fc6 = MapLinear(in_channels, fc_dim, kernel=grid)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = vt.BatchSlicedDropout(dropout)
        self.fc7 = MapLinear(fc_dim, fc_dim)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = vt.BatchSlicedDropout(dropout)
        self.fc8 = MapLinear(fc_dim, num_classes)

    def hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FC6 and FC7 after their ReLU, before dropout. The in-place ReLUs only touch fresh FC outputs,
        so what is returned stays as it is."""
        fc6 = self.relu6(self.fc6(x))
        return fc6, self.relu7(self.fc7(self.drop6(fc6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.drop7(self.hidden(x)[1]))


class AlexNet(FullyConvForms, nn.Module):
    """AlexNet or ZFNet (``layout``), one-tower (no grouped convolutions). See ``alexnet`` and ``zfnet``."""

    feature_taps = TAPS

    def __init__(self, layout: str, num_classes: int, in_chans: int, input_size: int, width: float,
                 fc_dim: int, dropout: float, batch_norm: bool):
        super().__init__()
        check_options(num_classes, in_chans, input_size, width, dropout)
        if fc_dim < 1:
            raise ValueError(f"fc_dim must be at least 1, got {fc_dim}")
        self.layout, self.input_size = layout, input_size
        self.features = _trunk(layout, in_chans, width, is_small(input_size), batch_norm)
        try:
            grid, self.output_stride, self._field = _walk(self.features, input_size)
        except ValueError as exc:
            raise ValueError(f"input_size {input_size} is too small for {layout}: {exc}; it needs at least "
                             f"{_least_side(self.features, input_size + 1)}") from None
        last = self.features.conv5.out_channels
        self.classifier = Classifier(last, grid, fc_dim, num_classes, dropout)
        init_weights(self, [self.classifier.fc8])

    def receptive_field(self) -> int:
        """In input pixels, of one unit of pool5."""
        return self._field

    def _classifier_input(self, x: torch.Tensor) -> torch.Tensor:
        grid, size = self.classifier.grid, tuple(x.shape[-2:])
        if self.fully_conv:
            if min(size) < grid:
                raise InputError(f"the image is too small for {self.layout}'s classifier: pool5 gives a "
                                 f"{size[0]}x{size[1]} map, smaller than its {grid}x{grid} window")
            return x
        if size != (grid, grid):
            raise InputError(f"the Linear classifier of {self.layout} needs a {grid}x{grid} pool5 map (input "
                             f"{self.input_size}x{self.input_size}) but got {size[0]}x{size[1]}; call "
                             "model.to_fully_conv() to run on other sizes")
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._classifier_input(self.features(x)))

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] = ("fc7",)) -> dict[str, torch.Tensor]:
        """``pool5`` (the last pool's map), ``fc6``, ``fc7`` (after ReLU, before dropout): (N, fc_dim) in
        the Linear form, (N, fc_dim, h, w) maps in the fully-convolutional one."""
        wanted = check_taps(taps, TAPS)
        pool5 = self.features(x)
        out = {"pool5": pool5} if "pool5" in wanted else {}
        if wanted - out.keys():
            fc6, fc7 = self.classifier.hidden(self._classifier_input(pool5))
            out.update((name, t) for name, t in (("fc6", fc6), ("fc7", fc7)) if name in wanted)
        return out


def alexnet(num_classes: int = 1000, *, in_chans: int = 3, input_size: int = 227, width: float = 1.0,
            fc_dim: int = 4096, dropout: float = 0.5, batch_norm: bool = False) -> AlexNet:
    """AlexNet, Krizhevsky et al. 2012: conv 96 11x11/4, ReLU, LRN, max-pool 3/2; conv 256 5x5 pad 2,
    ReLU, LRN, max-pool 3/2; convs 384, 384, 256 3x3 pad 1; max-pool 3/2 (6x6 at 227); FC 4096, 4096
    with dropout; FC ``num_classes``. One tower: the paper splits conv2, conv4 and conv5 over two GPUs.

    Below 64 px the first conv runs at stride 1 (pad 5), so a 32 px input ends at a 4x4 pool5 map
    (output stride 8 instead of 32). ``width`` scales every conv's channels, ``fc_dim`` is the width of
    FC6 and FC7, ``batch_norm`` adds BatchNorm after every conv (not in the paper).
    """
    return AlexNet("alexnet", num_classes, in_chans, input_size, width, fc_dim, dropout, batch_norm)


def zfnet(num_classes: int = 1000, *, in_chans: int = 3, input_size: int = 224, width: float = 1.0,
          fc_dim: int = 4096, dropout: float = 0.5, batch_norm: bool = False) -> AlexNet:
    """ZFNet, Zeiler & Fergus 2013: conv 96 7x7/2 pad 1, ReLU, max-pool 3/2, LRN; conv 256 5x5/2, ReLU,
    max-pool 3/2, LRN; convs 384, 384, 256 3x3 pad 1; max-pool 3/2 (6x6 at 224); FC 4096, 4096 with
    dropout; FC ``num_classes``.

    Below 64 px conv1 runs at stride 1 (pad 3) and conv2 at stride 1 (pad 2), so a 32 px input ends at
    a 4x4 pool5 map (output stride 8 instead of 32). Options as for ``alexnet``.
    """
    return AlexNet("zfnet", num_classes, in_chans, input_size, width, fc_dim, dropout, batch_norm)


def training_defaults(facts: vt.DataFacts) -> dict:
    """Images under 64 px: a quarter-width trunk and 256-wide FC layers (4096 would hold most of the
    parameters for a 10-class problem on 32x32 images)."""
    return {**small_image_defaults(facts), "fc_dim": 256} if facts.small_images else {}
