"""The transfer commands: ``vggtk extract-features`` and ``vggtk linear-probe``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

import vgg_toolkit as vt

from .extract import FEATURES_KIND, extract_on_shards, read_features, write_features
from .features import COMBINES, PRE_LOGITS
from .linear_probe import probe

DEFAULT_CHECKPOINT = Path("runs/train/best")
C_RANGE = (1e-6, 1e6)


def extract_features(
    checkpoints: Optional[List[Path]] = typer.Argument(None, help="Checkpoint directories, weights files (vggtk's, torchvision's, timm's, .caffemodel) or catalogue names; several are stacked \\[default: runs/train/best]."),
    weights: List[str] = typer.Option([], "--weights", help="Pretrained weights by catalogue name (vggtk weights list) or file; more nets to stack."),
    preprocess: Optional[str] = typer.Option(None, help=vt.PREPROCESS_HELP),
    data: Optional[str] = typer.Option(None, help="Shard directory, manifest.json or manifest URL \\[default: the bundled Fashion-MNIST shards]."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated splits \\[default: every split of the shards]."),
    out: Path = typer.Option(Path("runs/features"), help="Directory for one SPLIT.safetensors per split."),
    tap: str = typer.Option("fc7", help="Layer whose output is pooled: fc7 (the paper), fc6, block1..block5, or the paper's layer names (conv5_3, relu5_3, pool5...)."),
    scales: Optional[str] = typer.Option(None, help="Scales Q, e.g. 256,384,512 \\[default: the paper's multi-scale set from the training scale]."),
    combine: str = typer.Option("average", help="Per-scale descriptors: average (the paper's VOC) | stack (its Caltech)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Average with the horizontally flipped image."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images of each split."),
    batch_size: int = typer.Option(64, help="Images per batch (all images of a batch share a size)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, help="Decoding worker processes."),
    on_error: str = typer.Option("fail", help="Corrupt samples: fail | skip."),
    plugin_options: dict | None = None,
):
    """Transfer features as in the paper: dense FC7 over scales, pooled, flip-averaged, L2-normalised,
    one row per image with its label and key; for a linear classifier trained on another task."""
    if combine not in COMBINES:
        raise vt.VggtkError(f"--combine must be one of {', '.join(COMBINES)}, not {combine!r}")
    vt.check_policy(on_error)
    assume = vt.parse_preprocess(preprocess)
    for flag, value, low in (("--limit", limit, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if value is not None and value < low:
            raise vt.VggtkError(f"{flag}: must be at least {low}, got {value}")
    try:
        test_scales = vt.parse_test_scales(scales) if scales is not None else None
    except vt.VggtkError as exc:
        raise vt.VggtkError(f"--scales: {exc}") from None
    manifest = vt.Manifest.load(vt.resolve_data(data))
    wanted = [s.strip() for s in splits.split(",") if s.strip()] if splits else list(manifest.splits)
    twice = sorted({s for s in wanted if wanted.count(s) > 1})
    if twice:
        raise vt.VggtkError(f"--splits {splits!r}: {', '.join(twice)} named twice")
    for split in wanted:
        manifest.split(split)
    if out.exists() and not out.is_dir():
        raise vt.VggtkError(f"--out {out}: is a file; give a folder for the features")
    for split in wanted:  # said before any work: a file there that vggtk did not write is not replaced
        vt.check_output_file(out / f"{split}.safetensors", FEATURES_KIND)
    console = Console(soft_wrap=True)
    dev = vt.pick_device(device)
    paths = [*(checkpoints or ([] if weights else [DEFAULT_CHECKPOINT])), *map(Path, weights)]
    models = [vt.load_trained(p, dev, plugin_options, command="extract-features", assume=assume) for p in paths]
    vt.check_fits_data(models, manifest, [str(p) for p in paths], classes=False)  # features serve new tasks
    taps_of = [tap if isinstance(m, vt.FeatureTaps) else PRE_LOGITS for m in models]
    for path, model, used in zip(paths, models, taps_of):  # said before any image is read
        taps = getattr(model, "feature_taps", ())
        if used == PRE_LOGITS:  # a net without named taps: the input of its last layer, said so
            console.print(vt.plain(f"{path}: no feature taps; its pre-logits (the input of its last layer) "
                                   "stand in for --tap"), style="yellow")
        elif tap not in taps:
            raise vt.VggtkError(f"--tap {tap!r}: not a tap of {path} ({vt.model_info(model).arch}); known: "
                                f"{', '.join(taps) or '(none)'}")
    meta = {"tap": tap if len(set(taps_of)) == 1 and taps_of[0] == tap else taps_of, "combine": combine, "flip": flip,
            "checkpoints": [str(p) for p in paths],
            "weights_sha256": [vt.weights_digest(p) for p in paths],
            "data": manifest.location}
    for split in wanted:
        result = extract_on_shards(models, manifest, split, scales=test_scales, tap=taps_of, flip=flip, combine=combine,
                                   batch_size=batch_size, workers=workers, on_error=on_error, limit=limit,
                                   console=console)
        path = write_features(result, out / f"{split}.safetensors", {**meta, "split": split})
        n, dim = result["features"].shape
        console.print(vt.plain(f"{split}: {n} images x {dim} features (tap {tap}, scales "
                               f"{' + '.join(','.join(map(str, q)) for q in result['scales'])}) -> {path}"))


def extract_features_command():
    return vt.with_plugin_options("extract-features")(extract_features)


# What makes two splits' features comparable: the nets by their weights' content, not by a path, which
# another net may have taken since (and one net has under two names).
ALIKE = ("classes", "tap", "weights_sha256", "combine", "flip", "scales")


def _check_alike(a: Path, meta_a: dict, b: Path, meta_b: dict) -> None:
    """Features of two splits come from the same nets, tap, scales and class list, or a classifier fitted on
    one means nothing on the other."""
    for key in ALIKE:
        if meta_a.get(key) != meta_b.get(key):
            raise vt.VggtkError(f"{b}: its {key} ({meta_b.get(key)}) differ from {a}'s ({meta_a.get(key)}); "
                                "extract both splits with the same command")


def linear_probe_command(
    features: Path = typer.Argument(Path("runs/features"), help="Directory written by `vggtk extract-features`."),
    train: str = typer.Option("train", help="Split to fit on."),
    val: Optional[str] = typer.Option("val", help="Split that picks C, when present ('' to skip)."),
    test: str = typer.Option("test", help="Split to score."),
    c: Optional[float] = typer.Option(None, help="SVM C \\[default: picked on --val from 0.1, 1, ..., 1000; else 1]."),
):
    """Fit the paper's linear SVM on one split's transfer features and report another's accuracy and mean
    class recall."""
    if c is not None and not (C_RANGE[0] <= c <= C_RANGE[1]):  # also NaN
        raise vt.VggtkError(f"--c: must lie in [{C_RANGE[0]:g}, {C_RANGE[1]:g}], got {c}: beyond, the SVM's "
                            "optimum is out of a solver's reach")
    console = Console(soft_wrap=True)
    x, y, meta = read_features(features / f"{train}.safetensors")
    tx, ty, test_meta = read_features(features / f"{test}.safetensors")
    _check_alike(features / f"{train}.safetensors", meta, features / f"{test}.safetensors", test_meta)
    valid = None
    if val and (features / f"{val}.safetensors").is_file():
        *valid, val_meta = read_features(features / f"{val}.safetensors")
        _check_alike(features / f"{train}.safetensors", meta, features / f"{val}.safetensors", val_meta)
    classes = json.loads(meta.get("classes", "null")) or sorted(set(y.tolist()) | set(ty.tolist()))
    if x.shape[1] != tx.shape[1]:
        raise vt.VggtkError(f"{features}: {train} has {x.shape[1]} features per image but {test} has {tx.shape[1]}")
    result = probe((x, y), (tx, ty), len(classes), val=valid, c=c)
    final = next((s for s in result["short"] if s[0] == result["c"]), None)
    if final is not None:  # the scores of a fit short of its optimum are not the SVM's
        raise vt.VggtkError(f"the SVM at C={final[0]:g} stopped after {final[1]} Newton steps with its gradient at "
                            f"{final[2]:.1e} of its start, short of the optimum; give a smaller --c")
    for short_c, steps, gradient in result["short"]:
        console.print(f"warning: the SVM at C={short_c:g} stopped after {steps} Newton steps with its gradient at "
                      f"{gradient:.1e} of its start, short of the optimum", style="yellow", markup=False)
    for candidate, acc in result["val_accuracy_by_c"].items():
        console.print(f"C={candidate:g}: {val} accuracy {acc:.2f}%", markup=False)
    console.print(f"linear SVM (C={result['c']:g}) fitted on {len(y)} {train} images: {test} accuracy "
                  f"{result['accuracy']:.2f}%, mean class recall {result['mean_class_recall']:.2f}% "
                  f"({len(ty)} images)", markup=False)
