"""``vggtk weights list | fetch``: the catalogue of named pretrained weights, mounted as ``vggtk weights``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ..models.catalogue import Entry, entries, fetch, get_entry
from ..runtime.console import plain, print_table

app = typer.Typer(help="Pretrained weights by name: torchvision's and the authors' Caffe release.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _checksum(entry: Entry) -> str:
    e = entry.expected
    if e.sha256:
        return f"sha256 {e.sha256}"
    if e.sha256_prefix:
        return f"sha256 {e.sha256_prefix}..."
    return f"md5 {e.md5}" if e.md5 else "-"


def _size(entry: Entry) -> str:
    e = entry.expected
    return f"{e.bytes:,} B" if e.bytes is not None else f"{e.size_mib} MiB" if e.size_mib is not None else "-"


def _row(entry: Entry) -> dict:
    cached = entry.cached()
    return {"name": entry.name, "arch": entry.arch, "options": entry.options, "family": entry.family,
            "url": entry.location, "file": entry.file, "checksum": _checksum(entry), "size": _size(entry),
            "source": entry.source, "licence": entry.licence, "accuracy": list(entry.accuracy),
            "cached": None if cached is None else str(cached)}


@app.command(name="list")
def list_weights(as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON.")):
    """The named weights: architecture, family (the preprocessing they need), size, checksum, the published
    accuracy with the protocol it was measured with, and whether they are cached here."""
    rows = [_row(e) for e in entries()]
    if as_json:
        print(json.dumps({"weights": rows}, indent=1))
        return
    table = Table(title="Pretrained weights (vggtk weights fetch NAME; --weights NAME)")
    for col in ("name", "arch", "family", "size", "checksum", "top-1 / top-5 err (%)", "protocol", "cached"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        first = row["accuracy"][0] if row["accuracy"] else {}
        errors = f"{first['top1_err']} / {first['top5_err']}" if first else "-"
        arch = row["arch"] + (" + BN" if row["options"].get("batch_norm") else "")
        table.add_row(plain(row["name"]), arch, row["family"], row["size"], row["checksum"], errors,
                      plain(first.get("protocol", "-")), "yes" if row["cached"] else "no")
    console = Console(soft_wrap=True)
    print_table(console, table)
    console.print(plain("Licences and sources: vggtk weights list --json. Files go to torch's hub cache "
                        "(TORCH_HOME); VGGTK_WEIGHTS_URL=BASE fetches them from a mirror."), highlight=False)


@app.command(name="fetch")
def fetch_weights(names: list[str] = typer.Argument(..., help="Catalogue names (vggtk weights list).")):
    """Download named weights into torch's hub cache, checked against the catalogue before they are kept
    (a Caffe release is then converted once, beside it)."""
    chosen = [get_entry(n) for n in names]  # every name checked before any download
    console = Console(soft_wrap=True)
    for entry in chosen:
        path = fetch(entry)
        console.print(plain(f"{entry.name}: {path}"), highlight=False)
