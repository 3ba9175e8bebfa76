"""The nets' initial weights."""

from __future__ import annotations

from typing import Iterable

from torch import nn


def init_weights(model: nn.Module, last_layers: Iterable[nn.Linear], conv_mode: str = "fan_in") -> None:
    """He et al.'s normal init for every conv and Linear layer, biases zero, BatchNorm the identity; the
    layers that give class scores N(0, 0.01^2) instead.

    Why not the papers' own N(0, 0.01^2) everywhere (AlexNet, ZFNet, GoogLeNet): without BatchNorm, in a
    quarter-width net, a fixed small std shrinks the signal at every layer, and SGD at lr 0.02 leaves
    such a net at chance level on 32x32 Fashion-MNIST for many epochs; He's init keeps every ReLU layer
    at unit scale at any width. Small class scores at the start mean the first steps learn instead of
    unlearning random logits. ``conv_mode="fan_out"`` is He et al.'s choice for ResNet's convolutions,
    whose BatchNorm makes the forward scale irrelevant and the backward one the one to keep.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mode = conv_mode if isinstance(m, nn.Conv2d) else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for layer in last_layers:
        nn.init.normal_(layer.weight, 0.0, 0.01)
