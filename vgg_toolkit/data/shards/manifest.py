"""``manifest.json``: what a directory of shards holds (splits, shards, counts, classes, colour statistics)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...runtime.files import write_text
from ..errors import DataError
from .location import MANIFEST_NAME, beside, display_name, is_remote, local_path, manifest_location, read_bytes

FORMAT = "vggtk-shards/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tidy(values) -> list[float]:
    return [float(f"{v:.12g}") for v in np.ravel(values)]


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name, relative to the manifest's directory
    samples: int
    bytes: int
    sha256: str


@dataclass
class ColorStats:
    """Mean RGB and the eigen-decomposition of the RGB covariance, pixel values scaled to [0, 1].

    The [0, 1] scale is the one Krizhevsky's colour shift is usually quoted in (eigenvalues about
    0.2, 0.02, 0.005 on ImageNet); in 0-255 units the eigenvalues would be 255^2 larger and the
    same ``alphastd`` would mean a wildly larger shift.
    """

    mean_rgb: list[float]  # in [0, 1]
    eigval: list[float]  # descending
    eigvec: list[list[float]]  # columns are eigenvectors, matching eigval
    pixels: int

    @classmethod
    def from_sums(cls, s1: np.ndarray, s2: np.ndarray, n: int) -> "ColorStats":
        """From the sum of pixel vectors ``s1`` (3,) and of their outer products ``s2`` (3, 3), in [0, 1] units."""
        if n == 0:
            return cls([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], np.eye(3).tolist(), 0)
        mean = s1 / n
        cov = s2 / n - np.outer(mean, mean)
        val, vec = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(val)[::-1]
        val, vec = np.clip(val[order], 0, None), vec[:, order]
        # Greyscale data has one non-zero eigenvalue; the other two eigenvectors are then whatever
        # LAPACK returns. Zero such eigenvalues and complete the basis by Gram-Schmidt on the unit
        # vectors, and fix each sign and the last digits, so a rebuild writes the same manifest anywhere.
        tiny = val <= 1e-9 * max(val[0], 1e-30)
        val[tiny] = 0.0
        basis = [vec[:, i] for i in range(3) if not tiny[i]]
        for e in np.eye(3):
            if len(basis) == 3:
                break
            v = e - sum(np.dot(e, b) * b for b in basis)
            if np.linalg.norm(v) > 1e-6:
                basis.append(v / np.linalg.norm(v))
        vec = np.stack(basis, 1)
        signs = np.where(vec[np.abs(vec).argmax(0), np.arange(3)] < 0, -1.0, 1.0)
        vec = vec * signs
        mean, val, vec = _tidy(mean), _tidy(val), np.reshape(_tidy(vec), (3, 3))
        return cls(mean, val, vec.tolist(), int(n))

    @property
    def mean_rgb_255(self) -> list[float]:
        return [m * 255.0 for m in self.mean_rgb]


@dataclass
class Manifest:
    """The parsed manifest of a set of shards. ``location`` is where the manifest is (a path or a URL, see
    ``location.py``); the shard names resolve beside it."""

    location: str
    classes: list[str]
    splits: dict[str, list[ShardInfo]]
    stats: ColorStats | None = None
    stats_split: str = "train"
    channels: int = 3
    name: str = ""
    extra: dict = field(default_factory=dict)  # source, licence, image sizes...

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def uniform_side(self) -> int | None:
        """The side of every image when all are square and of one size (as recorded), else None."""
        size = self.extra.get("image_size") or {}
        return size["max_side"] if size and size.get("min_side") == size.get("max_side") else None

    @property
    def path(self) -> str:
        return self.location

    @property
    def remote(self) -> bool:
        return is_remote(self.location)

    @property
    def title(self) -> str:
        """The set's name, else the folder it sits in: for table titles."""
        return self.name or display_name(self.location)

    def split(self, name: str) -> list[ShardInfo]:
        if name not in self.splits:
            raise DataError(f"no split {name!r}; this manifest has: {', '.join(self.splits) or '(none)'}",
                            shard=self.location, kind="unknown split")
        return self.splits[name]

    def shard_location(self, name: str) -> str:
        return beside(self.location, name)

    def shard_locations(self, split: str) -> list[str]:
        return [self.shard_location(s.name) for s in self.split(split)]

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.split(split))

    def shard_info(self, path: str | Path) -> ShardInfo | None:
        name = Path(path).name
        for shards in self.splits.values():
            for info in shards:
                if info.name == name:
                    return info
        return None

    def to_json(self) -> dict:
        out = {
            "format": FORMAT,
            "name": self.name,
            "classes": self.classes,
            "channels": self.channels,
            "splits": {
                split: {"samples": sum(s.samples for s in shards),
                        "shards": [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256}
                                   for s in shards]}
                for split, shards in self.splits.items()
            },
        }
        if self.stats is not None:
            out["stats"] = {"split": self.stats_split, "mean_rgb": self.stats.mean_rgb, "eigval": self.stats.eigval,
                            "eigvec": self.stats.eigvec, "pixels": self.stats.pixels, "scale": "[0,1]"}
        out.update(self.extra)
        return out

    def write(self, root: str | Path | None = None) -> Path:
        """Into the folder ``root``, else where it was read from (a local manifest only)."""
        if root is None and self.remote:
            raise DataError("a manifest read from a URL is not written back", shard=self.location)
        target = Path(root) / MANIFEST_NAME if root is not None else local_path(self.location)
        return write_text(target, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, data: str | Path) -> "Manifest":
        """Read ``data``: a manifest file, the directory holding ``manifest.json``, or a manifest's URL."""
        where = manifest_location(data)
        try:
            text = read_bytes(where).decode() if is_remote(where) else local_path(where).read_text()
            data = json.loads(text)
        except FileNotFoundError:
            raise DataError("manifest not found (create shards with `vggtk shards create`)", shard=where,
                            kind="unreadable manifest") from None
        except DataError as err:
            raise DataError(f"manifest not readable ({str(err).removeprefix(where + ': cannot read: ')})", shard=where,
                            kind="unreadable manifest") from None
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: also JSON's digit limit
            raise DataError(f"unreadable manifest ({exc})", shard=where, kind="unreadable manifest") from None
        return cls.from_json(data, where)

    @classmethod
    def from_json(cls, data, where: str) -> "Manifest":
        """The manifest a parsed ``manifest.json`` at ``where`` describes. A field that cannot be right (a class
        named twice, a negative count, a mean that is not a number, no split, a channel count other than 1 or 3)
        is refused here, in one line naming ``where`` and the field, so no command reads such a set."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            if not isinstance(data["splits"], dict) or not data["splits"]:
                raise ValueError("splits: the manifest lists no split")
            splits = {split: _shards(split, body) for split, body in data["splits"].items()}
            stats = _stats(data["stats"]) if "stats" in data else None
            known = {"format", "name", "classes", "channels", "splits", "stats"}
            return cls(location=where, classes=_class_names(data["classes"]), splits=splits, stats=stats,
                       stats_split=str(data.get("stats", {}).get("split", "train")),
                       channels=_channels(data.get("channels", 3)), name=str(data.get("name", "")),
                       extra={k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"unreadable manifest ({detail})", shard=where, kind="unreadable manifest") from None


def _shards(split: str, body) -> list[ShardInfo]:
    """The shard entries of one split."""
    if not isinstance(body, dict) or not isinstance(body.get("shards"), list) or \
            not all(isinstance(s, dict) for s in body["shards"]):
        raise ValueError(f"splits.{split}: must hold a list of shard entries under \"shards\"")
    shards = [ShardInfo(str(s["name"]), _count(s["samples"], f"splits.{split}: samples"),
                        _count(s["bytes"], f"splits.{split}: bytes"), str(s["sha256"])) for s in body["shards"]]
    for s in shards:
        if Path(s.name).name != s.name:
            raise ValueError(f"shard name {s.name!r} must be a plain file name")
    return shards


def _count(value, what: str) -> int:
    """A whole number >= 0; JSON's true and false, which Python takes for 1 and 0, are not counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {value!r:.40}, not a whole number >= 0")
    return value


