"""Converting weights between layouts (``vggtk convert``): any file vggtk reads (its own, torchvision's,
timm's, a Caffe release) into a vggtk, torchvision or timm layout safetensors file that records the net,
its classes, evaluation preset and preprocessing.

Into vggtk's layout nothing is built: the tensors read are renamed by a net on the meta device and
written as they are, so converting the 553 MB VGG-16 Caffe file holds its weights about once.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..contract.model import ModelInfo, WeightLayouts, model_info
from ..contract.preprocess import Preprocessing
from ..errors import VggtkError, WeightsError
from ..runtime.console import notice
from .factory import architecture, create_model
from .foreign import describe_weights
from .weights import (INFO_KEY, check_values, fit_problems, load_state, load_weights, read_tensors, save_safetensors,
                      save_weights)


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, layout: str = "vggtk", *,
                    arch: str | None = None, options: Mapping[str, Any] | None = None,
                    preprocessing: Preprocessing | None = None,
                    say: Callable[[str], None] | None = notice) -> tuple[ModelInfo, str]:
    """Write ``src``'s weights to ``dst`` in ``layout``; returns (the net's record, the layout read).

    The net is the file's record, or, for a file that records none, what the plugins recognise in its
    tensors (said through ``say``); ``arch`` and ``options`` name or amend it (the recorded options are
    kept unless ``options`` replaces them). ``preprocessing`` replaces the recorded or assumed one."""
    src, dst = Path(src), Path(dst)
    try:
        known, found, said = describe_weights(src, preprocessing)
    except WeightsError:
        if arch is None:
            raise
        known, found, said = None, "auto", None  # a file nobody recognises: --arch says what it is
    if arch is not None or options:
        info, found = _named(src, known, arch, dict(options or {})), "auto"
    else:
        info = known
    if preprocessing is not None:
        info = replace(info, preprocessing=preprocessing)
    tensors = read_tensors(src)
    check_values(tensors, str(src))
    with torch.device("meta"):
        skeleton = create_model(info.arch, **info.options)
    if layout != "vggtk" and not isinstance(skeleton, WeightLayouts):
        raise VggtkError(f"{info.arch} knows only the vggtk layout, not {layout!r}")
    if found == "auto" or layout != "vggtk":  # small work: build the net and let it read any layout
        net = create_model(info.arch, **info.options)
        found = load_weights(net, src) if found == "auto" else _load(net, tensors, found, src)
        save_weights(net, dst, layout=layout, info=info)
        if said and say is not None:
            say(said)
        return info, found
    ours = skeleton.from_layout(tensors, found) if found != "vggtk" else tensors
    problems = fit_problems({k: tuple(v.shape) for k, v in skeleton.state_dict().items()},
                            {k: tuple(v.shape) for k, v in ours.items()})
    if problems:
        raise WeightsError(f"{src}: the tensors do not fit {info.arch}: " + "; ".join(problems[:3]))
    save_safetensors(ours, dst, {"layout": "vggtk", INFO_KEY: json.dumps(info.to_json())})
    if said and say is not None:
        say(said)
    return info, found


def _load(net, tensors: Mapping[str, torch.Tensor], layout: str, src: Path) -> str:
    try:
        if layout == "vggtk":
            load_state(net, tensors)
            return layout
        return net.import_state_dict(dict(tensors), layout=layout)
    except WeightsError as exc:
        raise WeightsError(f"{src}: {exc}") from None


def _named(src: Path, known: ModelInfo | None, arch: str | None, options: dict) -> ModelInfo:
    """The net ``--arch`` / ``--model`` name, over what the file records or its tensors say: its options,
    classes, preset and preprocessing kept for the same architecture."""
    same = known is not None and (arch is None or architecture(arch).name == architecture(known.arch).name)
    base = dict(known.options) if same else {}
    arch = arch or known.arch
    merged = {**base, **options}
    if "num_classes" not in merged:  # the last 2-D tensor is the classifier: its rows are the classes
        last = [t for t in read_tensors(src).values() if t.ndim == 2][-1:]
        merged["num_classes"] = last[0].shape[0] if last else 1000
    with torch.device("meta"):
        info = model_info(create_model(arch, **merged))
    if same:
        info = replace(info, classes=known.classes, train_scale=known.train_scale, mean_rgb=known.mean_rgb,
                       head=known.head, preprocessing=known.preprocessing)
    return info
