"""``vggtk export``: a trained or pretrained net out to ONNX or a ``torch.export`` program, in the form a
server wants (``graph.py``), verified against the eager net at several sizes before the file is kept."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

import vgg_toolkit as vt

from .files import FORMATS, check_format_available, load_runner, write
from .graph import LOCALISATION_HEADS, Exported, parse_form

DEFAULT_CHECKPOINT = Path("runs/train/best")
TOLERANCE = 1e-4  # largest difference from the eager net, relative to its largest output


def _sizes(text: str, min_side: int) -> list[tuple[int, int]]:
    """``--check-sizes``: "224,256x320" -> [(224, 224), (256, 320)], each side at least ``min_side``."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:x(\d+))?", part)
        if not match:
            raise vt.VggtkError(f"--check-sizes {text!r}: {part!r} is not S or HxW (e.g. 224,256x320)")
        h, w = int(match.group(1)), int(match.group(2) or match.group(1))
        if min(h, w) < min_side or max(h, w) > 8192:
            raise vt.VggtkError(f"--check-sizes: {h}x{w} is outside {min_side}..8192 (the net needs at least "
                                f"{min_side} pixels a side)")
        out.append((h, w))
    if not out:
        raise vt.VggtkError(f"--check-sizes {text!r}: name at least one size")
    return out


