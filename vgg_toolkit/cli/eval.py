"""``vggtk eval``: checkpoints + shards -> the paper's test protocols -> a Table 3-5 style table and JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from .train import resolve_data

DEFAULT_CHECKPOINT = Path("runs/train/best")


def eval_command(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint directories or .safetensors files; several form an ensemble \\[default: runs/train/best]."),
    data: Optional[Path] = typer.Option(None, help="Shard directory or manifest.json \\[default: the bundled Fashion-MNIST shards]."),
    split: str = typer.Option("test", help="Split to evaluate."),
    methods: str = typer.Option("center,dense,multicrop,combined", help="Comma-separated evaluators."),
    scales: Optional[str] = typer.Option(None, help="Test scales Q, e.g. 256,384,512 \\[default: from the checkpoint's training scale]."),
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
    from ..runtime.devices import pick_device
    from ..evaluation.runner import parse_scales, print_results, write_json
    from ..evaluation.on_shards import evaluate_on_shards, load_trained

    console = Console(width=None if sys.stdout.isatty() else 120)
    dev = pick_device(device)
    models = [load_trained(p, dev, conv_backend) for p in (checkpoints or [DEFAULT_CHECKPOINT])]
    data = resolve_data(data)
    options = {"multi_scale": multi_scale, **({"scales": parse_scales(scales)} if scales else {})}
    results = evaluate_on_shards(models, data, split, [m.strip() for m in methods.split(",") if m.strip()],
                                 options, batch_size=batch_size, workers=workers, on_error=on_error, limit=limit,
                                 console=console)
    print_results(results, console, title=f"{data.name} / {split}: top-k error (%)")
    write_json(results, out, per_class=per_class, extra={"data": str(data), "split": split,
                                                         "checkpoints": [str(p) for p in (checkpoints or [DEFAULT_CHECKPOINT])]})
    console.print(f"results written to {out}")
    if confusion is not None:
        results[-1].save_confusion_png(confusion)
        console.print(f"confusion matrix written to {confusion}")
