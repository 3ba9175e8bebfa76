"""Registers ``vggtk extract-features`` (the paper's transfer descriptors, ``transfer_features``, for
every image of some splits of the shards, one safetensors file per split) and ``vggtk linear-probe``
(the linear SVM the paper trains on them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.console import Console

from vgg_toolkit.errors import VggtkError
from vgg_toolkit.host.manager import hookimpl

from .features import COMBINES, descriptor_scales, image_descriptors, stacked

DEFAULT_CHECKPOINT = Path("runs/train/best")


def extract_on_shards(models, data: Path, split: str, *, scales=None, tap: str = "fc7", flip: bool = True,
                      combine: str = "average", batch_size: int = 64, workers: int = 0, on_error: str = "fail",
                      limit: Optional[int] = None, console: Console | None = None) -> dict:
    """``{"features": (N, D), "labels": (N,), "keys": [...], "scales": [...] per model}`` for one split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vgg_toolkit.data.loader import make_loader, normalize_on_device
    from vgg_toolkit.data.shards.manifest import Manifest
    from vgg_toolkit.runtime.devices import mixed_precision

    manifest = Manifest.load(data)
    if split not in manifest.splits:
        raise VggtkError(f"{manifest.path}: no split {split!r}; it has {', '.join(manifest.splits)}")
    means = [getattr(m, "vggtk_mean_rgb", None) or (manifest.stats.mean_rgb_255 if manifest.stats else None)
             for m in models]
    if any(mean is None for mean in means):
        raise VggtkError(f"{manifest.path}: no colour statistics to normalise with")
    used = [descriptor_scales(m, scales) for m in models]
    uniform = manifest.uniform_side is not None  # else one image per batch: a batch is never padded
    loader = make_loader(data, split, batch_size=batch_size if uniform else 1, augment="none", shuffle=False,
                         drop_last=False, rank=0, world_size=1, num_workers=workers, on_error=on_error)
    total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
    console = console or Console()
    features, labels, keys = [], [], []
    bar = Progress(TextColumn(f"{split}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=not console.is_terminal)
    with bar:
        task = bar.add_task(split, total=total)
        for batch in loader:
            take = total - len(keys)
            images = batch.images[:take]
            parts = []
            for model, mean, qs in zip(models, means, used):
                device = next(model.parameters()).device
                x = normalize_on_device(images.to(device), mean)
                with mixed_precision(device):
                    parts.append(image_descriptors(model, x, qs, tap=tap, flip=flip, combine=combine).cpu())
            features.append(stacked(parts))
            labels.append(batch.labels[:take])
            keys.extend(batch.keys[:take])
            bar.update(task, completed=len(keys))
            if len(keys) >= total:
                break
    if loader.skipped.total:
        console.print(f"{data} {split}: {loader.skipped.summary()}", markup=False)
    if not keys:
        raise VggtkError(f"{manifest.path}: split {split!r} gave no readable images")
    return {"features": torch.cat(features), "labels": torch.cat(labels).long(), "keys": keys,
            "scales": [list(q) for q in used], "classes": manifest.classes}


def write_features(result: dict, path: Path, meta: dict) -> Path:
    """``features`` and ``labels`` tensors, sample keys and settings in the metadata; written atomically."""
    from vgg_toolkit.models.weights import save_safetensors

    metadata = {"keys": json.dumps(result["keys"]), "classes": json.dumps(result["classes"]),
                "scales": json.dumps(result["scales"]), **{k: json.dumps(v) for k, v in meta.items()}}
    return save_safetensors({"features": result["features"], "labels": result["labels"]}, path, metadata)


def extract_features_command(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint directories or .safetensors files; several are stacked \\[default: runs/train/best]."),
    data: Optional[Path] = typer.Option(None, help="Shard directory or manifest.json \\[default: the bundled Fashion-MNIST shards]."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated splits \\[default: every split of the shards]."),
    out: Path = typer.Option(Path("runs/features"), help="Directory for one SPLIT.safetensors per split."),
    tap: str = typer.Option("fc7", help="Layer whose output is pooled: fc7 (the paper), fc6, or block1..block5."),
    scales: Optional[str] = typer.Option(None, help="Scales Q, e.g. 256,384,512 \\[default: the paper's multi-scale set from the training scale]."),
    combine: str = typer.Option("average", help="Per-scale descriptors: average (the paper's VOC) | stack (its Caltech)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Average with the horizontally flipped image."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images of each split."),
    batch_size: int = typer.Option(64, help="Images per batch (all images of a batch share a size)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    conv_backend: str = typer.Option("auto", help="torch | triton | auto (triton on CUDA where faster)."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    on_error: str = typer.Option("fail", help="Corrupt samples: fail | skip."),
):
    """Transfer features as in the paper: dense FC7 over scales, pooled, flip-averaged, L2-normalised,
    one row per image with its label and key; for a linear classifier trained on another task."""
    from vgg_toolkit.cli.train import resolve_data
    from vgg_toolkit.data.shards.manifest import Manifest
    from vgg_toolkit.runtime.devices import pick_device
    from vgg_toolkit.evaluation.runner import parse_scales
    from vgg_toolkit.evaluation.on_shards import load_trained

    if combine not in COMBINES:
        raise VggtkError(f"--combine must be one of {', '.join(COMBINES)}, not {combine!r}")
    console = Console(width=None if sys.stdout.isatty() else 120)
    dev = pick_device(device)
    paths = checkpoints or [DEFAULT_CHECKPOINT]
    models = [load_trained(p, dev, conv_backend) for p in paths]
    data = resolve_data(data)
    wanted = [s.strip() for s in splits.split(",") if s.strip()] if splits else list(Manifest.load(data).splits)
    meta = {"tap": tap, "combine": combine, "flip": flip, "checkpoints": [str(p) for p in paths],
            "data": str(data)}
    for split in wanted:
        result = extract_on_shards(models, data, split, scales=parse_scales(scales) if scales else None, tap=tap,
                                   flip=flip, combine=combine, batch_size=batch_size, workers=workers,
                                   on_error=on_error, limit=limit, console=console)
        path = write_features(result, out / f"{split}.safetensors", {**meta, "split": split})
        n, dim = result["features"].shape
        console.print(f"{split}: {n} images x {dim} features (tap {tap}, scales "
                      f"{' + '.join(','.join(map(str, q)) for q in result['scales'])}) -> {path}", markup=False)


def read_features(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, labels, metadata) of a file written by ``write_features``."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise VggtkError(f"{path}: no such features file (write it with `vggtk extract-features`)")
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("features"), f.get_tensor("labels"), f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise VggtkError(f"{path}: not a features file ({exc})") from None


def linear_probe_command(
    features: Path = typer.Argument(Path("runs/features"), help="Directory written by `vggtk extract-features`."),
    train: str = typer.Option("train", help="Split to fit on."),
    val: Optional[str] = typer.Option("val", help="Split that picks C, when present ('' to skip)."),
    test: str = typer.Option("test", help="Split to score."),
    c: Optional[float] = typer.Option(None, help="SVM C \\[default: picked on --val from 0.1, 1, ..., 1000; else 1]."),
):
    """Fit the paper's linear SVM on one split's transfer features and report another's accuracy and mean
    class recall."""
    from vgg_toolkit.plugins.transfer.linear_probe import probe

    console = Console(width=None if sys.stdout.isatty() else 120)
    x, y, meta = read_features(features / f"{train}.safetensors")
    tx, ty, _ = read_features(features / f"{test}.safetensors")
    valid = None
    if val and (features / f"{val}.safetensors").is_file():
        valid = read_features(features / f"{val}.safetensors")[:2]
    classes = json.loads(meta.get("classes", "null")) or sorted(set(y.tolist()) | set(ty.tolist()))
    if x.shape[1] != tx.shape[1]:
        raise VggtkError(f"{features}: {train} has {x.shape[1]} features per image but {test} has {tx.shape[1]}")
    result = probe((x, y), (tx, ty), len(classes), val=valid, c=c)
    for candidate, acc in result["val_accuracy_by_c"].items():
        console.print(f"C={candidate:g}: {val} accuracy {acc:.2f}%")
    console.print(f"linear SVM (C={result['c']:g}) fitted on {len(y)} {train} images: {test} accuracy "
                  f"{result['accuracy']:.2f}%, mean class recall {result['mean_class_recall']:.2f}% "
                  f"({len(ty)} images)")


@hookimpl
def vggtk_register_commands(app):
    app.command(name="extract-features")(extract_features_command)
    app.command(name="linear-probe")(linear_probe_command)
