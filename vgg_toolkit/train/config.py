"""The typed configuration of a training run, parsed once: a TOML file and the command line become one
``TrainConfig``; every key is type- and range-checked, an unknown key names the closest known one.

TOML keys are the command-line options' names (``lr = 0.01``, ``scale_min = 32``), plus a ``[model]``
table for any keyword of the architecture's factory; options that plugins declare are accepted too
(``conv_backend = "triton"``, ``width = 0.5``). What the data says (classes, channels, mean colour) is not
an option: see ``DataFacts`` and ``plan.plan_run``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..contract.options import check_value
from ..contract.scale import TrainScale
from ..errors import VggtkError
from ..host.manager import get_host
from ..models.factory import check_options

ON_ERROR = ("fail", "skip")
DECODE = ("workers", "device")


def _positive(v):
    return None if v > 0 else "must be positive"


def _at_least(n):
    return lambda v: None if v >= n else f"must be at least {n}"


def _device(v):
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "must be auto, cpu, cuda or cuda:N"


def _preprocess(v):
    return None if v in ("vggtk", "torchvision", "caffe") or v.endswith(".json") else \
        "must be vggtk, torchvision, caffe or a .json file"


def _momentum(v):
    return None if 0 <= v < 1 else "must lie in [0, 1)"


def option(default, help: str, check: Callable[[Any], str | None] | None = None, resumable: bool = False,
           choices: tuple = ()):
    """A field of TrainConfig: its help text (shown by ``vggtk train --help``), its range check, and
    whether a resumed run may change it."""
    return field(default=default, metadata={"help": help, "check": check, "resumable": resumable,
                                            "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a run. Defaults are the paper's (Sec. 3.1); ``None`` means "from the data"."""

    data: str | None = option(None, "Shard directory, manifest.json or manifest URL (http(s)://..., "
                                    "pipe:CMD) [default: the bundled Fashion-MNIST shards].", resumable=True)
    run_dir: str = option("runs/train", "Where checkpoints, metrics.jsonl and metrics.png go.", resumable=True)
    arch: str = option("vgg-a", "Architecture name (vggtk models).")
    head: str = option("classification", "Task head (vggtk plugins lists them).")
    model: Mapping[str, Any] = option(None, "Keyword options of the architecture factory (a TOML [model] table).")
    scale: TrainScale | None = option(None, "Fixed training scale S (smallest side) [default: the data's "
                                            "recipe, jittered: [256, 512], or [32, 40] for small images].")
    epochs: int = option(74, "At most this many epochs; the lr schedule may stop sooner.", _at_least(1), True)
    batch_size: int = option(256, "Global batch size, split over ranks and accumulation steps.", _at_least(1))
    accum_steps: int = option(1, "Gradient accumulation steps per global batch.", _at_least(1))
    lr: float | None = option(None, "Initial learning rate [default: 0.01; 1e-3 when fine-tuning the same "
                                    "architecture with --init-from].", _positive)
    momentum: float = option(0.9, "SGD momentum.", _momentum)
    weight_decay: float = option(5e-4, "L2 penalty on weights (not biases).", _at_least(0))
    lr_patience: int = option(2, "Epochs without a better validation score before lr / 10.", _at_least(1))
    max_lr_drops: int = option(3, "lr decreases before the next plateau ends the run.", _at_least(0))
    seed: int = option(0, "Seed of every random choice.", _at_least(0))
    checkpoint_every: int = option(0, "Also checkpoint every N steps (0: at epoch ends only).", _at_least(0), True)
    keep_last: int = option(2, "Newest checkpoints to keep besides best; 0 keeps all.", _at_least(0), True)
    log_every: int = option(20, "Steps between log lines and host syncs.", _at_least(1), True)
    device: str = option("auto", "auto | cpu | cuda | cuda:N.", _device, True)
    compile: bool = option(False, "torch.compile the model.", None, True)
    init_from: str | None = option(None, "Checkpoint or weights to start from (fine-tune, or a shallower net "
                                         "of the same family, e.g. A -> D).", None, True)
    preprocess: str | None = option(None, "How the net's input is made from pixels: vggtk (the data's mean "
                                          "colour), torchvision, caffe, or a JSON file holding a record [default: "
                                          "vggtk; with --init-from, the starting net's].", _preprocess)
    finetune: str = option("all", "Which parameters train: all, or fc (the fully-connected layers only, the "
                                  "rest frozen; where the architecture offers it).")
    workers: int = option(0, "Decoding worker processes while loading the shards.", _at_least(0), True)
    on_error: str = option("fail", "Corrupt samples: fail | skip (skipped ones are counted).", None, True, ON_ERROR)
    decode: str = option("workers", "Where streamed JPEGs are decoded: workers | device (the training GPU, "
                                    "with torchvision's nvJPEG; the workers, with a notice, where it is not "
                                    "available). Data held in memory is decoded once either way.", None, True,
                         DECODE)
    runtime: Mapping[str, Any] = option(None, "Runtime options declared by plugins (e.g. conv_backend).", None, True)

    def __post_init__(self):
        object.__setattr__(self, "model", dict(self.model or {}))
        object.__setattr__(self, "runtime", dict(self.runtime or {}))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


