"""Named pretrained weights: the catalogue (``catalogue.json``, data: name, architecture, family, URL,
checksums, size, licence, published accuracy and its protocol) and getting an entry's file.

Files go to torch's hub cache (``torch.hub.get_dir()/checkpoints``, under ``TORCH_HOME``), so a file
torchvision already fetched is reused. ``VGGTK_WEIGHTS_URL=BASE`` replaces each entry's URL directory,
keeping the file name: an internal mirror, or a test server. A Caffe release is converted once, after
its download is checked, into a vggtk safetensors file beside it that records the net and its
preprocessing; that is the file every command reads.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..contract.preprocess import Preprocessing
from ..errors import VggtkError
from ..runtime.console import notice
from ..runtime.download import Expected, download

CATALOGUE = Path(__file__).with_name("catalogue.json")
URL_ENV = "VGGTK_WEIGHTS_URL"


@dataclass(frozen=True)
class Entry:
    name: str
    arch: str
    options: dict
    family: str
    url: str
    file: str
    expected: Expected
    source: str
    licence: str
    accuracy: tuple[dict, ...]

    @property
    def location(self) -> str:
        """Where it is fetched from: the entry's URL, or its file name under ``VGGTK_WEIGHTS_URL``."""
        base = os.environ.get(URL_ENV)
        return f"{base.rstrip('/')}/{self.file}" if base else self.url

    def path(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / self.file

    def converted(self) -> Path:
        """The vggtk file a Caffe release becomes."""
        return self.path().with_suffix(".vggtk.safetensors")

    def cached(self) -> Path | None:
        """The file commands read, when it is here already."""
        path = self.converted() if self.family == "caffe" else self.path()
        return path if path.is_file() else None


@lru_cache(maxsize=4)
def _read(path: Path) -> tuple[Entry, ...]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for e in data["weights"]:
        expected = Expected(e.get("sha256"), e.get("sha256_prefix"), e.get("md5"), e.get("bytes"), e.get("size_mib"))
        out.append(Entry(e["name"], e["arch"], dict(e.get("options", {})), e["family"], e["url"], e["file"],
                         expected, e["source"], e["licence"], tuple(e.get("accuracy", ()))))
    return tuple(out)


def entries() -> tuple[Entry, ...]:
    return _read(CATALOGUE)


def find_entry(name: str) -> Entry | None:
    return next((e for e in entries() if e.name == name), None)


def closest_name(name: str) -> str | None:
    close = difflib.get_close_matches(name, [e.name for e in entries()], n=1)
    return close[0] if close else None


def get_entry(name: str) -> Entry:
    entry = find_entry(name)
    if entry is None:
        close = closest_name(name)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise VggtkError(f"{name!r}: no such weights in the catalogue{hint}; `vggtk weights list` shows them")
    return entry


def fetch(entry: Entry, progress: bool | None = None) -> Path:
    """The file commands read for ``entry``: downloaded and checked unless already in the cache (where a
    copy is checked for its size), a Caffe release converted once."""
    path = entry.path()
    if entry.family == "caffe" and entry.converted().is_file():
        return _checked_conversion(entry)
    if path.is_file():
        problem = entry.expected.problem_of_size(path.stat().st_size)
        if problem:
            raise VggtkError(f"{path}: the cached {entry.name} is {problem}; move it away to fetch it again")
    else:
        download(entry.location, path, entry.expected, progress)
        notice(f"{entry.name}: fetched from {entry.location}, checked, into {path}")
    if entry.family != "caffe":
        return path
    from .convert import convert_weights

    convert_weights(path, entry.converted(), preprocessing=Preprocessing.caffe(), say=None)
    return _checked_conversion(entry)


def _checked_conversion(entry: Entry) -> Path:
    """The converted file of a Caffe entry, once its record says it is that entry's net."""
    from .weights import read_model_info

    target = entry.converted()
    try:
        info = read_model_info(target)
    except VggtkError:
        info = None
    if info is None or info.arch != entry.arch or info.preprocessing != Preprocessing.caffe():
        raise VggtkError(f"{target}: is not {entry.name} converted by vggtk ({'records ' + info.arch if info else 'no record'}); "
                         "move it away to convert the release again")
    return target


def local_weights(entry: Entry) -> Path:
    """What commands read for ``entry``, fetched first when it is not here."""
    return fetch(entry)
