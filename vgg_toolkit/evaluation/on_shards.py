"""Evaluating trained models on a split of the shards: what ``vggtk eval`` runs, and what training
runs on its test split."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..contract.model import find_model_info, model_info
from ..contract.preprocess import Preprocessing
from ..data.errors import SkipLog
from ..data.loader import read_split
from ..data.shards.manifest import Manifest
from ..errors import VggtkError
from ..runtime.console import plain
from .runner import EvalResult, Feed, get_evaluator, run_evaluation


def input_preprocessing(model: torch.nn.Module, manifest: Manifest | None = None) -> Preprocessing:
    """How ``model``'s input is made from 0-255 RGB pixels: its recorded preprocessing; for a net that
    records none (written before records, or built here untrained), vggtk's with its recorded mean colour,
    else the data's."""
    data_mean = manifest.stats.mean_rgb_255 if manifest is not None and manifest.stats is not None else None
    info = find_model_info(model)
    if info is not None:
        return info.input_preprocessing(data_mean)
    if data_mean is None:
        raise VggtkError(f"{manifest.path if manifest is not None else 'the data'}: no colour statistics to "
                         "normalise with")
    return Preprocessing.vggtk(data_mean)


def class_columns(model: torch.nn.Module, manifest: Manifest, name: str) -> tuple[int, ...] | None:
    """None when the net predicts the data's classes (or records none); the net's outputs for the data's
    classes, matched by name, when they are a subset of the net's own (ImageNet wnids, Imagenette's ten of
    them); anything else is an error naming both."""
    info = find_model_info(model)
    if info is None or info.classes is None or list(info.classes) == list(manifest.classes):
        return None
    theirs = {c: i for i, c in enumerate(info.classes)}
    if all(c in theirs for c in manifest.classes) and len(set(manifest.classes)) == len(manifest.classes):
        return tuple(theirs[c] for c in manifest.classes)
    diff = next((i for i, (a, b) in enumerate(zip(info.classes, manifest.classes)) if a != b), None)
    missing = [c for c in manifest.classes if c not in theirs]
    what = (f"{len(info.classes)} vs {manifest.num_classes} classes" if diff is None else
            f"class {diff} is {info.classes[diff]!r} there and {manifest.classes[diff]!r} here")
    if missing:
        what += f"; {len(missing)} of the data's classes are not the net's, e.g. {missing[0]!r}"
    raise VggtkError(f"{name}: was trained on other classes than {manifest.path} has ({what})")


def check_fits_data(models: Sequence[torch.nn.Module], manifest: Manifest, names: Sequence[str],
                    classes: bool = True) -> None:
    """Refuse, before any work, models whose input channels or (``classes``) classes are not the data's,
    in its order (what reads a net's outputs by index needs). Features for another task
    (``classes=False``) need the channels alone; ``feeds_for`` also takes a net whose classes include the
    data's, picking them by name."""
    for model, name in zip(models, names):
        info = find_model_info(model)
        if info is None:
            continue
        if info.in_chans is not None and info.in_chans != manifest.channels:
            raise VggtkError(f"{name}: takes {info.in_chans}-channel images but {manifest.path} holds "
                             f"{manifest.channels}-channel images")
        if classes and class_columns(model, manifest, name) is not None:
            raise VggtkError(f"{name}: knows {len(info.classes)} classes and {manifest.path} has "
                             f"{manifest.num_classes}; here the net's classes must be the data's, in its order")


def feeds_for(models: Sequence[torch.nn.Module], manifest: Manifest, names: Sequence[str], console=None) -> list[Feed]:
    """Each model's ``Feed`` on this data: its own preprocessing and, where its classes include the data's,
    their outputs; what was matched by name is said on ``console``."""
    check_fits_data(models, manifest, names, classes=False)
    feeds = []
    for model, name in zip(models, names):
        columns = class_columns(model, manifest, name)
        if columns is not None and console is not None:
            console.print(plain(f"{name}: scoring the data's {len(columns)} classes among the net's "
                                f"{model_info(model).num_outputs}, matched by name"), highlight=False)
        feeds.append(Feed(input_preprocessing(model, manifest), columns))
    return feeds


def _pixels(manifest: Manifest, split: str, batch_size: int, workers: int, on_error: str, limit: int | None,
            device: torch.device, skipped: SkipLog | None = None) -> Iterator:
    for batch in read_split(manifest, split, batch_size=batch_size, workers=workers, on_error=on_error, limit=limit,
                            skipped=skipped):
        yield batch.images.to(device), batch.labels


def evaluate_on_shards(models: Sequence[torch.nn.Module], data: Manifest | str | Path, split: str,
                       methods: Sequence[str], options: dict | None = None, batch_size: int = 64, workers: int = 0,
                       on_error: str = "fail", limit: int | None = None, console=None,
                       progress: bool | None = None, names: Sequence[str] | None = None,
                       skipped: SkipLog | None = None) -> list[EvalResult]:
    """One EvalResult per method: ``models`` (an ensemble when several) over a split of the shards, each
    fed with its own preprocessing. ``names`` (e.g. the checkpoints' paths) name the models in errors;
    ``skipped`` receives what ``--on-error skip`` left out (counted once: every method reads the same)."""
    manifest = data if isinstance(data, Manifest) else Manifest.load(data)
    manifest.split(split)  # an unknown split is said now
    names = list(names or [f"model {i + 1}" for i in range(len(models))])
    feeds = feeds_for(models, manifest, names, console)
    device = next(models[0].parameters()).device
    total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
    evaluators = [get_evaluator(m, **(options or {})) for m in methods]  # unknown names before any work
    # a net scored over the data's classes by name stands for the data's list
    class_lists = [manifest.classes if f.columns is not None else getattr(find_model_info(m), "classes", None)
                   for f, m in zip(feeds, models)]
    return [run_evaluation(models, evaluator, _pixels(manifest, split, batch_size, workers, on_error, limit, device,
                                                      skipped if i == 0 else None),
                           class_names=manifest.classes, class_lists=class_lists, total=total, console=console,
                           progress=progress, feeds=feeds)
            for i, evaluator in enumerate(evaluators)]
