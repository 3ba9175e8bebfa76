"""Writing files so that nobody ever sees half of one: every file vggtk writes goes through here.

The bytes go to a hidden temporary name beside the target, are flushed to disk, and are renamed over
the target in one step; on any failure the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import VggtkError

TMP_TAG = ".vggtk-tmp-"  # in the name of every temporary file or folder vggtk makes
WRITTEN_BY = "vggtk"  # the mark every file vggtk writes carries (JSON key, safetensors metadata, PNG text)
KIND_KEY = "vggtk_kind"  # beside the mark: what the file holds; only a file of the same kind replaces it
# Files that name their format instead of a kind (a shard set's manifest, weights from before kinds).
_FORMAT_KINDS = {"vggtk-shards/": "shard manifest"}


def mark(kind: str) -> dict[str, str]:
    """The mark of a file of ``kind`` ("evaluation results", "weights"...), as JSON keys or safetensors
    metadata."""
    return {"written_by": WRITTEN_BY, KIND_KEY: kind}


def png_mark(kind: str) -> dict[str, str]:
    """The mark of a PNG of ``kind``, as PNG text chunks (matplotlib's ``savefig(metadata=...)``)."""
    return {"Software": WRITTEN_BY, KIND_KEY: kind}


def written_kind(path: str | os.PathLike) -> str | None:
    """The kind of output the file at ``path`` holds, from its mark: None when vggtk did not write it, ""
    when an earlier vggtk wrote it without saying what it is."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                return None
            fmt = str(data.get("format", ""))
            by_format = next((k for prefix, k in _FORMAT_KINDS.items() if fmt.startswith(prefix)), None)
            if data.get("written_by") != WRITTEN_BY and by_format is None:
                return None
            return str(data.get(KIND_KEY) or by_format or "")
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("written_by") != WRITTEN_BY and "vggtk_model" not in meta:
                return None
            return meta.get(KIND_KEY) or ("weights" if "vggtk_model" in meta else "")
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                return str(img.info.get(KIND_KEY, "")) if img.info.get("Software") == WRITTEN_BY else None
        if suffix == ".csv":  # its first line, a comment: "# written_by: vggtk; vggtk_kind: KIND"
            with open(path, encoding="utf-8") as f:
                first = f.readline(200)
            fields = dict(part.strip().partition(": ")[::2] for part in first.lstrip("# ").split(";"))
            return fields.get(KIND_KEY, "") if first.startswith("#") and fields.get("written_by") == WRITTEN_BY else None
        if suffix in (".onnx", ".pt2"):  # exported graphs: ONNX metadata_props, or the program's extra file
            meta = _exported_metadata(path)
            return str(meta.get(KIND_KEY, "")) if meta.get("written_by") == WRITTEN_BY else None
    except Exception:  # unreadable, or not what its name says: not ours
        return None
    return None


def _exported_metadata(path: Path) -> dict:
    if path.suffix.lower() == ".pt2":
        import zipfile

        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/extra/vggtk.json")), None)
            return json.loads(z.read(name)) if name else {}
    import onnx  # only where exports are made: without it, nothing is taken for one of ours

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def written_by_vggtk(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` carries vggtk's mark, whatever its kind."""
    return written_kind(path) is not None


def check_output_file(path: str | os.PathLike, kind: str) -> Path:
    """Refuse, before any work is done, a target that is a folder, sits under a file, is a file vggtk did
    not write, or holds another kind of vggtk output (a report never replaces weights or a manifest)."""
    path = Path(path)
    if path.is_dir():
        raise VggtkError(f"{path}: is a folder; give a file name for the {kind}")
    if path.exists():
        found = written_kind(path)
        if found is None:
            raise VggtkError(f"{path}: exists and was not written by vggtk, so it is not replaced; move it away or "
                             f"give another name for the {kind}")
        if found != kind:
            held = f"vggtk's {found}" if found else "an earlier vggtk's output of no recorded kind"
            raise VggtkError(f"{path}: holds {held}, which the {kind} does not replace; give another name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VggtkError(f"{path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise VggtkError(f"{path}: cannot write into {parent} (permission denied)")
            break
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_file(target) as tmp: write(tmp)``: ``target`` then holds the complete file."""
    path = Path(path)
    if path.is_dir():
        raise VggtkError(f"{path}: is a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # as any new file: some writers create theirs private
        _fsync(tmp)  # the rename must not land before the bytes do
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_json(path: str | os.PathLike, payload: dict, kind: str, indent: int = 2) -> Path:
    """``payload`` as JSON under the mark of ``kind``, atomically; NaN is refused, not written."""
    return write_text(path, json.dumps({**mark(kind), **payload}, indent=indent, allow_nan=False) + "\n")


def save_png(image, path: str | os.PathLike, kind: str) -> Path:
    """A PIL image as a PNG under the mark of ``kind``, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in png_mark(kind).items():
        info.add_text(key, value)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_folder(target) as tmp: fill(tmp)``: ``target`` then is the complete folder. A
    previous ``target`` is replaced only once the new one is whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}")
    old = path.with_name(f".{path.name}{TMP_TAG}old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def own_debris(folder: str | os.PathLike) -> list[Path]:
    """Temporary files and folders in ``folder`` left by vggtk processes that no longer run: provably
    ours (the tag in the name) and provably abandoned (the process id in the name is gone)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if TMP_TAG not in entry.name:
            continue
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            found.append(entry)
    return found


def remove_debris(folder: str | os.PathLike) -> list[Path]:
    removed = own_debris(folder)
    for entry in removed:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
