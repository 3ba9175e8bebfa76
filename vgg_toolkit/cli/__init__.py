"""The ``vggtk`` command line, and its one error boundary: an error caused by input is one line naming
the file or option, with exit status 2. Plugins add commands through ``vggtk_register_commands(app)``."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from ..version import __version__
from ..errors import VggtkError
from ..host.manager import get_host


def _version(value: bool):
    if value:
        Console().print(f"vggtk {__version__}")
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Train, evaluate and reuse VGG networks with the paper's protocols."""


def build_app() -> typer.Typer:
    """A new root app with the built-in commands and every plugin's."""
    from .eval import build_eval_command
    from .models import convert, models, plugins
    from .shards import app as shards_app
    from .train import build_train_command

    app = typer.Typer(
        name="vggtk",
        help="The VGG networks of Simonyan & Zisserman (ICLR 2015) and the paper's protocols.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for command in (models, plugins, convert):
        app.command()(command)
    app.command(name="train")(build_train_command())
    app.add_typer(shards_app, name="shards", help="Create, inspect and verify WebDataset shards.")
    app.command(name="eval")(build_eval_command())
    get_host().pm.hook.vggtk_register_commands(app=app)
    _guard_commands(app)
    return app


def _guard(callback):
    """Run a command so that input errors end it with one line on stderr and exit status 2."""

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except VggtkError as exc:
            print(f"vggtk: error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None

    return guarded


def _guard_commands(app: typer.Typer) -> None:
    """Every command of ``app`` and of its sub-apps, plugins' included, behind the one error boundary."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_vggtk_guarded", False):
            info.callback = _guard(info.callback)
            info.callback._vggtk_guarded = True
    for group in app.registered_groups:
        _guard_commands(group.typer_instance)


def main(argv: list[str] | None = None) -> None:
    try:
        build_app()(args=argv, prog_name="vggtk")
    except VggtkError as exc:  # raised while the app is built (e.g. a plugin registers a clashing name)
        print(f"vggtk: error: {exc}", file=sys.stderr)
        sys.exit(2)
