"""Samples per second through the shard reader alone: every training sample of the bundled
Fashion-MNIST shards (12,000, 4 gzipped shards), (1) as raw tar members grouped into samples and
(2) through ``make_loader`` (decode included, no augmentation), in one process with one thread.

It uses only what every version of the reader offers, so the same file times two checkouts against
each other, e.g. the hand-written tar reader against the WebDataset-based one:

    PYTHONPATH=OLD_CHECKOUT .venv/bin/python benchmarks/shard_reader.py
    .venv/bin/python benchmarks/shard_reader.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vgg_toolkit.data.loader import make_loader
from vgg_toolkit.data.shards.reader import iter_raw, resolve_source

FM = Path(__file__).resolve().parents[1] / "shards" / "fashion-mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    refs, _ = resolve_source(FM, "train")
    raw_best = loader_best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        n = sum(1 for ref in refs for _ in iter_raw(ref.path))
        raw_best = min(raw_best, time.perf_counter() - start)
        start = time.perf_counter()
        m = sum(len(b) for b in make_loader(FM, "train", batch_size=256, augment="none", shuffle=False,
                                            num_workers=0, rank=0, world_size=1))
        loader_best = min(loader_best, time.perf_counter() - start)
    assert n == m == 12000, (n, m)
    print(f"raw samples: {n / raw_best:,.0f}/s; make_loader (decode, no augmentation): {m / loader_best:,.0f}/s "
          f"(best of {args.rounds})")


if __name__ == "__main__":
    main()
