"""The model contract: one typed record of what a network is (``ModelInfo``), and the optional
capabilities an architecture may offer, as Protocols the core checks with ``isinstance``.

An architecture's factory is ``factory(num_classes: int, *, in_chans: int, input_size: int, **options)
-> nn.Module``; ``create_model`` attaches a ``ModelInfo`` to what it returns. Nothing else is read
from a model by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import VggtkError
from .preprocess import Preprocessing
from .scale import TrainScale

INFO_ATTRIBUTE = "vggtk_info"


@dataclass(frozen=True)
class ModelInfo:
    """How a network was built and what it was trained on; recorded in every weights file vggtk writes.

    ``options`` are the factory's keyword arguments (``num_classes``, the width of the last layer,
    included), so ``create_model(arch, **options)`` rebuilds the network. ``classes``, ``train_scale``
    and ``mean_rgb`` (0-255) are known once it is trained. ``preprocessing`` says how its input is made
    from pixels (``contract/preprocess.py``); ``train_scale`` and ``input_size`` are its evaluation
    preset, from which the paper's protocols pick Q and the crop. ``runtime`` records what plugins did
    when the model was prepared for a device (e.g. which convolutions run fused); it is not saved.
    """

    arch: str
    options: Mapping[str, Any]
    input_size: int
    head: str = "classification"
    classes: tuple[str, ...] | None = None
    train_scale: TrainScale | None = None
    mean_rgb: tuple[float, ...] | None = None
    preprocessing: Preprocessing | None = None
    runtime: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_outputs(self) -> int:
        return int(self.options["num_classes"])

    @property
    def in_chans(self) -> int | None:
        value = self.options.get("in_chans")
        return None if value is None else int(value)

    def trained_on(self, classes: Iterable[str] | None, train_scale: TrainScale | None,
                   mean_rgb: Iterable[float] | None, head: str = "classification",
                   preprocessing: Preprocessing | None = None) -> "ModelInfo":
        mean = None if mean_rgb is None else tuple(float(v) for v in mean_rgb)
        if preprocessing is None and mean is not None:
            preprocessing = Preprocessing.vggtk(mean)
        return replace(self, classes=None if classes is None else tuple(classes), train_scale=train_scale,
                       mean_rgb=mean, head=head, preprocessing=preprocessing)

    def input_preprocessing(self, data_mean_rgb: Iterable[float] | None = None) -> Preprocessing:
        """What the net's input is made with: its record; else, for files from before records, vggtk's
        with the recorded mean colour, or ``data_mean_rgb`` (the data's) when it records none."""
        if self.preprocessing is not None:
            return self.preprocessing
        mean = self.mean_rgb if self.mean_rgb is not None else data_mean_rgb
        if mean is None:
            raise VggtkError(f"the {self.arch} net records no preprocessing and no mean colour: name one with "
                             "--preprocess")
        return Preprocessing.vggtk(mean)

    def to_json(self) -> dict:
        return {"arch": self.arch, "options": dict(self.options), "input_size": self.input_size, "head": self.head,
                "classes": None if self.classes is None else list(self.classes),
                "train_scale": None if self.train_scale is None else self.train_scale.to_json(),
                "mean_rgb": None if self.mean_rgb is None else list(self.mean_rgb),
                "preprocessing": None if self.preprocessing is None else self.preprocessing.to_json()}

    @classmethod
    def from_json(cls, data, where: str) -> "ModelInfo":
        """Parse a recorded info, checking every field, so a crafted or damaged record is one clear error."""
        def bad(what: str):
            return VggtkError(f"{where}: the recorded model info is malformed ({what})")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        arch, options, size = data.get("arch"), data.get("options"), data.get("input_size")
        if not isinstance(arch, str) or not arch:
            raise bad("arch is not a name")
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise bad("options is not an object")
        n = options.get("num_classes")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise bad("options.num_classes is not a positive integer")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise bad("input_size is not a positive integer")
        head = data.get("head", "classification")
        if not isinstance(head, str):
            raise bad("head is not a name")
        classes = data.get("classes")
        if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
            raise bad("classes is not a list of names")
        if classes is not None and len(set(classes)) != len(classes):
            raise bad("classes names a class twice")
        mean = data.get("mean_rgb")
        if mean is not None and (not isinstance(mean, list) or not all(_finite_number(v) for v in mean)):
            raise bad("mean_rgb is not a list of numbers")
        scale = data.get("train_scale")
        try:
            scale = None if scale is None else TrainScale.parse(scale)
        except VggtkError as exc:
            raise bad(str(exc)) from None
        prep = data.get("preprocessing")
        prep = None if prep is None else Preprocessing.from_json(prep, where)
        return cls(arch, dict(options), size, head, None if classes is None else tuple(classes), scale,
                   None if mean is None else tuple(float(v) for v in mean), prep)


def _finite_number(v) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer of hundreds of digits
        return False


def find_model_info(model: nn.Module) -> ModelInfo | None:
    info = getattr(model, INFO_ATTRIBUTE, None)
    return info if isinstance(info, ModelInfo) else None


def model_info(model: nn.Module) -> ModelInfo:
    """The ``ModelInfo`` of a model built by ``create_model`` (or loaded by ``load_trained``)."""
    info = find_model_info(model)
    if info is None:
        raise VggtkError(f"{type(model).__name__} was not built by vgg_toolkit.create_model, so it carries no "
                         "model info (architecture, input size, classes)")
    return info


def set_model_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    setattr(model, INFO_ATTRIBUTE, info)
    return model


# --- optional capabilities ----------------------------------------------------------------------------

@runtime_checkable
class FullyConvolutional(Protocol):
    """Runs its classifier as convolutions (dense evaluation) without changing its weights. One unit
    of the score map steps ``output_stride`` input pixels; dense evaluation trims an image to a
    multiple of it, centred, so the windows sit symmetrically on the image, unless the net says
    ``pools_round_up = True`` (Caffe's pooling: no row is lost, the whole image is seen)."""

    fully_conv: bool
    output_stride: int

    def to_fully_conv(self) -> nn.Module: ...

    def to_linear(self) -> nn.Module: ...


@runtime_checkable
class FeatureTaps(Protocol):
    """Outputs at named points of the network (transfer features)."""

    feature_taps: tuple[str, ...]

    def forward_features(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class WeightLayouts(Protocol):
    """Reads and writes its weights in other libraries' layouts (e.g. torchvision, timm)."""

    weight_layouts: tuple[str, ...]

    def export_state_dict(self, layout: str) -> dict[str, torch.Tensor]: ...

    def import_state_dict(self, tensors: Mapping[str, torch.Tensor], layout: str = "auto") -> str: ...

    def from_layout(self, tensors: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
        """The tensors renamed into the net's own state_dict layout, checked, without copying them (a net
        built on the meta device can do it: converting needs no second copy of the weights)."""


@runtime_checkable
class WarmStart(Protocol):
    """Starts from a trained net of another architecture of its family (the paper's A -> deeper)."""

    def warm_start(self, tensors: Mapping[str, torch.Tensor], source: ModelInfo) -> list[str]:
        """Copy what fits from ``tensors`` (a net described by ``source``); return the layers copied."""


@runtime_checkable
class FinetuneScopes(Protocol):
    """Parts of the network that can be trained alone, the rest frozen (``vggtk train --finetune``)."""

    finetune_scopes: tuple[str, ...]

    def finetune_parameters(self, scope: str) -> Iterable[nn.Parameter]: ...


@runtime_checkable
class ReceptiveField(Protocol):
    def receptive_field(self) -> int:
        """Receptive field, in input pixels, of one unit of the last conv block."""
