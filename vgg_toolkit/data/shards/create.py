"""``vggtk shards create``: a source -> split, shuffled, sharded tar files and their ``manifest.json``."""

from __future__ import annotations

import io
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ...errors import VggtkError
from .manifest import MANIFEST_NAME, ColorStats, Manifest
from .publish import clean_debris, discard, previous_set, publish, staging_folder
from .reader import derive_seed
from .records import Record, box_problem, label_problem
from ..decode import decode_failure, stored_channels, to_8bit
from ..errors import DataError, SkipLog, handle
from ..sources.base import SPLITS, Source
from .writer import RollingWriter


def parse_splits(text: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> fractions."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in SPLITS:
            raise VggtkError(f"--splits: unknown split {name!r}; use {', '.join(SPLITS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise VggtkError(f"--splits: {part!r} is not NAME=FRACTION") from None
    total = sum(out.values())
    if not out or not math.isfinite(total) or abs(total - 1.0) > 1e-6 or any(not v >= 0 for v in out.values()):
        raise VggtkError(f"--splits: fractions must be non-negative and add up to 1 (got {text!r})")
    return out


def assign_splits(source: Source, fractions: dict[str, float], seed: int) -> dict[str, list]:
    """Refs by split: a ref's own split when the source has one, else a seeded cut by ``fractions``."""
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    free = []
    for ref in source.refs:
        (by_split[ref.split] if ref.split else free).append(ref)
    if free:
        perm = np.random.default_rng(derive_seed("splits", seed)).permutation(len(free))
        free = [free[i] for i in perm]
        start = 0
        names = [s for s in SPLITS if fractions.get(s, 0) > 0]
        for i, name in enumerate(names):
            stop = len(free) if i == len(names) - 1 else start + round(fractions[name] * len(free))
            by_split[name].extend(free[start:stop])
            start = stop
    return {s: refs for s, refs in by_split.items() if refs}


STATS_PIXELS = 1 << 20  # colour statistics of a larger image come from a reduced copy of it


def _examine(record: Record, want_stats: bool):
    """Decode the image (so a broken one is caught now, in any split): its (width, height), mode, and,
    for the stats split, the sum of its RGB pixels and of their outer products ([0, 1] units), weighted
    by its full pixel count. A large image is decoded reduced (JPEG's DCT scaling, or PIL's box
    reduction) for the statistics, so an 8000 x 8000 photo costs megabytes, not gigabytes."""
    with Image.open(io.BytesIO(record.image)) as img:
        w, h = img.size
        factor = max(1, math.ceil(math.sqrt(w * h / STATS_PIXELS))) if want_stats else 1
        if factor > 1 and img.format == "JPEG":
            img.draft("RGB", (max(1, w // factor), max(1, h // factor)))
        img.load()
        sums = None
        if want_stats:
            small = to_8bit(img)
            if small.size[0] * small.size[1] > STATS_PIXELS:
                small = small.reduce(max(1, math.ceil(math.sqrt(small.size[0] * small.size[1] / STATS_PIXELS))))
            rgb = np.asarray(small.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
            weight = w * h / len(rgb)
            sums = (rgb.sum(0) * weight, (rgb.T @ rgb) * weight, w * h)
        return (w, h, img.mode), sums


def create_shards(source: Source, outdir: str | Path, *, samples_per_shard: int | None = None,
                  bytes_per_shard: int | None = None, shuffle: bool = True, seed: int = 0,
                  splits: dict[str, float] | None = None, workers: int = 2, compress: bool | None = None,
                  stats_split: str = "train", progress: Callable[[int], None] | None = None,
                  on_split: Callable[[str, int], None] | None = None, into_nonempty: bool = False,
                  warn: Callable[[str], None] | None = None, on_error: str = "fail",
                  skipped: SkipLog | None = None) -> Manifest:
    """Write ``outdir/{split}-000000.tar[.gz]``... and ``outdir/manifest.json``; return the manifest.

    The set is written beside ``outdir`` and swapped in complete (``publish``): a failed or interrupted
    run leaves the previous set as it was, and no file the tool did not write is touched. A folder that
    holds other files but no shard set is refused unless ``into_nonempty``. A source image that cannot be
    read or decoded stops the run naming it (``on_error="fail"``), or is left out and counted in
    ``skipped`` (``"skip"``).

    Every sample of the stats split is decoded once to accumulate the mean RGB and the RGB
    covariance (for the colour shift). The same source, seed and options give byte-identical shards.
    ``compress=None`` gzips the shards when the images are PNG: small PNGs (Fashion-MNIST's are about
    500 bytes) would otherwise be mostly tar headers and padding; JPEG shards stay plain tar, which
    compresses little and reads faster.
    """
    if not samples_per_shard and not bytes_per_shard:
        samples_per_shard = 5000
    outdir = Path(outdir)
    for line in clean_debris(outdir):
        (warn or print)(line)
    old = previous_set(outdir, into_nonempty)
    by_split = assign_splits(source, splits or {"train": 0.8, "val": 0.1, "test": 0.1}, seed)
    staging = staging_folder(outdir)
    try:
        manifest = _write_set(source, staging, by_split, samples_per_shard=samples_per_shard,
                              bytes_per_shard=bytes_per_shard, shuffle=shuffle, seed=seed, workers=workers,
                              compress=compress, stats_split=stats_split, progress=progress, on_split=on_split,
                              on_error=on_error, skipped=skipped if skipped is not None else SkipLog())
        return publish(staging, outdir, manifest, old)
    finally:
        discard(staging)


def _write_set(source: Source, folder: Path, by_split: dict[str, list], *, samples_per_shard, bytes_per_shard,
               shuffle, seed, workers, compress, stats_split, progress, on_split, on_error, skipped) -> Manifest:
    keys: set[str] = set()
    shards_out: dict[str, list] = {}
    s1, s2, npix = np.zeros(3), np.zeros((3, 3)), 0
    sides = [1 << 30, 0]
    modes: set[str] = set()

    def load(ref, want_stats: bool):
        record = ref.load()
        where = getattr(ref, "path", None) or record.key
        problem = label_problem(record, len(source.classes))
        if problem:
            raise VggtkError(f"{where}: {problem}")
        try:
            info, sums = _examine(record, want_stats)
        except Exception as exc:  # PIL raises many types for a broken file
            raise VggtkError(f"{where}: {decode_failure(exc)}") from None
        problem = box_problem(record.boxes or [], info[0], info[1])
        if problem:
            raise VggtkError(f"{where}: {problem}")
        return record, sums, info

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, refs in by_split.items():
            if shuffle:
                perm = np.random.default_rng(derive_seed("shuffle", seed, split)).permutation(len(refs))
                refs = [refs[i] for i in perm]
            if on_split is not None:
                on_split(split, len(refs))
            writer = None
            want_stats = split == stats_split
            window: deque = deque()
            todo = iter(refs)
            try:
                while True:
                    while len(window) < 4 * max(1, workers):
                        ref = next(todo, None)
                        if ref is None:
                            break
                        window.append(pool.submit(load, ref, want_stats))
                    if not window:
                        break
                    try:
                        record, sums, (w, h, mode) = window.popleft().result()
                    except VggtkError as err:
                        handle(DataError(str(err), kind="unreadable source image"), on_error, skipped)
                        if progress is not None:
                            progress(1)
                        continue
                    if record.key in keys:
                        raise VggtkError(f"sample key {record.key!r} occurs twice in the source")
                    keys.add(record.key)
                    if writer is None:
                        if compress is None:
                            compress = record.ext == "png"
                        writer = RollingWriter(folder, split, samples_per_shard, bytes_per_shard,
                                               ".tar.gz" if compress else ".tar")
                    writer.write(record)
                    sides[0], sides[1] = min(sides[0], w, h), max(sides[1], w, h)
                    modes.add(mode)
                    if sums is not None:
                        s1 += sums[0]
                        s2 += sums[1]
                        npix += sums[2]
                    if progress is not None:
                        progress(1)
                shards_out[split] = writer.close() if writer is not None else []
            except BaseException:
                if writer is not None:
                    writer.abort()
                for f in window:
                    f.cancel()
                raise
    # The rule a reader applies to each image (``stored_channels``), so that verify finds the set's channels right.
    channels = source.channels or max((stored_channels(m) for m in modes), default=1)
    extra = dict(source.info)
    extra["image_size"] = {"min_side": sides[0], "max_side": sides[1]}
    extra["created_with"] = {"seed": seed, "shuffle": shuffle, "samples_per_shard": samples_per_shard,
                             "bytes_per_shard": bytes_per_shard, "compress": bool(compress)}
    manifest = Manifest(location=str(folder / MANIFEST_NAME), classes=list(source.classes), splits=shards_out,
                        stats=ColorStats.from_sums(s1, s2, npix) if npix else None, stats_split=stats_split,
                        channels=channels, name=source.name, extra=extra)
    manifest.write()
    return manifest

