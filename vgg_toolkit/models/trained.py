"""Trained networks on disk: a checkpoint directory or a vggtk weights file, read back into a ready
model; and starting a new net from a trained one (fine-tuning, or the paper's A -> deeper)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..contract.model import ModelInfo, WarmStart, WeightLayouts, model_info, set_model_info
from ..errors import VggtkError, WeightsError
from .factory import create_model, prepare_model
from .weights import (check_values, fit_problems, load_weights, read_metadata, read_model_info, read_shapes,
                      read_tensors)

WEIGHTS_NAME = "model.safetensors"


def weights_file(path: str | os.PathLike) -> Path:
    """The weights of a checkpoint directory, or ``path`` itself when it is a weights file."""
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def build_for(info: ModelInfo, weights: Path) -> nn.Module:
    """The network ``info`` describes, once its tensor shapes are checked against the file's header: a
    record that does not match (crafted, or damaged) costs nothing before it is refused."""
    layout = read_metadata(weights).get("layout", "vggtk")
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        skeleton = create_model(info.arch, **info.options)
    if layout == "vggtk":
        expected = skeleton.state_dict()
    elif isinstance(skeleton, WeightLayouts):
        expected = skeleton.export_state_dict(layout)
    else:
        raise WeightsError(f"{weights}: holds the {layout!r} layout, which {info.arch} does not know")
    problems = fit_problems({k: tuple(v.shape) for k, v in expected.items()}, read_shapes(weights))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(f"{weights}: the tensors do not match the recorded model ({info.arch}, "
                           f"{dict(info.options)}): " + "; ".join(problems[:3]) + more)
    return create_model(info.arch, **info.options)


def load_trained(path: str | os.PathLike, device: Any = "cpu", options: Mapping[str, Any] | None = None,
                 command: str = "eval") -> nn.Module:
    """A trained model from a checkpoint directory or a vggtk ``.safetensors`` file, in eval mode, on
    ``device``, prepared with the plugins' runtime ``options``; ``model_info(model)`` tells its classes,
    training scale and mean colour."""
    path = Path(path)
    weights = weights_file(path)
    if not weights.is_file():
        raise VggtkError(f"{path}: no checkpoint here (expected a checkpoint directory or a .safetensors file)")
    info = read_model_info(weights)
    if info is None:
        raise VggtkError(f"{weights}: records no architecture; convert it with `vggtk convert --arch ...` first")
    try:
        model = build_for(info, weights)
    except VggtkError as exc:
        raise VggtkError(exc if str(weights) in str(exc) else f"{weights}: {exc}") from None
    load_weights(model, weights)
    set_model_info(model, info)
    return prepare_model(model, device, options, command).eval()


def initialise_from(model: nn.Module, source: str | os.PathLike) -> list[str]:
    """Start ``model`` from a trained net (Sec. 3.1): every tensor when it is the same architecture (or a
    file that records none); the same architecture with another last layer (a localisation head started
    from a classifier, Appendix A) gets everything but that layer, which keeps its random init; another
    architecture of the family, what its ``warm_start`` takes. Returns the names of the layers copied."""
    weights = weights_file(source)
    theirs = read_model_info(weights)
    ours = model_info(model)
    if theirs is not None and theirs.arch == ours.arch and theirs.num_outputs != ours.num_outputs:
        return _all_but_the_last_layer(model, weights)
    if theirs is None or theirs.arch == ours.arch:
        load_weights(model, weights)
        return sorted({k.rsplit(".", 1)[0] for k in model.state_dict() if not k.endswith("num_batches_tracked")})
    if not isinstance(model, WarmStart):
        raise VggtkError(f"{weights}: cannot initialise {ours.arch} from {theirs.arch}: {ours.arch} takes weights "
                         "only from its own architecture")
    tensors = read_tensors(weights)
    check_values(tensors, str(weights))
    try:
        return model.warm_start(tensors, theirs)
    except WeightsError as exc:
        raise WeightsError(f"{weights}: cannot initialise {ours.arch} from {theirs.arch}: {exc}") from None


def _all_but_the_last_layer(model: nn.Module, weights: Path) -> list[str]:
    """Every tensor of ``weights`` into ``model`` but those of its last layer (the last two entries of the
    state_dict, weight and bias), which differ in width; any other difference is an error."""
    tensors = read_tensors(weights)
    check_values(tensors, str(weights))
    ours = model.state_dict()
    last = set(list(ours)[-2:])
    keep = {k: t for k, t in tensors.items() if k not in last}
    problems = fit_problems({k: tuple(v.shape) for k, v in ours.items() if k not in last},
                            {k: tuple(t.shape) for k, t in keep.items()})
    if problems:
        raise WeightsError(f"{weights}: only the last layer may differ, but: " + "; ".join(problems[:3]))
    model.load_state_dict(keep, strict=False)
    return sorted({k.rsplit(".", 1)[0] for k in keep if not k.endswith("num_batches_tracked")})
