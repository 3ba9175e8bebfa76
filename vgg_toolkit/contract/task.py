"""The task contract: a head is what the training loop and per-epoch validation need to know about a
task (the width of the network's last layer, the loss, the errors), so a new task needs no change to
the loop. Heads are registered through ``vggtk_register_heads``; ``factory(**options) -> Head``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Head(Protocol):
    name: str
    # The validation error the learning-rate schedule watches (a key of ``error_counts``; lower is better).
    monitor: str

    def num_outputs(self, num_classes: int) -> int:
        """Width of the network's last layer for data of ``num_classes`` classes."""

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: ``outputs`` of the network (N, num_outputs), ``targets`` from the data."""

    def error_counts(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """For each error measure, how many samples of the batch it counts wrong, as integer tensors
        (counted on the device, without a host sync); the loop sums them over the split."""


class AuxiliaryOutputs(NamedTuple):
    """What a network with auxiliary classifiers (GoogLeNet's side heads) returns from ``forward`` in
    training mode; in eval mode it returns ``main`` alone. Each auxiliary output has the shape of
    ``main`` and learns the same targets through the head's own loss, weighted: see ``task_loss``."""

    main: torch.Tensor
    auxiliary: tuple[torch.Tensor, ...]
    weights: tuple[float, ...]


def task_loss(head: "Head", outputs: "torch.Tensor | AuxiliaryOutputs", targets: torch.Tensor) -> torch.Tensor:
    """The loss the loop back-propagates: the head's loss of the main output, plus each auxiliary
    output's head loss times its weight. Errors are always counted on the main output alone."""
    if not isinstance(outputs, AuxiliaryOutputs):
        return head.loss(outputs, targets)
    if len(outputs.auxiliary) != len(outputs.weights):
        raise ValueError(f"{len(outputs.auxiliary)} auxiliary outputs but {len(outputs.weights)} weights")
    loss = head.loss(outputs.main, targets)
    for weight, aux in zip(outputs.weights, outputs.auxiliary):
        loss = loss + weight * head.loss(aux, targets)
    return loss


@runtime_checkable
class BoxTargets(Protocol):
    """A head that learns from boxes (localisation). The data then carries each image's boxes, moved
    with the image through the augmentation (training) or the centre view (validation), and the head
    turns them into its targets; other heads get the labels as targets."""

    def box_targets(self, labels: torch.Tensor, boxes: list[torch.Tensor], box_labels: list[torch.Tensor],
                    height: int, width: int) -> torch.Tensor:
        """Targets for a batch: ``boxes[i]`` xyxy in pixels of image i's ``height`` x ``width`` window."""


@dataclass
class EvalRequest:
    """What ``vggtk eval --task NAME`` hands a registered task: the loaded models (an ensemble when
    several) with their paths, the data, and the command's options; ``options`` holds the ``--scales``
    / ``--multi-scale`` choice and ``plugin_options`` the options plugins declared for ``eval``."""

    models: Sequence[Any]
    names: Sequence[str]
    manifest: Any
    split: str
    methods: Sequence[str] | None
    options: dict = field(default_factory=dict)
    batch_size: int = 64
    workers: int = 0
    on_error: str = "fail"
    limit: int | None = None
    console: Any = None
    plugin_options: dict = field(default_factory=dict)
