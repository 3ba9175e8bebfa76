"""Building models from the architecture registry."""

from __future__ import annotations

from torch import nn

from ..host.manager import get_host


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build the architecture registered as ``name`` (or one of its aliases).

    The model remembers how it was built in ``model.vggtk_arch`` so checkpoints can rebuild it.
    """
    entry = get_host().registry("architectures").get(name)
    model = entry.factory(num_classes=num_classes, **kwargs)
    model.vggtk_arch = {"name": entry.name, "kwargs": {"num_classes": num_classes, **kwargs}}
    return model


def list_models() -> list[str]:
    """Canonical names of every registered architecture, sorted."""
    return get_host().registry("architectures").names()


def prepare_model(model: nn.Module, device, conv_backend: str = "auto") -> nn.Module:
    """Move ``model`` to ``device`` and let plugins adapt it (``vggtk_prepare_model``), e.g. the Triton
    conv backend. ``conv_backend`` is "torch", "triton" or "auto" and reaches plugins as
    ``model.vggtk_options["conv_backend"]``."""
    import torch

    device = torch.device(device)
    model = model.to(device)
    model.vggtk_options = {**getattr(model, "vggtk_options", {}), "conv_backend": conv_backend}
    get_host().pm.hook.vggtk_prepare_model(model=model, device=device)
    return model
