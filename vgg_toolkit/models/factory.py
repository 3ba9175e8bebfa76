"""Building models from the architecture registry, checking their options against the factory's
signature, and preparing them for a device through the plugins."""

from __future__ import annotations

import difflib
import functools
import inspect
import types
import typing
from typing import Any, Mapping

import torch
from torch import nn

from ..contract.model import ModelInfo, set_model_info
from ..contract.options import check_value
from ..errors import VggtkError
from ..host.manager import get_host
from ..host.registry import Entry
from ..runtime.memory import is_out_of_memory

DATA_KEYWORDS = ("in_chans", "input_size")  # every factory takes these; they come from the data


def architecture(name: str) -> Entry:
    """The registry entry of ``name`` (or an alias); an unknown name lists the known ones."""
    return get_host().registry("architectures").get(name)


def _target(factory):
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory.__init__ if inspect.isclass(factory) else factory


def _hints(factory) -> dict[str, Any]:
    try:
        return typing.get_type_hints(_target(factory))
    except Exception:  # unresolvable annotations: names are still checked, types are not
        return {}


def factory_options(name: str) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword options of an architecture's factory (besides ``num_classes``), and whether it also
    takes any other keyword (``**kwargs``)."""
    signature = inspect.signature(architecture(name).factory)
    named = {p.name: p for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "num_classes"}
    return named, any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def check_options(name: str, options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``options`` checked against the factory of ``name``: an unknown name is an error naming the closest
    known one, a value of the wrong type (where the factory annotates it) an error naming the option."""
    entry = architecture(name)
    named, open_ended = factory_options(entry.name)
    hints = _hints(entry.factory)
    for key, value in options.items():
        if key not in named and not open_ended:
            close = difflib.get_close_matches(key, list(named), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VggtkError(f"{where}{key}: not an option of architecture {entry.name!r}{hint}; it takes: "
                             f"{', '.join(sorted(named)) or '(none)'}")
        if key in hints:
            _check_hint(value, hints[key], f"{where}{key}")
    return dict(options)


def _check_hint(value, hint, name: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float, str, bool):
        check_value(value, hint, name)
    elif origin is typing.Literal:
        if value not in args:
            raise VggtkError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_hint(value, arg, name)
                return
            except VggtkError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def create_model(name: str, num_classes: int = 1000, **options) -> nn.Module:
    """Build the architecture registered as ``name`` (or one of its aliases), with its options checked.

    The model carries a ``ModelInfo`` (``vgg_toolkit.model_info(model)``): how to rebuild it, and what
    it was trained on once it is trained.
    """
    entry = architecture(name)
    options = check_options(entry.name, options)
    try:
        model = entry.factory(num_classes=num_classes, **options)
    except (ValueError, TypeError) as exc:  # a value the factory refuses, e.g. a dropout of 1.5
        raise VggtkError(f"architecture {entry.name!r} refused its options {options}: {exc}") from None
    except (MemoryError, RuntimeError) as exc:
        # Parameters larger than the machine's memory: the allocator refuses at once. (Counting them on
        # the meta device first would import torch._dynamo, over a second, into every command.)
        if not is_out_of_memory(exc):
            raise
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"
        raise VggtkError(f"architecture {entry.name!r} with {shown}: its parameters do not fit in this machine's "
                         "memory") from None
    input_size = options.get("input_size", entry.info.get("input_size", 224))
    return set_model_info(model, ModelInfo(entry.name, {"num_classes": num_classes, **options}, int(input_size)))


def list_models() -> list[str]:
    """Canonical names of every registered architecture, sorted."""
    return get_host().registry("architectures").names()


def runtime_options(given: Mapping[str, Any] | None = None, command: str = "train") -> dict[str, Any]:
    """Every runtime option plugins declare for ``command``, at its default unless ``given``; an option
    nobody declares is an error naming the closest declared one."""
    declared = {e.name: e.factory for e in get_host().registry("options")
                if e.factory.target == "runtime" and command in e.factory.commands}
    out = {name: spec.default for name, spec in declared.items()}
    for key, value in (given or {}).items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VggtkError(f"unknown runtime option {key!r}{hint}; declared: {', '.join(sorted(declared)) or '(none)'}")
        out[key] = declared[key].check(value, "")
    return out


def prepare_model(model: nn.Module, device, options: Mapping[str, Any] | None = None,
                  command: str = "train") -> nn.Module:
    """Move ``model`` to ``device`` and let plugins adapt it (``vggtk_prepare_model``), e.g. the Triton
    conv backend. ``options`` are plugin-declared runtime options (``{"conv_backend": "triton"}``)."""
    device = torch.device(device)
    model = model.to(device)
    get_host().pm.hook.vggtk_prepare_model(model=model, device=device, options=runtime_options(options, command))
    return model

