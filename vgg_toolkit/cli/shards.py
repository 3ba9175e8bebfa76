"""``vggtk shards create | inspect | verify``, mounted by the core CLI as ``vggtk shards``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import VggtkError
from ..data.errors import SkipLog
from ..runtime.console import one_line, plain, print_table
from ..data.shards.inspection import CONTACT_SHEET
from ..runtime.files import check_output_file

app = typer.Typer(help="Write, inspect and verify WebDataset shards.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

DEFAULT_SHARDS = "shards/fashion-mnist"


def _out() -> Console:
    """Standard output, at the terminal's width now (a console made at import would keep the first)."""
    return Console(soft_wrap=True)


def _progress() -> Progress:
    console = _out()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise VggtkError(f"--source-option {pair!r} is not KEY=VALUE")
        out[key.replace("-", "_").strip()] = int(value) if value.strip().lstrip("-").isdigit() else value
    return out


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def create(
    src: str = typer.Argument("fashion-mnist", help="An image folder (one subfolder per class), a .csv / .json "
                              "list (path, label, optional boxes), or a packaged source: fashion-mnist, localisation."),
    outdir: Path = typer.Argument(Path(DEFAULT_SHARDS), help="Where the shards and manifest.json go."),
    samples_per_shard: int = typer.Option(3000, help="Samples per shard (ignored when --bytes-per-shard is set)."),
    bytes_per_shard: int = typer.Option(0, help="Start a new shard past this many bytes of sample data (0: off)."),
    shuffle: bool = typer.Option(True, help="Shuffle each split (seeded) before sharding."),
    seed: int = typer.Option(0, help="Seed for the split assignment, the shuffle and packaged sources' sampling."),
    splits: str = typer.Option("train=0.8,val=0.1,test=0.1",
                               help="Split fractions for sources that do not define their splits."),
    workers: int = typer.Option(2, help="Threads reading and encoding samples in parallel."),
    compress: str = typer.Option("auto", help="gzip the shards: auto (when the images are PNG), yes, no."),
    data_root: str = typer.Option(None, help="Folder of a packaged source's files (default: its Debian package)."),
    source_option: list[str] = typer.Option([], help="KEY=VALUE for a packaged source (e.g. train=12000)."),
    into_nonempty: bool = typer.Option(False, "--into-nonempty", help="Write into a folder that holds other "
                                       "files (and no shard set); they are left as they are."),
    on_error: str = typer.Option("fail", help="A source image that cannot be read or decoded: fail (name it and "
                                 "stop; nothing is written) | skip (leave it out, count it and name the first)."),
):
    """Write WebDataset shards (KEY.jpg|png, KEY.cls, optional KEY.json with boxes) and a manifest.json."""
    from ..data.errors import check_policy
    from ..data.shards.create import create_shards, parse_splits
    from ..data.sources import open_source

    check_policy(on_error)
    if compress not in ("auto", "yes", "no"):
        raise VggtkError(f"--compress must be auto, yes or no, not {compress!r}")
    for flag, value, low in (("--samples-per-shard", samples_per_shard, 1), ("--bytes-per-shard", bytes_per_shard, 0),
                             ("--workers", workers, 1), ("--seed", seed, 0)):
        if value < low:
            raise VggtkError(f"{flag}: must be at least {low}, got {value}")
    fractions = parse_splits(splits)
    source = open_source(src, data_root, **_options(source_option))
    skipped = SkipLog()
    with _progress() as bar:
        task = bar.add_task("writing", total=len(source.refs))
        manifest = create_shards(
            source, outdir, samples_per_shard=None if bytes_per_shard else samples_per_shard,
            bytes_per_shard=bytes_per_shard or None, shuffle=shuffle, seed=seed, splits=fractions,
            workers=workers, compress={"auto": None, "yes": True, "no": False}[compress],
            progress=lambda n: bar.advance(task, n),
            on_split=lambda split, n: bar.update(task, description=f"writing {split} ({n})"),
            into_nonempty=into_nonempty, warn=lambda line: _out().print(plain(f"warning: {line}")),
            on_error=on_error, skipped=skipped)
    table = Table(title=plain(f"{manifest.name}: {_count(manifest.num_classes, 'class', 'classes')} -> {outdir}"))
    for col in ("split", "shards", "samples", "size"):
        table.add_column(col, justify="left" if col == "split" else "right", no_wrap=True)
    for split, shards in manifest.splits.items():
        table.add_row(split, str(len(shards)), f"{sum(s.samples for s in shards):,}",
                      _human(sum(s.bytes for s in shards)))
    print_table(_out(), table)
    if skipped.total:
        _out().print(plain(f"{skipped.summary()}; first: {skipped.examples[0]}"), style="yellow")
    if manifest.stats is not None:
        mean = ", ".join(f"{v:.1f}" for v in manifest.stats.mean_rgb_255)
        eig = ", ".join(f"{v:.4f}" for v in manifest.stats.eigval)
        _out().print(f"{manifest.stats_split} mean RGB (0-255): {mean}; RGB covariance eigenvalues ([0,1]): {eig}")
    _out().print(plain(f"manifest: {manifest.path}"))


