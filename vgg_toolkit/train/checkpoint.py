"""Checkpoints: one directory per save (model.safetensors, optimizer.safetensors, optimizer.json,
state.json), written as a whole under a temporary name and renamed into place, so a killed run never
leaves a half checkpoint where resume would look. No RNG state is stored: every random draw derives
from (seed, epoch, sample key) or (seed, step), which state.json holds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..contract.model import ModelInfo
from ..errors import VggtkError
from ..models.trained import WEIGHTS_NAME
from ..models.weights import load_weights, save_weights
from ..runtime.files import KIND_KEY, atomic_folder, mark, remove_debris, written_by_vggtk

PREFIX = "ckpt-"
BEST = "best"
CHECKPOINT_FILES = {WEIGHTS_NAME, "optimizer.safetensors", "optimizer.json", "state.json"}
RUN_MARK = ".vggtk-run"  # in every run directory vggtk has written to
LOGS = ("config.json", "metrics.jsonl", "metrics.png")  # what a run writes beside its checkpoints


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Before any work, and writing nothing: ``run_dir`` can be written and holds nothing a run would
    overwrite or delete that vggtk did not write. Other files may share it, untouched."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise VggtkError(f"{run_dir}: is a file; --run-dir names a folder")
    parent = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise VggtkError(f"{run_dir}: cannot write into {parent} (read-only or no permission)")
    if run_dir.is_dir():
        ours = (run_dir / RUN_MARK).exists() or bool(complete_checkpoints(run_dir))
        for name in LOGS:
            path = run_dir / name
            if path.exists() and not (ours or written_by_vggtk(path)):
                raise VggtkError(f"{path}: exists and was not written by vggtk train, which would replace it; "
                                 "move it away or choose another --run-dir")
        # Every name a save could take (ckpt-<step>, best), complete checkpoint or not: a save replaces
        # what holds its name, and pruning deletes old checkpoints whole.
        for ckpt in [run_dir / BEST, *sorted(run_dir.glob(PREFIX + "*"))]:
            foreign = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []
            foreign = [n for n in foreign if n not in CHECKPOINT_FILES]
            if foreign or (ckpt.exists() and not ckpt.is_dir()):
                raise VggtkError(f"{ckpt / foreign[0] if foreign else ckpt}: was not written by vggtk train, and "
                                 "replacing or pruning that checkpoint would delete it; move it away")
    return run_dir


def claim_run_dir(run_dir: str | os.PathLike) -> Path:
    """``check_run_dir``, then mark the folder as a run directory (made if need be)."""
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARK).touch()
    return run_dir


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


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                    info: ModelInfo, keep_last: int = 2, is_best: bool = False) -> Path:
    """Write ``ckpt-<step>`` atomically; keep the newest ``keep_last`` and, if ``is_best``, copy to ``best``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{PREFIX}{state['step']:09d}"
    with atomic_folder(final) as tmp:  # the same step saved twice (periodic, then epoch end) is replaced whole
        save_weights(model, tmp / WEIGHTS_NAME, info=info)
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata=mark("optimizer state"))
        (tmp / "optimizer.json").write_text(json.dumps({**mark("optimizer state"), **meta}))
        (tmp / "state.json").write_text(json.dumps({**mark("checkpoint state"), **state}, indent=1))
    if is_best:
        with atomic_folder(run_dir / BEST) as tmp:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        if all(p.name in CHECKPOINT_FILES for p in old.iterdir()):  # never a folder holding a user's file
            shutil.rmtree(old, ignore_errors=True)
    return final


def clean_run_dir(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left in ``run_dir``: temporary checkpoint folders whose process is gone."""
    return remove_debris(run_dir)


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
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VggtkError(f"{path}: unreadable checkpoint state ({exc})") from None
    missing = [k for k in ("step", "epoch", "batch_in_epoch", "history", "schedule", "identity")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise VggtkError(f"{path}: not a checkpoint state of this vggtk (missing {', '.join(missing)})")
    return {k: v for k, v in state.items() if k not in ("written_by", KIND_KEY)}


def load_checkpoint(ckpt: str | os.PathLike, model: nn.Module) -> dict:
    """Restore the model in place from a checkpoint directory; returns its state."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    load_weights(model, ckpt / WEIGHTS_NAME)
    return state


def load_optimizer(ckpt: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer's state; its tensors follow the parameters' device."""
    ckpt = Path(ckpt)
    try:
        meta = json.loads((ckpt / "optimizer.json").read_text())
        tensors = load_file(str(ckpt / "optimizer.safetensors"))
        state: dict[int, dict] = {}
        for key, value in [*tensors.items(), *meta["scalars"].items()]:
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise VggtkError(f"{ckpt}: unreadable optimizer state ({type(exc).__name__}: {exc}); resume from an "
                         "earlier checkpoint with --resume DIR") from None
