"""Reading shards: resolving a source to shard files, splitting an epoch's samples over ranks and
DataLoader workers, the shuffle order, and turning tar members into checked samples.

How an epoch is split. The shards are put in a seeded per-epoch order and their samples numbered
0..N-1 in that order. Rank r of W takes the contiguous range [N*r/W, N*(r+1)/W); a rank's range is
cut the same way among its workers. Every sample is read by exactly one worker of one rank, whatever
the number of shards, and a worker opens only the shards its range touches (skipping to its first
sample by tar headers). Each worker then shuffles with a buffer whose order is computed up front
from (seed, epoch, rank, worker) over sample numbers alone, so a resumed run can drop the samples it
already used without decoding them and go on in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import torch
from webdataset.handlers import reraise_exception
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_iterator

from ...runtime.seeding import derived_seed as derive_seed
from ..decode import LazyImage, stored_channels
from ..errors import DataError, SkipLog, handle
from .cache import CacheSink, cached_copy
from .location import MANIFEST_NAME, explain, failure_kind, is_exit_status, is_remote, local_path, open_stream
from .manifest import Manifest, ShardInfo, sha256_file
from .records import IMAGE_EXTS, box_problem


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """The augmentation seed of one sample in one epoch: the same on any rank, worker or resume."""
    return derive_seed("augment", seed, epoch, key)


def sample_generator(seed: int, epoch: int, key: str) -> torch.Generator:
    """A generator seeded with ``sample_seed``: what every augmentation of the sample draws from."""
    g = torch.Generator()
    g.manual_seed(sample_seed(seed, epoch, key))
    return g


# -- which shards -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardRef:
    path: str  # a local path or a URL (see location.py)
    samples: int | None = None  # None: not known until counted
    sha256: str | None = None
    size: int | None = None


def _count_samples(path: str) -> int:
    return sum(1 for _ in iter_raw(path, read=False))


def resolve_source(source, split: str = "train") -> tuple[list[ShardRef], Manifest | None]:
    """Shards to read and the manifest (if any) for: a ``Manifest``; a manifest file, a directory holding
    ``manifest.json`` or a manifest's URL (``split`` picks the split); a brace pattern of shard paths or
    URLs (``a-{000..009}.tar``, WebDataset's notation); or a list of them. Local shards named without a
    manifest are matched against a ``manifest.json`` beside them when one exists."""
    manifest = None
    if isinstance(source, Manifest):
        manifest = source
    elif isinstance(source, (str, os.PathLike)) and (
        str(source).endswith(".json") or (not is_remote(source) and local_path(source).is_dir())
    ):
        manifest = Manifest.load(source)
    if manifest is not None:
        refs = [ShardRef(manifest.shard_location(s.name), s.samples, s.sha256, s.bytes) for s in manifest.split(split)]
    else:
        paths = expand_urls(str(source)) if isinstance(source, (str, os.PathLike)) else [str(p) for p in source]
        refs = []
        beside = {}
        for p in paths:
            info = None
            if not is_remote(p):
                parent = local_path(p).parent
                if parent not in beside:
                    mpath = parent / MANIFEST_NAME
                    beside[parent] = Manifest.load(mpath) if mpath.exists() else None
                info: ShardInfo | None = beside[parent].shard_info(p) if beside[parent] is not None else None
            refs.append(ShardRef(str(p), info.samples, info.sha256, info.bytes) if info else ShardRef(str(p)))
        manifest = next((m for m in beside.values() if m is not None), None)
    if not refs:
        raise DataError(f"no shards to read (split {split!r} of {source} is empty)" if manifest is not None
                        else f"no shards to read: {source!r} names no shard files", kind="no shards")
    for ref in refs:
        if not is_remote(ref.path) and not local_path(ref.path).exists():
            raise DataError("shard file not found", shard=ref.path, kind="missing shard")
    refs = [r if r.samples is not None else ShardRef(r.path, _count_samples(r.path), r.sha256, r.size) for r in refs]
    return refs, manifest


# -- tar members ------------------------------------------------------------------------------------

def iter_raw(path: str, skip_samples: int = 0, read: bool = True, expect: ShardRef | None = None) -> Iterator[dict]:
    """The samples of one shard as ``{"__key__", "__shard__", ext: bytes}``, through
    WebDataset's tar reader and its grouping of members by key (everything before the first dot of the
    base name). The first ``skip_samples`` samples are passed over without reading their data; with
    ``read=False`` no data is read at all (for counting). A remote shard with an ``expect``ed size or
    sha256 is fetched whole and checked before its first sample is read (``fetch_checked``), so no sample
    of a shard that differs from its manifest is ever handed on. Raises DataError naming the shard and the
    member it was at."""
    state = {"member": None, "key": None, "seen": 0}

    def wanted(name: str) -> bool:  # WebDataset calls this with each member's name before reading its data
        state["member"] = name
        if skip_samples or not read:  # only counting needs the key
            key = _key_and_ext(name)[0]
            if key is not None and key != state["key"]:
                state["key"], state["seen"] = key, state["seen"] + 1
        return read and (not skip_samples or state["seen"] > skip_samples)

    checked = is_remote(path) and expect is not None and (expect.sha256 or expect.size is not None)
    stream = fetch_checked(path, expect) if checked else open_stream(path)
    try:
        files = tar_file_iterator(_Named(stream, path), handler=reraise_exception, select_files=wanted)
        if not read:
            for _ in files:
                pass
            yield from ({"__key__": None} for _ in range(state["seen"]))
        else:
            for sample in group_by_keys(_with_url(files, path), keys=_key_and_ext, handler=reraise_exception):
                sample["__shard__"] = sample.pop("__url__")
                yield sample
        stream.close()
    except DataError:
        raise
    except Exception as exc:  # tarfile, zlib, a pipe's exit status, the network: all name the shard here
        why = explain(exc, path)
        if is_remote(path) and is_exit_status(exc):  # the fetch failed (a 404, a dropped link): not the tar
            raise DataError(f"cannot read: {why}", shard=path, member=state["member"], kind=failure_kind(exc)) from None
        raise DataError(f"truncated or corrupt tar ({why})", shard=path, member=state["member"],
                        kind="truncated shard") from None
    finally:
        try:
            stream.close()  # a second close is a no-op; a reader that stopped early lets the pipe go here
        except Exception:
            pass


class _Named:
    """A stream that WebDataset's errors name by the shard's location (it appends ``str(stream)``)."""

    def __init__(self, stream, location: str):
        self.stream, self.location = stream, location

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)

    def __str__(self) -> str:
        return self.location


def fetch_checked(location: str, expect: ShardRef) -> BinaryIO:
    """A remote shard as a local file, open for reading, once its size and sha256 are the manifest's. The
    bytes go to the shard cache when one is set (``cache.py``; a cached copy is re-hashed once per process
    before it is trusted) and otherwise to an anonymous temporary file that vanishes when closed. A
    shard that cannot be fetched, is cut short or differs is a DataError naming its location and the cause."""
    cached = cached_copy(expect.sha256, location)
    if cached is not None:
        check_shard(ShardRef(str(cached), expect.samples, expect.sha256, expect.size), "sha256")
        return open(cached, "rb")
    sink = CacheSink.open(expect.sha256, location)
    spool = sink.file if sink is not None else tempfile.TemporaryFile(prefix="vggtk-shard-")
    digest = hashlib.sha256()
    size = 0
    try:
        source = open_stream(location)
        try:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                spool.write(chunk)
                size += len(chunk)
            source.close()  # a pipe (curl, a cloud CLI) reports its exit status here: a 404, a dropped link
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot fetch: {explain(exc, location)}", shard=location, kind=failure_kind(exc)) from None
        if expect.size is not None and size < expect.size:  # what arrived ended early: the cause, not a checksum
            raise DataError(f"cut short: {size} of the manifest's {expect.size} bytes arrived", shard=location,
                            kind="truncated shard")
        if expect.size is not None and size > expect.size:
            raise DataError(f"shard is {size} bytes, the manifest says {expect.size}: it changed",
                            shard=location, kind="checksum mismatch")
        if expect.sha256 and digest.hexdigest() != expect.sha256:
            raise DataError(f"sha256 {digest.hexdigest()[:12]}... does not match the manifest's "
                            f"{expect.sha256[:12]}...", shard=location, kind="checksum mismatch")
        if sink is not None:
            final = sink.commit()
            sink = None
            return open(final, "rb")
        spool.seek(0)
        return spool
    except BaseException:
        if sink is not None:
            sink.discard()
        else:
            spool.close()
        raise


def _key_and_ext(name: str) -> tuple[str, str]:
    """WebDataset's rule (its ``base_plus_ext``, a regular expression): the key is all before the first dot
    of the base name; in string operations, as it runs for every member (3% of reading 28x28 PNGs)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (None, None) if dot <= slash else (name[:dot], name[dot + 1:])  # no key or no extension: not a sample's


