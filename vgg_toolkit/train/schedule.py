"""The paper's learning-rate schedule: divide by 10 when the validation score stops improving."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PlateauSchedule:
    """Divide ``lr`` by ``1/factor`` after ``patience`` epochs without a better validation score (higher
    is better, e.g. minus an error in percent; better by more than ``min_delta``). After ``max_drops``
    decreases (3 in the paper) the next plateau ends training, so the last rate also runs until it
    stops helping."""

    lr: float
    factor: float = 0.1
    patience: int = 2
    max_drops: int = 3
    min_delta: float = 1e-4
    best: float = float("-inf")
    bad_epochs: int = 0
    drops: int = 0

    def update(self, score: float) -> str:
        """Record one epoch's validation score; returns "improved", "wait", "drop" or "stop"."""
        if score > self.best + self.min_delta:
            self.best, self.bad_epochs = score, 0
            return "improved"
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return "wait"
        if self.drops >= self.max_drops:
            return "stop"
        self.lr *= self.factor
        self.drops += 1
        self.bad_epochs = 0
        return "drop"

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "PlateauSchedule":
        return cls(**state)
