"""Transfer descriptors for whole splits of the shards, and the files that hold them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import vgg_toolkit as vt

from .features import descriptor_scales, image_descriptors, stacked

FEATURES_KIND = "features"


def extract_on_shards(models: Sequence[torch.nn.Module], manifest: vt.Manifest, split: str, *, scales=None,
                      tap: str | Sequence[str] = "fc7", flip: bool = True, combine: str = "average", batch_size: int = 64,
                      workers: int = 0, on_error: str = "fail", limit: Optional[int] = None,
                      console: Console | None = None) -> dict:
    """``{"features": (N, D), "labels": (N,), "keys": [...], "scales": [...] per model}`` for one split.
    Each model sees the images made into its input by its own preprocessing; ``tap`` is every model's, or
    one per model."""
    manifest.split(split)
    taps = [tap] * len(models) if isinstance(tap, str) else list(tap)
    preps = [vt.input_preprocessing(m, manifest) for m in models]
    used = [descriptor_scales(m, scales) for m in models]
    total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
    console = console or Console()
    features, labels, keys = [], [], []
    bar = Progress(TextColumn(vt.plain(split).plain), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=not console.is_terminal)
    with bar:
        task = bar.add_task("extract", total=total)
        for batch in vt.read_split(manifest, split, batch_size=batch_size, workers=workers, on_error=on_error,
                                   limit=limit):
            parts = []
            for model, prep, qs, tap_ in zip(models, preps, used, taps):
                device = next(model.parameters()).device
                x = prep.apply(batch.images.to(device))
                with vt.mixed_precision(device):
                    parts.append(image_descriptors(model, x, qs, tap=tap_, flip=flip, combine=combine).cpu())
            features.append(stacked(parts))
            if not bool(torch.isfinite(features[-1]).all()):
                raise vt.VggtkError(f"{manifest.path} {split}: the nets give NaN or infinite features (their weights "
                                    "or preprocessing record are broken)")
            labels.append(batch.labels)
            keys.extend(batch.keys)
            bar.update(task, completed=len(keys))
    if not keys:
        raise vt.VggtkError(f"{manifest.path}: split {split!r} gave no readable images")
    return {"features": torch.cat(features), "labels": torch.cat(labels).long(), "keys": keys,
            "scales": [list(q) for q in used], "classes": manifest.classes}


def write_features(result: dict, path: Path, meta: dict) -> Path:
    """``features`` and ``labels`` tensors, sample keys and settings in the metadata; written atomically."""
    metadata = {"keys": json.dumps(result["keys"]), "classes": json.dumps(result["classes"]),
                "scales": json.dumps(result["scales"]), **{k: json.dumps(v) for k, v in meta.items()}}
    return vt.save_safetensors({"features": result["features"], "labels": result["labels"]}, path, metadata,
                               kind=FEATURES_KIND)


def read_features(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, labels, metadata) of a file written by ``write_features``."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise vt.VggtkError(f"{path}: no such features file (write it with `vggtk extract-features`)")
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("features"), f.get_tensor("labels"), f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise vt.VggtkError(f"{path}: not a features file ({exc})") from None