def _with_url(files, path: str):
    """Each member as WebDataset's grouping wants it: with the shard's URL."""
    for f in files:
        f["__url__"] = path
        yield f


def parse_sample(raw: dict, num_classes: int | None = None, channels: int | None = None,
                 manifest_channels: int | None = None) -> dict:
    """A checked sample: ``image`` (a LazyImage, decoded later), ``label``, optional ``boxes`` (float32
    N x 4, x1 y1 x2 y2 pixels) and ``box_labels``. Raises DataError naming the shard and member. A colour
    image in a set whose manifest says 1 channel (``manifest_channels``) is one: it would be read as grey."""
    shard, key = raw["__shard__"], raw["__key__"]
    exts = [e for e in IMAGE_EXTS if e in raw]
    if not exts:
        raise DataError("sample has no image (.jpg / .png)", shard, key, kind="missing image")
    image_member = f"{key}.{exts[0]}"
    if "cls" not in raw:
        raise DataError("sample has no .cls label", shard, image_member, kind="missing label")
    try:
        label = int(raw["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"label is not an integer: {raw['cls'][:20]!r}", shard, f"{key}.cls",
                        kind="bad label") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise DataError(f"label {label} out of range [0, {num_classes})", shard, f"{key}.cls", kind="bad label")
    sample = {"key": key, "label": label,
              "image": LazyImage(raw[exts[0]], channels, shard=shard, member=image_member)}
    if manifest_channels == 1 and stored_channels(sample["image"].src_mode) == 3:
        raise DataError(f"a colour ({sample['image'].src_mode}) image, and the manifest says the set holds "
                        "1-channel images", shard, image_member, kind="wrong channels")
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
            if "boxes" in meta:
                boxes = torch.tensor(meta["boxes"], dtype=torch.float32).reshape(-1, 4)
                box_labels = torch.tensor(meta.get("labels", [label] * len(boxes)), dtype=torch.int64)
                if len(box_labels) != len(boxes):
                    raise ValueError(f"{len(boxes)} boxes but {len(box_labels)} labels")
                if num_classes is not None and len(box_labels) and (
                        box_labels.min() < 0 or box_labels.max() >= num_classes):
                    raise ValueError(f"box label out of range [0, {num_classes})")
                problem = box_problem(boxes.tolist(), *sample["image"].src_size)
                if problem:
                    raise ValueError(problem)
                sample["boxes"], sample["box_labels"] = boxes, box_labels
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"bad box annotation ({exc})", shard, f"{key}.json", kind="bad boxes") from None
    return sample


