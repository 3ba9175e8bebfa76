"""Which VGG a weights file written elsewhere holds, from its tensor names and shapes alone: the layout
(torchvision, timm, the Caffe release's names, or vggtk's without a record), the configuration and
whether it has BatchNorm, the conv width, FC6/FC7's width, the classes and the input channels and size.

Every candidate configuration is built on the meta device (no memory) and its state_dict in that layout
compared with the file's shapes exactly, so what is recognised is what loads.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from vgg_toolkit import WeightsError

from .net import CONFIGS, VGG, detect_layout

NAMES = {"A": "vgg-a", "B": "vgg-b", "C": "vgg-c", "D": "vgg-d", "E": "vgg-e"}
_INDEXED = re.compile(r"^features\.(\d+)\.weight$")
_CAFFE = re.compile(r"^conv(\d+)_(\d+)\.weight$")
_BLOCK = re.compile(r"^features\.block(\d+)\.conv(\d+)\.weight$")


def _trunk_and_head(shapes: Mapping[str, tuple], layout: str) -> tuple[list[tuple], tuple, tuple]:
    """(conv weight shapes in order, FC6 weight shape, last layer's weight shape)."""
    if layout in ("torchvision", "timm"):
        convs = sorted((int(m.group(1)), s) for k, s in shapes.items() if (m := _INDEXED.match(k)) and len(s) == 4)
        fc6, last = (("classifier.0.weight", "classifier.6.weight") if layout == "torchvision"
                     else ("pre_logits.fc1.weight", "head.fc.weight"))
    elif layout == "caffe":
        convs = sorted(((int(m.group(1)), int(m.group(2))), s) for k, s in shapes.items() if (m := _CAFFE.match(k)))
        fc6, last = "fc6.weight", "fc8.weight"
    else:
        convs = sorted(((int(m.group(1)), int(m.group(2))), s) for k, s in shapes.items() if (m := _BLOCK.match(k)))
        fc6, last = "classifier.fc6.weight", "classifier.fc8.weight"
    missing = [k for k in (fc6, last) if k not in shapes]
    if missing or not convs:
        raise WeightsError(f"a {layout}-layout VGG needs {', '.join(missing) or 'conv weights'}")
    return [s for _, s in convs], tuple(shapes[fc6]), tuple(shapes[last])


def identify(shapes: Mapping[str, tuple]) -> dict | None:
    """``{"arch", "options", "layout"}`` for the VGG these tensors make, ``{"unfit": why}`` for tensors
    in a VGG layout that fit no configuration, None for tensors of no VGG layout."""
    try:
        layout = detect_layout(shapes)
    except WeightsError:
        return None
    try:
        convs, fc6, last = _trunk_and_head(shapes, layout)
    except WeightsError as exc:
        return {"unfit": str(exc)}
    out1, in_chans = convs[0][0], convs[0][1]
    channels = convs[-1][0]
    fc_dim, num_classes = fc6[0], last[0]
    kernel = fc6[2] if len(fc6) == 4 else math.isqrt(max(1, fc6[1] // max(1, channels)))
    bn = any(k.endswith("running_mean") for k in shapes)
    options = {"num_classes": num_classes, "in_chans": in_chans, "width": out1 / 64, "fc_dim": fc_dim,
               "input_size": 32 * kernel, "batch_norm": bn}
    if layout == "caffe":
        options["ceil_pool"] = True
    found = {k: tuple(s) for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    for config in CONFIGS:
        try:
            with torch.device("meta"):
                net = VGG(config, **options)
                expected = {k: tuple(t.shape) for k, t in net.export_state_dict(layout).items()
                            if not k.endswith("num_batches_tracked")}
        except Exception:  # an impossible width or size: not this configuration
            continue
        if expected == found:
            return {"arch": NAMES[config], "options": options, "layout": layout}
    kernels = "".join("3" if s[-1] == 3 else "1" for s in convs)
    return {"unfit": f"{len(convs)} conv layers (kernel sizes {kernels}), {channels} channels into a "
                     f"{fc_dim}-wide FC6 of {fc6[1] if len(fc6) == 2 else fc6[1:]} inputs and {num_classes} "
                     f"classes fit no configuration (A: 8 convs, B: 10, C and D: 13, E: 16)"}
