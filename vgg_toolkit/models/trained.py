"""Trained networks on disk: a checkpoint directory, a vggtk weights file, weights written elsewhere
(torchvision, timm, a Caffe release) or a catalogue name, read back into a ready model; and starting a
new net from a trained one (fine-tuning, or the paper's A -> deeper)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..contract.model import ModelInfo, WarmStart, WeightLayouts, model_info, set_model_info
from ..contract.preprocess import Preprocessing
from ..errors import VggtkError, WeightsError
from ..runtime.console import notice
from .factory import create_model, prepare_model
from .foreign import describe_weights
from .weights import check_values, fit_problems, load_state, load_weights, read_metadata, read_shapes, read_tensors

WEIGHTS_NAME = "model.safetensors"


def weights_file(path: str | os.PathLike) -> Path:
    """The weights of a checkpoint directory; a catalogue name's file (fetched once, checked, into torch's
    hub cache); else ``path`` itself, a weights file."""
    path = Path(path)
    if path.is_dir():
        return path / WEIGHTS_NAME
    if not path.exists():
        from .catalogue import find_entry, local_weights

        entry = find_entry(str(path))
        if entry is not None:
            return local_weights(entry)
    return path


def weights_digest(path: str | os.PathLike) -> str:
    """sha256 of the weights a checkpoint or weights file holds: what tells one trained net from another,
    wherever it lies and whatever its path (results and features record it)."""
    import hashlib

    digest = hashlib.sha256()
    with open(weights_file(path), "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build_for(info: ModelInfo, weights: Path, layout: str | None = None) -> nn.Module:
    """The network ``info`` describes, once its tensor shapes are checked against the file's header: a
    record that does not match (crafted, or damaged) costs nothing before it is refused."""
    layout = layout or read_metadata(weights).get("layout", "vggtk")
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
                 command: str = "eval", assume: Preprocessing | None = None,
                 say: Callable[[str], None] | None = notice) -> nn.Module:
    """A trained model, in eval mode, on ``device``, prepared with the plugins' runtime ``options``, from
    a checkpoint directory, a vggtk ``.safetensors`` file, weights written elsewhere (torchvision, timm:
    ``.pth`` or ``.safetensors``; ``.caffemodel``) or a catalogue name. ``model_info(model)`` tells its
    classes, evaluation preset and preprocessing. What was assumed of a file that records nothing (its
    family's preprocessing, or ``assume``) is said through ``say`` (a line on stderr by default)."""
    path = Path(path)
    weights = weights_file(path)
    if not weights.is_file():
        from .catalogue import closest_name

        close = closest_name(str(path))
        hint = f" (did you mean {close!r}?)" if close else ""
        raise VggtkError(f"{path}: no checkpoint here (expected a checkpoint directory, a weights file or a name "
                         f"`vggtk weights list` shows){hint}")
    info, layout, said = describe_weights(weights, assume)
    try:
        model = build_for(info, weights, layout)
    except VggtkError as exc:
        raise VggtkError(exc if str(weights) in str(exc) else f"{weights}: {exc}") from None
    load_weights(model, weights, layout)
    set_model_info(model, info)
    model = prepare_model(model, device, options, command).eval()
    if said and say is not None:  # once it loaded: an error is then the one line a command prints
        say(said)
    return model


def initialise_from(model: nn.Module, source: str | os.PathLike) -> list[str]:
    """Start ``model`` from a trained net (Sec. 3.1): every tensor when it is the same architecture (or a
    file that says nothing of its net); the same architecture with another last layer (a localisation
    head started from a classifier, Appendix A; an ImageNet net fine-tuned on new classes) gets
    everything but that layer, which keeps its random init; another architecture of the family, what
    its ``warm_start`` takes. Weights in another layout (torchvision, timm, Caffe) are read through it.
    Returns the names of the layers copied."""
    weights = weights_file(source)
    ours = model_info(model)
    try:
        theirs, layout, _ = describe_weights(weights)
    except WeightsError:  # a file no plugin recognises: its tensors must fit this net as they are
        load_weights(model, weights)
        return _layers(model.state_dict())
    tensors = _vggtk_tensors(weights, theirs, layout)
    if theirs.arch == ours.arch and theirs.num_outputs != ours.num_outputs:
        return _all_but_the_last_layer(model, tensors, weights)
    if theirs.arch == ours.arch:
        try:
            load_state(model, tensors)
        except WeightsError as exc:
            raise WeightsError(f"{weights}: {exc}") from None
        return _layers(model.state_dict())
    if not isinstance(model, WarmStart):
        raise VggtkError(f"{weights}: cannot initialise {ours.arch} from {theirs.arch}: {ours.arch} takes weights "
                         "only from its own architecture")
    try:
        return model.warm_start(tensors, theirs)
    except WeightsError as exc:
        raise WeightsError(f"{weights}: cannot initialise {ours.arch} from {theirs.arch}: {exc}") from None


def _layers(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in tensors if not k.endswith("num_batches_tracked")})


def _vggtk_tensors(weights: Path, info: ModelInfo, layout: str) -> dict[str, torch.Tensor]:
    """The file's tensors in vggtk's layout (read through the net it holds when it is in another)."""
    if layout == "vggtk":
        tensors = read_tensors(weights)
        check_values(tensors, str(weights))
        return tensors
    net = build_for(info, weights, layout)
    load_weights(net, weights, layout)
    return net.state_dict()


def _all_but_the_last_layer(model: nn.Module, tensors: Mapping[str, torch.Tensor], weights: Path) -> list[str]:
    """Every tensor into ``model`` but those of its last layer (the last two entries of the state_dict,
    weight and bias), which differ in width; any other difference is an error."""
    ours = model.state_dict()
    last = set(list(ours)[-2:])
    keep = {k: t for k, t in tensors.items() if k not in last}
    problems = fit_problems({k: tuple(v.shape) for k, v in ours.items() if k not in last},
                            {k: tuple(t.shape) for k, t in keep.items()})
    if problems:
        raise WeightsError(f"{weights}: only the last layer may differ, but: " + "; ".join(problems[:3]))
    model.load_state_dict(keep, strict=False)
    return _layers(keep)
