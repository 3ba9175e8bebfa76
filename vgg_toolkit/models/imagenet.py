"""The 1000 ImageNet-1k (ILSVRC-2012) classes that torchvision's, timm's and the authors' VGG weights
predict, in their output order: WordNet ids, and a short name for people (its first WordNet lemma; the
two lemmas that name two classes, crane and maillot, carry their id)."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path

_TABLE = Path(__file__).with_name("imagenet1k.tsv")
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _rows() -> tuple[tuple[str, str], ...]:
    rows = [line.split("\t", 1) for line in _TABLE.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    assert len(rows) == NUM_CLASSES, f"{_TABLE}: {len(rows)} classes"
    return tuple((wnid, lemmas.split(",")[0].strip()) for wnid, lemmas in rows)


def imagenet_classes() -> tuple[str, ...]:
    """The classes' WordNet ids (``n01440764`` ...), in the nets' output order."""
    return tuple(wnid for wnid, _ in _rows())


@lru_cache(maxsize=1)
def _labels() -> dict[str, str]:
    twice = {name for name, n in Counter(name for _, name in _rows()).items() if n > 1}
    return {wnid: f"{name} ({wnid})" if name in twice else name for wnid, name in _rows()}


def class_label(name: str) -> str:
    """A class name as people read it: an ImageNet id's short name, any other name as it is."""
    return _labels().get(name, name)
