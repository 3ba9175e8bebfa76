"""Evaluating trained models on a split of the shards: what ``vggtk eval`` runs, and what training
runs on its test split."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..contract.model import find_model_info
from ..data.loader import normalize_on_device, read_split
from ..data.shards.manifest import Manifest
from ..errors import VggtkError
from .runner import EvalResult, get_evaluator, run_evaluation


def normalising_mean(models: Sequence[torch.nn.Module], manifest: Manifest) -> list[float]:
    """The mean colour the first model was trained with, when it records one, else the shards' own."""
    info = find_model_info(models[0])
    if info is not None and info.mean_rgb is not None:
        return list(info.mean_rgb)
    if manifest.stats is None:
        raise VggtkError(f"{manifest.path}: no colour statistics to normalise with")
    return manifest.stats.mean_rgb_255


def check_fits_data(models: Sequence[torch.nn.Module], manifest: Manifest, names: Sequence[str],
                    classes: bool = True) -> None:
    """Refuse, before any work, models whose input channels or (``classes``) classes are not the data's.
    Features for another task (``classes=False``) need the channels alone."""
    for model, name in zip(models, names):
        info = find_model_info(model)
        if info is None:
            continue
        if info.in_chans is not None and info.in_chans != manifest.channels:
            raise VggtkError(f"{name}: takes {info.in_chans}-channel images but {manifest.path} holds "
                             f"{manifest.channels}-channel images")
        if classes and info.classes is not None and list(info.classes) != list(manifest.classes):
            diff = next((i for i, (a, b) in enumerate(zip(info.classes, manifest.classes)) if a != b), None)
            what = (f"{len(info.classes)} vs {manifest.num_classes} classes" if diff is None else
                    f"class {diff} is {info.classes[diff]!r} there and {manifest.classes[diff]!r} here")
            raise VggtkError(f"{name}: was trained on other classes than {manifest.path} has ({what})")


def _normalised(manifest: Manifest, split: str, batch_size: int, workers: int, on_error: str, limit: int | None,
                mean, device: torch.device) -> Iterator:
    for batch in read_split(manifest, split, batch_size=batch_size, workers=workers, on_error=on_error, limit=limit):
        yield normalize_on_device(batch.images.to(device), mean), batch.labels


def evaluate_on_shards(models: Sequence[torch.nn.Module], data: Manifest | str | Path, split: str,
                       methods: Sequence[str], options: dict | None = None, batch_size: int = 64, workers: int = 0,
                       on_error: str = "fail", limit: int | None = None, console=None,
                       progress: bool | None = None, names: Sequence[str] | None = None) -> list[EvalResult]:
    """One EvalResult per method: ``models`` (an ensemble when several) over a split of the shards.
    ``names`` (e.g. the checkpoints' paths) name the models in errors."""
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    manifest.split(split)  # an unknown split is said now
    check_fits_data(models, manifest, names or [f"model {i + 1}" for i in range(len(models))])
    mean = normalising_mean(models, manifest)
    device = next(models[0].parameters()).device
    total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
    evaluators = [get_evaluator(m, **(options or {})) for m in methods]  # unknown names before any work
    return [run_evaluation(models, evaluator, _normalised(manifest, split, batch_size, workers, on_error, limit,
                                                          mean, device),
                           class_names=manifest.classes, total=total, console=console, progress=progress)
            for evaluator in evaluators]
