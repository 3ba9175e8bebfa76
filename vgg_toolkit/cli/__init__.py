"""The ``vggtk`` command line. Plugins add commands through ``vggtk_register_commands(app)``."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..errors import VggtkError
from ..models.factory import create_model
from ..host.manager import REGISTRY_HOOKS, get_host
from ..models.stats import model_stats
from ..models.weights import load_weights, read_arch, read_tensors, save_weights

console = Console()

class Layout(str, Enum):
    vggtk = "vggtk"
    torchvision = "torchvision"
    timm = "timm"


def _version(value: bool):
    if value:
        console.print(f"vggtk {__version__}")
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Train, evaluate and reuse VGG networks with the paper's protocols."""


def models(
    input_size: int = typer.Option(224, help="Square input size used to count multiply-accumulates."),
):
    """List the registered architectures: weight layers, parameters (1000 classes), GMACs, receptive field."""
    table = Table(title=f"Architectures (1000 classes, {input_size}x{input_size} input)")
    for col, justify in [("name", "left"), ("aliases", "left"), ("weight layers", "right"),
                         ("parameters", "right"), ("GMACs", "right"), ("receptive field", "right"),
                         ("plugin", "left")]:
        table.add_column(col, justify=justify)
    for entry in get_host().registry("architectures"):
        try:
            with torch.device("meta"):  # shapes only: no memory, no arithmetic
                model = create_model(entry.name)
            stats = model_stats(model, input_size=input_size)
            row = [str(stats.weight_layers), f"{stats.parameters:,}", f"{stats.gmacs:.1f}",
                   "-" if stats.receptive_field is None else f"{stats.receptive_field} px"]
        except Exception as exc:  # one broken third-party factory must not hide the others
            row = ["?", "?", "?", f"error: {type(exc).__name__}"]
        table.add_row(entry.name, ", ".join(entry.info.get("aliases", ())), *row, entry.plugin)
    console.print(table)
    console.print("Receptive field: of one unit of the last conv block, in input pixels.")


def plugins():
    """List every plugin, the package it comes from, and what it registers."""
    host = get_host()
    table = Table(title="Plugins")
    for col in ("plugin", "package", "version", "registers"):
        table.add_column(col)
    for info in sorted(host.plugins.values(), key=lambda p: (not p.builtin, p.name)):
        if info.error:
            what = f"[red]failed to load: {escape(info.error)}[/red]"
        else:
            try:
                registered = host.registered_by(info.name)
            except VggtkError as exc:  # e.g. two plugins claim one name: show it here, where it is diagnosed
                registered = {"error": [escape(str(exc))]}
            parts = [f"{kind}: {', '.join(names)}" for kind, names in registered.items() if names]
            hooks = sorted(
                impl.name for impl in host.pm.get_hookcallers(host.pm.get_plugin(info.name)) or ()
                if impl.name not in REGISTRY_HOOKS.values()
            )
            parts += [f"hooks: {', '.join(hooks)}"] if hooks else []
            what = "\n".join(parts) or "(nothing)"
        table.add_row(info.name, info.distribution, info.version, what)
    console.print(table)


def convert(
    src: Path = typer.Argument(..., help="Weights to read: .safetensors (any layout) or .pth (read weights-only)."),
    dst: Path = typer.Argument(..., help="Where to write the converted .safetensors file."),
    to: Layout = typer.Option(Layout.vggtk, "--to", help="Layout to write."),
    arch: str = typer.Option(None, help="Architecture of SRC (needed unless SRC was written by vggtk), e.g. vgg-d."),
    batch_norm: bool = typer.Option(False, help="SRC has BatchNorm after every conv (with --arch)."),
):
    """Convert weights between vggtk, torchvision and timm layouts."""
    recorded = read_arch(src)
    if recorded is not None and arch is None:
        model = create_model(recorded["name"], **recorded["kwargs"])
    elif arch is None:
        raise VggtkError(f"{src}: no architecture recorded in the file; name it with --arch (e.g. --arch vgg-d)")
    else:
        tensors = read_tensors(src)
        # The last 2-D tensor is the classifier: its rows are the classes.
        last = [t for t in tensors.values() if t.ndim == 2][-1:]
        num_classes = last[0].shape[0] if last else 1000
        model = create_model(arch, num_classes=num_classes, batch_norm=batch_norm)
    found = load_weights(model, src)
    save_weights(model, dst, layout=to.value)
    console.print(f"{src} ({found} layout) -> {dst} ({to.value} layout), {len(model.state_dict())} tensors")


def build_app() -> typer.Typer:
    """A new root app with the built-in commands and every plugin's."""
    app = typer.Typer(
        name="vggtk",
        help="The VGG networks of Simonyan & Zisserman (ICLR 2015) and the paper's protocols.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    from .shards import app as shards_app
    from .eval import eval_command
    from .train import train_command

    for command in (models, plugins, convert):
        app.command()(command)
    app.command(name="train")(train_command)
    app.add_typer(shards_app, name="shards", help="Create, inspect and verify WebDataset shards.")
    app.command(name="eval")(eval_command)
    get_host().pm.hook.vggtk_register_commands(app=app)
    return app


def main(argv: list[str] | None = None) -> None:
    try:
        build_app()(args=argv, prog_name="vggtk")
    except VggtkError as exc:
        print(f"vggtk: error: {exc}", file=sys.stderr)
        sys.exit(2)

