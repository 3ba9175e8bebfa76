"""The ``vggtk`` command line, and its one error boundary: an error caused by input is one line naming
the file or option, with exit status 2. Plugins add commands through ``vggtk_register_commands(app)``."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from typer.main import get_command

from ..version import __version__
from ..errors import VggtkError
from ..host.manager import get_host
from ..runtime.console import held_notices, one_line
from ..runtime.memory import is_out_of_memory


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
    from .weights import app as weights_app

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
    app.add_typer(weights_app, name="weights", help="Pretrained weights by name: list them, fetch them.")
    app.command(name="eval")(build_eval_command())
    get_host().pm.hook.vggtk_register_commands(app=app)
    _guard_commands(app)
    return app


def say_error(message: str) -> None:
    """The one line an input error gets, on stderr; control characters from file or class names are
    shown as codes, never sent to the terminal."""
    print(f"vggtk: error: {one_line(message)}", file=sys.stderr)


def _guard(callback):
    """Run a command so that input errors end it with one line on stderr and exit status 2. An
    operating-system error (a full disk, a read-only folder) is the environment's input: the same."""

    @functools.wraps(callback)
    def guarded(*args, **kwargs):
        try:
            with held_notices():
                return callback(*args, **kwargs)
        except VggtkError as exc:
            say_error(str(exc))
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            say_error(f"{where}{exc.strerror or exc}")
        except (MemoryError, RuntimeError) as exc:  # the allocator's refusal: a request too large, said so
            if not is_out_of_memory(exc):
                raise
            say_error(f"out of memory ({one_line(str(exc)).split(' (')[0][:200]}): ask for less (a smaller batch, "
                      "input size or model)")
        raise typer.Exit(code=2)

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
    """The ``vggtk`` executable: errors in the command line itself (an unknown option, a value of the
    wrong type) get the one-line form too."""
    try:
        code = get_command(build_app()).main(args=argv, prog_name="vggtk", standalone_mode=False)
    except VggtkError as exc:  # raised while the app is built (e.g. a plugin registers a clashing name)
        say_error(str(exc))
        code = 2
    except typer.TyperException as exc:
        ctx = getattr(exc, "ctx", None)
        say_error(f"{ctx.command_path + ': ' if ctx else ''}{exc.format_message()} (see --help)")
        code = 2
    except typer.Abort:
        code = 130
    sys.exit(code or 0)