def _load(path: str):
    from ..data.shards.manifest import Manifest

    return Manifest.load(path)


@app.command()
def inspect(
    shards: str = typer.Argument(str(DEFAULT_SHARDS), help="Shard directory, manifest.json or manifest URL."),
    split: str = typer.Option("train", help="Split to draw the contact sheet from."),
    sheet: Path = typer.Option(None, help="Contact sheet PNG to write (default: NAME-SPLIT-sheet.png here)."),
    count: int = typer.Option(64, help="Samples on the contact sheet."),
):
    """Counts per split and class, image sizes, colour statistics, and a contact sheet PNG."""
    from ..data.shards.inspection import class_counts, contact_sheet

    manifest = _load(shards)
    manifest.split(split)
    if count < 1:
        raise VggtkError(f"--count: must be at least 1, got {count}")
    sheet = check_output_file(sheet or Path(f"{manifest.name or 'shards'}-{split}-sheet.png"), CONTACT_SHEET)
    counts = {s: class_counts(manifest, s) for s in manifest.splits}
    written = contact_sheet(manifest, split, sheet, count=count)
    table = Table(title=plain(f"{manifest.name} ({manifest.location}): {manifest.channels}-channel images, "
                              f"sides {manifest.extra.get('image_size', {}).get('min_side', '?')}-"
                              f"{manifest.extra.get('image_size', {}).get('max_side', '?')} px"))
    table.add_column("class", no_wrap=True)
    for s in manifest.splits:
        table.add_column(s, justify="right", no_wrap=True)
    for i, name in enumerate(manifest.classes):
        table.add_row(plain(f"{i} {name}"), *(f"{counts[s].get(i, 0):,}" for s in manifest.splits))
    table.add_row("total", *(f"{sum(counts[s].values()):,} in {len(manifest.split(s))} shard(s)"
                             for s in manifest.splits), style="bold")
    print_table(_out(), table)
    for s in manifest.splits:
        if sum(counts[s].values()) != manifest.samples(s):
            _out().print(plain(f"warning: {s}: the shards hold {sum(counts[s].values()):,} samples, the manifest "
                                f"says {manifest.samples(s):,}; run `vggtk shards verify`"), style="yellow")
    if manifest.stats is not None:
        _out().print("mean RGB (0-255): " + ", ".join(f"{v:.1f}" for v in manifest.stats.mean_rgb_255))
    if "licence" in manifest.extra:
        _out().print(plain(f"licence: {manifest.extra['licence']}"))
    _out().print(plain(f"contact sheet ({min(count, manifest.samples(split))} {split} samples): {written}"))


@app.command()
def verify(
    shards: str = typer.Argument(str(DEFAULT_SHARDS), help="Shard directory, manifest.json or manifest URL."),
    split: list[str] = typer.Option([], help="Splits to check (default: all)."),
    on_error: str = typer.Option("fail", help="fail: stop at the first bad shard or sample; skip: check on, "
                                 "count and report every problem (the exit status is still non-zero)."),
):
    """Check each shard's sha256 and sample count against the manifest and decode every sample."""
    from ..data.errors import check_policy
    from ..data.shards.inspection import verify as run_verify

    check_policy(on_error)
    manifest = _load(shards)
    total = sum(manifest.samples(s) for s in (split or manifest.splits))
    with _progress() as bar:
        task = bar.add_task("verifying", total=total)
        report = run_verify(manifest, split or None, on_error, progress=lambda n: bar.advance(task, n))
    table = Table(title=plain(f"verify {manifest.location}"))
    for col in ("shard", "samples", "status"):
        table.add_column(col, no_wrap=True)
    for name, n, status in report.per_shard:
        table.add_row(plain(name), f"{n:,}", plain(status), style=None if status == "ok" else "red")
    print_table(_out(), table)
    _out().print(plain(f"{report.shards} shard(s), {report.samples:,} samples, {report.decoded:,} decoded, "
                        f"{report.boxes:,} boxes; {report.skipped.summary()}"))
    for line in report.skipped.examples:
        _out().print(plain(f"  {line}"))
    if not report.ok:
        print(one_line(f"vggtk: verify: {manifest.location}: {report.skipped.summary()}"), file=sys.stderr)
        raise typer.Exit(code=1)

