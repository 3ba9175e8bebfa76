"""The training loop: the paper's recipe (SGD, momentum, weight decay, lr / 10 on plateaus),
exact resume, DDP, and a guard against non-finite losses. Small enough to hold in one's head."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint, load_optimizer, save_checkpoint, weights_file
from ..runtime.devices import mixed_precision, pick_device
from ..runtime.distributed import DistEnv, all_reduce_sum, broadcast_object, init_distributed, shutdown
from ..errors import VggtkError
from ..models.layers import global_rows
from ..evaluation.metrics import topk_errors
from ..models.factory import create_model, prepare_model
from ..host.manager import get_host
from .schedule import PlateauSchedule
from ..runtime.seeding import derived_seed
from ..models.weights import load_weights, read_arch, read_tensors


@dataclass
class TrainConfig:
    """Every choice of a run. Defaults are the paper's (Sec. 3.1) except where the data is tiny."""

    arch: str = "vgg-a"
    model: dict = field(default_factory=dict)  # factory kwargs: width, fc_dim, input_size, batch_norm, init...
    epochs: int = 74  # upper bound; the lr schedule usually stops the run first
    batch_size: int = 256  # global, split over ranks and accumulation steps
    accum_steps: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_patience: int = 2  # epochs without a better validation accuracy before lr / 10
    max_lr_drops: int = 3
    seed: int = 0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = at epoch ends only
    keep_last: int = 2
    log_every: int = 20  # steps between host syncs for logging and the non-finite check
    device: str = "auto"
    conv_backend: str = "auto"
    compile: bool = False
    classes: list | None = None  # class names, recorded so evaluation can check ensembles agree
    mean_rgb: list | None = None  # the training split's mean (0-255), recorded so evaluation subtracts the same
    train_scale: list | None = None  # [S] or [Smin, Smax]: applied by the data pipeline, recorded for eval
    init_from: str | None = None  # checkpoint dir or weights file: fine-tune, or the paper's A -> deeper copy

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise VggtkError(f"unknown training option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


class BatchSource(Protocol):
    """What the loop needs from data: uint8 NCHW batches for one rank, and how to normalise them."""

    num_classes: int

    def split_layout(self, env: DistEnv) -> dict:
        """What a started epoch's remaining batches depend on besides the seed (rank count, reader
        workers...); a mid-epoch resume needs the same. Empty when any layout resumes exactly."""

    def pop_skipped(self) -> tuple[int, str]:
        """Training samples this rank skipped as unreadable since the last call, and what they were."""

    def num_batches(self, global_batch: int, env: DistEnv, micro_batch: int) -> int:
        """Global batches per epoch (the same on every rank)."""

    def train_batches(self, epoch: int, start: int, env: DistEnv, global_batch: int,
                      micro_batch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def val_batches(self, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> the network's float input."""


class NonFiniteError(VggtkError):
    pass


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and normalisation scales are not penalised."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate_top_k(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 error (%) of single centre crops on the validation split. Every rank evaluates the
    whole split, so all ranks take the same schedule decision without another collective."""
    model.eval()
    logits, targets = [], []
    with torch.no_grad(), mixed_precision(device):
        for images, labels in batches:
            logits.append(model(normalize(images.to(device, non_blocking=True))).float().cpu())
            targets.append(labels)
    errors = topk_errors(torch.cat(logits), torch.cat(targets), (1, 5))  # fractions
    return {"top1_err": 100 * errors[1], "top5_err": 100 * errors[5]}


# Options that may change when a run resumes; any other difference is an error, not a silent mix.
RESUMABLE_CHANGES = {"epochs", "device", "conv_backend", "compile", "log_every", "checkpoint_every", "keep_last",
                     "init_from"}


def train(config: TrainConfig, source: BatchSource, run_dir: str | Path, resume: str | Path | None = "auto",
          on_event: Callable[[str, dict], None] | None = None) -> dict:
    """Train until the schedule stops or ``config.epochs`` pass; returns the final summary.

    ``resume``: "auto" continues from the newest complete checkpoint in ``run_dir`` if any, a path
    continues from that checkpoint, None starts fresh (and refuses a run directory holding
    checkpoints, whose newer steps would otherwise shadow the new run's).
    """
    device = pick_device(config.device)
    env = init_distributed(device)
    if env.enabled and device.type == "cuda":  # one GPU per process, as torchrun's LOCAL_RANK says
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    events = _Events(on_event, env)
    try:
        return _train(config, source, Path(run_dir), resume, device, env, events)
    finally:
        shutdown(env)


class _Events:
    """The caller's callback on every rank, and the plugins' ``vggtk_on_train_event`` on rank 0."""

    def __init__(self, callback, env: DistEnv):
        self.callback, self.env = callback or (lambda e, s: None), env

    def __call__(self, event: str, state: dict) -> None:
        self.callback(event, state)
        if self.env.is_main:
            get_host().pm.hook.vggtk_on_train_event(event=event, state=dict(state))


def _checkpoint_to_resume(run_dir: Path, resume, env: DistEnv) -> Path | None:
    if resume == "auto":
        found = latest_checkpoint(run_dir) if env.is_main else None
        found = broadcast_object(str(found) if found else None, env)  # every rank resumes the same step
        return Path(found) if found else None
    if resume:
        ckpt = Path(resume)
        if not (ckpt / "state.json").is_file():
            raise VggtkError(f"{ckpt}: not a complete checkpoint directory (no state.json)")
        return ckpt
    if latest_checkpoint(run_dir) is not None:
        raise VggtkError(f"{run_dir} already holds checkpoints of another run: resume it, or train into a new "
                         "--run-dir (or delete that one)")
    return None


def _check_resumable(saved: dict, config: TrainConfig, ckpt: Path) -> None:
    ours = asdict(config)
    changed = sorted(k for k in set(saved) | set(ours) if k not in RESUMABLE_CHANGES and saved.get(k) != ours.get(k))
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {ours.get(k)!r}" for k in changed[:4])
        raise VggtkError(f"{ckpt} was trained with other options ({detail}); resume with the same options, "
                         "or start a new --run-dir")


def _train(config, source, run_dir, resume, device, env, on_event) -> dict:
    micro_batch, rem = divmod(config.batch_size, env.world_size * config.accum_steps)
    if rem or micro_batch < 1:
        raise VggtkError(f"global batch {config.batch_size} does not split into {env.world_size} rank(s) x "
                         f"{config.accum_steps} accumulation step(s)")
    batches_per_epoch = source.num_batches(config.batch_size, env, micro_batch)
    if batches_per_epoch < 1:
        raise VggtkError(f"the training split holds fewer samples than one global batch of {config.batch_size}")

    torch.manual_seed(derived_seed(config.seed, "init"))  # same initial weights on every rank
    model = create_model(config.arch, num_classes=source.num_classes, **config.model)
    schedule = PlateauSchedule(config.lr, patience=config.lr_patience, max_drops=config.max_lr_drops)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "running": [0.0, 0.0],
             "config": asdict(config), "seed": config.seed, "world_size": env.world_size, "finished": False}
    layout = source.split_layout(env)
    ckpt = _checkpoint_to_resume(run_dir, resume, env)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, None)
        _check_resumable(state["config"], config, ckpt)
        if state["batch_in_epoch"]:
            _check_layout(state.get("split_layout", {"world_size": state.get("world_size")}), layout, ckpt)
        state.update(config=asdict(config), world_size=env.world_size)
        schedule = PlateauSchedule.from_state(state["schedule"])
    elif config.init_from:
        copied = initialise_from(model, config.init_from)
        on_event("initialised", {"source": config.init_from, "copied": copied})
    state["split_layout"] = layout
    # The optimizer follows the model to its device, so resumed momentum lands beside the weights.
    model = prepare_model(model, device, conv_backend=config.conv_backend)
    # NHWC is faster for these convs on CUDA (cuDNN, the Triton kernels) and on CPU too (oneDNN:
    # 1.24x a training step of the half-width VGG-A at batch 128, 2-core EPYC).
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum)
    if ckpt is not None:
        load_optimizer(ckpt, optimizer)
        on_event("resumed", {"checkpoint": str(ckpt), "history": state["history"], **_public(state)})
    net = model
    if env.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    running = torch.tensor(state["running"], dtype=torch.float64, device=device)  # loss sum, steps this epoch

    def save(is_best=False):
        if env.is_main:
            state["schedule"] = schedule.state_dict()
            state["running"] = running.tolist()
            path = save_checkpoint(run_dir, model, optimizer, state, keep_last=config.keep_last, is_best=is_best)
            on_event("checkpoint", {"path": str(path), **_public(state)})

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    on_event("start", {"batches_per_epoch": batches_per_epoch, "device": str(device), "world_size": env.world_size,
                       **_public(state)})
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    step_t = torch.full((), state["step"], dtype=torch.long, device=device)  # a device copy: no sync per step
    per_rank = config.batch_size // env.world_size
    with _stop_at_step_boundary() as stop:
        while not state["finished"] and state["epoch"] < config.epochs:
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr
            net.train()
            tick, seen = time.perf_counter(), 0
            micro = []
            for images, labels in source.train_batches(state["epoch"], state["batch_in_epoch"], env,
                                                       config.batch_size, micro_batch):
                micro.append((images, labels))
                if len(micro) < config.accum_steps:
                    continue
                loss_sum = torch.zeros((), device=device)
                for i, (x, y) in enumerate(micro):
                    # Every micro-batch of every rank starts from the step's seed and keeps its own rows
                    # of the global dropout masks: one process, N ranks and accumulation agree exactly.
                    torch.manual_seed(derived_seed(config.seed, "step", state["step"]))
                    sync = contextlib.nullcontext() if (i == len(micro) - 1 or not env.enabled) else net.no_sync()
                    rows = global_rows(model, env.rank * per_rank + i * micro_batch, config.batch_size)
                    with sync, rows, mixed_precision(device):
                        x = source.normalize(x.to(device, non_blocking=True))
                        x = x.contiguous(memory_format=torch.channels_last)
                        loss = F.cross_entropy(net(x).float(), y.to(device, non_blocking=True)) / len(micro)
                        loss.backward()
                    loss_sum += loss.detach()
                micro = []
                grad_ok = torch.stack([torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]).all()
                ok = torch.isfinite(loss_sum) & grad_ok
                bad_step = torch.where((bad_step < 0) & ~ok, step_t, bad_step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running += torch.stack([loss_sum.double(), torch.ones((), dtype=torch.float64, device=device)])
                step_t += 1
                state["step"] += 1
                state["batch_in_epoch"] += 1
                seen += config.batch_size
                periodic = config.checkpoint_every and state["step"] % config.checkpoint_every == 0
                if state["step"] % config.log_every == 0 or periodic or stop.requested:
                    _check_finite(bad_step, run_dir)
                    loss_avg = running[0].item() / max(running[1].item(), 1)
                    on_event("step", {**_public(state), "loss": loss_avg, "lr": schedule.lr,
                                      "img_per_s": seen / (time.perf_counter() - tick),
                                      "batches_per_epoch": batches_per_epoch})
                if periodic or stop.requested:
                    save()
                if stop.requested:
                    on_event("interrupted", _public(state))
                    raise KeyboardInterrupt
            _check_finite(bad_step, run_dir)
            skipped, skip_detail = source.pop_skipped()
            train_loss = all_reduce_sum(running.clone(), env)
            skipped = int(all_reduce_sum(torch.tensor(float(skipped), dtype=torch.float64, device=device), env).item())
            running.zero_()
            val = evaluate_top_k(model, source.val_batches(micro_batch), source.normalize, device)
            decision = schedule.update(100 - val["top1_err"])
            record = {"epoch": state["epoch"] + 1, "train_loss": train_loss[0].item() / max(train_loss[1].item(), 1),
                      "lr": optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in val.items()},
                      "decision": decision, "seconds": time.perf_counter() - tick,
                      **({"train_skipped": skipped, "skipped_detail": skip_detail} if skipped else {})}
            state["history"].append(record)
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["finished"] = decision == "stop"
            on_event("epoch", {**_public(state), **record})
            save(is_best=decision == "improved")
            if stop.requested:
                on_event("interrupted", _public(state))
                raise KeyboardInterrupt
    summary = {**_public(state), "best_val_top1_err": 100 - schedule.best if state["history"] else None,
               "checkpoint": str(latest_checkpoint(run_dir)) if env.is_main else None}
    on_event("end", summary)
    return summary


class _stop_at_step_boundary(contextlib.AbstractContextManager):
    """The first Ctrl-C asks the loop to save and stop after the current step, so the checkpoint's
    counters match its weights; a second one interrupts at once."""

    requested = False

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def initialise_from(model: nn.Module, source: str | Path) -> list[str]:
    """Copy weights from a trained net into ``model`` as the paper does (Sec. 3.1).

    Same architecture: every tensor (fine-tuning, e.g. S=384 from S=256). A shallower net into a
    deeper one (A into B..E): its first four conv layers and its three FC layers, each into the layer
    of the same name (block1.conv1, block2.conv1, block3.conv1, block3.conv2, fc6, fc7, fc8); the
    rest keeps its random init. Returns the names of the layers copied.
    """
    weights = weights_file(source)
    arch = read_arch(weights)
    ours = model.state_dict()
    tensors = read_tensors(weights)
    if arch is not None and getattr(model, "vggtk_arch", {}).get("name") != arch["name"]:
        convs = [k[: -len(".weight")] for k, t in tensors.items() if k.startswith("features.") and t.ndim == 4]
        layers = convs[:4] + [k[: -len(".weight")] for k in tensors if k.startswith("classifier.") and k.endswith(".weight")]
        tensors = {k: t for k, t in tensors.items() if k.rsplit(".", 1)[0] in layers}
        problems = [f"{k}: missing in {model.vggtk_arch['name']}" if k not in ours else
                    f"{k}: {tuple(t.shape)} vs {tuple(ours[k].shape)}"
                    for k, t in tensors.items() if k not in ours or ours[k].shape != t.shape]
        if problems:
            raise VggtkError(f"{weights}: cannot initialise {model.vggtk_arch['name']} from {arch['name']}: "
                             + "; ".join(problems))
        model.load_state_dict(tensors, strict=False)
        return sorted({k.rsplit(".", 1)[0] for k in tensors})
    load_weights(model, weights)
    return sorted({k.rsplit(".", 1)[0] for k in ours if not k.endswith("num_batches_tracked")})


def _public(state: dict) -> dict:
    return {k: state[k] for k in ("step", "epoch", "batch_in_epoch")}


def _check_layout(saved: dict, ours: dict, ckpt: Path) -> None:
    changed = [k for k in ours if k in saved and saved[k] != ours[k]]
    if changed:
        detail = ", ".join(f"{k} {saved[k]} (this run: {ours[k]})" for k in changed)
        raise VggtkError(f"{ckpt} stopped mid-epoch with {detail}; resume with the same, since this data source "
                         "cannot re-split a started epoch")


def _check_finite(bad_step: torch.Tensor, run_dir: Path) -> None:
    step = int(bad_step.item())  # the one host sync, every log_every steps
    if step >= 0:
        last = latest_checkpoint(run_dir)
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step + 1}: training stopped; "
            + (f"last good checkpoint: {last}" if last else "no checkpoint was written yet")
            + " (lower --lr or check the data)"
        )
