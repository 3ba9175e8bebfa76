"""Evaluating checkpoints on shards: what ``vggtk eval`` runs, and what training runs on its test split."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..errors import VggtkError


def load_trained(path: Path, device: torch.device, conv_backend: str = "auto") -> torch.nn.Module:
    """A model from a checkpoint directory (or a vggtk .safetensors file), in eval mode, knowing its
    training scale and class list when the checkpoint recorded them."""
    from ..train.checkpoint import read_state, weights_file
    from ..models.factory import create_model, prepare_model
    from ..models.weights import load_weights, read_arch

    path = Path(path)
    weights = weights_file(path)
    if not weights.is_file():
        raise VggtkError(f"{path}: no checkpoint here (expected a checkpoint directory or a .safetensors file)")
    arch = read_arch(weights)
    if arch is None:
        raise VggtkError(f"{weights}: records no architecture; convert it with `vggtk convert --arch ...` first")
    model = create_model(arch["name"], **arch["kwargs"])
    load_weights(model, weights)
    config = read_state(path).get("config", {}) if (path / "state.json").is_file() else {}
    scale = config.get("train_scale")
    if scale:
        model.vggtk_train_scale = scale[0] if len(scale) == 1 else tuple(scale)
    if config.get("classes"):
        model.vggtk_classes = config["classes"]
    if config.get("mean_rgb"):
        model.vggtk_mean_rgb = config["mean_rgb"]
    return prepare_model(model, device, conv_backend=conv_backend).eval()


def _batches(data: Path, split: str, batch_size: int, workers: int, on_error: str, limit: Optional[int],
             mean, device: torch.device) -> Iterator:
    from ..data.loader import make_loader

    loader = make_loader(data, split, batch_size=batch_size, augment="none", shuffle=False, drop_last=False,
                         rank=0, world_size=1, num_workers=workers, on_error=on_error)
    try:
        yield from _limited(loader, limit, mean, device)
    finally:
        if loader.skipped.total:
            from rich.console import Console

            Console(stderr=True).print(f"{data} {split}: {loader.skipped.summary()}")


def _limited(loader, limit, mean, device):
    from ..data.loader import normalize_on_device

    seen = 0
    for images, labels in loader:
        if limit is not None:
            images, labels = images[: limit - seen], labels[: limit - seen]
        yield normalize_on_device(images.to(device), mean), labels
        seen += len(labels)
        if limit is not None and seen >= limit:
            return


def evaluate_on_shards(models: Sequence[torch.nn.Module], data: Path, split: str, methods: Sequence[str],
                       options: dict | None = None, batch_size: int = 64, workers: int = 0, on_error: str = "fail",
                       limit: Optional[int] = None, console=None, progress: bool | None = None) -> list:
    """One EvalResult per method: ``models`` (an ensemble when several) over a split of the shards.

    Images are normalised with the mean the first model was trained with, when its checkpoint
    recorded one, else with the shards' own training mean."""
    from ..data.shards.manifest import Manifest
    from .runner import get_evaluator, run_evaluation

    manifest = Manifest.load(data)
    mean = getattr(models[0], "vggtk_mean_rgb", None) or (manifest.stats.mean_rgb_255 if manifest.stats else None)
    if mean is None:
        raise VggtkError(f"{manifest.path}: no colour statistics to normalise with")
    uniform = manifest.uniform_side is not None
    device = next(models[0].parameters()).device
    total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
    results = []
    for method in methods:
        evaluator = get_evaluator(method, **(options or {}))
        # Images of different sizes go one at a time: a batch is never padded.
        batches = _batches(data, split, batch_size if uniform else 1, workers, on_error, limit, mean, device)
        results.append(run_evaluation(models, evaluator, batches, class_names=manifest.classes, total=total,
                                      console=console, progress=progress))
    return results