def _class_names(classes) -> list[str]:
    """One name per class, each once: a string would be read as one class per letter, and a name listed twice
    would leave one of its labels unnameable."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes: must be a non-empty list of class names")
    twice = [name for name, n in Counter(classes).items() if n > 1]
    if twice:
        raise ValueError(f"classes: {twice[0]!r} is listed {Counter(classes)[twice[0]]} times")
    return classes


def _channels(value) -> int:
    """1 (greyscale) or 3 (RGB): the images are read as such and the net is built for as many."""
    if isinstance(value, bool) or value not in (1, 3):
        raise ValueError(f"channels: {value!r:.40}, where a shard set holds 1-channel or 3-channel images")
    return int(value)


def _stats(st) -> ColorStats:
    """The colour statistics as ``ColorStats.from_sums`` makes them: finite, means in [0, 1], eigenvalues >= 0."""
    try:
        stats = ColorStats([float(v) for v in st["mean_rgb"]], [float(v) for v in st["eigval"]],
                           [[float(v) for v in row] for row in st["eigvec"]],
                           _count(st.get("pixels", 0), "stats.pixels"))
    except OverflowError:
        raise ValueError("stats: a value is too large to be a number") from None
    if len(stats.mean_rgb) != 3 or len(stats.eigval) != 3 or np.shape(stats.eigvec) != (3, 3):
        raise ValueError("stats: must hold 3 means, 3 eigenvalues and a 3x3 eigenvector matrix")
    values = stats.mean_rgb + stats.eigval + [v for row in stats.eigvec for v in row]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("stats: a mean, eigenvalue or eigenvector is not a finite number")
    if not all(0.0 <= v <= 1.0 for v in stats.mean_rgb):
        raise ValueError(f"stats.mean_rgb {stats.mean_rgb} lies outside [0, 1]")
    if any(v < 0 for v in stats.eigval):
        raise ValueError(f"stats.eigval {stats.eigval} holds a negative variance")
    return stats
