"""``vggtk compare NAME...``: networks side by side (size, arithmetic, memory, speed on this device and,
given `vggtk eval` results, accuracy), the chart of accuracy against operations, and the paper's
arithmetic for stacks of 3x3 layers."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

import vgg_toolkit as vt

from .chart import CHART_KIND, draw
from .measure import measure, subject
from .results import accuracy_for
from .stack import stack_lines


class SizeBy(str, Enum):
    params = "params"
    memory = "memory"


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with the value read as an int, a float, true/false, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise vt.VggtkError(f"--option {text!r}: expected KEY=VALUE, e.g. width=0.25")
    raw = raw.strip()
    for kind in (int, float):
        try:
            return key.strip(), kind(raw)
        except ValueError:
            pass
    return key.strip(), {"true": True, "false": False}.get(raw.lower(), raw)


def compare(
    names: List[str] = typer.Argument(..., help="Architecture names (see `vggtk models`) or trained checkpoints."),
    input_size: Optional[int] = typer.Option(None, min=16, help="Square input side for every net \\[default: each net's own]."),
    in_chans: int = typer.Option(3, min=1, help="Input channels of the architectures named (a checkpoint keeps its own)."),
    num_classes: int = typer.Option(1000, min=2, help="Classes of the architectures named (a checkpoint keeps its own)."),
    option: Optional[List[str]] = typer.Option(None, help="KEY=VALUE factory option for every architecture named, e.g. width=0.25; repeat it."),
    results: Optional[List[Path]] = typer.Option(None, help="JSON results of `vggtk eval` giving the accuracy; repeat it, one file per net."),
    method: Optional[str] = typer.Option(None, help="Protocol whose accuracy is shown, by the start of its name (centre, dense, multi-crop) \\[default: each file's first]."),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="Measure forward and training-step throughput."),
    batch_size: int = typer.Option(16, min=1, help="Images per timed batch."),
    repeats: int = typer.Option(3, min=1, help="Timed batches (median) after one warm-up."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    chart: Path = typer.Option(Path("runs/compare.png"), help="PNG chart of accuracy against operations (needs --results)."),
    size_by: SizeBy = typer.Option(SizeBy.params, help="Marker area of the chart: params | memory."),
    stack_channels: int = typer.Option(512, min=1, help="C of the 3x3-stack arithmetic."),
    out: Optional[Path] = typer.Option(None, help="Also write the table as JSON here."),
):
    """Compare networks: parameters, GMACs, training activation memory per image, forward and
    training-step images/s on this device, accuracy from results files, and a chart."""
    options = dict(parse_option(o) for o in option or [])
    for key, flag in (("num_classes", "--num-classes"), ("in_chans", "--in-chans"), ("input_size", "--input-size")):
        if key in options:
            raise vt.VggtkError(f"--option {key}=...: give it as {flag}, which every net of the comparison shares")
    files = list(results or [])
    if files:
        vt.check_output_file(chart, CHART_KIND)
    if out is not None:
        vt.check_output_file(out, "comparison table")
    dev = vt.pick_device(device)
    console = Console(soft_wrap=True)
    rows = []
    for name in names:
        console.print(vt.plain(f"measuring {name} ..."), style="dim")
        s = subject(name, input_size=input_size, in_chans=in_chans, num_classes=num_classes, options=options,
                    device=dev)
        m = measure(s, batch_size=batch_size, repeats=repeats, device=dev, timing=timing)
        acc = accuracy_for(name, s.arch, s.checkpoint, s.model, files, method) if files else None
        rows.append({"label": name, "arch": s.arch, "input_size": s.input_size, "in_chans": s.in_chans,
                     **m.__dict__, "top1_pct": None if acc is None else acc.top1_pct,
                     "method": None if acc is None else acc.method,
                     "results": None if acc is None else str(acc.source)})
    _print_table(console, rows, dev)
    for line in stack_lines(stack_channels):
        console.print(line, markup=False, highlight=False)
    plotted = [r for r in rows if r["top1_pct"] is not None]
    if plotted:
        archs = [r["arch"] for r in plotted]
        for r in plotted:  # the architecture names a point, unless two share one: then the run folder
            r["short"] = r["arch"] if archs.count(r["arch"]) == 1 else _run_name(r["label"])
        draw(plotted, chart, size_by.value, f"top-1 accuracy against operations ({len(plotted)} "
                                            f"net{'s' if len(plotted) > 1 else ''})")
        console.print(vt.plain(f"chart written to {chart}"))
    elif files:
        raise vt.VggtkError("no net of the comparison has results in the --results files")
    if out is not None:
        vt.save_json(out, {"device": str(dev), "batch_size": batch_size, "rows": rows}, "comparison table", indent=1)


def _run_name(label: str) -> str:
    path = Path(label)
    return path.parent.name if path.name in ("best", "last") or path.suffix == ".safetensors" else path.name


def _print_table(console: Console, rows: list[dict], device) -> None:
    table = Table(title=f"Networks compared (throughput on {device})")
    columns = [("net", "left"), ("arch", "left"), ("input", "right"), ("weight layers", "right"),
               ("parameters", "right"), ("GMACs", "right"), ("act. MB/img", "right"), ("fwd img/s", "right"),
               ("train img/s", "right"), ("top-1 %", "right"), ("method", "left")]
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in rows:
        table.add_row(vt.plain(r["label"]), vt.plain(r["arch"]), f"{r['input_size']}x{r['input_size']}x{r['in_chans']}",
                      str(r["weight_layers"]), f"{r['parameters']:,}", f"{r['gmacs']:.4g}",
                      f"{r['activation_mb']:.3g}", num(r["forward_ips"], ",.0f"), num(r["train_ips"], ",.0f"),
                      num(r["top1_pct"], ".2f"), vt.plain(r["method"] or "-"))
    vt.print_table(console, table)
    console.print("act. MB/img: tensors a float32 training forward keeps for the backward pass, per image. "
                  "Throughput: median of timed batches after a warm-up.", highlight=False)
