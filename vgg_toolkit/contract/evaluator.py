"""What the evaluation runner may ask of an evaluator besides ``evaluator(model, images) -> posteriors``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from .scale import TrainScale


@runtime_checkable
class DescribedEvaluator(Protocol):
    def describe(self) -> str:
        """The method's name in the results table, e.g. "multi-crop 5x5x2"."""


@runtime_checkable
class ScaledEvaluator(Protocol):
    def train_scale_for(self, model: nn.Module) -> TrainScale | None:
        """The training scale the default test scales come from (None when unknown)."""

    def scales_for(self, model: nn.Module) -> tuple[int, ...]:
        """The test scales really used on ``model``."""
