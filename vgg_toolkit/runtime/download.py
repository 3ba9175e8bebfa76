"""Fetching one file over HTTP(S) (or ``file://``) into place: streamed to a temporary name beside the
target with a progress bar, hashed as it arrives, checked, and only then renamed; a refused or broken
download leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import VggtkError
from .files import TMP_TAG

CHUNK = 1 << 20


@dataclass(frozen=True)
class Expected:
    """What a download must be; every given field is checked. ``size_mib`` is a size published in MiB
    with a few decimals (torchvision's), checked to within its rounding."""

    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None
    bytes: int | None = None
    size_mib: float | None = None

    def largest(self) -> int | None:
        """The most bytes the file can have, when its size is known."""
        if self.bytes is not None:
            return self.bytes
        return int((self.size_mib + 0.005) * 2 ** 20) if self.size_mib is not None else None

    def problem_of_size(self, size: int) -> str | None:
        if self.bytes is not None and size != self.bytes:
            return f"{size:,} bytes, not the {self.bytes:,} expected"
        if self.size_mib is not None and abs(size / 2 ** 20 - self.size_mib) > 0.005:
            return f"{size / 2 ** 20:.3f} MiB, not the {self.size_mib} MiB published"
        return None

    def problem(self, size: int, sha256: str, md5: str) -> str | None:
        if self.problem_of_size(size):
            return self.problem_of_size(size)
        if self.sha256 is not None and sha256 != self.sha256:
            return f"sha256 {sha256[:12]}... is not the expected {self.sha256[:12]}..."
        if self.sha256_prefix is not None and not sha256.startswith(self.sha256_prefix):
            return f"sha256 {sha256[:12]}... does not start with {self.sha256_prefix} (in its file name)"
        if self.md5 is not None and md5 != self.md5:
            return f"md5 {md5} is not the published {self.md5}"
        return None


def download(url: str, target: Path, expected: Expected, progress: bool | None = None, timeout: float = 60.0) -> Path:
    """``url`` into ``target``, checked against ``expected`` before it takes the name; a VggtkError naming
    the URL otherwise, with nothing left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{TMP_TAG}{os.getpid()}")
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
            raise VggtkError(f"{url}: cannot download ({reason}); offline? put the file at {target} "
                             "(or set VGGTK_WEIGHTS_URL to a mirror)") from None
        length = response.headers.get("Content-Length") or ""
        total = int(length) if length.isdigit() else None
        limit = expected.largest()
        if total is not None and limit is not None and total > limit:
            raise VggtkError(f"{url}: refused: the server announces {total:,} bytes, more than the {limit:,} expected; "
                             "nothing was kept")
        with response, open(tmp, "wb") as out, _bar(target.name, total, progress) as advance:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise VggtkError(f"{url}: the download broke off after {size:,} bytes "
                                     f"({type(exc).__name__}); nothing was kept") from None
                if not chunk:
                    break
                if limit is not None and size + len(chunk) > limit:  # a server that never stops: stop here
                    raise VggtkError(f"{url}: refused: more than the {limit:,} bytes expected; nothing was kept")
                out.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                advance(len(chunk))
        problem = expected.problem(size, sha256.hexdigest(), md5.hexdigest())
        if problem:
            raise VggtkError(f"{url}: refused: {problem}; nothing was kept")
        os.replace(tmp, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


class _bar:
    """A rich progress bar on a terminal; nothing elsewhere. ``with _bar(...) as advance: advance(n)``."""

    def __init__(self, name: str, total: int | None, show: bool | None):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        console = Console(stderr=True)
        show = console.is_terminal if show is None else show
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=True, disable=not show)
        self.name, self.total = name, total

    def __enter__(self):
        self.progress.__enter__()
        task = self.progress.add_task(self.name.replace("[", "\\["), total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

