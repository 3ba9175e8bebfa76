"""Options a plugin declares (``vggtk_register_options``): the core adds them to the commands that use
them and hands their values to the plugin; it carries no plugin's options itself."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import VggtkError

COMMANDS = ("train", "eval", "extract-features", "distance")
TARGETS = ("runtime", "model")
TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class OptionSpec:
    """``--name-with-dashes`` on the command line, ``name`` as a TOML key.

    ``target="runtime"``: the value reaches ``vggtk_prepare_model(model, device, options)`` (with the
    default filled in when not given). ``target="model"``: a keyword argument of the architecture
    factory, passed only when given (so ``default`` is for the help text); only ``train`` takes these.
    ``resumable``: the option may change when a run resumes (a runtime choice, not a model's).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple = ()
    commands: tuple[str, ...] = COMMANDS
    target: str = "runtime"
    resumable: bool = True
    bounds: tuple | None = None  # (lowest, highest) a number may be

    def __post_init__(self):
        if not self.name.isidentifier():
            raise VggtkError(f"option name {self.name!r} is not a Python identifier")
        if self.type not in TYPES:
            raise VggtkError(f"option {self.name!r}: type must be one of int, float, str, bool")
        if self.target not in TARGETS:
            raise VggtkError(f"option {self.name!r}: target must be runtime or model")
        unknown = set(self.commands) - set(COMMANDS)
        if unknown:
            raise VggtkError(f"option {self.name!r}: unknown command(s) {sorted(unknown)}; known: {COMMANDS}")
        if self.target == "model" and self.commands != ("train",):
            object.__setattr__(self, "commands", ("train",))  # a checkpoint fixes its model options

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, where: str) -> Any:
        """``value`` of the declared type, among the choices and within the bounds, or a VggtkError naming
        ``where`` + the option (``where="--"`` names the flag)."""
        name = self.flag if where == "--" else f"{where}{self.name}"
        value = check_value(value, self.type, name, self.choices)
        if self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            raise VggtkError(f"{name}: must lie in [{self.bounds[0]:g}, {self.bounds[1]:g}], got {value!r}")
        return value


def check_value(value: Any, kind: type, name: str, choices: tuple = ()) -> Any:
    """One typed value, with numbers kept finite: an int is accepted for a float (and becomes one)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise VggtkError(f"{name}: expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        raise VggtkError(f"{name}: expected a finite number, got {value!r}")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise VggtkError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")
    return value


def _kind_name(kind: type) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(kind, kind.__name__)
