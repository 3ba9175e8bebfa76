"""Command-line options that are not written out by hand: those of a typed dataclass (``vggtk train``
takes every ``TrainConfig`` field) and those plugins declare (``OptionSpec``) for a command.

Typer reads a command's options from its function's signature, so a command is wrapped in a function
whose ``__signature__`` lists them; the wrapper hands the plugin options over as one dict.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import typer

from ..contract.options import OptionSpec
from ..host.manager import get_host

PLUGIN_OPTIONS = "plugin_options"  # the parameter of a wrapped command that receives them


def declared_options(command: str) -> list[OptionSpec]:
    return [e.factory for e in get_host().registry("options") if command in e.factory.commands]


def option_parameter(name: str, kind: type, help: str, flag: str | None = None) -> inspect.Parameter:
    """A keyword parameter typer turns into ``--name`` (``--name/--no-name`` for a flag), defaulting to
    None so a command can tell a given value from an omitted one."""
    flag = flag or "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    info = typer.Option(None, *decls, help=help.replace("[", "\\["), show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[kind])


def _help(spec: OptionSpec) -> str:
    text = spec.help
    if spec.choices and "|" not in text:
        text += f" One of: {', '.join(map(str, spec.choices))}."
    if spec.default is not None and "default" not in text:
        text += f" [default: {spec.default}]"
    return text


def with_plugin_options(command: str, exclude: tuple[str, ...] = ()) -> Callable:
    """Decorator for a command function taking ``plugin_options: dict``: adds the options plugins declare
    for ``command`` (read when the app is built, so newly installed plugins appear), but those named in
    ``exclude``, and passes the given ones (omitted ones are left out) in that dict."""

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func, eval_str=True)  # the wrapper's module cannot resolve them later
        base = [p for p in signature.parameters.values() if p.name != PLUGIN_OPTIONS]
        taken = {p.name for p in base}
        specs = [s for s in declared_options(command) if s.name not in taken and s.name not in exclude]

        @functools.wraps(func)
        def command_function(**kwargs: Any):
            given = {s.name: s.check(kwargs.pop(s.name), "--") for s in specs if kwargs.get(s.name) is not None}
            for s in specs:
                kwargs.pop(s.name, None)
            return func(**kwargs, **{PLUGIN_OPTIONS: given})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is p.POSITIONAL_OR_KEYWORD else p
                  for p in base]
        params += [option_parameter(s.name, s.type, _help(s), s.flag) for s in specs]
        command_function.__signature__ = signature.replace(parameters=params)
        command_function.__annotations__ = {p.name: p.annotation for p in params}
        return command_function

    return wrap
