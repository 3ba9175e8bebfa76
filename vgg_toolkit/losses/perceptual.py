"""Content (perceptual) and style losses over named taps: one definition of each, so that the factor by
which copies of the Gram matrix differ is written down once.

Both take the dicts a ``VGGFeatures`` returns and give one value per image (``reduction="none"``) or their
mean. A layer's term is averaged over its elements, so layers of different sizes weigh what their weight
says."""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import VggtkError

DISTANCES = ("l2", "l1", "cosine")
REDUCTIONS = ("mean", "none")
EPS = 1e-10  # LPIPS's: keeps an all-zero feature vector at zero after normalising


def unit_channels(x: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector divided by its length, as LPIPS does. The length is taken with
    ``vector_norm``, whose gradient at an all-zero vector is 0 (a square root of the summed squares gives
    NaN there); the value is the same."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPS)


def gram(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C x C: ``F F^T / (C H W)`` with F the C x HW feature matrix (Johnson et al.'s
    normalisation). Gatys et al. sum without dividing and put 1 / (4 C^2 (HW)^2) in the loss; other copies
    divide by HW only (C times larger) or by C H W: compare at this definition."""
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def _weights(layers: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        weights = {name: 1.0 for name in layers}
    if not weights:
        raise VggtkError("no taps to compare: the features are empty, or so are the weights")
    missing = sorted(set(weights) - set(layers))
    if missing:
        raise VggtkError(f"weights for tap(s) {', '.join(missing)} that the features do not hold "
                         f"({', '.join(layers)})")
    return dict(weights)


def _pairs(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], weights):
    for name, weight in _weights(a, weights).items():
        if name not in b:
            raise VggtkError(f"tap {name} is in the first features and not in the second")
        fa, fb = a[name], b[name]
        if fa.shape[1:] != fb.shape[1:] or fb.shape[0] not in (1, fa.shape[0]):
            raise VggtkError(f"tap {name}: shapes {tuple(fa.shape)} and {tuple(fb.shape)} do not pair (the second "
                             "may have a batch of 1, as a target)")
        yield name, weight, fa, fb


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise VggtkError(f"reduction {reduction!r}: one of {', '.join(REDUCTIONS)}")
    return per_image.mean() if reduction == "mean" else per_image


def perceptual_loss(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                    weights: Mapping[str, float] | None = None, distance: str = "l2", normalise: bool = False,
                    reduction: str = "mean") -> torch.Tensor:
    """Sum over taps of ``weight * d(a[tap], b[tap])``: ``l2`` the mean squared difference, ``l1`` the mean
    absolute one, ``cosine`` the mean over positions of 1 - the cosine of the channel vectors. ``normalise``
    makes every position's channel vector unit length first (LPIPS's step). ``weights`` defaults to 1 for
    every tap of ``a``; ``b`` may be a single target (batch of 1) for all of ``a``."""
    if distance not in DISTANCES:
        raise VggtkError(f"distance {distance!r}: one of {', '.join(DISTANCES)}")
    total = None
    for _, weight, fa, fb in _pairs(a, b, weights):
        if normalise:
            fa, fb = unit_channels(fa), unit_channels(fb)
        if distance == "l2":
            term = (fa - fb).pow(2).flatten(1).mean(1)
        elif distance == "l1":
            term = (fa - fb).abs().flatten(1).mean(1)
        else:
            term = (1 - torch.nn.functional.cosine_similarity(fa, fb.expand_as(fa), dim=1, eps=EPS)).flatten(1).mean(1)
        total = weight * term if total is None else total + weight * term
    return _reduce(total, reduction)


def style_loss(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
               weights: Mapping[str, float] | None = None, reduction: str = "mean") -> torch.Tensor:
    """Sum over taps of ``weight * mean((gram(a[tap]) - gram(b[tap]))^2)``, with ``gram`` as defined here.
    ``b`` may be one style image (batch of 1) for all of ``a``; its size may differ from ``a``'s (a Gram
    matrix is C x C whatever the size)."""
    total = None
    for name, weight in _weights(a, weights).items():
        if name not in b:
            raise VggtkError(f"tap {name} is in the first features and not in the second")
        fa, fb = a[name], b[name]
        if fa.shape[1] != fb.shape[1] or fb.shape[0] not in (1, fa.shape[0]):
            raise VggtkError(f"tap {name}: {fa.shape[1]} and {fb.shape[1]} channels, batches {fa.shape[0]} and "
                             f"{fb.shape[0]}: the Gram matrices do not pair")
        term = (gram(fa) - gram(fb)).pow(2).flatten(1).mean(1)
        total = weight * term if total is None else total + weight * term
    return _reduce(total, reduction)
