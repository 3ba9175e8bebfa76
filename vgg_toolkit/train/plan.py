"""A run's configuration resolved against its data: the network's options, the training scale and the
learning rate, each taken from the user where given, else from the data and the architecture's recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ..contract.data import DataFacts
from ..contract.model import FinetuneScopes, ModelInfo
from ..contract.preprocess import Preprocessing
from ..contract.scale import TrainScale
from ..contract.task import Head
from ..errors import VggtkError, WeightsError
from ..host.manager import get_host
from ..models.factory import architecture, check_options, create_model
from ..models.foreign import describe_weights
from ..models.trained import weights_file
from .config import TrainConfig, resumable_keys

FINE_TUNE_LR = 1e-3  # the paper's rate when it continues training a net (S = 384 from S = 256)
DEFAULT_LR = 1e-2


@dataclass(frozen=True)
class RunPlan:
    config: TrainConfig
    facts: DataFacts
    arch: str  # canonical name
    model_options: dict  # the factory's keyword arguments, num_classes excepted
    num_outputs: int  # width of the last layer, as the head asks
    scale: TrainScale
    lr: float
    preprocessing: Preprocessing  # how the net's input is made from pixels, recorded with its weights

    @property
    def input_size(self) -> int:
        return int(self.model_options["input_size"])

    def head(self) -> Head:
        return make_head(self.config.head)

    def identity(self) -> dict:
        """What a resumed run must share with the run it continues, one entry per setting, resolved
        (the learning rate and scale the run uses, not whether the user gave them)."""
        loose = resumable_keys() | {"model", "runtime", "scale", "lr", "arch"}
        out = {k: getattr(self.config, k) for k in self.config.field_names() if k not in loose}
        out.update({k: v for k, v in self.config.runtime.items() if k not in loose})
        out.update(arch=self.arch, model=self.model_options, num_outputs=self.num_outputs,
                   scale=self.scale.to_json(), lr=self.lr, classes=list(self.facts.classes),
                   channels=self.facts.channels, mean_rgb=list(self.facts.mean_rgb),
                   preprocessing=self.preprocessing.to_json())
        return out

    def to_json(self) -> dict:
        config = {k: getattr(self.config, k) for k in self.config.field_names()}
        config["scale"] = None if self.config.scale is None else self.config.scale.to_json()
        return {"config": config, "facts": self.facts.to_json(), "arch": self.arch,
                "model_options": self.model_options, "num_outputs": self.num_outputs,
                "scale": self.scale.to_json(), "lr": self.lr, "preprocessing": self.preprocessing.to_json()}


def make_head(name: str) -> Head:
    entry = get_host().registry("heads").get(name)
    head = entry.factory()
    if not isinstance(head, Head):
        raise VggtkError(f"head {entry.name!r} of plugin {entry.plugin!r} does not implement the Head contract "
                         "(name, monitor, num_outputs, loss, error_counts)")
    return head


def plan_run(config: TrainConfig, facts: DataFacts) -> RunPlan:
    if facts.num_classes < 2:
        raise VggtkError(f"the data holds {facts.num_classes} class(es): a classifier needs at least two")
    entry = architecture(config.arch)
    for key in ("in_chans", "num_classes"):
        if key in config.model:
            raise VggtkError(f"model.{key}: comes from the data and the head ({facts.channels} channel(s), "
                             f"{facts.num_classes} classes), not from the configuration")
    recipe = entry.info.get("defaults")
    defaults = dict(recipe(facts)) if callable(recipe) else {}
    options = check_options(entry.name, {"in_chans": facts.channels, "input_size": facts.crop, **defaults,
                                         **_started_from(config, entry.name), **config.model}, where="model.")
    crop = int(options["input_size"])
    if config.scale is not None:
        scale = config.scale
    elif crop == facts.crop:
        scale = facts.scale  # the data's recipe: jittered S, as in the paper's best nets
    else:
        scale = TrainScale.parse(round(crop * 256 / 224))  # the paper's ratio of crop to S
    scale.check_crop(crop)
    head = make_head(config.head)
    with torch.device("meta"):  # the factory's own checks (a dropout of 1.5...) now, for nothing
        skeleton = create_model(entry.name, num_classes=head.num_outputs(facts.num_classes), **options)
    scopes = skeleton.finetune_scopes if isinstance(skeleton, FinetuneScopes) else ("all",)
    if config.finetune not in scopes:
        raise VggtkError(f"--finetune {config.finetune}: {entry.name} can train {' or '.join(scopes)}")
    lr = config.lr if config.lr is not None else (
        FINE_TUNE_LR if config.init_from and _same_architecture(config.init_from, entry.name) else DEFAULT_LR)
    return RunPlan(config, facts, entry.name, options, head.num_outputs(facts.num_classes), scale, lr,
                   _preprocessing(config, facts))


def _preprocessing(config: TrainConfig, facts: DataFacts) -> Preprocessing:
    """``--preprocess`` when given; else a net started from one trained elsewhere (torchvision, Caffe)
    keeps that net's input convention; else vggtk's, with the data's mean colour."""
    if config.preprocess is not None:
        if config.preprocess.endswith(".json"):
            return Preprocessing.load(config.preprocess)
        return Preprocessing.named(config.preprocess, facts.mean_rgb)
    source = _source_info(config.init_from) if config.init_from else None
    if source is not None and source.preprocessing is not None and source.preprocessing.family != "vggtk":
        return source.preprocessing
    return Preprocessing.vggtk(facts.mean_rgb)


def _started_from(config: TrainConfig, arch: str) -> dict:
    """The options a net started from a trained one of the same architecture takes from it (its width, FC
    size, input size...), as the weights it copies have those shapes; what the configuration gives wins."""
    source = _source_info(config.init_from) if config.init_from else None
    if source is None or architecture(source.arch).name != arch:
        return {}
    return {k: v for k, v in source.options.items() if k not in ("num_classes", "in_chans", "init")}


def _source_info(init_from: str) -> ModelInfo | None:
    """The net a run starts from: its record, or what its tensors say (a torchvision or Caffe file)."""
    try:
        return describe_weights(weights_file(init_from))[0]
    except WeightsError:  # a file no plugin recognises: its tensors are checked when they are loaded
        return None


def _same_architecture(init_from: str, arch: str) -> bool:
    info = _source_info(init_from)
    return info is not None and architecture(info.arch).name == arch

