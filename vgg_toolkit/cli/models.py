"""``vggtk models``, ``vggtk plugins`` and ``vggtk convert``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.console import Console
from rich.table import Table

from ..contract.preprocess import parse_preprocess
from ..errors import VggtkError
from ..host.manager import REGISTRY_HOOKS, get_host
from ..models.factory import check_options, create_model, factory_options
from ..models.stats import model_stats
from ..models.foreign import describe_weights
from ..models.trained import weights_file
from ..runtime.console import plain, print_table
from ..runtime.files import check_output_file


class Layout(str, Enum):
    vggtk = "vggtk"
    torchvision = "torchvision"
    timm = "timm"


def _console() -> Console:
    return Console(soft_wrap=True)


def _models_rows(input_size: int) -> list[dict]:
    rows = []
    for entry in get_host().registry("architectures"):
        row = {"name": entry.name, "aliases": list(entry.info.get("aliases", ())), "plugin": entry.plugin,
               "description": entry.info.get("description", "")}
        try:
            with torch.device("meta"):  # shapes only: no memory, no arithmetic
                model = create_model(entry.name, input_size=input_size) if "input_size" in \
                    factory_options(entry.name)[0] else create_model(entry.name)
            stats = model_stats(model, input_size=input_size)
            row.update(weight_layers=stats.weight_layers, parameters=stats.parameters, gmacs=stats.gmacs,
                       receptive_field=stats.receptive_field)
        except Exception as exc:  # one broken third-party factory must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def models(
    input_size: int = typer.Option(224, min=32, help="Square input size used to count multiply-accumulates."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of the table."),
):
    """List the registered architectures: weight layers, parameters (1000 classes), GMACs, receptive field."""
    rows = _models_rows(input_size)
    if as_json:
        print(json.dumps({"input_size": input_size, "num_classes": 1000, "architectures": rows}, indent=1))
        return
    table = Table(title=f"Architectures (1000 classes, {input_size}x{input_size} input)")
    for col, justify in [("name", "left"), ("aliases", "left"), ("weight layers", "right"),
                         ("parameters", "right"), ("GMACs", "right"), ("receptive field", "right"),
                         ("plugin", "left")]:
        table.add_column(col, justify=justify, no_wrap=True)
    for row in rows:
        if "error" in row:
            cells = ["?", "?", "?", plain(f"error: {row['error'].split(':')[0]}")]
        else:
            rf = row["receptive_field"]
            cells = [str(row["weight_layers"]), f"{row['parameters']:,}", f"{row['gmacs']:.1f}",
                     "-" if rf is None else f"{rf} px"]
        table.add_row(plain(row["name"]), plain(", ".join(row["aliases"])), *cells, plain(row["plugin"]))
    console = _console()
    print_table(console, table)
    console.print("Receptive field: of one unit of the last conv block, in input pixels.")


def _plugin_rows() -> list[dict]:
    host = get_host()
    rows = []
    for info in sorted(host.plugins.values(), key=lambda p: (not p.builtin, p.name)):
        row = {"plugin": info.name, "package": info.distribution, "version": info.version, "builtin": info.builtin}
        if info.error:
            row["error"] = f"failed to load: {info.error}"
        else:
            try:
                row["registers"] = {k: v for k, v in host.registered_by(info.name).items() if v}
            except VggtkError as exc:  # e.g. two plugins claim one name: show it here, where it is diagnosed
                row["error"] = str(exc)
            row["hooks"] = sorted(impl.name for impl in host.pm.get_hookcallers(host.pm.get_plugin(info.name)) or ()
                                  if impl.name not in REGISTRY_HOOKS.values())
        rows.append(row)
    return rows


def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts) instead of the table.")):
    """List every plugin, the package it comes from, and what it registers."""
    rows = _plugin_rows()
    if as_json:
        print(json.dumps({"plugins": rows}, indent=1))
        return
    table = Table(title="Plugins")
    for col in ("plugin", "package", "version"):
        table.add_column(col, no_wrap=True)
    table.add_column("registers", overflow="fold")
    for row in rows:
        if "registers" in row:
            parts = [f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items()]
            parts += [f"hooks: {', '.join(row['hooks'])}"] if row["hooks"] else []
            what = plain("\n".join(parts) or "(nothing)")
        else:
            what = plain(row["error"])
            what.stylize("red")
        table.add_row(plain(row["plugin"]), plain(row["package"]), plain(row["version"]), what)
    print_table(_console(), table)


def _parse_model_options(arch: str, pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs typed by the factory's annotations (a number, true/false, or text)."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise VggtkError(f"--model {pair!r} is not KEY=VALUE (e.g. --model width=0.25)")
        out[key.strip()] = _literal(text.strip())
    num_classes = out.pop("num_classes", None)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise VggtkError(f"--model num_classes={num_classes}: must be a positive whole number")
    return {**check_options(arch, out, where="--model "), **({"num_classes": num_classes} if num_classes else {})}


def _literal(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _recognised_arch(src: Path) -> str:
    try:
        return describe_weights(src)[0].arch
    except VggtkError:
        raise VggtkError(f"{src}: --model needs --arch: the file records no architecture and its tensors fit "
                         "none") from None


def convert(
    src: Path = typer.Argument(..., help="Weights to read: a checkpoint directory, .safetensors (any layout), "
                               ".pth (read weights-only), a Caffe .caffemodel, or a catalogue name."),
    dst: Path = typer.Argument(..., help="Where to write the converted .safetensors file."),
    to: Layout = typer.Option(Layout.vggtk, "--to", help="Layout to write."),
    arch: Optional[str] = typer.Option(None, help="Architecture of SRC, when its tensors do not say it (e.g. "
                                       "vgg-d); the recorded options are kept for the same architecture."),
    model: List[str] = typer.Option([], "--model", help="KEY=VALUE option of the architecture, replacing the "
                                    "recorded one, e.g. --model width=0.25 --model in_chans=1."),
    preprocess: Optional[str] = typer.Option(None, help="The preprocessing to record: vggtk needs a mean, so "
                                             "torchvision, caffe, or a JSON file holding a record \\[default: the "
                                             "recorded one, or by the file's layout]."),
):
    """Convert weights between vggtk, torchvision and timm layouts, or from a Caffe release; the file
    records the net, its classes, evaluation preset and preprocessing."""
    from ..models.convert import convert_weights

    prep = parse_preprocess(preprocess, "--preprocess")
    src = weights_file(src)
    if not src.is_file():
        raise VggtkError(f"{src}: no such weights file or checkpoint")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VggtkError(f"{dst}: is the file being converted; write the conversion to another name")
    check_output_file(dst, "weights")
    if dst.suffix != ".safetensors":
        raise VggtkError(f"{dst}: the converted weights are a safetensors file; give a name ending in .safetensors")
    options = _parse_model_options(arch or _recognised_arch(src), model) if model else None
    info, found = convert_weights(src, dst, to.value, arch=arch, options=options, preprocessing=prep)
    prep_text = info.preprocessing.describe() if info.preprocessing else "none recorded"
    Console(soft_wrap=True).print(plain(f"{src} ({found} layout) -> {dst} ({to.value} layout): {info.arch}, "
                                        f"preprocessing {prep_text}"))
