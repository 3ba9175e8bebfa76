"""``vggtk train``: every ``TrainConfig`` field is an option (its help and range check come from the
field), the options plugins declare are added, and ``--config`` reads the same keys from TOML."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from ..host.manager import get_host
from ..train.config import TrainConfig, load_config
from .options import option_parameter, with_plugin_options

# Fields that are TOML tables (or plugin options), not single command-line values.
_NOT_FLAGS = ("model", "runtime")


def _field_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        help = f.metadata["help"]
        if f.name == "head":  # the heads plugins registered, by name
            help = f"Task head: {', '.join(e.name for e in get_host().registry('heads'))}."
        if f.default is not None and "default" not in help:
            help += f" [default: {f.default}]"
        if f.name == "scale":
            params.append(option_parameter("scale", str, help + " A range 256-512 jitters it."))
            params.append(option_parameter("scale_min", int, "Scale jittering: S drawn per image from "
                                                             "[scale-min, scale-max]."))
            params.append(option_parameter("scale_max", int, "Upper end of scale jittering."))
            continue
        params.append(option_parameter(f.name, kind if kind in (int, float, str, bool) else str, help))
    return params


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of options (command-line options win)."),
    resume: str = typer.Option("auto", help="auto: continue from the newest complete checkpoint in --run-dir, if "
                               "any; none: start fresh (refused where checkpoints exist); or a checkpoint directory."),
    plugin_options: dict | None = None,
    **fields: Any,
):
    """Train a network with the paper's recipe: SGD, lr / 10 on plateaus, scale jittering, checkpoints.

    Launch on several GPUs or processes with `torchrun --nproc_per_node N -m vgg_toolkit train ...`.
    """
    from ..train.run import run_training

    given = {k: v for k, v in {**fields, **(plugin_options or {})}.items() if v is not None}
    run_training(load_config(config, given), resume=resume)


def build_train_command():
    """The train command with its generated options; built when the app is, after plugins load."""
    signature = inspect.signature(train_command, eval_str=True)
    base = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]

    @functools.wraps(train_command)
    def command(**kwargs):
        return train_command(**kwargs)

    command.__signature__ = signature.replace(parameters=base + _field_parameters())
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return with_plugin_options("train")(command)
