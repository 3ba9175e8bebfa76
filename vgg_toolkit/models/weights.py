"""Reading and writing weights: safetensors in any layout the model knows, ``.pth`` without unpickling,
Caffe's ``.caffemodel`` (``caffe.py``).

Every file vggtk writes records the model's ``ModelInfo`` in its metadata, so a weights file alone
rebuilds its network, with its classes, training scale and mean colour once trained.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import nn

from ..contract.model import ModelInfo, WeightLayouts, find_model_info
from ..errors import WeightsError
from ..runtime.files import atomic_file, mark

INFO_KEY = "vggtk_model"
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_ELEMENTS = 1 << 34  # values in one weights file: far above any VGG, far below a crafted bomb


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, a ``.caffemodel``, or a ``.pth``/``.pt`` file read with
    ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    if path.suffix == ".caffemodel":
        from .caffe import read_caffemodel

        return read_caffemodel(path)
    return _read_pth(path)


def _read_pth(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:  # an old (non-zip) file cannot be mapped: read it whole
            if not mmap or "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise WeightsError(f"{path}: cannot be read as a weights-only PyTorch file ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise WeightsError(f"{path}: holds no state_dict of named tensors")
    total = 0
    for key, t in obj.items():
        if t.layout != torch.strided or t.device.type != "cpu":
            raise WeightsError(f"{path}: {key} is a {t.layout} tensor on {t.device}, not plain weights")
        span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) if t.numel() else 0
        held = t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
        if t.numel() > span or span * t.element_size() > held:  # values that overlap, or outrun the file
            raise WeightsError(f"{path}: {key} claims {t.numel():,} values over {t.untyped_storage().nbytes():,} "
                               "bytes of storage: repeated or missing values, crafted")
        total += t.numel()
    if total > MAX_ELEMENTS:
        raise WeightsError(f"{path}: {total:,} values: more than any net vggtk reads")
    return obj


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a weights file without reading its values: a safetensors header, a
    ``.caffemodel``'s records, a ``.pth`` mapped into memory (an old non-zip one is read whole)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        with _open_safetensors(path) as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if path.suffix == ".caffemodel":
        from .caffe import read_caffemodel

        return {k: tuple(t.shape) for k, t in read_caffemodel(path, data=False).items()}
    return {k: tuple(t.shape) for k, t in _read_pth(path, mmap=True).items()}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (empty for other files)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    with _open_safetensors(path) as f:
        return dict(f.metadata() or {})


def read_model_info(path: str | os.PathLike) -> ModelInfo | None:
    """The ``ModelInfo`` recorded in a ``.safetensors`` file vggtk wrote, if any."""
    meta = read_metadata(path)
    if INFO_KEY not in meta:
        return None
    try:
        data = json.loads(meta[INFO_KEY])
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{path}: the recorded model info is not JSON ({exc})") from None
    return ModelInfo.from_json(data, str(path))


def check_values(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Weights must be floating point and finite; integer buffers (BatchNorm's counter) may be integers.
    Checked a slice at a time: ``isfinite`` over VGG's FC6 at once makes temporaries larger than it."""
    for key, t in tensors.items():
        if key.endswith("num_batches_tracked"):
            continue
        if t.dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{where}: {key} holds {t.dtype} values, not floating-point weights "
                               "(float16, bfloat16, float32 or float64)")
        if not all(bool(torch.isfinite(part).all()) for part in t.reshape(-1).split(1 << 22)):
            raise WeightsError(f"{where}: {key} holds NaN or infinite values")
        if key.endswith("running_var") and bool((t < 0).any()):
            raise WeightsError(f"{where}: {key} holds negative variances")


def load_weights(model: nn.Module, path: str | os.PathLike, layout: str = "auto") -> str:
    """Load weights into ``model`` in place, detecting the layout (vggtk, torchvision, timm).

    Returns the layout that was read. Raises WeightsError naming the first tensors that do not fit,
    or that are not finite floating-point numbers; nothing is half-loaded.
    """
    tensors = read_tensors(path)
    check_values(tensors, str(path))
    try:
        if isinstance(model, WeightLayouts):
            return model.import_state_dict(tensors, layout=layout)
        if layout not in ("auto", "vggtk"):
            raise WeightsError(f"{type(model).__name__} knows only the vggtk layout, not {layout!r}")
        load_state(model, tensors)
        return "vggtk"
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None


def fit_problems(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    """What keeps tensors of shapes ``found`` from fitting a model whose state_dict has ``expected`` shapes."""
    problems = [f"missing {k}" for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [f"{k}: file has {tuple(s)}, model needs {tuple(expected[k])}"
                 for k, s in found.items() if k in expected and tuple(s) != tuple(expected[k])]
    return problems


def load_state(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """A vggtk-layout state_dict into ``model``, after checking every name and shape."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = fit_problems(ours, {k: tuple(t.shape) for k, t in tensors.items()})
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError("weights do not fit: " + "; ".join(problems[:3]) + more)
    model.load_state_dict(tensors, strict=False)


def save_weights(model: nn.Module, path: str | os.PathLike, layout: str = "vggtk",
                 info: ModelInfo | None = None) -> Path:
    """Write the model's weights as safetensors, atomically, in ``layout``. Every layout records ``info``
    (by default the model's own) and the layout, so the file alone rebuilds the network."""
    if isinstance(model, WeightLayouts):
        tensors = model.export_state_dict(layout)
    elif layout == "vggtk":
        tensors = model.state_dict()
    else:
        raise WeightsError(f"{type(model).__name__} knows only the vggtk layout, not {layout!r}")
    metadata = {"layout": layout}
    info = info or find_model_info(model)
    if info is not None:
        metadata[INFO_KEY] = json.dumps(info.to_json())
    return save_safetensors(tensors, path, metadata)


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str], kind: str = "weights") -> Path:
    """Tensors and string metadata as one safetensors file, written atomically, with vggtk's mark of
    ``kind``. The format (an 8-byte header length, a JSON header, the raw little-endian values) is
    written here tensor by tensor from the tensors' own memory: converting a 553 MB net never holds a
    second copy of it, as serialising to one buffer first would."""
    header: dict = {}
    parts: list[torch.Tensor] = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise WeightsError(f"{name}: {t.dtype} values cannot be saved")
        t = t.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        parts.append(t)
        offset += size
    header["__metadata__"] = {**metadata, **mark(kind)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the values start 8-byte aligned
    with atomic_file(path) as tmp, open(tmp, "wb") as out:
        _write_values(out, text, parts)
    return Path(path)


def _write_values(out, header: bytes, parts: list[torch.Tensor]) -> None:
    out.write(struct.pack("<Q", len(header)))
    out.write(header)
    for t in parts:
        if t.numel():
            out.write(t.reshape(-1).view(torch.uint8).numpy().data)

