"""Putting a new shard set in place without losing anything.

A set is written into a staging folder beside the target (same file system, so moves are renames) and
swapped in only when complete. The swap touches nothing but the files the tool wrote: the previous
set's manifest and the shards that manifest lists, each only while its size and sha256 are those the
manifest records (a shard edited or replaced since is refused before any work). Any other file in the target folder stays as it
is, and a new shard whose name is taken by such a file is refused before anything moves. The new
``manifest.json`` lands last, so a reader sees the old set or the new one, and a failure part-way
puts the old files back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...errors import VggtkError
from ...runtime.files import process_alive
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, sha256_file

MARKER = ".vggtk-partial"  # inside a staging folder: proves the folder is ours to delete
REPLACED = ".replaced"  # inside a staging folder: the previous set while the swap is under way


def _staging_prefix(outdir: Path) -> str:
    return f".{outdir.name}.vggtk-partial-"


def clean_debris(outdir: Path) -> list[str]:
    """Remove staging folders a killed run left beside ``outdir``: only those holding our marker, whose
    process is gone, and that hold no previous set. Returns warnings about any that must stay."""
    warnings = []
    if not outdir.parent.is_dir():
        return warnings
    for path in outdir.parent.glob(_staging_prefix(outdir) + "*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not (path / MARKER).is_file() or not pid.isdigit() or process_alive(int(pid)):
            continue
        replaced = path / REPLACED
        if replaced.is_dir() and any(replaced.iterdir()):
            warnings.append(f"{replaced}: an interrupted rebuild left the previous shard set here; "
                            f"move its files back into {outdir} or delete the folder")
            continue
        shutil.rmtree(path, ignore_errors=True)
    return warnings


def previous_set(outdir: Path, into_nonempty: bool) -> Manifest | None:
    """The shard set already in ``outdir`` (None when there is none). A folder holding other files and
    no manifest is refused unless ``into_nonempty``; said before any work is done."""
    if not outdir.exists():
        return None
    if not outdir.is_dir():
        raise VggtkError(f"{outdir}: exists and is not a folder")
    if (outdir / MANIFEST_NAME).exists():
        try:
            old = Manifest.load(outdir)
        except VggtkError as exc:
            raise VggtkError(f"{outdir / MANIFEST_NAME}: not a manifest vggtk can read ({exc}); it would be "
                             "replaced, so move it away or pick another folder") from None
        for shard in _listed(old):
            _check_ours(outdir / shard.name, shard, hash_it=True)
        return old
    if any(outdir.iterdir()) and not into_nonempty:
        raise VggtkError(f"{outdir}: the folder holds other files and no vggtk shard set (no {MANIFEST_NAME}); "
                         "pick an empty or new folder, or pass --into-nonempty to write the shards beside them "
                         "(none of them is changed)")
    return None


def staging_folder(outdir: Path) -> Path:
    """A fresh, marked staging folder beside ``outdir``."""
    path = outdir.parent / f"{_staging_prefix(outdir)}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / MARKER).write_text("a shard set being written by vggtk shards create; safe to delete\n")
    return path


def discard(staging: Path) -> None:
    """Delete a staging folder, unless it still holds a previous set that could not be put back."""
    replaced = staging / REPLACED
    if staging.exists() and not (replaced.is_dir() and any(replaced.iterdir())):
        shutil.rmtree(staging, ignore_errors=True)


def _listed(manifest: Manifest | None) -> list[ShardInfo]:
    if manifest is None:
        return []
    return [s for shards in manifest.splits.values() for s in shards]


def _names(manifest: Manifest | None) -> list[str]:
    return [s.name for s in _listed(manifest)]


def _check_ours(path: Path, shard: ShardInfo, hash_it: bool) -> None:
    """A shard the previous manifest lists is replaced only while it is what vggtk wrote: its size, and
    (``hash_it``) its sha256, as listed. A file edited or put there since is refused."""
    if not path.is_file():
        if path.exists():
            raise VggtkError(f"{path}: the previous manifest lists a shard here, but this is not a file; it is "
                             "not replaced, so move it away (nothing was changed)")
        return  # gone already: nothing to replace
    size = path.stat().st_size
    changed = size != shard.bytes or (hash_it and shard.sha256 and sha256_file(path) != shard.sha256)
    if changed:
        what = f"{size} bytes where the manifest lists {shard.bytes}" if size != shard.bytes else \
            "its sha256 is not the one the manifest lists"
        raise VggtkError(f"{path}: changed since vggtk wrote it ({what}), so it is not replaced; move it away or "
                         "pick another folder (nothing was changed)")


def publish(staging: Path, outdir: Path, new: Manifest, old: Manifest | None) -> Manifest:
    """Swap the complete set in ``staging`` into ``outdir`` (see the module docstring); returns the
    new manifest, rooted at ``outdir``. ``staging`` is gone afterwards."""
    new_names, old_names = _names(new), set(_names(old))
    for shard in _listed(old):  # hashed when the run began; the size again, just before anything moves
        _check_ours(outdir / shard.name, shard, hash_it=False)
    clash = [n for n in new_names if (outdir / n).exists() and n not in old_names]
    if clash:
        raise VggtkError(f"{outdir / clash[0]}: exists and is not part of a vggtk shard set there, so it is "
                         "not replaced; move it away (nothing was changed)")
    outdir.mkdir(parents=True, exist_ok=True)
    backup = staging / REPLACED
    backup.mkdir()
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in ([MANIFEST_NAME] if old is not None else []) + sorted(old_names):
            if (outdir / name).exists():
                os.replace(outdir / name, backup / name)
                moved_old.append(name)
        for name in new_names:
            os.replace(staging / name, outdir / name)
            moved_new.append(name)
        os.replace(staging / MANIFEST_NAME, outdir / MANIFEST_NAME)  # the moment the new set exists
    except BaseException:
        for name in moved_new:
            os.replace(outdir / name, staging / name)
        for name in moved_old:
            os.replace(backup / name, outdir / name)
        raise
    shutil.rmtree(backup)
    new.location = str(outdir / MANIFEST_NAME)
    return new
