"""``vggtk eval``: checkpoints + shards -> the paper's test protocols -> a Table 3-5 style table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..contract.model import find_model_info
from ..contract.preprocess import PREPROCESS_HELP, parse_preprocess
from ..contract.scale import parse_test_scales
from ..data.bundled import resolve_data
from ..data.errors import SkipLog, check_policy
from ..data.shards.manifest import Manifest
from ..errors import VggtkError
from ..evaluation.on_shards import evaluate_on_shards
from ..evaluation.metrics import CONFUSION_KIND
from ..evaluation.report import RESULTS_KIND, print_results, results_json, write_json
from ..models.trained import load_trained, weights_digest
from ..runtime.devices import pick_device
from ..contract.task import EvalRequest
from ..host.manager import get_host
from ..runtime.files import check_output_file, mark, save_json
from ..version import __version__
from .options import with_plugin_options

DEFAULT_CHECKPOINT = Path("runs/train/best")
CLASSIFICATION_METHODS = ["center", "dense", "multicrop", "combined"]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise VggtkError(f"--methods {text!r}: name at least one evaluator, e.g. center,dense")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise VggtkError(f"--methods {text!r}: {', '.join(twice)} named twice")
    return methods


def flag_value(flag: str, parse, text):
    """``parse(text)``, its error naming ``flag``."""
    try:
        return parse(text)
    except VggtkError as exc:
        raise VggtkError(f"{flag}: {exc}") from None


def at_least(value: int | None, low: int, flag: str) -> None:
    if value is not None and value < low:
        raise VggtkError(f"{flag}: must be at least {low}, got {value}")


def eval_command(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint directories, weights files (vggtk's, torchvision's, timm's, .caffemodel) or catalogue names; several form an ensemble \\[default: runs/train/best]."),
    weights: List[str] = typer.Option([], "--weights", help="Pretrained weights by catalogue name (vggtk weights list) or file; more nets of the ensemble."),
    preprocess: Optional[str] = typer.Option(None, help=PREPROCESS_HELP),
    data: Optional[str] = typer.Option(None, help="Shard directory, manifest.json or manifest URL \\[default: the bundled Fashion-MNIST shards]."),
    split: str = typer.Option("test", help="Split to evaluate."),
    task: str = typer.Option("classification", help="classification, or a task a plugin adds (vggtk plugins), "
                             "e.g. localisation."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated protocols \\[default: the task's: "
                                          "center,dense,multicrop,combined for classification]."),
    scales: Optional[str] = typer.Option(None, help="Test scales Q, e.g. 256,384,512 \\[default: from the checkpoint's training scale]."),
    multi_scale: bool = typer.Option(False, "--multi-scale", help="Default scales: {S-32, S, S+32} or {Smin, mid, Smax}."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images."),
    batch_size: int = typer.Option(64, help="Images per batch (all images of a batch share a size)."),
    out: Path = typer.Option(Path("runs/eval.json"), help="Where to write the JSON results."),
    per_class: bool = typer.Option(False, "--per-class", help="Add each class's top-1 accuracy to the JSON."),
    confusion: Optional[Path] = typer.Option(None, help="Write the last method's confusion matrix as this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (for scripts) instead of the table."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    on_error: str = typer.Option("fail", help="Corrupt samples: fail | skip."),
    plugin_options: dict | None = None,
):
    """Evaluate with the paper's protocols: centre crop, dense, multi-crop (5x5 grid x 2 flips), combined;
    single or multiple scales; ensembles of several checkpoints."""
    # Every input is checked before any model is loaded or image read.
    check_policy(on_error)
    at_least(limit, 1, "--limit")
    at_least(batch_size, 1, "--batch-size")
    at_least(workers, 0, "--workers")
    names = parse_methods(methods) if methods is not None else None
    options = {"multi_scale": multi_scale, **({"scales": flag_value("--scales", parse_test_scales, scales)}
                                              if scales is not None else {})}
    evaluate = get_host().registry("tasks").get(task).factory if task != "classification" else None
    check_output_file(out, RESULTS_KIND)
    if confusion is not None:
        check_output_file(confusion, CONFUSION_KIND)
    assume = parse_preprocess(preprocess)
    manifest = Manifest.load(resolve_data(data))
    manifest.split(split)
    dev = pick_device(device)
    paths = [*(checkpoints or ([] if weights else [DEFAULT_CHECKPOINT])), *map(Path, weights)]
    models = [load_trained(p, dev, plugin_options, command="eval", assume=assume) for p in paths]
    console = Console(stderr=as_json, soft_wrap=True)
    extra = {"data": manifest.location, "split": split, "checkpoints": [str(p) for p in paths],
             "weights_sha256": [weights_digest(p) for p in paths],
             "models": [find_model_info(m).to_json() if find_model_info(m) else None for m in models],
             "limit": limit, "on_error": on_error}
    if evaluate is not None:
        request = EvalRequest(models, [str(p) for p in paths], manifest, split, names, options, batch_size, workers,
                              on_error, limit, console, plugin_options or {})
        payload = {**mark(RESULTS_KIND), "vggtk_version": __version__, "task": task, **extra, **evaluate(request)}
        save_json(out, payload, RESULTS_KIND)
        if as_json:
            print(json.dumps(payload, indent=2, allow_nan=False))
        else:
            console.print(f"results written to {out}", markup=False, highlight=False)
        return
    for model, path in zip(models, paths):  # a net of another task would fail on its outputs' count
        head = getattr(find_model_info(model), "head", "classification")
        other = get_host().registry("heads").get(head).info.get("task", "classification") if head else None
        if other not in (None, "classification"):
            raise VggtkError(f"{path}: a net with the {head} head, for the {other} task: evaluate it with "
                             f"--task {other}")
    skipped = SkipLog()
    results = evaluate_on_shards(models, manifest, split, names or CLASSIFICATION_METHODS, options,
                                 batch_size=batch_size, workers=workers, on_error=on_error, limit=limit,
                                 console=console, names=[str(p) for p in paths], skipped=skipped)
    extra["skipped"] = {"total": skipped.total, "by_kind": dict(skipped.counts), "first": skipped.examples[:1]}
    write_json(results, out, per_class=per_class, extra=extra)
    if as_json:
        print(json.dumps(results_json(results, per_class, extra), indent=2, allow_nan=False))
    else:
        print_results(results, console, title=f"{manifest.title} / {split}: top-k error (%)")
        console.print(f"results written to {out}", markup=False, highlight=False)
    if confusion is not None:
        results[-1].save_confusion_png(confusion)
        console.print(f"confusion matrix written to {confusion}", markup=False, highlight=False)


def build_eval_command():
    return with_plugin_options("eval")(eval_command)

