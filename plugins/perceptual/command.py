"""``vggtk distance A B``: how far apart two images are for a VGG, or the images of two folders paired by
name: LPIPS-VGG (version 0.1) or the distance of the channel vectors at one tap."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from pathlib import Path
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import vgg_toolkit as vt

DISTANCES = "distances"
CSV_MARK = f"# written_by: vggtk; vggtk_kind: {DISTANCES}\n"  # a CSV's one place for the mark: a comment
DEFAULT_WEIGHTS = "vgg16-torchvision"  # the trunk the reference LPIPS was trained on
LPIPS_HEADS_IN_PACKAGE = Path("weights", "v0.1", "vgg.pth")
MAX_SIZE = 8192
FC_TAPS = ("fc6", "fc7", "logits")


def parse_metric(text: str) -> tuple[str, str | None]:
    """``lpips`` -> ("lpips", None); ``features:relu3_3`` -> ("features", "relu3_3")."""
    name, _, tap = text.partition(":")
    if name == "lpips" and not tap:
        return "lpips", None
    if name == "features" and tap in FC_TAPS:
        raise vt.VggtkError(f"--metric {text!r}: a tap of the conv trunk (reluB_K, convB_K, poolB, blockB), whose "
                            f"maps take any image size; {tap} needs the net's own input size")
    if name == "features" and tap:
        return "features", tap
    raise vt.VggtkError(f"--metric {text!r}: lpips, or features:TAP (e.g. features:relu3_3)")


def default_heads() -> Path | None:
    """The heads the ``lpips`` package ships, found without importing it (its import needs torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / LPIPS_HEADS_IN_PACKAGE
    return path if path.is_file() else None


def _images_by_name(folder: Path) -> dict[str, Path]:
    """A folder's images (recursively) by their path below it without the suffix, so ``x.png`` pairs with
    ``x.jpg``; two images of one name (``x.png`` and ``x.jpg`` side by side) cannot pair and are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in vt.IMAGE_SUFFIXES or not path.is_file():
            continue
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in found:
            raise vt.VggtkError(f"{folder}: {found[name].name} and {path.name} have one name; which to pair is "
                                "unclear, so rename one")
        found[name] = path
    return found


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def image_pairs(a: Path, b: Path) -> list[tuple[Path, Path]]:
    """Two images, or the images of two folders paired by name; every image must have its partner."""
    for path in (a, b):
        if not path.exists():
            raise vt.VggtkError(f"{path}: no such image or folder")
    if a.is_file() and b.is_file():
        return [(a, b)]
    if not (a.is_dir() and b.is_dir()):
        raise vt.VggtkError(f"{a} and {b}: give two images or two folders")
    left, right = _images_by_name(a), _images_by_name(b)
    only_a, only_b = sorted(left.keys() - right.keys()), sorted(right.keys() - left.keys())
    if only_a or only_b:
        said = [f"{_some(only)} in {folder} only" for only, folder in ((only_a, a), (only_b, b)) if only]
        raise vt.VggtkError(f"{a} and {b} do not pair by name: {'; '.join(said)}")
    if not left:
        raise vt.VggtkError(f"no images in {a} or {b}")
    return [(left[name], right[name]) for name in sorted(left)]


class Metric:
    """One of the two metrics, on a loaded net: ``metric(a, b)`` for float RGB images in [0, 1] of one size
    -> (distance, per-layer terms)."""

    def __init__(self, kind: str, tap: str | None, net: torch.nn.Module, heads: list[torch.Tensor] | None):
        self.kind = kind
        if kind == "lpips":
            self.module = vt.LPIPS(net, heads)
            self.name = "lpips"
        else:
            try:
                self.module = vt.VGGFeatures(net, [tap], input_range="0-1")
            except vt.VggtkError as exc:
                raise vt.VggtkError(f"--metric features:{tap}: {exc}") from None
            self.name = f"features:{tap}"
        self.tap = tap
        self.channels = vt.model_info(net).in_chans or 3  # a net trained on grey images reads them grey

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, dict[str, float]]:
        with torch.no_grad():
            if self.kind == "lpips":
                total, layers = self.module(a, b, normalize=True, per_layer=True)
                return float(total[0]), {k: float(v[0]) for k, v in layers.items()}
            # Half the squared distance of the unit channel vectors, averaged over positions: in [0, 2].
            total = vt.perceptual_loss(self.module(a), self.module(b), distance="cosine", reduction="none")
            return float(total[0]), {}


def _read(path: Path, size: int | None, channels: int, device: torch.device) -> torch.Tensor:
    image = vt.read_image(path, channels)
    if size is not None:
        image = vt.resize(image, size, size)
    return image.to(device=device, dtype=torch.float32).div_(255)[None]


def distance_command(
    a: Path = typer.Argument(..., metavar="A", help="An image, or a folder of images."),
    b: Path = typer.Argument(..., metavar="B", help="The image to compare it with, or a folder whose images pair with A's by "
                             "name (subfolders kept, suffix ignored: a/x.png with b/x.jpg)."),
    metric: str = typer.Option("lpips", help="lpips (LPIPS-VGG v0.1: VGG16's relu1_2..relu5_3 with the learned "
                               "heads) | features:TAP (mean over positions of 1 - the cosine of the two channel "
                               "vectors at a tap, e.g. features:relu3_3)."),
    weights: str = typer.Option(DEFAULT_WEIGHTS, help="The VGG: a catalogue name (vggtk weights list), a weights "
                                "file or a checkpoint directory; LPIPS needs a VGG16 without BatchNorm."),
    lpips_heads: Optional[Path] = typer.Option(None, help="LPIPS-VGG v0.1's 1x1 heads (.pth or .safetensors) "
                                               "\\[default: weights/v0.1/vgg.pth of the installed lpips package]."),
    size: Optional[int] = typer.Option(None, help="Resize both images to N x N (bilinear, antialiased; the aspect "
                                       "is not kept); without it the two of a pair must have one size."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    out: Optional[Path] = typer.Option(None, help="Also write the distances as CSV."),
    preprocess: Optional[str] = typer.Option(None, help=vt.PREPROCESS_HELP),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    on_error: str = typer.Option("fail", help="An unreadable image: fail | skip (its pair counted and named)."),
    plugin_options: dict | None = None,
):
    """The perceptual distance of two images, or of the images of two folders paired by name: LPIPS-VGG or
    the distance at one tap of any VGG, each net fed its recorded preprocessing."""
    vt.check_policy(on_error)
    kind, tap = parse_metric(metric)
    if size is not None and not 16 <= size <= MAX_SIZE:
        raise vt.VggtkError(f"--size {size}: must be within 16..{MAX_SIZE}")
    heads = head_tensors = None
    if kind == "lpips":
        heads = lpips_heads or default_heads()
        if heads is None:
            raise vt.VggtkError("--metric lpips needs --lpips-heads FILE: LPIPS-VGG v0.1's 1x1 heads (the lpips "
                                "package ships them as weights/v0.1/vgg.pth)")
        head_tensors = vt.read_lpips_heads(heads)  # checked before the trunk is loaded, which may mean a download
    elif lpips_heads is not None:
        raise vt.VggtkError(f"--lpips-heads: only for --metric lpips, not {metric}")
    assume = vt.parse_preprocess(preprocess)
    pairs = image_pairs(a, b)
    if out is not None:
        vt.check_output_file(out, DISTANCES)
    dev = vt.pick_device(device)
    net = vt.load_trained(weights, dev, plugin_options, command="distance", assume=assume)
    try:
        measure = Metric(kind, tap, net, head_tensors)
    except vt.VggtkError as exc:
        raise vt.VggtkError(exc if weights in str(exc) or kind != "lpips" else f"{weights}: {exc}") from None
    console = Console(soft_wrap=True)
    rows, skipped = [], []
    bar = Progress(TextColumn("pairs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=len(pairs) < 2 or not console.is_terminal)
    with bar:
        task = bar.add_task("distance", total=len(pairs))
        for pa, pb in pairs:
            try:
                xa, xb = (_read(p, size, measure.channels, dev) for p in (pa, pb))
            except vt.VggtkError as exc:
                if on_error == "fail":
                    raise
                skipped.append(str(exc))
                bar.advance(task)
                continue
            if xa.shape != xb.shape:
                raise vt.VggtkError(f"{pa} is {xa.shape[3]}x{xa.shape[2]} and {pb} {xb.shape[3]}x{xb.shape[2]}: "
                                    "give --size N to resize both to N x N")
            try:
                value, layers = measure(xa, xb)
            except RuntimeError as exc:  # a pool left with no pixels
                if "too small" not in str(exc):
                    raise
                raise vt.VggtkError(f"{pa}: {xa.shape[3]}x{xa.shape[2]} is too small for {measure.name}'s "
                                    "deepest layer; give a larger --size") from None
            if not math.isfinite(value):
                raise vt.VggtkError(f"{weights}: gives a distance that is not finite for {pa} and {pb} (broken "
                                    "weights or heads)")
            rows.append({"a": str(pa), "b": str(pb), "distance": value, "layers": layers})
            bar.advance(task)
    if not rows:
        raise vt.VggtkError(f"no pair could be read; first problem: {skipped[0]}")
    mean = sum(r["distance"] for r in rows) / len(rows)
    result = {"metric": measure.name, "weights": weights, "lpips_heads": str(heads) if heads else None,
              "size": size, "pairs": rows, "mean": mean, "skipped": skipped}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print(console, result)
    if skipped:
        Console(stderr=True).print(vt.plain(f"skipped {len(skipped)} pair(s) with an unreadable image; first: "
                                            f"{skipped[0]}"), style="yellow")
    if out is not None:
        _write(out, result)
        (Console(stderr=True) if as_json else console).print(vt.plain(f"distances written to {out}"))


def _print(console: Console, result: dict) -> None:
    rows = result["pairs"]
    layers = list(rows[0]["layers"])
    table = Table(title=vt.plain(f"{result['metric']} distance ({result['weights']}"
                                 f"{', ' + str(result['size']) + ' px' if result['size'] else ''})"))
    for col in ("A", "B", result["metric"], *layers):
        table.add_column(col, no_wrap=True, justify="left" if col in ("A", "B") else "right")
    for row in rows:
        table.add_row(vt.plain(row["a"]), vt.plain(row["b"]), f"{row['distance']:.6f}",
                      *(f"{row['layers'][name]:.6f}" for name in layers))
    vt.print_table(console, table)
    if len(rows) > 1:
        console.print(vt.plain(f"mean over {len(rows)} pairs: {result['mean']:.6f}"), highlight=False)


def _write(out: Path, result: dict) -> None:
    layers = list(result["pairs"][0]["layers"])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["a", "b", result["metric"], *layers])
    for row in result["pairs"]:
        writer.writerow([row["a"], row["b"], repr(row["distance"]), *(repr(row["layers"][n]) for n in layers)])
    vt.write_text(out, CSV_MARK + text.getvalue())
