"""The training loop: the paper's recipe (SGD, momentum, weight decay, lr / 10 on plateaus), exact
resume, DDP, and a guard against non-finite losses. The task's head gives the loss and the errors, so
the loop is the same for every task.

    run = _Run(...)          # model, head, optimizer, schedule; resumed or initialised
    while epochs remain:
        for each global batch:  forward/backward per micro-batch, one optimizer step   (_step)
        validate; schedule decides; checkpoint                                          (_end_epoch)
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..contract.model import model_info, set_model_info
from ..errors import VggtkError
from ..contract.task import BoxTargets, task_loss
from ..data.errors import DataError
from ..evaluation.geometry import center_view, center_view_boxes
from ..host.manager import get_host
from ..models.factory import create_model, prepare_model
from ..models.forms import model_form
from ..models.layers import global_rows
from ..models.trained import initialise_from
from ..runtime.devices import mixed_precision, pick_device
from ..runtime.distributed import DistEnv, all_reduce_sum, broadcast_object, init_distributed, shutdown
from ..runtime.files import save_json
from ..runtime.memory import keep_freed_memory
from ..runtime.seeding import derived_seed
from .batches import BatchSource
from .checkpoint import (claim_run_dir, clean_run_dir, latest_checkpoint, load_checkpoint, load_optimizer,
                         read_state, save_checkpoint)
from .plan import RunPlan
from .schedule import PlateauSchedule


class NonFiniteError(VggtkError):
    pass


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: biases and normalisation scales are not penalised."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:  # frozen parameters (--finetune fc) are not the optimizer's
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(plan: RunPlan, source: BatchSource, run_dir: str | Path, resume: str | Path | None = "auto",
          on_event: Callable[[str, dict], None] | None = None) -> dict:
    """Train until the schedule stops or ``plan.config.epochs`` pass; returns the final summary.

    ``resume``: "auto" continues from the newest complete checkpoint in ``run_dir`` if any, a path
    continues from that checkpoint, None starts fresh (and refuses a run directory holding
    checkpoints, whose newer steps would otherwise shadow the new run's).
    """
    device = pick_device(plan.config.device)
    env = init_distributed(device)
    if env.enabled and device.type == "cuda":  # one GPU per process, as torchrun's LOCAL_RANK says
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    try:
        run = _Run(plan, source, Path(run_dir), device, env, _Events(on_event, env))
        return run.start(resume).train()
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


class _Run:
    """One training run: the model and what trains it, the counters, and the checkpoints."""

    def __init__(self, plan: RunPlan, source: BatchSource, run_dir: Path, device: torch.device, env: DistEnv,
                 events: _Events):
        self.plan, self.config, self.source, self.run_dir = plan, plan.config, source, run_dir
        self.device, self.env, self.events = device, env, events
        self.micro_batch, rem = divmod(self.config.batch_size, env.world_size * self.config.accum_steps)
        if rem or self.micro_batch < 1:
            parts = env.world_size * self.config.accum_steps
            raise VggtkError(f"--batch-size {self.config.batch_size} does not split into {env.world_size} rank(s) x "
                             f"{self.config.accum_steps} accumulation step(s) (--accum-steps): give a multiple of {parts}")
        self.batches_per_epoch = source.num_batches(self.config.batch_size, env, self.micro_batch)
        if self.batches_per_epoch < 1:
            raise VggtkError(f"{self.config.data or 'the bundled data'}: the training split holds fewer samples than "
                             f"one global batch (--batch-size {self.config.batch_size}): give a smaller batch size")
        self.head = plan.head()
        self.box_head = isinstance(self.head, BoxTargets)
        torch.manual_seed(derived_seed(self.config.seed, "init"))  # the same initial weights on every rank
        self.model = create_model(plan.arch, num_classes=plan.num_outputs, **plan.model_options)
        self.info = model_info(self.model).trained_on(plan.facts.classes, plan.scale, plan.facts.mean_rgb,
                                                      head=self.config.head, preprocessing=plan.preprocessing)
        set_model_info(self.model, self.info)
        self.schedule = PlateauSchedule(plan.lr, patience=self.config.lr_patience,
                                        max_drops=self.config.max_lr_drops)
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "running": [0.0, 0.0],
                      "plan": plan.to_json(), "identity": _jsonable(plan.identity()), "world_size": env.world_size,
                      "finished": False, "split_layout": source.split_layout(env)}

    # -- start: fresh, initialised from another net, or resumed ------------------------------------
    def start(self, resume) -> "_Run":
        if self.env.is_main:
            claim_run_dir(self.run_dir)
            clean_run_dir(self.run_dir)
        ckpt = self._checkpoint_to_resume(resume)
        if ckpt is not None:
            saved = read_state(ckpt)
            _check_same_identity(saved["identity"], self.state["identity"], ckpt)
            if saved["batch_in_epoch"]:
                _check_layout(saved.get("split_layout", {}), self.state["split_layout"], ckpt)
            load_checkpoint(ckpt, self.model)
            self.state.update({k: saved[k] for k in ("step", "epoch", "batch_in_epoch", "history", "running",
                                                     "finished")})
            self.schedule = PlateauSchedule.from_state(saved["schedule"])
        elif self.config.init_from:
            copied = initialise_from(self.model, self.config.init_from)
            self.events("initialised", {"source": self.config.init_from, "copied": copied})
        # The optimizer follows the model to its device, so resumed momentum lands beside the weights.
        self.model = prepare_model(self.model, self.device, self.config.runtime)
        # NHWC is faster for these convs on CUDA (cuDNN, the Triton kernels) and on CPU too (oneDNN:
        # 1.24x a training step of the half-width VGG-A at batch 128, 2-core EPYC).
        self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cpu":
            keep_freed_memory()
        if self.config.finetune != "all":  # the rest of the net is frozen
            trained = {id(p) for p in self.model.finetune_parameters(self.config.finetune)}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in trained)
        self.optimizer = torch.optim.SGD(param_groups(self.model, self.config.weight_decay), lr=self.schedule.lr,
                                         momentum=self.config.momentum)
        if ckpt is not None:
            load_optimizer(ckpt, self.optimizer)
            self.events("resumed", {"checkpoint": str(ckpt), "history": self.state["history"], **self._counters()})
        self.net = self.model
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.config.compile:
            self.net = torch.compile(self.net)
        if self.env.is_main:
            save_json(self.run_dir / "config.json", self.state["plan"], "run configuration", indent=1)
        return self

    def _checkpoint_to_resume(self, resume) -> Path | None:
        if resume == "auto":
            found = latest_checkpoint(self.run_dir) if self.env.is_main else None
            found = broadcast_object(str(found) if found else None, self.env)  # every rank resumes the same step
            return Path(found) if found else None
        if resume:
            ckpt = Path(resume)
            if not (ckpt / "state.json").is_file():
                raise VggtkError(f"{ckpt}: not a complete checkpoint directory (no state.json)")
            return ckpt
        if latest_checkpoint(self.run_dir) is not None:
            raise VggtkError(f"{self.run_dir} already holds checkpoints, and --resume none starts afresh: resume "
                             "them (--resume auto), or train into a new --run-dir")
        return None

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict:
        self.running = torch.tensor(self.state["running"], dtype=torch.float64, device=self.device)  # loss sum, steps
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.step_t = torch.full((), self.state["step"], dtype=torch.long, device=self.device)  # no sync per step
        # A finished run, run again, trains nothing: why, so that it is said rather than reported as trained.
        done = "schedule" if self.state["finished"] else "epochs" if self.state["epoch"] >= self.config.epochs \
            else None
        self.events("start", {"batches_per_epoch": self.batches_per_epoch, "device": str(self.device),
                              "world_size": self.env.world_size, "already_finished": done, **self._counters()})
        with _stop_at_step_boundary() as self.stop:
            while not self.state["finished"] and self.state["epoch"] < self.config.epochs:
                self._epoch()
        summary = {**self._counters(), "best_val": self._best(), "already_finished": done,
                   "checkpoint": str(latest_checkpoint(self.run_dir)) if self.env.is_main else None}
        self.events("end", summary)
        return summary

    def _epoch(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr
        self.net.train()
        self.tick, self.seen = time.perf_counter(), 0
        micro = []
        for batch in self.source.train_batches(self.state["epoch"], self.state["batch_in_epoch"], self.env,
                                               self.config.batch_size, self.micro_batch):
            micro.append(batch)
            if len(micro) == self.config.accum_steps:
                self._step(micro)
                micro = []
                self._after_step()
        self._end_epoch()

    def _step(self, micro: list) -> None:
        loss_sum = torch.zeros((), device=self.device)
        per_rank = self.config.batch_size // self.env.world_size
        for i, batch in enumerate(micro):
            # Every micro-batch of every rank starts from the step's seed and keeps its own rows of the
            # global dropout masks: one process, N ranks and accumulation agree exactly.
            torch.manual_seed(derived_seed(self.config.seed, "step", self.state["step"]))
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.env.enabled else self.net.no_sync()
            rows = global_rows(self.model, self.env.rank * per_rank + i * self.micro_batch, self.config.batch_size)
            with sync, rows, mixed_precision(self.device):
                x = self.source.finish(batch, self.device, self.state["epoch"])
                outputs = self.net(x.contiguous(memory_format=torch.channels_last))
                targets = self._targets(batch, batch.boxes, *x.shape[-2:])
                loss = task_loss(self.head, outputs, targets.to(self.device, non_blocking=True)) / len(micro)
                loss.backward()
            loss_sum += loss.detach()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # Some gradient is non-finite exactly when the total gradient norm is (or it overflows fp32, at a
        # norm over 1e19: a step worth stopping too); one fused pass over the gradients, where a finite
        # test per element cost as much as a fifth of the backward pass on a 2-core CPU.
        ok = torch.isfinite(loss_sum) & torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
        self.bad_step = torch.where((self.bad_step < 0) & ~ok, self.step_t, self.bad_step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.running += torch.stack([loss_sum.double(), torch.ones((), dtype=torch.float64, device=self.device)])
        self.step_t += 1
        self.state["step"] += 1
        self.state["batch_in_epoch"] += 1
        self.seen += self.config.batch_size

    def _after_step(self) -> None:
        step, stop = self.state["step"], self.stop.requested
        periodic = self.config.checkpoint_every and step % self.config.checkpoint_every == 0
        if step % self.config.log_every == 0 or periodic or stop:
            self._check_finite()
            self.events("step", {**self._counters(), "loss": self.running[0].item() / max(self.running[1].item(), 1),
                                 "lr": self.schedule.lr, "img_per_s": self.seen / (time.perf_counter() - self.tick),
                                 "batches_per_epoch": self.batches_per_epoch})
        if periodic or stop:
            self._save()
        if stop:
            self.events("interrupted", self._counters())
            raise KeyboardInterrupt

    def _end_epoch(self) -> None:
        self._check_finite()
        skipped, skip_detail = self.source.pop_skipped()
        train_loss = all_reduce_sum(self.running.clone(), self.env)
        skipped = int(all_reduce_sum(torch.tensor(float(skipped), dtype=torch.float64, device=self.device),
                                     self.env).item())
        if train_loss[1].item() == 0:  # steps summed over ranks, so all stop: every batch of the epoch was skipped
            raise DataError(f"no training sample was readable, or too few for one batch ({skip_detail})",
                            shard=self.config.data or "the bundled data")
        self.running.zero_()
        val = self._validate()
        decision = self.schedule.update(-val[self.head.monitor])
        record = {"epoch": self.state["epoch"] + 1, "train_loss": train_loss[0].item() / max(train_loss[1].item(), 1),
                  "lr": self.optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in val.items()},
                  "monitor": f"val_{self.head.monitor}", "decision": decision,
                  "seconds": time.perf_counter() - self.tick, "train_skipped": skipped,
                  **({"skipped_detail": skip_detail} if skipped else {})}
        self.state["history"].append(record)
        self.state["epoch"] += 1
        self.state["batch_in_epoch"] = 0
        self.state["finished"] = decision == "stop"
        self.events("epoch", {**self._counters(), **record})
        self._save(is_best=decision == "improved")
        if self.stop.requested:
            self.events("interrupted", self._counters())
            raise KeyboardInterrupt

    def _validate(self) -> dict[str, float]:
        """The head's errors (%) on the paper's single centre view of each validation image, the view
        ``vggtk eval --methods center`` takes. Every rank evaluates the whole split, so all ranks take
        the same schedule decision without another collective."""
        q, crop = self.plan.scale.test_scales()[0], self.plan.input_size
        counts: dict[str, torch.Tensor] = {}
        n = 0
        with torch.no_grad(), model_form(self.model, fully_conv=False), mixed_precision(self.device):
            for batch in self.source.val_batches(self.micro_batch):
                height, width = batch.images.shape[-2:]
                x = center_view(self.source.normalize(batch.images.to(self.device, non_blocking=True)), q, crop)
                outputs = self.model(x.contiguous(memory_format=torch.channels_last)).float()
                boxes = None if batch.boxes is None else [center_view_boxes(b, height, width, q, crop)
                                                          for b in batch.boxes]
                targets = self._targets(batch, boxes, crop, crop).to(self.device)
                for key, count in self.head.error_counts(outputs, targets).items():
                    counts[key] = counts.get(key, 0) + count
                n += len(batch.labels)
        if n == 0:
            raise VggtkError("the validation split is empty: the schedule has nothing to watch")
        return {key: 100 * int(count) / n for key, count in counts.items()}

    def _targets(self, batch, boxes, height: int, width: int) -> torch.Tensor:
        """The labels, or, for a head that learns from boxes, what it makes of the boxes in the window."""
        if self.box_head:
            return self.head.box_targets(batch.labels, boxes, batch.box_labels, height, width)
        return batch.labels

    # -- checkpoints and reports -------------------------------------------------------------------
    def _save(self, is_best: bool = False) -> None:
        if not self.env.is_main:
            return
        self.state["schedule"] = self.schedule.state_dict()
        self.state["running"] = self.running.tolist()
        path = save_checkpoint(self.run_dir, self.model, self.optimizer, self.state, self.info,
                               keep_last=self.config.keep_last, is_best=is_best)
        self.events("checkpoint", {"path": str(path), **self._counters()})

    def _counters(self) -> dict:
        return {k: self.state[k] for k in ("step", "epoch", "batch_in_epoch")}

    def _best(self) -> dict | None:
        """The best epoch's validation errors."""
        history = self.state["history"]
        if not history:
            return None
        monitor = history[-1]["monitor"]
        return min(history, key=lambda h: h[monitor])

    def _check_finite(self) -> None:
        step = int(self.bad_step.item())  # the one host sync, every log_every steps
        if step >= 0:
            last = latest_checkpoint(self.run_dir)
            raise NonFiniteError(
                f"non-finite loss or gradient at step {step + 1}: training stopped; "
                + (f"last good checkpoint: {last}" if last else "no checkpoint was written yet")
                + " (lower --lr or check the data)"
            )


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


def _jsonable(value):
    return json.loads(json.dumps(value))


def _check_same_identity(saved: dict, ours: dict, ckpt: Path) -> None:
    changed = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {ours.get(k)!r}" for k in changed[:4])
        raise VggtkError(f"{ckpt} was trained with other options ({detail}); resume with the same options, "
                         "or start a new --run-dir")


_LAYOUT_NAMES = {"workers": "--workers", "world_size": "ranks"}


def _layout_value(key: str, value) -> str:
    return "0 or 1" if key == "workers" and value == 1 else str(value)  # one reader either way


def _check_layout(saved: dict, ours: dict, ckpt: Path) -> None:
    changed = [k for k in ours if k in saved and saved[k] != ours[k]]
    if changed:
        detail = ", ".join(f"{_LAYOUT_NAMES.get(k, k)} {_layout_value(k, saved[k])} (this run: "
                           f"{_layout_value(k, ours[k])})" for k in changed)
        raise VggtkError(f"{ckpt} stopped mid-epoch with {detail}; resume with the same, since this data source "
                         "cannot re-split a started epoch")
