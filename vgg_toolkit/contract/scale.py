"""Scales: the training scale S (fixed, or jittered in [Smin, Smax]) and the test scales Q derived from it.

``TrainScale.parse`` is the one parser and validator of S: the command line, TOML configs, checkpoints,
evaluators and the augmentation all go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from ..errors import VggtkError

# A scale is a side in pixels. Past this, one rescaled image alone takes gigabytes: a typo, not a protocol.
MAX_SIDE = 8192


@dataclass(frozen=True)
class TrainScale:
    """Smallest image side during training: ``smin == smax`` for a fixed S, else jittered (Sec. 3.1)."""

    smin: int
    smax: int

    def __post_init__(self):
        for v in (self.smin, self.smax):
            if isinstance(v, bool) or not isinstance(v, int):
                raise VggtkError(f"training scale values must be whole numbers of pixels, got {v!r}")
        if self.smin < 1 or self.smin > self.smax or self.smax > MAX_SIDE:
            raise VggtkError(f"training scale must have 0 < Smin <= Smax <= {MAX_SIDE}, got {self.smin}-{self.smax}")

    @classmethod
    def parse(cls, spec) -> "TrainScale":
        """256, "256", [256], (256, 512), [256, 512], "256-512", "256,512", "256:512", the paper's "[256;512]",
        or a TrainScale."""
        if isinstance(spec, TrainScale):
            return spec
        value = spec
        if isinstance(spec, str):
            parts = [p for p in re.split(r"[\s,;:\-\[\]()]+", spec.strip()) if p]
            try:
                value = [int(p) for p in parts]
            except ValueError:
                raise VggtkError(f"training scale {spec!r} is not S or Smin-Smax (e.g. 256 or 256-512)") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, value)
        if isinstance(value, (list, tuple)) and len(value) in (1, 2):
            return cls(value[0], value[-1])
        raise VggtkError(f"training scale {spec!r} is not S or (Smin, Smax)")

    @property
    def jittered(self) -> bool:
        return self.smin != self.smax

    def test_scales(self, multi: bool = False) -> tuple[int, ...]:
        """The paper's test scales (Sec. 3.2, Tables 3-4). Fixed S: Q = S, or {S-32, S, S+32} with
        ``multi``. Jittered [Smin; Smax]: Q = 0.5(Smin+Smax) (rounded down), or {Smin, mid, Smax}."""
        if not self.jittered:
            s = self.smin
            return (s - 32, s, s + 32) if multi else (s,)
        mid = (self.smin + self.smax) // 2
        return (self.smin, mid, self.smax) if multi else (mid,)

    def check_crop(self, crop: int) -> None:
        if self.smin < crop:
            raise VggtkError(f"training scale {self} is below the {crop}-pixel crop: every image must be "
                             f"rescaled to at least the crop (S >= {crop})")

    def to_json(self) -> list[int]:
        return [self.smin] if not self.jittered else [self.smin, self.smax]

    def __str__(self) -> str:
        return str(self.smin) if not self.jittered else f"[{self.smin};{self.smax}]"


def parse_test_scales(spec: str | Iterable[int]) -> tuple[int, ...]:
    """Test scales Q: ``"256,384,512"`` or integers -> (256, 384, 512)."""
    if isinstance(spec, str):
        parts = [p.strip() for p in re.split(r"[,;]", spec.strip())]
        if any(not p for p in parts) and spec.strip():  # "36,," or "256,,384": a scale left out by mistake
            raise VggtkError(f"test scales {spec!r}: an empty scale between commas")
        try:
            scales = tuple(int(p) for p in re.split(r"[\s,;]+", spec.strip()) if p)
        except ValueError:
            raise VggtkError(f"test scales {spec!r}: expected comma-separated integers such as 256,384,512") from None
    else:
        scales = tuple(spec)
        if any(isinstance(q, bool) or not isinstance(q, int) for q in scales):
            raise VggtkError(f"test scales must be whole numbers of pixels, got {scales}")
    if not scales or any(q < 1 or q > MAX_SIDE for q in scales):
        raise VggtkError(f"test scales {spec!r}: expected integers from 1 to {MAX_SIDE} such as 256,384,512")
    return scales
