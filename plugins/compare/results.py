"""Accuracy for ``vggtk compare`` from the JSON results ``vggtk eval`` writes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import vgg_toolkit as vt


@dataclass(frozen=True)
class Accuracy:
    top1_pct: float
    method: str
    source: Path


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    try:
        data = json.loads(path.read_text())
        rows = data["results"]
        checkpoints = [str(c) for c in data.get("checkpoints", [])]
        for row in rows:
            float(row["top1_err_pct"]), str(row["method"]), str(row["config"])
    except FileNotFoundError:
        raise vt.VggtkError(f"{path}: no such results file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise vt.VggtkError(f"{path}: not results written by `vggtk eval` ({type(exc).__name__}: {exc})") from None
    return checkpoints, rows


def _same_place(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def accuracy_for(label: str, arch: str, checkpoint: Path | None, files: list[Path], method: str | None,
                 ) -> Accuracy | None:
    """The top-1 accuracy of one net in ``files``: a trained net's from the file that names its checkpoint
    (a results file's paths are as `vggtk eval` was given them, so relative to where it ran); an
    architecture's from the single-model rows of that architecture. ``method`` picks the row by the
    start of its protocol name ("dense", "multi-crop"...); by default the file's first row."""
    found = []
    for path in files:
        checkpoints, rows = _rows(path)
        if checkpoint is not None:
            if len(checkpoints) != 1 or not any(_same_place(base / checkpoints[0], checkpoint)
                                                for base in (Path.cwd(), path.parent)):
                continue
        elif not rows or rows[0]["config"] != arch:
            continue
        chosen = [r for r in rows if method is None or r["method"].startswith(method)]
        if not chosen:
            raise vt.VggtkError(f"{path}: no results of a method starting {method!r}; it has "
                                f"{', '.join(sorted({r['method'] for r in rows}))}")
        found.append(Accuracy(100 - float(chosen[0]["top1_err_pct"]), chosen[0]["method"], path))
    if len(found) > 1:
        raise vt.VggtkError(f"{label}: results in several files ({', '.join(str(a.source) for a in found)}); "
                            "give one per net")
    return found[0] if found else None
