"""Checkpoints: one directory per save (model.safetensors, optimizer.safetensors, state.json),
written under a temporary name and renamed into place, so a killed run never leaves a half
checkpoint where resume would look. No RNG state is stored: every random draw derives from
(seed, epoch, sample key) or (seed, step), which state.json holds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import VggtkError
from ..models.weights import save_weights

PREFIX = "ckpt-"
BEST = "best"


def weights_file(path: str | os.PathLike) -> Path:
    """The weights of a checkpoint directory, or ``path`` itself when it is a weights file."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep_last: int = 2, is_best: bool = False) -> Path:
    """Write ``ckpt-<step>`` atomically; keep the newest ``keep_last`` and, if ``is_best``, copy to ``best``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{state['step']:09d}"
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _fsync_tree(tmp)
    final = run_dir / name
    if final.exists():  # the same step saved again (e.g. at an epoch end right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if is_best:
        _replace_dir(final, run_dir / BEST)
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def read_state(ckpt: str | os.PathLike) -> dict:
    path = Path(ckpt) / "state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VggtkError(f"{path}: unreadable checkpoint state ({exc})") from None


def load_checkpoint(ckpt: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimizer) in place from a checkpoint directory; returns its state."""
    from ..models.weights import load_weights

    ckpt = Path(ckpt)
    state = read_state(ckpt)
    load_weights(model, ckpt / "model.safetensors")
    if optimizer is not None:
        load_optimizer(ckpt, optimizer)
    return state


def load_optimizer(ckpt: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer's state; its tensors follow the parameters' device."""
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "optimizer.json").read_text())
    _restore_optimizer(optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta)
