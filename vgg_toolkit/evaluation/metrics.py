"""Classification metrics on posteriors: top-k error, per-class accuracy, confusion matrix (and its PNG).

Generic on purpose: they know nothing about how the posteriors were produced, so every evaluator,
ensemble and future head shares them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..data.errors import check_labels
from ..errors import VggtkError
from ..runtime.console import one_line
from ..runtime.files import atomic_file, png_mark


def _check(posteriors: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    posteriors = torch.as_tensor(posteriors)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if posteriors.ndim != 2:
        raise VggtkError(f"posteriors must be (images, classes), got shape {tuple(posteriors.shape)}")
    if posteriors.shape[0] != labels.shape[0]:
        raise VggtkError(f"{posteriors.shape[0]} posteriors but {labels.shape[0]} labels")
    check_labels(labels, posteriors.shape[1], "the model's output")
    return posteriors, labels


def topk_misses(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """For each k, how many images have their label outside the ``k`` highest scores: int64 tensors on
    the scores' device (no host sync). With fewer than k classes every label is in the top k.
    Ties are broken by ``torch.topk``'s order, as in any top-k evaluation."""
    ks = list(ks)
    if any(k < 1 for k in ks):
        raise VggtkError(f"k must be at least 1, got {min(ks)}")
    kmax = min(max(ks), scores.shape[1])
    hits = scores.topk(kmax, dim=1).indices == labels[:, None]
    return {k: (~hits[:, :min(k, kmax)].any(dim=1)).sum() for k in ks}


def topk_error(posteriors: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of images whose label is not among the ``k`` highest posteriors, counted in integers."""
    return topk_errors(posteriors, labels, (k,))[k]


def topk_errors(posteriors: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    posteriors, labels = _check(posteriors, labels)
    misses = topk_misses(posteriors, labels, ks)
    if labels.numel() == 0:
        return {k: float("nan") for k in misses}
    return {k: int(m) / labels.numel() for k, m in misses.items()}


def confusion_matrix(posteriors_or_predictions: torch.Tensor, labels: torch.Tensor,
                     num_classes: int | None = None) -> torch.Tensor:
    """``cm[true, predicted]`` counts (int64). Accepts posteriors (N, C) or top-1 predictions (N,)."""
    p = torch.as_tensor(posteriors_or_predictions)
    if p.ndim == 2:
        p, labels = _check(p, labels)
        num_classes = p.shape[1] if num_classes is None else num_classes
        predictions = p.argmax(dim=1)
    else:
        if num_classes is None:
            raise VggtkError("num_classes is needed when passing predictions rather than posteriors")
        predictions = p.long().reshape(-1)
        labels = torch.as_tensor(labels).long().reshape(-1)
        if predictions.shape != labels.shape:
            raise VggtkError(f"{predictions.numel()} predictions but {labels.numel()} labels")
        for name, t in (("label", labels), ("prediction", predictions)):
            if t.numel() and (t.min() < 0 or t.max() >= num_classes):
                raise VggtkError(f"a {name} is outside 0..{num_classes - 1}")
    flat = labels.cpu() * num_classes + predictions.cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


CONFUSION_KIND = "confusion matrix"


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of each true class (float64); NaN for a class with no images."""
    confusion = confusion.double()
    counts = confusion.sum(dim=1)
    return confusion.diagonal() / counts  # 0/0 -> NaN marks "no images", not "all wrong"


def save_confusion_png(confusion: torch.Tensor, path: str | os.PathLike,
                       class_names: Sequence[str] | None = None, normalize: bool = True,
                       title: str | None = None) -> Path:
    """Draw the confusion matrix (rows: true class, columns: predicted) to a PNG.

    Uses matplotlib's Agg canvas directly, never pyplot, so it neither needs a display nor changes the
    caller's matplotlib backend. Rows are normalised to sum to 1 by default, so rare classes stay visible.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is an optional dependency (the `demo` extra)
        raise VggtkError("writing a confusion-matrix PNG needs matplotlib: pip install matplotlib") from None
    cm = confusion.double()
    n = cm.shape[0]
    if normalize:
        rows = cm.sum(dim=1, keepdim=True)
        cm = torch.where(rows > 0, cm / rows.clamp_min(1), torch.zeros_like(cm))
    side = min(4 + 0.25 * n, 20)
    fig = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(cm.numpy(), cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and n <= 50:  # beyond that the labels only overprint each other
        names = [one_line(name) for name in class_names]  # a control character has no glyph to draw
        ax.set_xticks(range(n), labels=names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels=names, fontsize=7)
    ax.set_title(title or ("confusion matrix (rows normalised)" if normalize else "confusion matrix"))
    with warnings.catch_warnings():  # long names: the layout is the best it can be, said in a warning
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", metadata=png_mark(CONFUSION_KIND))
    return Path(path)
