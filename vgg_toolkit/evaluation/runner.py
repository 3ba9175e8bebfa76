"""Evaluation runner: evaluators from the registry, ensembles, and top-k errors over a data stream.

The ``vggtk eval`` command only wires data and checkpoints to these functions:

    evaluator = get_evaluator("combined", multi_scale=True)
    result = run_evaluation([model_d, model_e], evaluator, batches, class_names=names)
    print_results([result]); write_json([result], "eval.json", per_class=True)    # report.py
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from rich.markup import escape
from torch import nn

from ..contract.evaluator import DescribedEvaluator, ScaledEvaluator
from ..contract.model import find_model_info
from ..contract.preprocess import Preprocessing
from ..contract.scale import TrainScale
from ..data.errors import check_labels
from ..errors import VggtkError
from ..host.manager import get_host
from ..runtime.console import plain
from ..runtime.devices import mixed_precision
from .metrics import confusion_matrix, per_class_accuracy, save_confusion_png, topk_errors

LINE_EVERY = 30.0  # seconds between progress lines where no bar can be drawn


def get_evaluator(name: str, **options) -> Callable:
    """Build the evaluator registered as ``name`` (center, dense, multicrop, combined, or a plugin's)."""
    return get_host().registry("evaluators").get(name).factory(**options)


def _model_name(model: nn.Module) -> str:
    info = find_model_info(model)
    return info.arch if info is not None else type(model).__name__


def _num_outputs(model: nn.Module) -> int | None:
    info = find_model_info(model)
    return info.num_outputs if info is not None else None


@dataclass(frozen=True)
class Feed:
    """What one member of an evaluation is fed, and what of its output counts. ``preprocessing`` makes its
    input from 0-255 RGB pixels (None: the images are its input already); ``columns`` are the outputs of
    the data's classes, in the data's order, when the net knows more classes than the data has (their
    posteriors are renormalised over those classes); None: every output, in order."""

    preprocessing: Preprocessing | None = None
    columns: tuple[int, ...] | None = None

    def inputs(self, images):
        if self.preprocessing is None:
            return images
        if isinstance(images, torch.Tensor):
            return self.preprocessing.apply(images)
        return [self.preprocessing.apply(t) for t in images]

    def outputs(self, posteriors: torch.Tensor) -> torch.Tensor:
        if self.columns is None:
            return posteriors
        picked = posteriors[:, list(self.columns)]
        return picked / picked.sum(dim=1, keepdim=True).clamp_min(torch.finfo(picked.dtype).tiny)


def check_same_classes(models: Sequence[nn.Module], class_lists: Sequence[Sequence[str] | None] | None = None,
                       names: Sequence[str] | None = None,
                       widths: Sequence[int | None] | None = None) -> list[str] | None:
    """Check that the members of an ensemble predict the same classes, in the same order.

    ``class_lists[i]`` (else the classes in member i's model info, else unknown) are its class names.
    Averaging posteriors of nets with different class lists would silently mix classes, so any
    difference is a VggtkError naming both members. ``widths[i]``, where given, is the number of member
    i's posteriors that count (its ``Feed.columns``). Returns the common class list, if any is known.
    """
    names = list(names) if names is not None else [f"model {i + 1} ({_model_name(m)})" for i, m in enumerate(models)]
    if class_lists is None:
        class_lists = [getattr(find_model_info(m), "classes", None) for m in models]
    if len(class_lists) != len(models) or len(names) != len(models):
        raise VggtkError(f"{len(models)} models but {len(class_lists)} class lists and {len(names)} names")
    widths = list(widths) if widths is not None else [_num_outputs(m) for m in models]
    counts = list(zip(widths, names))
    known = [(c, n) for c, n in counts if c is not None]
    for c, n in known[1:]:
        if c != known[0][0]:
            raise VggtkError(f"cannot ensemble nets with different classes: {known[0][1]} has {known[0][0]} "
                             f"classes, {n} has {c}")
    reference: tuple[list[str], str] | None = None
    for classes, n, (count, _) in zip(class_lists, names, counts):
        if classes is None:
            continue
        classes = list(classes)
        if count is not None and len(classes) != count:
            raise VggtkError(f"{n}: {len(classes)} class names for a {count}-class net")
        if reference is None:
            reference = (classes, n)
            continue
        if classes != reference[0]:
            diff = next((i for i, (a, b) in enumerate(zip(reference[0], classes)) if a != b), None)
            if diff is None:
                what = f"{len(reference[0])} vs {len(classes)} classes"
            else:
                what = f"class {diff} is {reference[0][diff]!r} in one and {classes[diff]!r} in the other"
            raise VggtkError(f"cannot ensemble nets with different class lists: {reference[1]} and {n} ({what})")
    return reference[0] if reference else None


def ensemble_posteriors(models: Sequence[nn.Module], evaluator: Callable, images,
                        autocast: bool | None = None, feeds: Sequence[Feed] | None = None) -> torch.Tensor:
    """Mean of the members' posteriors on the CPU (the paper averages soft-max outputs, Sec. 4.4). Each
    member sees the images on its own device, under its device's precision policy, made into its input
    by its ``Feed`` (``feeds``, one per member; by default the images are every member's input)."""
    if isinstance(models, nn.Module):
        models = [models]
    feeds = list(feeds) if feeds is not None else [Feed()] * len(models)
    n = _count(images)
    total = None
    for model, feed in zip(models, feeds):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with mixed_precision(device, autocast):
            p = _posteriors_of(evaluator, model, feed.inputs(_to(images, device)), n).float().cpu().reshape(n, -1)
        if not bool(torch.isfinite(p).all()):
            raise VggtkError(f"{_model_name(model)}: gives NaN or infinite posteriors on these images (its weights or "
                             "its preprocessing record are broken)")
        p = feed.outputs(p)
        total = p if total is None else total + p
    return total / len(models)


# --- the runner ------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """One row of the results table, with everything behind it."""

    config: str  # the net(s), e.g. "vgg-d" or "vgg-d + vgg-e"
    train_scale: str  # "256", "[256;512]", "-" when unknown
    test_scales: str  # "256,384,512"
    method: str  # "dense", "multi-crop 5x5x2", ...
    num_images: int
    seconds: float  # time spent in the evaluators (data reading excluded)
    errors: dict[int, float]  # top-k error in percent, by k
    posteriors: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    class_names: list[str] | None = field(default=None, repr=False)
    models: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("inf")

    @property
    def num_classes(self) -> int:
        return self.posteriors.shape[1]

    def confusion(self) -> torch.Tensor:
        return confusion_matrix(self.posteriors, self.labels)

    def per_class_accuracy(self) -> torch.Tensor:
        return per_class_accuracy(self.confusion())

    def to_dict(self, per_class: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config, "models": self.models, "train_scale": self.train_scale,
            "test_scales": self.test_scales, "method": self.method, "images": self.num_images,
            **{f"top{k}_err_pct": _finite(v) for k, v in self.errors.items()},
            "seconds": round(self.seconds, 6), "images_per_s": _finite(self.images_per_s),
            "num_classes": self.num_classes,
        }
        if per_class:
            names = self.class_names or [str(i) for i in range(self.num_classes)]
            counts = self.confusion().sum(dim=1)
            out["per_class"] = [
                {"class": name, "images": int(n), "top1_acc_pct": _finite(100 * a)}
                for name, n, a in zip(names, counts.tolist(), self.per_class_accuracy().tolist())
            ]
        return out

    def save_confusion_png(self, path: str | os.PathLike) -> Path:
        return save_confusion_png(self.confusion(), path, self.class_names,
                                  title=f"{self.config}, {self.method}, Q={self.test_scales}")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _split_batch(batch) -> tuple[Any, torch.Tensor]:
    try:
        images, labels = batch
    except (TypeError, ValueError):
        raise VggtkError("each batch must be a pair (images, labels)") from None
    labels = torch.as_tensor(labels).long().reshape(-1)
    return images, labels


def _count(images) -> int:
    if isinstance(images, torch.Tensor):
        return 1 if images.ndim == 3 else images.shape[0]
    return len(images)


def _to(images, device: torch.device):
    if isinstance(images, torch.Tensor):
        return images.to(device)
    return [t.to(device) for t in images]


def _same_size_batches(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """For evaluators that take only same-size batches: group a list of CHW images by size."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(images):
        groups.setdefault(tuple(t.shape), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()]


def _posteriors_of(evaluator, model: nn.Module, images, n: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return evaluator(model, images if images.ndim == 4 else images[None])
    if getattr(evaluator, "accepts_lists", False):
        return evaluator(model, images)
    parts = [(idx, evaluator(model, group)) for idx, group in _same_size_batches(images)]
    out = parts[0][1].new_empty((n, parts[0][1].shape[-1]))
    for idx, part in parts:
        out[torch.tensor(idx, device=out.device)] = part
    return out


def _describe(evaluator) -> str:
    if isinstance(evaluator, DescribedEvaluator):
        return evaluator.describe()
    return getattr(evaluator, "__name__", type(evaluator).__name__)


def _joined(values: list[str], sep: str = " / ") -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else sep.join(values)


def run_evaluation(models: nn.Module | Sequence[nn.Module], evaluator: Callable, batches: Iterable,
                   *, class_names: Sequence[str] | None = None,
                   class_lists: Sequence[Sequence[str] | None] | None = None,
                   model_names: Sequence[str] | None = None, topk: Sequence[int] = (1, 5),
                   total: int | None = None, progress: bool | None = None, console=None,
                   autocast: bool | None = None, feeds: Sequence[Feed] | None = None) -> EvalResult:
    """Evaluate ``models`` (an ensemble when more than one) with ``evaluator`` over ``batches``.

    ``batches`` yields ``(images, labels)``: images an NCHW tensor or a list of CHW tensors of any sizes,
    labels ints. Images are each model's input, or, with ``feeds`` (one ``Feed`` per model), 0-255 RGB
    pixels that each feed makes into its model's input. Each model's posteriors come from
    ``evaluator(model, images)``;
    the ensemble's are their mean (``ensemble_posteriors``). The members' class lists (``class_lists``,
    else their model info) are checked to agree; ``class_names`` labels the per-class output and
    defaults to the common class list. ``total`` (images) sizes the progress bar, shown on a terminal
    unless ``progress=False``. ``autocast`` runs the forward passes under bf16 autocast; by default it is
    on for models on CUDA, as in training. Returns an EvalResult; images/s counts the time spent in the
    evaluators only.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise VggtkError("no models to evaluate")
    names = list(model_names) if model_names is not None else [_model_name(m) for m in models]
    feeds = list(feeds) if feeds is not None else [Feed()] * len(models)
    if len(feeds) != len(models):
        raise VggtkError(f"{len(models)} models but {len(feeds)} feeds")
    widths = [len(f.columns) if f.columns is not None else _num_outputs(m) for m, f in zip(models, feeds)]
    common = check_same_classes(models, class_lists, [f"{n} (model {i + 1})" for i, n in enumerate(names)], widths)
    class_names = list(class_names) if class_names is not None else common
    counts = set(widths) - {None}
    if class_names is not None and counts and len(class_names) not in counts:
        raise VggtkError(f"{len(class_names)} class names for {counts.pop()}-class nets")
    console = console or Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    lines, said = progress is None and not console.is_terminal, time.perf_counter()
    devices = {next((p.device for p in m.parameters()), torch.device("cpu")) for m in models}

    all_posteriors: list[torch.Tensor] = []
    all_labels: list[torch.Tensor] = []
    seconds = 0.0
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                   console=console, transient=True, disable=not show)
    with bar:
        task = bar.add_task(escape(f"eval {_describe(evaluator)}"), total=total, rate="")
        done = 0
        for batch in batches:
            images, labels = _split_batch(batch)
            n = _count(images)
            if labels.numel() != n:
                raise VggtkError(f"a batch has {n} images but {labels.numel()} labels")
            _sync(devices)
            start = time.perf_counter()
            posteriors = ensemble_posteriors(models, evaluator, images, autocast, feeds)
            _sync(devices)
            seconds += time.perf_counter() - start
            # said now, not after a long run: the labels and the nets disagree on the classes
            check_labels(labels, posteriors.shape[1], "the data")
            all_posteriors.append(posteriors)
            all_labels.append(labels.cpu())
            done += n
            bar.update(task, advance=n, rate=f"{done / seconds:.1f} img/s" if seconds > 0 else "")
            if lines and time.perf_counter() - said > LINE_EVERY:
                said = time.perf_counter()  # no bar off a terminal: a line every LINE_EVERY seconds
                console.print(plain(f"eval {_describe(evaluator)}: {done}/{total} images, "
                                    f"{done / max(seconds, 1e-9):.1f} img/s"), soft_wrap=True, highlight=False)
    if not all_posteriors:
        raise VggtkError("no images to evaluate: the data is empty")
    posteriors = torch.cat(all_posteriors)
    labels = torch.cat(all_labels)
    if class_names is not None and len(class_names) != posteriors.shape[1]:
        raise VggtkError(f"{len(class_names)} class names for {posteriors.shape[1]} posteriors per image")
    errors = {k: 100.0 * e for k, e in topk_errors(posteriors, labels, topk).items()}
    scaled = isinstance(evaluator, ScaledEvaluator)
    train = [_scale_text(evaluator.train_scale_for(m)) if scaled else "-" for m in models]
    tests = [",".join(map(str, evaluator.scales_for(m))) if scaled else "-" for m in models]
    return EvalResult(config=" + ".join(names), train_scale=_joined(train), test_scales=_joined(tests),
                      method=_describe(evaluator), num_images=posteriors.shape[0], seconds=seconds,
                      errors=errors, posteriors=posteriors, labels=labels, class_names=class_names, models=names)


def _scale_text(scale: TrainScale | None) -> str:
    return "-" if scale is None else str(scale)


def _sync(devices) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

