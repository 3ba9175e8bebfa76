"""Facts about a model (parameters, weight layers, multiply-accumulates) computed without real data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    parameters: int
    weight_layers: int
    gmacs: float  # multiply-accumulates per image, in billions
    receptive_field: int | None


def _macs_hook(counter: list[int]):
    def hook(module: nn.Module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            counter[0] += output.numel() * kh * kw * module.in_channels // module.groups
        elif isinstance(module, nn.Linear):
            counter[0] += output.numel() * module.in_features
    return hook


def model_stats(model: nn.Module, input_size: int = 224, in_chans: int | None = None) -> ModelStats:
    """Count parameters and weight layers, and MACs for one image of ``input_size`` squared, as the
    network predicts (in eval mode; parameters include any used only in training, e.g. auxiliary heads).

    Build the model under ``torch.device("meta")`` and this costs no memory and no arithmetic:
    the hooks need only the output shapes.
    """
    weight_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    parameters = sum(p.numel() for p in model.parameters())
    if in_chans is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = first.in_channels if first is not None else 3
    counter = [0]
    handles = [m.register_forward_hook(_macs_hook(counter)) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    training = model.training
    try:
        device = next(model.parameters()).device
        model.eval()  # the network as it predicts: no auxiliary classifiers
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    rf = model.receptive_field() if hasattr(model, "receptive_field") else None
    return ModelStats(parameters, weight_layers, counter[0] / 1e9, rf)