def _default_sizes(model, form: str) -> list[tuple[int, int]]:
    """The training size, the paper's test scales for the net (as squares) and an odd rectangle."""
    crop = vt.model_info(model).input_size
    if form == "classifier":
        return [(crop, crop)]
    qs = sorted(set(vt.test_scales_for(model, multi=True)) | {crop})
    mid = qs[len(qs) // 2]
    return [(q, q) for q in qs] + [(mid + 13, mid + 45)]


def export_command(
    paths: List[Path] = typer.Argument(..., help="CKPT OUT: a checkpoint directory, weights file or catalogue "
                                       "name, then the file to write (.onnx or .pt2); only OUT with --weights."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Pretrained weights by catalogue name "
                                          "(vggtk weights list) or file, instead of CKPT."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the torch.export-based exporter) | pt2 (a "
                            "torch.export ExportedProgram)."),
    form: Optional[str] = typer.Option(None, help="classifier (as trained, its input size) | dense (the "
                                       "fully-convolutional net, any size) | features:TAP | boxes (a localisation "
                                       "head, densely) \\[default: dense, or boxes for a localisation net]."),
    average: bool = typer.Option(False, "--average", help="dense: output the softmax of the spatially averaged "
                                 "map, the paper's dense posterior at that Q, instead of the map."),
    with_preprocessing: bool = typer.Option(False, "--with-preprocessing", help="The graph takes uint8 RGB images "
                                            "and applies the net's recorded preprocessing inside."),
    preprocess: Optional[str] = typer.Option(None, help=vt.PREPROCESS_HELP),
    check_sizes: Optional[str] = typer.Option(None, help="Sizes the written file is checked at, e.g. 224,256x320 "
                                              "\\[default: the training size, the paper's Q values, an odd size]."),
):
    """Export a net to ONNX or torch.export, checked against the eager net before it is kept. The graph is
    the eager PyTorch path: the Triton fused kernels are not exported."""
    if fmt not in FORMATS:
        raise vt.VggtkError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    given = 1 if weights else 2
    if len(paths) != given:
        raise vt.VggtkError("give CKPT OUT, or --weights NAME and OUT" if not weights else
                            "with --weights, give only OUT")
    source, out = (Path(weights), paths[0]) if weights else (paths[0], paths[1])
    if out.suffix != f".{fmt}":
        raise vt.VggtkError(f"{out}: a --format {fmt} file is named *.{fmt}")
    check_format_available(fmt)
    assume = vt.parse_preprocess(preprocess)
    vt.check_output_file(out, f"{fmt} export")
    model = vt.load_trained(source, "cpu", None, command="export", assume=assume)
    info = vt.model_info(model)
    form_name, tap = parse_form(form or ("boxes" if info.head in LOCALISATION_HEADS else "dense"), model)
    if average and form_name != "dense":
        raise vt.VggtkError("--average: only for --form dense")
    if average and info.head != "classification":
        raise vt.VggtkError(f"--average: a posterior is a classifier's; the net has the {info.head} head")
    min_side = info.input_size
    sizes = _sizes(check_sizes, min_side) if check_sizes else _default_sizes(model, form_name)
    if form_name == "classifier" and any(s != (min_side, min_side) for s in sizes):
        raise vt.VggtkError(f"--check-sizes: the classifier form takes {min_side}x{min_side} images only")
    prep = info.input_preprocessing() if with_preprocessing else None
    exported = Exported(model, form_name, tap, average, prep)
    channels = info.in_chans or 3
    record = {"model": info.to_json(), "form": form_name, "tap": tap, "average": average,
              "input": "uint8 RGB pixels, 0-255" if prep is not None else "the net's input: pixels made by the "
              "recorded preprocessing", "with_preprocessing": prep is not None, "min_side": min_side,
              "output": exported.output_name(), "source": str(source)}
    generator = torch.Generator().manual_seed(0)

    def images(h: int, w: int, n: int = 2) -> torch.Tensor:
        pixels = torch.randint(0, 256, (n, channels, h, w), generator=generator, dtype=torch.uint8)
        return pixels if prep is not None else info.input_preprocessing().apply(pixels)

    sample = images(min_side + 37, min_side + 67) if form_name != "classifier" else images(min_side, min_side)
    console = Console(soft_wrap=True)
    started = time.perf_counter()
    with vt.atomic_file(out) as tmp:
        write(exported, sample, fmt, tmp, record)
        run = load_runner(fmt, tmp)
        rows = []
        for h, w in sizes:
            x = images(h, w)
            with torch.no_grad():
                want = exported(x)
            try:
                got = run(x)
            except Exception as exc:  # onnxruntime's or the program's own check of the input
                raise vt.VggtkError(f"{out}: the exported file does not run at {h}x{w} ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); nothing written") from None
            if tuple(got.shape) != tuple(want.shape):
                raise vt.VggtkError(f"{out}: at {h}x{w} the exported file gives shape {tuple(got.shape)}, the eager "
                                    f"net {tuple(want.shape)}; nothing written")
            diff = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-6)
            rows.append((h, w, tuple(want.shape), diff))
            if diff > TOLERANCE:
                raise vt.VggtkError(f"{out}: at {h}x{w} the exported file differs from the eager net by {diff:.2e} "
                                    f"of its largest output (tolerance {TOLERANCE:g}); nothing written")
    table = Table(title=vt.plain(f"{out}: {fmt}, {form_name}{':' + tap if tap else ''}"
                                 f"{', averaged' if average else ''}, checked against the eager net"))
    for col in ("input", "output shape", "largest difference (relative)"):
        table.add_column(col, no_wrap=True)
    for h, w, shape, diff in rows:
        table.add_row(f"{h}x{w}", "x".join(map(str, shape)), f"{diff:.2e}")
    vt.print_table(console, table)
    console.print(vt.plain(
        f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB) in {time.perf_counter() - started:.1f} s; input "
        f"{'uint8 RGB' if prep else 'float'} (N, {channels}, H, W), H and W "
        f"{'= ' + str(min_side) if form_name == 'classifier' else '>= ' + str(min_side)}; output "
        f"{exported.output_name()}. The Triton fused kernels are not exported: the graph is the eager torch path."),
        highlight=False)
    console.print(vt.plain(f"record ({'metadata_props' if fmt == 'onnx' else 'extra file vggtk.json'}): "
                           f"{json.dumps({k: record[k] for k in ('form', 'input', 'min_side', 'output')})}"),
                  highlight=False)
