"""The paper's transfer descriptors (Appendix B): a trained net, its last layer dropped, as a fixed
feature extractor.

For each test scale Q the image is rescaled (smallest side Q), the fully-convolutional net runs on the
whole of it, and the feature map at the tap (FC7 by default: after its ReLU, before dropout) is averaged
spatially; the same is done for the horizontally flipped image and the two are averaged. Per-scale
descriptors are then averaged (the paper's VOC setting) or stacked (its Caltech setting), and the result
is L2-normalised. Several nets are combined by stacking their normalised descriptors (the paper's D & E),
normalised once more so every net weighs the same.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vgg_toolkit import FeatureTaps, FullyConvolutional, VggtkError, dense_input, model_form, rescale, test_scales_for

COMBINES = ("average", "stack")


def descriptor_scales(model: nn.Module, scales: Iterable[int] | None = None) -> tuple[int, ...]:
    """The scales used on ``model``: ``scales``, or the paper's multi-scale set from its training scale
    ({S-32, S, S+32}, or {Smin, mid, Smax} when jittered); any Q below the net's input size is raised to it."""
    return test_scales_for(model, scales, multi=True)


PRE_LOGITS = "pre-logits"  # a net without named taps: the input of its last layer, as timm's pre-logits


def last_layer(model: nn.Module) -> nn.Module:
    """The last module with weights of their own (a Linear or a conv), whose input is the pre-logits."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
    if not layers:
        raise VggtkError(f"{type(model).__name__} has no feature taps and no Linear or conv layer to take "
                         "the input of")
    return layers[-1]


def _tapped(model: nn.Module, x: torch.Tensor, tap: str) -> torch.Tensor:
    if tap != PRE_LOGITS:
        return model.forward_features(x, taps=(tap,))[tap]
    seen = []
    handle = last_layer(model).register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1]


def _pooled(model: nn.Module, x: torch.Tensor, tap: str) -> torch.Tensor:
    out = _tapped(model, x, tap)
    if out.ndim == 4:  # a feature map: global average pooling
        out = out.mean(dim=(2, 3))
    return out.reshape(len(out), -1).float()


def image_descriptors(model: nn.Module, images: torch.Tensor, scales: Sequence[int], tap: str = "fc7",
                      flip: bool = True, combine: str = "average") -> torch.Tensor:
    """(N, D) descriptors, L2-normalised, of a batch of same-size normalised images (N, C, H, W)."""
    if combine not in COMBINES:
        raise VggtkError(f"unknown way to combine scales {combine!r}; known: {', '.join(COMBINES)}")
    if tap != PRE_LOGITS and not isinstance(model, FeatureTaps):
        raise VggtkError(f"{type(model).__name__} has no forward_features(x, taps), so no feature taps")
    per_scale = []
    with model_form(model, fully_conv=True), torch.no_grad():
        for q in scales:
            x = rescale(images, q)
            if isinstance(model, FullyConvolutional):  # windows centred on the image, as in dense evaluation
                x = dense_input(model, x)
            d = _pooled(model, x, tap)
            if flip:
                d = (d + _pooled(model, x.flip(-1), tap)) / 2
            per_scale.append(d)
    joined = torch.stack(per_scale).mean(0) if combine == "average" else torch.cat(per_scale, dim=1)
    return F.normalize(joined, dim=1)


def stacked(descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several nets' descriptors of the same images side by side, normalised as a whole."""
    return descriptors[0] if len(descriptors) == 1 else F.normalize(torch.cat(list(descriptors), dim=1), dim=1)
