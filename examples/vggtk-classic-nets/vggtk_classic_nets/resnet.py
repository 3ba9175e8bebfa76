"""ResNet-18, -34 and -50 (He et al. 2016): BatchNorm after every conv, projection shortcuts (1x1 conv
and BatchNorm) where a block changes the shape, global average pool, FC.

Module names (``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``) are torchvision's, so a
state_dict saved from its ResNets of these depths has the same keys and shapes.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .fully_conv import FullyConvForms, MapLinear
from .inputs import check_taps
from .options import channels, check_options, is_small
from .weight_init import init_weights

TAPS = ("layer1", "layer2", "layer3", "layer4", "pool")


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50). The stride sits on the 3x3 conv, not on the first
    1x1 as in the paper: the form usually called v1.5, whose 4.1 GMACs at 224 are the commonly published
    figure (the paper's form costs 3.8 GFLOPs, with the same parameters). A strided 1x1 conv reads one
    input position in four; the strided 3x3 reads them all."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


# depth: (block, blocks per stage), Table 1 of the paper
DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(FullyConvForms, nn.Module):
    """A ResNet of ``depth`` 18, 34 or 50: stem conv 7x7/2 64, BatchNorm, ReLU, max-pool 3/2; four
    stages of 64, 128, 256, 512 planes (stride 2 from the second on); global average pool; FC.

    Below 64 px the stem is a 3x3 stride-1 conv with no max-pool, so a 32 px input meets the first
    stage at 32x32 and ends at 4x4 (output stride 8 instead of 32). Any input size works: every conv
    and pool is padded and the pooling at the end is global. ``width`` scales every conv's channels.
    """

    feature_taps = TAPS

    def __init__(self, depth: int, num_classes: int = 1000, *, in_chans: int = 3, input_size: int = 224,
                 width: float = 1.0):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"no ResNet of depth {depth}; known: {', '.join(map(str, DEPTHS))}")
        check_options(num_classes, in_chans, input_size, width)
        block, repeats = DEPTHS[depth]
        c = channels(64, width)
        if is_small(input_size):
            self.conv1 = nn.Conv2d(in_chans, c, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
            self.output_stride = 8
        else:
            self.conv1 = nn.Conv2d(in_chans, c, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.output_stride = 32
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        for stage, n in enumerate(repeats):
            planes, stride = channels(64 * 2 ** stage, width), 1 if stage == 0 else 2
            blocks = []
            for i in range(n):
                blocks.append(block(c, planes, stride if i == 0 else 1))
                c = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = MapLinear(c, num_classes)
        init_weights(self, [self.fc], conv_mode="fan_out")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self._stem(x)))))
        # Fully-convolutional: the FC as a 1x1 conv before the average, so the score map, averaged,
        # is exactly the Linear form's scores (both maps are linear in x).
        return self.fc(x if self.fully_conv else x.mean((2, 3)))

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] = ("pool",)) -> dict[str, torch.Tensor]:
        """``layer1``..``layer4``: each stage's output map; ``pool``: the globally averaged last map (N, C).
        Stops after the last tap asked for."""
        wanted = check_taps(taps, TAPS)
        out: dict[str, torch.Tensor] = {}
        x = self._stem(x)
        for name in TAPS[:4]:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
            if wanted <= out.keys():
                return out
        out["pool"] = x.mean((2, 3))
        return out
