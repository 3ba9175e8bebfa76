"""`vggtk shards create | inspect | verify` on real data, and the bundled shards' rebuild command."""

import json
from pathlib import Path

import pytest
from PIL import Image

from cli_runner import vggtk
from vgg_toolkit.data.sources.labelme_composites import LABELME_ROOT
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.sources import FASHION_MNIST_ROOT

REPO = Path(__file__).resolve().parents[1]
LABELME = Path(LABELME_ROOT)


def cli(*args):
    result = vggtk("shards", *args)
    return result.exit_code, result.output


@pytest.mark.skipif(not LABELME.is_dir(), reason="Debian package labelme-examples not installed")
def test_create_from_a_folder_then_inspect_and_verify(tmp_path):
    photos = sorted({p.name: p for p in LABELME.rglob("data_annotated/*.jpg")}.values())
    for i, path in enumerate(photos):
        folder = tmp_path / "src" / ("street" if path.name.startswith("0000") else "other")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).write_bytes(path.read_bytes())
    code, out = cli("create", tmp_path / "src", tmp_path / "out", "--samples-per-shard", 3,
                    "--splits", "train=0.75,val=0.25", "--workers", 2)
    assert code == 0, out
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.classes == ["other", "street"]
    assert manifest.samples("train") + manifest.samples("val") == len(photos)
    assert f"manifest: {tmp_path / 'out' / 'manifest.json'}" in out and "train" in out
    sheet = tmp_path / "sheet.png"
    code, out = cli("inspect", tmp_path / "out", "--sheet", sheet, "--count", 6)
    assert code == 0, out
    assert "0 other" in out and "1 street" in out
    with Image.open(sheet) as img:
        assert img.size == (6 * 96, 96 + 14)
    code, out = cli("verify", tmp_path / "out")
    assert code == 0 and f"{len(photos)} samples, {len(photos)} decoded" in out


def test_verify_and_inspect_the_bundled_localisation_set(tmp_path):
    code, out = cli("verify", REPO / "shards/localisation")
    assert code == 0, out
    manifest = Manifest.load(REPO / "shards/localisation")
    total = sum(manifest.samples(s) for s in manifest.splits)
    assert f"{total} samples, {total} decoded" in out and "no bad samples" in out
    code, out = cli("inspect", REPO / "shards/localisation", "--split", "test", "--sheet", tmp_path / "s.png")
    assert code == 0 and "licence:" in out and (tmp_path / "s.png").exists()


def test_bad_arguments_are_one_line_errors(tmp_path):
    code, out = cli("create", tmp_path / "missing", tmp_path / "out")
    assert code == 2 and out.strip().startswith("vggtk: error: ") and len(out.strip().splitlines()) == 1
    code, out = cli("create", "fashion-mnist", tmp_path / "o", "--splits", "train=2")
    assert code == 2 and "--splits" in out


@pytest.mark.slow
@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("name", ["fashion-mnist", "localisation"])
def test_documented_rebuild_reproduces_the_committed_shards(tmp_path, name):
    committed = Manifest.load(REPO / "shards" / name)
    code, out = cli("create", name, tmp_path / name)
    assert code == 0, out
    rebuilt = Manifest.load(tmp_path / name)
    for split in committed.splits:
        assert [(s.name, s.sha256) for s in rebuilt.split(split)] == [(s.name, s.sha256) for s in committed.split(split)]
    assert json.loads((tmp_path / name / "manifest.json").read_text())["classes"] == committed.classes
