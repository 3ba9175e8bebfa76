"""The table of benchmarks/localisation_scenes.sh's results, as Markdown: one row per head and fine-tuned
part, localisation error (%) per protocol, each cell the mean over seeds with every seed's figure after it.

    python benchmarks/localisation_table.py OUT_DIR
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"eval-(scr|pcr)-(all|fc)-(\d+)-(single|multi)-(overfeat|support)\.json")
COLUMNS = [("protocol 1 (centre)", "single", "overfeat", "centre"),
           ("P2 single, OverFeat, top-1", "single", "overfeat", "top-1"),
           ("P2 single, OverFeat, top-5", "single", "overfeat", "top-5"),
           ("P2 multi, OverFeat, top-1", "multi", "overfeat", "top-1"),
           ("P2 multi, OverFeat, top-5", "multi", "overfeat", "top-5"),
           ("P2 single, most support, top-5", "single", "support", "top-5"),
           ("P2 multi, most support, top-5", "multi", "support", "top-5")]


def which(method: str) -> str:
    if method.startswith("centre crop"):
        return "centre"
    return "top-5" if method.endswith("top-5") else "top-1"


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({' / '.join(f'{v:.2f}' for v in values)})"


def main(out: Path) -> None:
    found: dict[tuple, list[float]] = defaultdict(list)
    images = set()
    for path in sorted(out.glob("eval-*.json")):
        match = NAME.fullmatch(path.name)
        if not match:
            continue
        head, part, seed, scales, merge = match.groups()
        for row in json.loads(path.read_text())["results"]:
            found[head, part, scales, merge, which(row["method"])].append(row["loc_err_pct"])
            images.add(row["images"])
    if not found:
        sys.exit(f"{out}: no eval-HEAD-PART-SEED-SCALES-MERGE.json files")
    print(f"| test, {'/'.join(map(str, sorted(images)))} images: localisation error (%) | "
          + " | ".join(name for name, *_ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for head in ("scr", "pcr"):
        for part in ("all", "fc"):
            cells = [cell(found[head, part, scales, merge, kind]) for _, scales, merge, kind in COLUMNS]
            print(f"| {head.upper()}, {'all layers' if part == 'all' else 'FC layers only'} | " + " | ".join(cells) + " |")
    for name in ("eval-baselines.json", "eval-classifier.json"):
        path = out / name
        if path.exists():
            for row in json.loads(path.read_text())["results"]:
                figures = {k: v for k, v in row.items() if k.endswith("_pct")}
                print(f"| {row['config']}: {row['method']} | " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items())
                      + " |" + " |" * (len(COLUMNS) - 1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/localisation_table.py OUT_DIR")
    main(Path(sys.argv[1]))
