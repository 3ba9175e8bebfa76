"""The training loop: the paper's recipe (SGD, momentum, weight decay, lr / 10 on plateaus),
exact resume, DDP, and a guard against non-finite losses. Small enough to hold in one's head."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistEnv, all_reduce_sum, init_distributed, shutdown
from .errors import VggtkError
from .models import create_model, prepare_model
from .schedule import PlateauSchedule
from .seeding import derived_seed
from .weights import load_weights, read_arch, read_tensors


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

    def num_batches(self, global_batch: int, env: DistEnv, micro_batch: int) -> int:
        """Global batches per epoch (the same on every rank)."""

    def train_batches(self, epoch: int, start: int, env: DistEnv, global_batch: int,
                      micro_batch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def val_batches(self, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> the network's float input."""


class NonFiniteError(VggtkError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VggtkError(f"device {name!r} requested but CUDA is not available")
    return device


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and normalisation scales are not penalised."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate_top_k(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 error of single centre crops on the validation split. Every rank evaluates the
    whole split, so all ranks take the same schedule decision without another collective."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top1 correct, top5 correct, n
    with torch.no_grad(), _autocast(device):
        for images, labels in batches:
            logits = model(normalize(images.to(device, non_blocking=True)))
            labels = labels.to(device)
            top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
            hit = top == labels[:, None]
            counts += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), torch.tensor(len(labels), device=device)]).double()
    n = max(counts[2].item(), 1.0)
    return {"top1_err": 100 * (1 - counts[0].item() / n), "top5_err": 100 * (1 - counts[1].item() / n)}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(config: TrainConfig, source: BatchSource, run_dir: str | Path, resume: str | Path | None = "auto",
          on_event: Callable[[str, dict], None] | None = None) -> dict:
    """Train until the schedule stops or ``config.epochs`` pass; returns the final summary.

    ``resume``: "auto" continues from the newest complete checkpoint in ``run_dir`` if any,
    a path continues from that checkpoint, None starts fresh.
    """
    device = pick_device(config.device)
    env = init_distributed(device)
    try:
        return _train(config, source, Path(run_dir), resume, device, env, on_event or (lambda e, s: None))
    finally:
        shutdown(env)


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
    optimizer = torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum)
    schedule = PlateauSchedule(config.lr, patience=config.lr_patience, max_drops=config.max_lr_drops)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "config": asdict(config),
             "seed": config.seed, "finished": False}

    ckpt = latest_checkpoint(run_dir) if resume == "auto" else (Path(resume) if resume else None)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer)
        schedule = PlateauSchedule.from_state(state["schedule"])
        on_event("resumed", {"checkpoint": str(ckpt), **_public(state)})
    elif config.init_from:
        copied = initialise_from(model, config.init_from)
        on_event("initialised", {"source": config.init_from, "copied": copied})
    model = prepare_model(model, device, conv_backend=config.conv_backend)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = model
    if env.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def save(is_best=False):
        if env.is_main:
            state["schedule"] = schedule.state_dict()
            path = save_checkpoint(run_dir, model, optimizer, state, keep_last=config.keep_last, is_best=is_best)
            on_event("checkpoint", {"path": str(path), **_public(state)})

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    on_event("start", {"batches_per_epoch": batches_per_epoch, "device": str(device), "world_size": env.world_size,
                       **_public(state)})
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    running = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, steps
    try:
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
                torch.manual_seed(derived_seed(config.seed, "step", state["step"], env.rank))  # dropout
                loss_sum = torch.zeros((), device=device)
                for i, (x, y) in enumerate(micro):
                    sync = contextlib.nullcontext() if (i == len(micro) - 1 or not env.enabled) else net.no_sync()
                    with sync, _autocast(device):
                        x = source.normalize(x.to(device, non_blocking=True))
                        if device.type == "cuda":
                            x = x.contiguous(memory_format=torch.channels_last)
                        loss = F.cross_entropy(net(x).float(), y.to(device, non_blocking=True)) / len(micro)
                        loss.backward()
                    loss_sum += loss.detach()
                micro = []
                grad_ok = torch.stack([torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]).all()
                ok = torch.isfinite(loss_sum) & grad_ok
                bad_step = torch.where((bad_step < 0) & ~ok, torch.tensor(state["step"], device=device), bad_step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running += torch.stack([loss_sum.double(), torch.ones((), dtype=torch.float64, device=device)])
                state["step"] += 1
                state["batch_in_epoch"] += 1
                seen += config.batch_size
                periodic = config.checkpoint_every and state["step"] % config.checkpoint_every == 0
                if state["step"] % config.log_every == 0 or periodic:
                    _check_finite(bad_step, running, state, run_dir)
                    loss_avg = running[0].item() / max(running[1].item(), 1)
                    on_event("step", {**_public(state), "loss": loss_avg, "lr": schedule.lr,
                                      "img_per_s": seen / (time.perf_counter() - tick),
                                      "batches_per_epoch": batches_per_epoch})
                if periodic:
                    save()
            _check_finite(bad_step, running, state, run_dir)
            train_loss = all_reduce_sum(running.clone(), env)
            running.zero_()
            val = evaluate_top_k(model, source.val_batches(micro_batch), source.normalize, device)
            decision = schedule.update(100 - val["top1_err"])
            record = {"epoch": state["epoch"] + 1, "train_loss": train_loss[0].item() / max(train_loss[1].item(), 1),
                      "lr": optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in val.items()},
                      "decision": decision, "seconds": time.perf_counter() - tick}
            state["history"].append(record)
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["finished"] = decision == "stop"
            on_event("epoch", {**_public(state), **record})
            save(is_best=decision == "improved")
    except KeyboardInterrupt:
        _check_finite(bad_step, running, state, run_dir)
        save()
        on_event("interrupted", _public(state))
        raise
    summary = {**_public(state), "best_val_top1_err": 100 - schedule.best if state["history"] else None,
               "checkpoint": str(latest_checkpoint(run_dir)) if env.is_main else None}
    on_event("end", summary)
    return summary


