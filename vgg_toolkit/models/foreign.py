"""Weights written elsewhere, which record nothing of the net: which architecture they are (asked of the
plugins, from tensor names and shapes alone) and what vggtk assumes of them, said to the user.

A torchvision- or timm-layout file is taken for torchvision's family (RGB, 0-1, ImageNet's mean and
std, evaluated at Q = 256 with the 224 crop); a Caffe-layout file for the authors' release (BGR, 0-255,
the mean pixel, trained with S in [256; 512]); for either, a net with 1000 outputs for ImageNet-1k's
classes, in their standard order. A vggtk-layout file that lost its record (a bare state_dict) is fed
as vggtk feeds its own nets: the data's mean colour, S = its input size. ``--preprocess`` replaces the
assumed preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..contract.model import ModelInfo
from ..contract.preprocess import Preprocessing
from ..contract.scale import TrainScale
from ..errors import WeightsError
from ..host.manager import get_host
from .imagenet import NUM_CLASSES, imagenet_classes
from .weights import read_metadata, read_model_info, read_shapes

# The evaluation preset of each family: the training scale the paper's protocols pick Q from.
PRESETS = {"torchvision": TrainScale(256, 256), "caffe": TrainScale(256, 512)}


def identify_weights(path: str | os.PathLike, preprocessing: Preprocessing | None = None
                     ) -> tuple[ModelInfo, str, str]:
    """(the ModelInfo assumed for a file that records none, its layout, one line saying what was
    assumed). A file no plugin recognises is a WeightsError saying what did not fit."""
    path = Path(path)
    shapes = read_shapes(path)
    answers = [a for a in get_host().pm.hook.vggtk_identify_weights(shapes=shapes) if a]
    found = [a for a in answers if "arch" in a]
    if not found:
        if answers:
            raise WeightsError(f"{path}: {answers[0]['unfit']}")
        some = ", ".join(list(shapes)[:3])
        raise WeightsError(f"{path}: {len(shapes)} tensors ({some}...) in no layout a plugin knows; name the "
                           "architecture with --arch")
    arch, options, layout = found[0]["arch"], dict(found[0]["options"]), found[0]["layout"]
    family = {"caffe": "caffe", "vggtk": None}.get(layout, "torchvision")
    prep = preprocessing or (Preprocessing.named(family) if family else None)
    classes = imagenet_classes() if family and options["num_classes"] == NUM_CLASSES else None
    scale = PRESETS.get(family)
    info = ModelInfo(arch, options, int(options["input_size"]), classes=classes, train_scale=scale,
                     preprocessing=prep)
    fed = prep.describe() if prep else "vggtk's, with the data's mean colour,"
    said = (f"{path}: {layout} layout, {arch} ({_options_text(options)}); assumed {fed} preprocessing"
            f"{' (--preprocess)' if preprocessing else ''}, S = {scale or options['input_size']}"
            f"{', ImageNet-1k classes' if classes else ''}")
    return info, layout, said


def _options_text(options: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items())


def describe_weights(weights: Path, assume: Preprocessing | None = None) -> tuple[ModelInfo, str, str | None]:
    """(the net a weights file holds, its layout, a line saying what was assumed of a file that records
    nothing, else None). ``assume`` is the preprocessing of a file that records none, instead of its
    family's, and of a file whose record has none."""
    info = read_model_info(weights)
    if info is None:
        return identify_weights(weights, assume)
    if info.preprocessing is None and assume is not None:
        info = replace(info, preprocessing=assume)
    return info, read_metadata(weights).get("layout", "vggtk"), None