# -- splitting an epoch -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard (numbered in the shard's own order)."""

    shard: ShardRef
    start: int
    stop: int


def shard_order(refs: Sequence[ShardRef], seed: int, epoch: int, shuffle: bool) -> list[ShardRef]:
    if not shuffle:
        return list(refs)
    perm = np.random.default_rng(derive_seed("shards", seed, epoch)).permutation(len(refs))
    return [refs[i] for i in perm]


def split_range(n: int, parts: int, index: int) -> tuple[int, int]:
    return n * index // parts, n * (index + 1) // parts


def assign(refs: Sequence[ShardRef], seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
           worker: int, num_workers: int) -> list[Piece]:
    """The pieces of shards that one worker of one rank reads this epoch."""
    ordered = shard_order(refs, seed, epoch, shuffle)
    total = sum(r.samples for r in ordered)
    r0, r1 = split_range(total, world_size, rank)
    w0, w1 = split_range(r1 - r0, num_workers, worker)
    lo, hi = r0 + w0, r0 + w1
    pieces, offset = [], 0
    for ref in ordered:
        a, b = max(lo, offset), min(hi, offset + ref.samples)
        if a < b:
            pieces.append(Piece(ref, a - offset, b - offset))
        offset += ref.samples
    return pieces


def worker_sample_count(refs, world_size, num_workers, rank, worker) -> int:
    total = sum(r.samples for r in refs)
    r0, r1 = split_range(total, world_size, rank)
    w0, w1 = split_range(r1 - r0, num_workers, worker)
    return w1 - w0


