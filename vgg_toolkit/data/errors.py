"""Bad data: one error type that names the shard and member, and the skip-or-fail policy."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from ..errors import VggtkError

ON_ERROR_CHOICES = ("fail", "skip")


class DataError(VggtkError):
    """A shard, manifest or sample that cannot be used. The message names the file and the member."""

    def __init__(self, message: str, shard: str | None = None, member: str | None = None, kind: str = "bad data"):
        where = shard or ""
        if member:
            where = f"{where}[{member}]" if where else member
        super().__init__(f"{where}: {message}" if where else message)
        self.shard, self.member, self.kind = shard, member, kind

    def __reduce__(self):  # DataLoader workers pickle exceptions back to the main process
        return (_rebuild, (str(self), self.shard, self.member, self.kind))


def _rebuild(text, shard, member, kind):
    err = DataError.__new__(DataError)
    VggtkError.__init__(err, text)
    err.shard, err.member, err.kind = shard, member, kind
    return err


def check_labels(labels, num_classes: int, where: str) -> None:
    """Every label of a tensor in [0, num_classes), or one error naming ``where`` and the first bad label."""
    import torch

    labels = torch.as_tensor(labels)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise VggtkError(f"{where}: label {int(bad[0])} is outside the {num_classes} classes (0..{num_classes - 1})")


def check_policy(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise VggtkError(f"--on-error must be one of {', '.join(ON_ERROR_CHOICES)}, not {on_error!r}")
    return on_error


@dataclass
class SkipLog:
    """What ``--on-error skip`` dropped: counts by kind and the first few messages, for the final report."""

    keep: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, err: DataError, samples: int = 1) -> None:
        """Count ``samples`` dropped for ``err`` (a shard's unread rest: all of them, one example)."""
        with self._lock:
            self.counts[err.kind] += samples
            if len(self.examples) < self.keep:
                self.examples.append(str(err))

    def merge(self, counts: dict, examples: list[str]) -> None:
        with self._lock:
            self.counts.update(counts)
            self.examples.extend(examples[: max(0, self.keep - len(self.examples))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad samples"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        return f"skipped {self.total} bad sample(s): {kinds}"


def handle(err: DataError, on_error: str, log: SkipLog | None) -> None:
    """Raise under ``fail``; count under ``skip``."""
    if on_error == "fail":
        raise err
    if log is not None:
        log.add(err)
