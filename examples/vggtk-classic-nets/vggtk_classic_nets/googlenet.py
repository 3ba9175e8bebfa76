"""GoogLeNet (Inception v1; Szegedy et al. 2014), with the channel counts of the paper's Table 1 and
its two auxiliary classifiers, which only training sees."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

import vgg_toolkit as vt

from .alexnet import LRN
from .fully_conv import FullyConvForms, MapLinear
from .inputs import check_taps
from .options import channels, check_options, is_small
from .weight_init import init_weights

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
AUX_AFTER = ("inception4a", "inception4d")
AUX_WEIGHTS = (0.3, 0.3)  # Sec. 5: the auxiliary losses are added with weight 0.3
# A tap names the output of a stage: its last inception module, before the pool that follows.
TAP_AT = {"inception3b": "inception3", "inception4e": "inception4", "inception5b": "inception5"}
TAPS = ("inception3", "inception4", "inception5", "pool")


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, batch_norm: bool = False) -> nn.Sequential:
    layers = [("conv", nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=not batch_norm))]
    if batch_norm:
        layers.append(("bn", nn.BatchNorm2d(c_out)))
    return nn.Sequential(OrderedDict(layers + [("relu", nn.ReLU(inplace=True))]))


def _pool() -> nn.MaxPool2d:
    # Padded rather than rounded up: the windows sit centred, and no input is too small for them.
    return nn.MaxPool2d(3, 2, padding=1)


class Inception(nn.Module):
    """Four branches side by side: 1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max-pool then 1x1."""

    def __init__(self, c_in: int, widths: tuple[int, ...], width: float, batch_norm: bool):
        super().__init__()
        n1, r3, n3, r5, n5, proj = (channels(c, width) for c in widths)
        conv = partial(_conv, batch_norm=batch_norm)
        self.branch1 = conv(c_in, n1, 1)
        self.branch3 = nn.Sequential(conv(c_in, r3, 1), conv(r3, n3, 3))
        self.branch5 = nn.Sequential(conv(c_in, r5, 1), conv(r5, n5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv(c_in, proj, 1))
        self.out_channels = n1 + n3 + n5 + proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class AuxClassifier(nn.Module):
    """Sec. 5: average pool 5x5/3 (14x14 -> 4x4 at 224), conv 1x1 128, FC 1024, dropout 0.7, FC classes."""

    def __init__(self, c_in: int, num_classes: int, width: float, batch_norm: bool):
        super().__init__()
        c = channels(128, width)
        self.conv = _conv(c_in, c, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(c * 16, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.drop = vt.BatchSlicedDropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # FC1 needs a 4x4 grid: the paper's pool gives it on maps of 14-16 px (224 and 32 px inputs);
        # other input sizes are averaged adaptively onto the same grid.
        if all((side - 5) // 3 + 1 == 4 for side in x.shape[-2:]):
            x = F.avg_pool2d(x, 5, 3)
        else:
            x = F.adaptive_avg_pool2d(x, 4)
        return self.fc2(self.drop(self.relu(self.fc1(self.conv(x).flatten(1)))))


class GoogLeNet(FullyConvForms, nn.Module):
    """GoogLeNet: stem conv 7x7/2 64, max-pool 3/2, LRN, conv 1x1 64, conv 3x3 192, LRN, max-pool 3/2;
    inception 3a, 3b, max-pool 3/2, 4a-4e, max-pool 3/2, 5a, 5b (Table 1); global average pool, dropout,
    FC ``num_classes``. Every conv has a ReLU; the 5x5 branch is 5x5, as in the paper.

    Auxiliary classifiers after 4a and 4d (``aux_logits``): in training mode ``forward`` returns
    ``vt.AuxiliaryOutputs(main, (aux1, aux2), (0.3, 0.3))``, in eval mode (and in the fully-convolutional
    form, which only evaluation uses) the main scores alone.

    Below 64 px the stem is one 3x3 stride-1 conv to 192 channels with no pools, so a 32 px input meets
    inception 3 at 32x32 and ends at 8x8 (output stride 4 instead of 32). Any input size works: the
    pools are padded and the pooling at the end is global.

    Args:
        width: multiplier of every conv's channels (the auxiliary FC keeps its 1024 units).
        dropout: before the last FC (0.4 in the paper).
        aux_logits: build and train the auxiliary classifiers.
        batch_norm: BatchNorm after every conv (not in the paper, which predates it).

    The LRN parameters are AlexNet's (the paper gives none).
    """

    feature_taps = TAPS

    def __init__(self, num_classes: int = 1000, *, in_chans: int = 3, input_size: int = 224, width: float = 1.0,
                 dropout: float = 0.4, aux_logits: bool = True, batch_norm: bool = False):
        super().__init__()
        check_options(num_classes, in_chans, input_size, width, dropout)
        conv = partial(_conv, batch_norm=batch_norm)
        stem_out = channels(192, width)
        if is_small(input_size):
            self.stem = nn.Sequential(OrderedDict(conv=conv(in_chans, stem_out, 3)))
            self.output_stride = 4
        else:
            c64 = channels(64, width)
            self.stem = nn.Sequential(OrderedDict(
                conv1=conv(in_chans, c64, 7, 2), pool1=_pool(), lrn1=nn.LocalResponseNorm(**LRN),
                conv2=conv(c64, c64, 1), conv3=conv(c64, stem_out, 3), lrn2=nn.LocalResponseNorm(**LRN),
                pool2=_pool()))
            self.output_stride = 32
        blocks: list[tuple[str, nn.Module]] = []
        c = stem_out
        for name, widths in INCEPTION.items():
            if name in ("4a", "5a"):
                blocks.append((f"pool{name[0]}", _pool()))
            block = Inception(c, widths, width, batch_norm)
            blocks.append((f"inception{name}", block))
            c = block.out_channels
        self.blocks = nn.Sequential(OrderedDict(blocks))
        self.aux = nn.ModuleDict({
            name: AuxClassifier(getattr(self.blocks, name).out_channels, num_classes, width, batch_norm)
            for name in AUX_AFTER}) if aux_logits else None
        self.dropout = vt.BatchSlicedDropout(dropout)
        self.fc = MapLinear(c, num_classes)
        init_weights(self, [self.fc] + [head.fc2 for head in (self.aux.values() if aux_logits else ())])

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        # Fully-convolutional: the FC as a 1x1 conv before the average, so the score map, averaged,
        # is exactly the Linear form's scores (both maps are linear in x).
        return self.fc(self.dropout(x if self.fully_conv else x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor | vt.AuxiliaryOutputs:
        with_aux = self.training and self.aux is not None and not self.fully_conv
        aux = []
        x = self.stem(x)
        for name, block in self.blocks.named_children():
            x = block(x)
            if with_aux and name in self.aux:
                aux.append(self.aux[name](x))
        main = self._scores(x)
        return vt.AuxiliaryOutputs(main, tuple(aux), AUX_WEIGHTS) if with_aux else main

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] = ("pool",)) -> dict[str, torch.Tensor]:
        """``inception3``, ``inception4``, ``inception5``: the maps each stage ends with (before its pool);
        ``pool``: the globally averaged last map (N, C). Stops after the last tap asked for."""
        wanted = check_taps(taps, TAPS)
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name, block in self.blocks.named_children():
            x = block(x)
            if TAP_AT.get(name) in wanted:
                out[TAP_AT[name]] = x
            if wanted <= out.keys():
                return out
        out["pool"] = x.mean((2, 3))
        return out
