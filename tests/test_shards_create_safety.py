"""`vggtk shards create` never loses a file: it touches only what it wrote, and a failed rebuild leaves
the previous set as it was."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli_runner import vggtk
from realdata import fashion_sample
from vgg_toolkit.data.shards.create import create_shards
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.publish import MARKER
from vgg_toolkit.data.sources import image_folder


def image_folder_of(root: Path, n: int = 40) -> Path:
    """``n`` real Fashion-MNIST images as PNG files, one subfolder per class."""
    images, labels = fashion_sample(n)
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{i:03d}.png")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def create(src: Path, out: Path, *args):
    return vggtk("shards", "create", src, out, "--samples-per-shard", 10, *args)


def test_a_rebuild_keeps_the_users_files_and_removes_only_its_own_old_shards(tmp_path):
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "out"
    assert create(src, out).exit_code == 0
    first = Manifest.load(out)
    assert len(first.split("train")) == 4  # 32 train images, 10 per shard
    mine = {"train-set-2019-backup.tar.gz": b"the user's own archive", "notes.txt": b"keep me"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    result = create(src, out, "--samples-per-shard", 20)  # fewer, larger shards
    assert result.exit_code == 0, result.output
    second = Manifest.load(out)
    assert len(second.split("train")) == 2
    listed = {s.name for shards in second.splits.values() for s in shards}
    assert set(snapshot(out)) == listed | set(mine) | {"manifest.json"}  # no stale shard of the first set
    assert all((out / name).read_bytes() == data for name, data in mine.items())
    assert not [p for p in tmp_path.iterdir() if ".vggtk-partial" in p.name]


def test_a_folder_of_other_files_is_refused_unless_asked_and_then_left_alone(tmp_path):
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "photos"
    out.mkdir()
    (out / "train-holiday.tar").write_bytes(b"not ours")
    before = snapshot(out)
    result = create(src, out)
    assert result.exit_code == 2 and "--into-nonempty" in result.output and "Traceback" not in result.output
    assert snapshot(out) == before
    result = create(src, out, "--into-nonempty")
    assert result.exit_code == 0, result.output
    assert (out / "train-holiday.tar").read_bytes() == b"not ours"
    assert Manifest.load(out).samples("train") == 32


def test_a_shard_name_taken_by_a_users_file_is_refused_before_anything_moves(tmp_path):
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "out"
    assert create(src, out, "--samples-per-shard", 40).exit_code == 0  # one train shard
    (out / "train-000001.tar.gz").write_bytes(b"the user's file, under a name a rebuild would use")
    before = snapshot(out)
    result = create(src, out)
    assert result.exit_code == 2 and "train-000001.tar.gz" in result.output
    assert snapshot(out) == before


@pytest.mark.parametrize("same_size", [False, True])
def test_a_listed_shard_the_user_changed_is_not_replaced(tmp_path, same_size):
    """A name the old manifest lists is the tool's only while the file is what it wrote: a shard edited or
    swapped for another file since (of another size, or of the same size: its sha256 tells) is refused
    before any work, and nothing moves."""
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "out"
    assert create(src, out).exit_code == 0
    shard = out / Manifest.load(out).split("train")[1].name
    size = shard.stat().st_size
    mine = b"my precious" if not same_size else (b"my precious" * size)[:size]
    shard.write_bytes(mine)
    before = snapshot(out)
    result = create(src, out, "--samples-per-shard", 20)
    assert result.exit_code == 2 and f"{shard}: changed since vggtk wrote it" in result.output.replace("\n", "")
    assert ("sha256" in result.output) == same_size
    assert snapshot(out) == before and shard.read_bytes() == mine


def test_an_interrupted_rebuild_leaves_the_previous_set_byte_for_byte(tmp_path):
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "out"
    assert create(src, out).exit_code == 0
    before = snapshot(out)
    written = []

    def interrupt(n):
        written.append(n)
        if len(written) == 25:  # part of the way through, some new shards already closed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_shards(image_folder(src), out, samples_per_shard=5, progress=interrupt)
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if ".vggtk-partial" in p.name]


def test_a_broken_image_fails_naming_the_file_and_leaves_the_previous_set(tmp_path):
    src = image_folder_of(tmp_path / "src")
    out = tmp_path / "out"
    assert create(src, out).exit_code == 0
    before = snapshot(out)
    (sorted(src.iterdir())[0] / "zzz-empty.png").write_bytes(b"")
    result = create(src, out)
    assert result.exit_code == 2 and "zzz-empty.png" in result.output and "Traceback" not in result.output
    assert snapshot(out) == before


def test_a_killed_run_leaves_marked_debris_that_the_next_run_removes(tmp_path):
    src = image_folder_of(tmp_path / "src", n=200)
    out = tmp_path / "out"
    code = ("import sys, time; from vgg_toolkit.data.shards.create import create_shards; "
            "from vgg_toolkit.data.sources import image_folder; "
            "create_shards(image_folder(sys.argv[1]), sys.argv[2], samples_per_shard=5, workers=1, "
            "progress=lambda n: time.sleep(0.05))")
    job = subprocess.Popen([sys.executable, "-c", code, str(src), str(out)])
    staging = tmp_path / f".out.vggtk-partial-{job.pid}"
    for _ in range(600):
        if (staging / MARKER).exists() and any(staging.glob("train-*")):
            break
        subprocess.run(["sleep", "0.05"])
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert (staging / MARKER).exists() and not out.exists()
    (tmp_path / ".out.somebody-else").mkdir()  # not ours: no marker
    assert create(src, out).exit_code == 0
    assert not staging.exists() and (tmp_path / ".out.somebody-else").is_dir()
    assert Manifest.load(out).samples("train") == 160


def test_a_class_folder_with_no_images_is_named_not_made_a_class(tmp_path):
    """An empty subfolder, or the command's own output written inside the source folder, would become a
    class no image has."""
    src = image_folder_of(tmp_path / "src")
    inside = src / "out"
    assert create(src, inside).exit_code == 0  # the first run: out/ did not exist yet
    again = create(src, inside)
    assert again.exit_code == 2 and f"{inside}: a class folder with no images" in again.output.replace("\n", "")
    assert "write the shards outside the source folder" in again.output.replace("\n", "")
    (src / "empty").mkdir()
    result = create(src, tmp_path / "elsewhere")
    assert result.exit_code == 2 and "2 such folders: empty, out" in result.output.replace("\n", "")
