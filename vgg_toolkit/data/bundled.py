"""The real demo data that ships with a source checkout (``shards/``), the default of every command."""

from __future__ import annotations

from pathlib import Path

from ..errors import VggtkError
from .shards.location import is_remote

BUNDLED = Path(__file__).resolve().parents[2] / "shards"
DEFAULT_DATA = BUNDLED / "fashion-mnist"


def resolve_data(data: str | Path | None) -> str | Path:
    """``data`` (a shard directory, a manifest file or a manifest's URL), or the bundled Fashion-MNIST
    shards when None. A URL is passed on as it is: reading it is what tells whether it is there."""
    if data is not None and is_remote(data):
        return str(data)
    path = Path(data) if data is not None else DEFAULT_DATA
    if not path.exists():
        hint = " (the bundled shards ship with a source checkout; pass --data)" if data is None else ""
        raise VggtkError(f"{path}: no such shard directory or manifest{hint}")
    return path
