"""Where shards live: a local path, or a URL that WebDataset's ``gopen`` opens (``http(s)://``, ``gs://``,
``pipe:CMD`` whose standard output is the file, e.g. ``pipe:aws s3 cp s3://bucket/set/manifest.json -``).

A manifest names its shards by plain file names, resolved beside the manifest: for a path or an
``http(s)://`` URL, in the same folder; for a ``pipe:`` command, by putting the shard's name in place of
the last ``manifest.json`` in the command. A remote shard listed in a manifest is fetched whole into a
temporary file (or the shard cache) and checked against the manifest before any sample is read
(``reader.fetch_checked``); manifests and shards named without one are streamed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urljoin, urlparse

from webdataset.gopen import gopen

from ..errors import DataError

MANIFEST_NAME = "manifest.json"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(location: str | os.PathLike) -> bool:
    """A URL or a ``pipe:`` command rather than a local path (``file://`` counts as local)."""
    text = str(location)
    return text.startswith("pipe:") or (bool(_SCHEME.match(text)) and not text.startswith("file://"))


def local_path(location: str | os.PathLike) -> Path:
    text = str(location)
    return Path(urlparse(text).path) if text.startswith("file://") else Path(text)


def manifest_location(data: str | os.PathLike) -> str:
    """The manifest of ``data``: a shard directory, a manifest file, or the URL of a manifest."""
    if is_remote(data):
        return str(data)
    path = local_path(data)
    return str(path / MANIFEST_NAME if path.is_dir() else path)


def beside(manifest: str, name: str) -> str:
    """The location of the shard ``name`` that the manifest at ``manifest`` lists."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise DataError(f"shard name {name!r} must be a plain file name", shard=manifest, kind="unreadable manifest")
    if manifest.startswith("pipe:"):
        at = manifest.rfind(MANIFEST_NAME)
        if at < 0:
            raise DataError(f"a pipe: command for a manifest must name {MANIFEST_NAME}, so that shard names can "
                            "take its place", shard=manifest, kind="unreadable manifest")
        return manifest[:at] + name + manifest[at + len(MANIFEST_NAME):]
    if is_remote(manifest):
        return urljoin(manifest, name)
    return str(local_path(manifest).parent / name)


def display_name(location: str) -> str:
    """A short name for titles: the folder a manifest or shard sits in."""
    if location.startswith("pipe:"):
        return location
    path = urlparse(location).path if is_remote(location) else str(local_path(location))
    parent = path.rstrip("/").rsplit("/", 1)[0] if path.endswith(MANIFEST_NAME) else path.rstrip("/")
    return parent.rsplit("/", 1)[-1] or location


_CURL = {6: "host not found", 7: "could not connect", 18: "the transfer was cut short",
         22: "the server answered with an HTTP error (e.g. 404 not found)", 28: "timed out",
         35: "TLS handshake failed", 56: "the connection was dropped"}
_EXIT = re.compile(r"exit (\d+) \(read\)")


_CUT_SHORT = {18, 56}  # curl: the transfer was cut short, the connection dropped mid-way


def is_exit_status(exc: BaseException) -> bool:
    """Whether a reader's failure is a pipe's (curl's, a cloud CLI's) non-zero exit status."""
    return _EXIT.search(str(exc)) is not None


def failure_kind(exc: BaseException) -> str:
    """How a failed fetch is counted: a file that arrived cut short, or one that could not be had."""
    status = _EXIT.search(str(exc))
    return "truncated shard" if status is not None and int(status.group(1)) in _CUT_SHORT else "missing shard"


def explain(exc: BaseException, location: str) -> str:
    """A reader's failure in words: curl's and a pipe command's exit statuses say what went wrong."""
    text = str(exc).split(" @ ")[0]
    status = _EXIT.search(text)
    if status is None:
        return f"{type(exc).__name__}: {text}"
    code = int(status.group(1))
    if location.startswith("pipe:"):
        return f"the command exited with status {code}"
    return f"{_CURL.get(code, 'curl failed')} (curl exit {code})"


def open_stream(location: str):
    """A binary stream of the file at ``location``; a failure to open it is a DataError naming it."""
    try:
        return gopen(str(local_path(location)) if not is_remote(location) else location, "rb")
    except FileNotFoundError:
        raise DataError("not found", shard=location, kind="missing shard") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot open: {explain(exc, location)}", shard=location, kind="missing shard") from None


def read_bytes(location: str) -> bytes:
    """All of a (small) file, such as a manifest; a remote command that fails is a DataError naming it."""
    stream = open_stream(location)
    try:
        data = stream.read()
        stream.close()  # a pipe's exit status is checked here: curl's, after an HTTP error
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read: {explain(exc, location)}", shard=location, kind="missing shard") from None
    return data