def initialise_from(model: nn.Module, source: str | Path) -> list[str]:
    """Copy weights from a trained net into ``model`` as the paper does (Sec. 3.1).

    Same architecture: every tensor (fine-tuning, e.g. S=384 from S=256). A shallower net into a
    deeper one (A into B..E): its first four conv layers and its three FC layers, each into the layer
    of the same name (block1.conv1, block2.conv1, block3.conv1, block3.conv2, fc6, fc7, fc8); the
    rest keeps its random init. Returns the names of the layers copied.
    """
    path = Path(source)
    weights_file = path / "model.safetensors" if path.is_dir() else path
    arch = read_arch(weights_file)
    ours = model.state_dict()
    tensors = read_tensors(weights_file)
    if arch is not None and getattr(model, "vggtk_arch", {}).get("name") != arch["name"]:
        convs = [k[: -len(".weight")] for k, t in tensors.items() if k.startswith("features.") and t.ndim == 4]
        layers = convs[:4] + [k[: -len(".weight")] for k in tensors if k.startswith("classifier.") and k.endswith(".weight")]
        tensors = {k: t for k, t in tensors.items() if k.rsplit(".", 1)[0] in layers}
        problems = [f"{k}: missing in {model.vggtk_arch['name']}" if k not in ours else
                    f"{k}: {tuple(t.shape)} vs {tuple(ours[k].shape)}"
                    for k, t in tensors.items() if k not in ours or ours[k].shape != t.shape]
        if problems:
            raise VggtkError(f"{weights_file}: cannot initialise {model.vggtk_arch['name']} from {arch['name']}: "
                             + "; ".join(problems))
        model.load_state_dict(tensors, strict=False)
        return sorted({k.rsplit(".", 1)[0] for k in tensors})
    load_weights(model, weights_file)
    return sorted({k.rsplit(".", 1)[0] for k in ours if not k.endswith("num_batches_tracked")})


def _public(state: dict) -> dict:
    return {k: state[k] for k in ("step", "epoch", "batch_in_epoch")}


def _check_finite(bad_step: torch.Tensor, running: torch.Tensor, state: dict, run_dir: Path) -> None:
    step = int(bad_step.item())  # the one host sync, every log_every steps
    if step >= 0:
        last = latest_checkpoint(run_dir)
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step + 1}: training stopped; "
            + (f"last good checkpoint: {last}" if last else "no checkpoint was written yet")
            + " (lower --lr or check the data)"
        )
    if not math.isfinite(running[0].item()):
        raise NonFiniteError(f"non-finite running loss by step {state['step']}")
