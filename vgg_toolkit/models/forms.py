"""Running a model in the form a protocol needs: eval mode, and the Linear or fully-convolutional
classifier where the architecture offers both."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from ..contract.model import FullyConvolutional
from ..errors import VggtkError


@contextmanager
def model_form(model: nn.Module, fully_conv: bool):
    """Eval mode and the wanted classifier form for the duration; both restored afterwards. A model that
    cannot switch runs as it is (protocols that need the fully-convolutional form check first)."""
    was_training = model.training
    can_switch = isinstance(model, FullyConvolutional)
    previous = model.fully_conv if can_switch else None
    model.eval()
    if can_switch:
        model.to_fully_conv() if fully_conv else model.to_linear()
    try:
        yield model
    finally:
        if can_switch:
            model.to_fully_conv() if previous else model.to_linear()
        model.train(was_training)


def require_fully_conv(model: nn.Module, why: str) -> None:
    if not isinstance(model, FullyConvolutional):
        raise VggtkError(f"{type(model).__name__} cannot run its classifier fully-convolutionally "
                         f"(no to_fully_conv()), so it has no {why}")
