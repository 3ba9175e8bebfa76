"""The chart the paper's followers draw: accuracy against operations, marker area for size."""

from __future__ import annotations

import math
from pathlib import Path

import vgg_toolkit as vt

CHART_KIND = "comparison chart"

SIZE_BY = {"params": ("parameters", "parameters (M)", 1e-6), "memory": ("activation_mb", "activations (MB/image)", 1.0)}


def draw(points: list[dict], target: Path, size_by: str, title: str) -> None:
    """``points``: one dict per net with ``short`` (its name on the chart), ``gmacs``, ``top1_pct`` and
    the ``SIZE_BY`` fields.
    Marker area proportional to the chosen size, the largest drawn at a fixed area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, legend, unit = SIZE_BY[size_by]
    sizes = [p[key] * unit for p in points]
    largest = max(sizes) or 1.0
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for p, size in zip(points, sizes):
        ax.scatter(p["gmacs"], p["top1_pct"], s=40 + 1500 * size / largest, alpha=0.45, edgecolors="black")
        ax.annotate(f"{p['short']}\n{size:.3g}", (p["gmacs"], p["top1_pct"]), textcoords="offset points",
                    xytext=(0, 9), ha="center", fontsize=8)
    if len({round(math.log10(max(p["gmacs"], 1e-9)), 1) for p in points}) > 1:
        ax.set_xscale("log")
    ax.set_xlabel("multiply-accumulates per image (G)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title}\nmarker area: {legend}", fontsize=10)
    ax.margins(0.15)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with vt.atomic_file(target) as tmp:
        fig.savefig(tmp, format="png", metadata=vt.png_mark(CHART_KIND))
    plt.close(fig)
