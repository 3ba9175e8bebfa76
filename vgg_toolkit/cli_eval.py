"""``vggtk eval``: checkpoints + shards -> the paper's test protocols -> a Table 3-5 style table and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional

import torch
import typer
from rich.console import Console

from .cli_train import resolve_data
from .errors import VggtkError

DEFAULT_CHECKPOINT = Path("runs/train/best")


def load_trained(path: Path, device: torch.device, conv_backend: str = "auto") -> torch.nn.Module:
    """A model from a checkpoint directory (or a vggtk .safetensors file), in eval mode, knowing its
    training scale and class list when the checkpoint recorded them."""
    from .checkpoint import read_state
    from .models import create_model, prepare_model
    from .weights import load_weights, read_arch

    weights = path / "model.safetensors" if path.is_dir() else path
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
    return prepare_model(model, device, conv_backend=conv_backend).eval()


def _batches(data: Path, split: str, batch_size: int, workers: int, on_error: str, limit: Optional[int],
             mean, device: torch.device) -> Iterator:
    from .data.loader import make_loader, normalize_on_device

    loader = make_loader(data, split, batch_size=batch_size, augment="none", shuffle=False, drop_last=False,
                         rank=0, world_size=1, num_workers=workers, on_error=on_error)
    seen = 0
    for images, labels in loader:
        if limit is not None:
            images, labels = images[: limit - seen], labels[: limit - seen]
        yield normalize_on_device(images.to(device), mean), labels
        seen += len(labels)
        if limit is not None and seen >= limit:
            return


def eval_command(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint directories or .safetensors files; several form an ensemble [default: runs/train/best]."),
    data: Optional[Path] = typer.Option(None, help="Shard directory or manifest.json [default: the bundled Fashion-MNIST shards]."),
    split: str = typer.Option("test", help="Split to evaluate."),
    methods: str = typer.Option("center,dense,multicrop,combined", help="Comma-separated evaluators."),
    scales: Optional[str] = typer.Option(None, help="Test scales Q, e.g. 256,384,512 [default: from the checkpoint's training scale]."),
    multi_scale: bool = typer.Option(False, "--multi-scale", help="Default scales: {S-32, S, S+32} or {Smin, mid, Smax}."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images."),
    batch_size: int = typer.Option(64, help="Images per batch (all images of a batch share a size)."),
    out: Path = typer.Option(Path("runs/eval.json"), help="Where to write the JSON results."),
    per_class: bool = typer.Option(False, "--per-class", help="Add each class's top-1 accuracy to the JSON."),
    confusion: Optional[Path] = typer.Option(None, help="Write the last method's confusion matrix as this PNG."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    conv_backend: str = typer.Option("auto", help="torch | triton | auto (triton on CUDA where faster)."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    on_error: str = typer.Option("fail", help="Corrupt samples: fail | skip."),
):
    """Evaluate with the paper's protocols: centre crop, dense, multi-crop (5x5 grid x 2 flips), combined;
    single or multiple scales; ensembles of several checkpoints."""
    from .data.manifest import Manifest
    from .engine import pick_device
    from .evaluate import get_evaluator, parse_scales, print_results, run_evaluation, write_json

    console = Console()
    dev = pick_device(device)
    models = [load_trained(p, dev, conv_backend) for p in (checkpoints or [DEFAULT_CHECKPOINT])]
    data = resolve_data(data)
    manifest = Manifest.load(data)
    if manifest.stats is None:
        raise VggtkError(f"{manifest.path}: no colour statistics to normalise with")
    sizes = manifest.extra.get("image_size") or {}
    uniform = bool(sizes) and sizes.get("min_side") == sizes.get("max_side")
    options = {"multi_scale": multi_scale, **({"scales": parse_scales(scales)} if scales else {})}
    results = []
    for method in [m.strip() for m in methods.split(",") if m.strip()]:
        evaluator = get_evaluator(method, **options)
        batches = _batches(data, split, batch_size if uniform else 1, workers, on_error, limit,
                           manifest.stats.mean_rgb_255, dev)
        total = min(limit, manifest.samples(split)) if limit else manifest.samples(split)
        results.append(run_evaluation(models, evaluator, batches, class_names=manifest.classes, total=total,
                                      console=console))
    print_results(results, console, title=f"{data.name} / {split}: top-k error (%)")
    write_json(results, out, per_class=per_class, extra={"data": str(data), "split": split,
                                                         "checkpoints": [str(p) for p in (checkpoints or [DEFAULT_CHECKPOINT])]})
    console.print(f"results written to {out}")
    if confusion is not None:
        results[-1].save_confusion_png(confusion)
        console.print(f"confusion matrix written to {confusion}")
