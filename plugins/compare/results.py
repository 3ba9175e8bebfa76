"""Accuracy for ``vggtk compare`` from the JSON results ``vggtk eval`` writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import vgg_toolkit as vt


@dataclass(frozen=True)
class Accuracy:
    top1_pct: float
    method: str
    source: Path


def _read(path: Path) -> tuple[dict, list[dict]]:
    """(the results file's record of its nets, its rows)."""
    try:
        data = json.loads(path.read_text())
        rows = data["results"]
        for row in rows:
            float(row["top1_err_pct"]), str(row["method"]), str(row["config"])
    except FileNotFoundError:
        raise vt.VggtkError(f"{path}: no such results file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise vt.VggtkError(f"{path}: not results written by `vggtk eval` ({type(exc).__name__}: {exc})") from None
    return data, rows


# Options that make another net of an architecture (not the ones a recipe or a head varies).
_SHAPE = ("in_chans", "width", "fc_dim", "input_size", "batch_norm", "lrn")


def _of_this_net(data: dict, arch: str, net) -> bool:
    """Whether a results file's single net is ``net`` (an untrained architecture): the same architecture
    built the same way, channels, width and input size included."""
    models = data.get("models") or []
    if len(models) != 1 or not isinstance(models[0], dict) or models[0].get("arch") != arch:
        return False
    theirs, ours = models[0].get("options", {}), vt.model_info(net).options
    return all(theirs.get(k) == ours.get(k) for k in _SHAPE) and models[0].get("input_size") == \
        vt.model_info(net).input_size


def accuracy_for(label: str, arch: str, checkpoint: Path | None, net, files: list[Path], method: str | None,
                 ) -> Accuracy | None:
    """The top-1 accuracy of one net in ``files``: a trained net's from the file whose single net has its
    weights (by their sha256, wherever either lies); an architecture's from the single-net file of that
    architecture built as this row builds it. Results of any other net, or that record no nets (from
    before vggtk eval recorded them), are not this row's. ``method`` picks the row by the start of its
    protocol name ("dense", "multi-crop"...); by default the file's first row."""
    digest = vt.weights_digest(checkpoint) if checkpoint is not None else None
    found = []
    for path in files:
        data, rows = _read(path)
        if digest is not None:
            if data.get("weights_sha256") != [digest]:
                continue
        elif not rows or not _of_this_net(data, arch, net):
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
