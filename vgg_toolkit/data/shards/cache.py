"""An optional local copy of remote shards: with ``VGGTK_SHARD_CACHE=DIR`` a remote shard, once fetched
and found to match its manifest's sha256, is kept as ``DIR/<sha256>-<name>`` and read from there next
time. Without it each read fetches the shard again into a temporary file. A copy is named by its content,
so sets and versions never collide, and it appears only once complete and checked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_ENV = "VGGTK_SHARD_CACHE"


def cache_dir() -> Path | None:
    folder = os.environ.get(CACHE_ENV)
    return Path(folder) if folder else None


def _name(sha256: str, location: str) -> str:
    return f"{sha256}-{location.rstrip('/').rsplit('/', 1)[-1].split()[0]}"


def cached_copy(sha256: str | None, location: str) -> Path | None:
    folder = cache_dir()
    if folder is None or not sha256:
        return None
    path = folder / _name(sha256, location)
    return path if path.is_file() else None


class CacheSink:
    """Receives a shard's bytes as they are fetched; ``commit`` swaps the complete, checked copy in."""

    def __init__(self, folder: Path, sha256: str, location: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.final = folder / _name(sha256, location)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".tmp")
        self.tmp, self.file = Path(tmp), os.fdopen(fd, "wb")

    @classmethod
    def open(cls, sha256: str | None, location: str) -> "CacheSink | None":
        folder = cache_dir()
        return cls(folder, sha256, location) if folder is not None and sha256 else None

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> Path:
        self.file.close()
        os.replace(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