def shuffle_order(n: int, buffer: int, seed: int) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer`` slots emits items 0..n-1 read in sequence."""
    if buffer <= 1 or n <= 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picks = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    slots: list[int] = []
    nxt = 0
    for i in range(n):
        while len(slots) < buffer and nxt < n:
            slots.append(nxt)
            nxt += 1
        j = int(picks[i] * len(slots))
        out[i] = slots[j]
        slots[j] = slots[-1]
        slots.pop()
    return out


# -- one worker's stream ----------------------------------------------------------------------------

_BAD = object()
_verified: dict[tuple, str] = {}


def check_shard(ref: ShardRef, verify: str) -> None:
    """A local shard before it is read: size always; sha256 once per process and file version when
    ``verify == "sha256"``. A remote one is checked whole before it is read (``fetch_checked``)."""
    if is_remote(ref.path):
        return
    if ref.size is not None:
        try:
            size = os.path.getsize(ref.path)
        except OSError as exc:
            raise DataError(f"cannot read shard ({exc.strerror})", shard=ref.path, kind="missing shard") from None
        if size != ref.size:
            raise DataError(f"shard is {size} bytes, the manifest says {ref.size}: it changed or was cut short",
                            shard=ref.path, kind="checksum mismatch")
    if verify == "sha256" and ref.sha256:
        st = os.stat(ref.path)
        version = (ref.path, st.st_size, st.st_mtime_ns)
        if version not in _verified:
            _verified[version] = sha256_file(ref.path)
        if _verified[version] != ref.sha256:
            raise DataError(f"sha256 {_verified[version][:12]}... does not match the manifest's {ref.sha256[:12]}...",
                            shard=ref.path, kind="checksum mismatch")


def _raw_in_pieces(pieces: Sequence[Piece], on_error: str, log: SkipLog | None, verify: str) -> Iterator[tuple[int, object]]:
    """(local index, raw sample or _BAD) for every sample in the pieces, in reading order."""
    base = 0
    for piece in pieces:
        want = piece.stop - piece.start
        got = 0
        try:
            check_shard(piece.shard, verify)
            for raw in iter_raw(piece.shard.path, skip_samples=piece.start, expect=piece.shard):
                if got >= want:
                    if piece.stop == piece.shard.samples:  # the shard's last sample, by its manifest entry
                        raise DataError(f"shard holds more samples than its manifest entry ({piece.shard.samples}):"
                                        " the manifest or the shard changed", shard=piece.shard.path,
                                        kind="wrong sample count")
                    break
                yield base + got, raw
                got += 1
            if got < want:
                raise DataError(f"shard holds fewer samples than its manifest entry ({piece.shard.samples})",
                                shard=piece.shard.path, kind="truncated shard")
        except DataError as err:
            handle(err, on_error, None)
            if log is not None and want > got:  # the rest of this piece is lost: count every sample of it
                log.add(err, want - got)
            for i in range(got, want):
                yield base + i, _BAD
        base += want


def worker_stream(pieces: Sequence[Piece], order: np.ndarray, start: int, on_error: str,
                  log: SkipLog | None, verify: str = "sha256") -> Iterator[dict]:
    """Raw samples in ``order`` (local indices), from position ``start`` on. Holds at most as many
    read-but-not-yet-due samples as the shuffle buffer has slots."""
    done = set(order[:start].tolist())
    due = iter(order[start:].tolist())
    want = next(due, None)
    pending: dict[int, object] = {}
    for i, raw in _raw_in_pieces(pieces, on_error, log, verify):
        if i in done:
            continue
        pending[i] = raw
        while want is not None and want in pending:
            item = pending.pop(want)
            if item is not _BAD:
                yield item
            want = next(due, None)
