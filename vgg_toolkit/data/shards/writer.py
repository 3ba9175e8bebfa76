"""Writes WebDataset tar shards through WebDataset's ``TarWriter``, byte for byte reproducible: fixed
member metadata, gzip without a time stamp, each shard under a temporary name until it is complete."""

from __future__ import annotations

import gzip
from pathlib import Path

from webdataset import TarWriter

from ...runtime.files import atomic_file
from .manifest import ShardInfo, sha256_file
from .records import Record

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_gzip_name(path: str | Path) -> bool:
    return str(path).endswith((".tar.gz", ".tgz"))


class ShardWriter:
    """One shard file. Members get mtime 0, owner 0 and mode 0644 so that a rebuild from the same
    data gives the same sha256; the file is written under a temporary name and renamed when closed."""

    def __init__(self, path: str | Path, compresslevel: int = 9):
        self.path = Path(path)
        self._atomic = atomic_file(self.path)
        self.tmp = self._atomic.__enter__()
        self._raw = open(self.tmp, "wb")
        self._gz = None
        stream = self._raw
        if is_gzip_name(self.path):
            # TarWriter's own gzip stamps the time; filename="" and mtime=0 keep the header the same every build.
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=compresslevel, mtime=0)
            stream = self._gz
        self._tar = TarWriter(stream, user="", group="", mode=0o644, mtime=0, encoder=False, compress=False)
        self.samples = 0
        self.payload = 0  # bytes of member data, before tar headers and compression

    def write(self, record: Record) -> None:
        # One member per call: TarWriter sorts a sample's members by extension, and the image goes first
        # so that the committed shards keep their sha256s.
        for name, data in record.members():
            self.payload += self._tar.write({"__key__": record.key, name[len(record.key) + 1:]: data})
        self.samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.close()
        self._atomic.__exit__(None, None, None)
        return ShardInfo(self.path.name, self.samples, self.path.stat().st_size, sha256_file(self.path))

    def abort(self) -> None:
        for closer in (self._tar, self._gz, self._raw):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


class RollingWriter:
    """Writes records into ``{prefix}-000000.tar``, ``-000001``..., starting a new shard after
    ``max_samples`` samples or once ``max_bytes`` of member data would be exceeded."""

    def __init__(self, outdir: str | Path, prefix: str, max_samples: int | None = None, max_bytes: int | None = None,
                 suffix: str = ".tar"):
        if not max_samples and not max_bytes:
            raise ValueError("give max_samples or max_bytes")
        self.outdir, self.prefix, self.suffix = Path(outdir), prefix, suffix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[ShardInfo] = []
        self._current: ShardWriter | None = None

    def write(self, record: Record) -> None:
        size = sum(len(data) for _, data in record.members())
        cur = self._current
        if cur is not None and (
            (self.max_samples and cur.samples >= self.max_samples)
            or (self.max_bytes and cur.samples and cur.payload + size > self.max_bytes)
        ):
            self.shards.append(cur.close())
            cur = self._current = None
        if cur is None:
            name = f"{self.prefix}-{len(self.shards):06d}{self.suffix}"
            cur = self._current = ShardWriter(self.outdir / name)
        cur.write(record)

    def close(self) -> list[ShardInfo]:
        if self._current is not None:
            self.shards.append(self._current.close())
            self._current = None
        return self.shards

    def abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None
