"""What ``vggtk compare`` measures of one network: its size and arithmetic (no data needed), the memory a
training step keeps per image, and how fast it runs forward and trains on this device."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import vgg_toolkit as vt


@dataclass(frozen=True)
class Subject:
    """A network to compare: a registered architecture built untrained, or a trained checkpoint."""

    label: str
    model: nn.Module
    input_size: int
    in_chans: int
    checkpoint: Path | None = None

    @property
    def arch(self) -> str:
        return vt.model_info(self.model).arch


@dataclass(frozen=True)
class Measures:
    parameters: int
    weight_layers: int
    gmacs: float
    activation_mb: float  # kept for the backward pass, per image, in float32
    forward_ips: float | None = None  # images per second
    train_ips: float | None = None


def subject(name: str, *, input_size: int | None, in_chans: int, num_classes: int, options: dict,
            device: torch.device) -> Subject:
    """``name``: a checkpoint directory or weights file when one exists there, else an architecture name
    built untrained with ``options``."""
    path = Path(name)
    if path.exists():  # a trained net keeps its own options, classes and channels
        model = vt.load_trained(path, device)
        info = vt.model_info(model)
        return Subject(name, model, input_size or info.input_size, info.in_chans or 3, path)
    # a bad name is the registry's error, which lists the known architectures
    model = vt.create_model(name, num_classes=num_classes, in_chans=in_chans,
                            **({} if input_size is None else {"input_size": input_size}), **options)
    return Subject(name, vt.prepare_model(model, device), vt.model_info(model).input_size, in_chans)


def _images(s: Subject, n: int, device) -> torch.Tensor:
    return torch.randn(n, s.in_chans, s.input_size, s.input_size, device=device,
                       generator=torch.Generator(device).manual_seed(0))


def activation_bytes(s: Subject, device) -> int:
    """Bytes of the tensors a training forward keeps for the backward pass, per image: every saved
    tensor's storage counted once, the parameters (saved by their layers too) left out. Two images, so
    a tensor of the batch is told from one that is not."""
    params = {p.untyped_storage().data_ptr() for p in s.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    model = s.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(_images(s, 2, device))
    del out
    return sum(seen.values()) // 2


def _timed(step, repeats: int, device) -> float:
    """Median seconds of ``step`` over ``repeats`` runs, after one untimed run (allocations, autotuning)."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(s: Subject, batch_size: int, repeats: int, device) -> tuple[float, float]:
    """Images per second of the forward pass (eval mode, no gradients) and of a whole SGD training
    step (forward with any auxiliary classifiers, the classification loss, backward, update), median
    of ``repeats`` after one warm-up, on the same random batch."""
    model = s.model
    x = _images(s, batch_size, device).contiguous(memory_format=torch.channels_last)
    targets = torch.arange(batch_size, device=device) % vt.model_info(model).num_outputs
    head = vt.get_host().registry("heads").get("classification").factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # a trained net leaves as it came

    def forward():
        with torch.no_grad(), vt.mixed_precision(device):
            model(x)

    def train_step():
        with vt.mixed_precision(device):
            loss = vt.task_loss(head, model(x), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        model.eval()
        forward_s = _timed(forward, repeats, device)
        model.train()
        train_s = _timed(train_step, repeats, device)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return batch_size / forward_s, batch_size / train_s


def measure(s: Subject, *, batch_size: int, repeats: int, device, timing: bool = True) -> Measures:
    stats = vt.model_stats(s.model, input_size=s.input_size, in_chans=s.in_chans)
    activation = activation_bytes(s, device) / 2**20
    speeds = throughput(s, batch_size, repeats, device) if timing else (None, None)
    return Measures(stats.parameters, stats.weight_layers, stats.gmacs, activation, *speeds)