SCALE_KEYS = ("scale", "scale_min", "scale_max")
_TABLES = ("model", "runtime")


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VggtkError(f"{path}: cannot read the run configuration ({exc})") from None


def _declared_options() -> dict:
    return {e.name: e.factory for e in get_host().registry("options") if "train" in e.factory.commands}


def parse_config(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> TrainConfig:
    """A TrainConfig from plain values (a TOML document, command-line options, or both merged).

    ``names`` says how to name each key in an error (``--lr`` for the command line, ``run.toml: lr`` for
    a file); by default its command-line flag.
    """
    names = dict(names or {})
    label = lambda key: names.get(key, "--" + key.replace("_", "-"))  # noqa: E731
    values = dict(values)
    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    declared = _declared_options()
    known = sorted(set(fields) - set(_TABLES) | set(SCALE_KEYS) | set(declared) | set(_TABLES))
    out: dict[str, Any] = {"model": {}, "runtime": {}}

    for table in _TABLES:
        given = values.pop(table, None)
        if given is None:
            continue
        if not isinstance(given, Mapping):
            raise VggtkError(f"{label(table)}: expected a table of options, got {type(given).__name__} {given!r}")
        for key, value in given.items():
            if table == "runtime":
                if key not in declared or declared[key].target != "runtime":
                    raise VggtkError(f"{label(table)}.{key}: no plugin declares this runtime option")
                value = declared[key].check(value, f"{label(table)}.")
            out[table][key] = value
    out["scale"] = _scale(values, label)
    for key, value in values.items():
        if key in declared:
            spec = declared[key]
            out["model" if spec.target == "model" else "runtime"][key] = spec.check(value, _prefix(label(key), key))
        elif key in fields and key not in _TABLES:
            out[key] = _checked(value, hints[key], fields[key], label(key))
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VggtkError(f"{label(key)}: unknown training option{hint}")
    config = TrainConfig(**out)
    if config.model:  # the factory's options, checked now that the architecture is known
        check_options(config.arch, config.model, where=f"{_table_label(label('model'))}.")
    return config


def _table_label(name: str) -> str:
    return "model" if name.startswith("--") else name


def _prefix(name: str, key: str) -> str:
    return name[: -len(key)] if name.endswith(key) else f"{name}: "


def _scale(values: dict, label) -> TrainScale | None:
    scale, smin, smax = (values.pop(k, None) for k in SCALE_KEYS)
    if (smin is None) != (smax is None):
        raise VggtkError(f"scale jittering needs both {label('scale_min')} and {label('scale_max')}")
    if scale is not None and smin is not None:
        raise VggtkError(f"give either {label('scale')} (fixed S) or {label('scale_min')}/{label('scale_max')} "
                         "(jittered S), not both")
    for key, value in (("scale_min", smin), ("scale_max", smax)):
        if value is not None:
            check_value(value, int, label(key))
    if smin is not None:
        try:
            return TrainScale.parse((smin, smax))
        except VggtkError as exc:
            raise VggtkError(f"{label('scale_min')} and {label('scale_max')}: {exc}") from None
    if scale is None:
        return None
    try:
        return TrainScale.parse(scale)
    except VggtkError as exc:
        raise VggtkError(f"{label('scale')}: {exc}") from None


def _checked(value, hint, spec: dataclasses.Field, name: str):
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise VggtkError(f"{name}: may not be empty")
    kind = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    value = check_value(value, kind, name, spec.metadata.get("choices", ()))
    check = spec.metadata.get("check")
    problem = check(value) if check else None
    if problem:
        raise VggtkError(f"{name}: {problem}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise VggtkError(f"{name}: expected a finite number, got {value!r}")
    return value


def load_config(toml: Path | None, cli: Mapping[str, Any]) -> TrainConfig:
    """The command line's options over the TOML file's; each error names the option or the file and key."""
    from_file = read_toml(toml) if toml is not None else {}
    names = {key: f"{toml}: {key}" for key in from_file}
    given = {k: v for k, v in cli.items() if v is not None}
    names.update({key: "--" + key.replace("_", "-") for key in given})
    for key in SCALE_KEYS:  # the command line's scale replaces the file's, whichever form each uses
        if any(k in given for k in SCALE_KEYS):
            from_file.pop(key, None)
    return parse_config({**from_file, **given}, names)


def resumable_keys() -> set[str]:
    out = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable")}
    return out | {name for name, spec in _declared_options().items() if spec.resumable}
