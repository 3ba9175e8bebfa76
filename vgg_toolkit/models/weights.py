"""Reading and writing weights: safetensors in any layout the model knows, ``.pth`` without unpickling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..errors import WeightsError

ARCH_METADATA_KEY = "vggtk_arch"


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt`` file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise WeightsError(f"{path}: cannot be read as a weights-only PyTorch file ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state_dict of tensors")
    return obj


def read_arch(path: str | os.PathLike) -> dict | None:
    """How the model in a vggtk ``.safetensors`` file was built (``{"name", "kwargs"}``), if recorded."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    return json.loads(meta[ARCH_METADATA_KEY]) if ARCH_METADATA_KEY in meta else None


def load_weights(model: nn.Module, path: str | os.PathLike, layout: str = "auto") -> str:
    """Load weights into ``model`` in place, detecting the layout (vggtk, torchvision, timm).

    Returns the layout that was read. Raises WeightsError naming the first tensors that do not fit.
    """
    tensors = read_tensors(path)
    try:
        if hasattr(model, "import_state_dict"):
            return model.import_state_dict(tensors, layout=layout)
        if layout not in ("auto", "vggtk"):
            raise WeightsError(f"{type(model).__name__} knows only the vggtk layout, not {layout!r}")
        _load_plain(model, tensors)
        return "vggtk"
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None


def _load_plain(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    problems = [f"missing {k}" for k in ours if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in ours]
    problems += [f"{k}: file has {tuple(t.shape)}, model needs {tuple(ours[k].shape)}"
                 for k, t in tensors.items() if k in ours and t.shape != ours[k].shape]
    if problems:
        raise WeightsError("weights do not fit: " + "; ".join(problems[:3]))
    model.load_state_dict(tensors)


def save_weights(model: nn.Module, path: str | os.PathLike, layout: str = "vggtk") -> Path:
    """Write the model's weights as safetensors, atomically (temp file, then rename)."""
    if hasattr(model, "export_state_dict"):
        tensors = model.export_state_dict(layout)
    elif layout == "vggtk":
        tensors = model.state_dict()
    else:
        raise WeightsError(f"{type(model).__name__} knows only the vggtk layout, not {layout!r}")
    metadata = {"layout": layout}
    arch = getattr(model, "vggtk_arch", None)
    if arch is not None and layout == "vggtk":
        metadata[ARCH_METADATA_KEY] = json.dumps(arch)
    return save_safetensors(tensors, path, metadata)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Tensors and string metadata as one safetensors file, written atomically (temp file, fsync, rename)."""
    path = Path(path)
    # safetensors refuses shared or non-contiguous storage; copies are small next to a disk write.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:  # the rename must not land before the bytes do
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
