"""The report of an evaluation: a table in the layout of the paper's Tables 3-5, and JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from ..runtime.console import plain, print_table
from ..runtime.files import mark, write_text
from .runner import EvalResult

RESULTS_KIND = "evaluation results"  # what eval's --out holds, whatever the task


def results_table(results: Sequence[EvalResult], title: str | None = None) -> Table:
    """Top-k errors in percent, with two decimals: integer counts out of the images, never cut."""
    ks = list(results[0].errors) if results else [1, 5]
    table = Table(title=plain(title or "Top-k classification error (%)"))
    for col in ("config", "train S", "test Q", "method"):
        table.add_column(col, no_wrap=True)
    for k in ks:
        table.add_column(f"top-{k} err", justify="right", no_wrap=True)
    table.add_column("images/s", justify="right", no_wrap=True)
    for r in results:
        errs = [f"{r.errors[k]:.2f}" if k in r.errors and math.isfinite(r.errors[k]) else "-" for k in ks]
        table.add_row(plain(r.config), r.train_scale, r.test_scales, plain(r.method), *errs, f"{r.images_per_s:.1f}")
    return table


def print_results(results: Sequence[EvalResult], console: Console | None = None, title: str | None = None) -> None:
    console = console or Console()
    print_table(console, results_table(results, title))
    sizes = sorted({r.num_images for r in results})
    console.print(f"{' / '.join(map(str, sizes))} images; errors in percent; images/s counts time in the "
                  "evaluators (data reading excluded).", markup=False)


def results_json(results: Sequence[EvalResult], per_class: bool = False, extra: dict | None = None) -> dict:
    from ..version import __version__

    return {**mark(RESULTS_KIND), "vggtk_version": __version__, "error_unit": "percent", **(extra or {}),
            "results": [r.to_dict(per_class=per_class) for r in results]}


def write_json(results: Sequence[EvalResult], path: str | os.PathLike, per_class: bool = False,
               extra: dict | None = None) -> Path:
    """Write the results (and, with ``per_class``, each class's top-1 accuracy) to ``path`` atomically."""
    payload = results_json(results, per_class, extra)
    return write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
