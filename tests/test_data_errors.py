"""Bad input: each case fails with one line naming the shard and member, or is skipped and counted."""

import io
import tarfile
from pathlib import Path

import pytest

from cli_runner import vggtk
from vgg_toolkit import VggtkError
from vgg_toolkit.data.errors import DataError
from vgg_toolkit.data.loader import make_loader
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw
from vgg_toolkit.data.shards.records import Record
from vgg_toolkit.data.shards.writer import ShardWriter

SHARDS = Path(__file__).resolve().parents[1] / "shards"
CLASSES = [f"c{i}" for i in range(10)]


def real_records(n: int) -> list[Record]:
    """Real samples: Fashion-MNIST PNGs and localisation JPEGs from the bundled shards."""
    fm = Manifest.load(SHARDS / "fashion-mnist")
    loc = Manifest.load(SHARDS / "localisation")
    out = []
    for raw in iter_raw(str(fm.shard_locations("val")[0])):
        out.append(Record(raw["__key__"], raw["png"], "png", int(raw["cls"])))
        if len(out) == n // 2:
            break
    for raw in iter_raw(str(loc.shard_locations("val")[0])):
        out.append(Record(raw["__key__"], raw["jpg"], "jpg", int(raw["cls"]) % 10))
        if len(out) == n:
            break
    return out


def write_set(root: Path, records: list[Record], per_shard: int = 4) -> Manifest:
    root.mkdir(parents=True, exist_ok=True)
    infos = []
    for i in range(0, len(records), per_shard):
        writer = ShardWriter(root / f"train-{i // per_shard:06d}.tar")
        for r in records[i:i + per_shard]:
            writer.write(r)
        infos.append(writer.close())
    manifest = Manifest(location=str(root / "manifest.json"), classes=CLASSES, splits={"train": infos})
    manifest.write()
    return manifest


def read(root, on_error, **kw):
    loader = make_loader(root, "train", batch_size=1, augment="none", on_error=on_error, shuffle=False, **kw)
    keys = [k for batch in loader for k in batch.keys]
    return keys, loader.skipped


def cli(*args):
    result = vggtk("shards", *args)
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vggtk: error: "), output
    return lines[0]


def test_truncated_tar(tmp_path):
    records = real_records(8)
    write_set(tmp_path, records)
    shard = tmp_path / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train-000001\.tar.*(fewer samples|truncated)"):
        read(tmp_path, "fail", verify="none")
    keys, skipped = read(tmp_path, "skip", verify="none")
    assert keys[:4] == [r.key for r in records[:4]] and len(keys) < 8
    assert skipped.total == 8 - len(keys)
    assert "truncated shard" in skipped.summary()
    with pytest.raises(DataError, match=r"train-000001\.tar: shard is \d+ bytes, the manifest says"):
        read(tmp_path, "fail")  # the default check sees the size first
    code, out = cli("verify", tmp_path)
    assert code != 0 and "train-000001.tar" in one_line_error(out)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_jpeg(tmp_path, workers):
    records = real_records(6)
    bad = records[4]
    assert bad.ext == "jpg"
    records[4] = Record(bad.key, bad.image[:600] + bytes(len(bad.image) - 600), "jpg", bad.label)
    write_set(tmp_path, records)
    with pytest.raises(DataError) as err:
        read(tmp_path, "fail", num_workers=workers)
    assert f"train-000001.tar[{bad.key}.jpg]: cannot decode image" in str(err.value)
    assert "\n" not in str(err.value)  # one line, even from a DataLoader worker
    keys, skipped = read(tmp_path, "skip", num_workers=workers)
    assert bad.key not in keys and len(keys) == 5
    assert skipped.counts == {"corrupt image": 1}
    code, out = cli("verify", tmp_path, "--on-error", "skip")
    assert code == 1 and "skipped 1 bad sample(s): 1 corrupt image" in out and f"{bad.key}.jpg" in out


def test_a_shard_that_fails_its_checksum_counts_its_samples_as_training_would(tmp_path):
    """Under skip, training drops every sample of a shard whose sha256 does not match; verify says as many."""
    write_set(tmp_path, real_records(6))
    shard = tmp_path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    code, out = cli("verify", tmp_path, "--on-error", "skip")
    assert code == 1 and "skipped 4 bad sample(s): 4 checksum mismatch" in out, out
    keys, skipped = read(tmp_path, "skip")
    assert len(keys) == 2 and skipped.counts == {"checksum mismatch": 4}


def test_missing_cls(tmp_path):
    records = real_records(4)
    write_set(tmp_path, records)
    shard = tmp_path / "train-000000.tar"
    # Rewrite the shard without the second sample's .cls member.
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            if m.name != f"{records[1].key}.cls":
                tar.addfile(m, io.BytesIO(data))
    with pytest.raises(DataError, match=rf"train-000000\.tar\[{records[1].key}\.png\]: sample has no \.cls label"):
        read(tmp_path, "fail", verify="none")
    keys, skipped = read(tmp_path, "skip", verify="none")
    assert keys == [r.key for r in records if r is not records[1]]
    assert skipped.counts == {"missing label": 1}


def test_label_out_of_range(tmp_path):
    records = real_records(4)
    records[2] = Record(records[2].key, records[2].image, records[2].ext, 12)
    write_set(tmp_path, records)
    with pytest.raises(DataError, match=rf"\[{records[2].key}\.cls\]: label 12 out of range \[0, 10\)"):
        read(tmp_path, "fail")
    keys, skipped = read(tmp_path, "skip")
    assert len(keys) == 3 and skipped.counts == {"bad label": 1}
    code, out = cli("verify", tmp_path)
    assert code == 2 and "label 12 out of range" in one_line_error(out)


def test_empty_shard_list(tmp_path):
    with pytest.raises(DataError, match="no shards to read"):
        make_loader([], "train")
    manifest = Manifest(location=str(tmp_path / "manifest.json"), classes=CLASSES, splits={"train": []})
    manifest.write()
    with pytest.raises(DataError, match=r"no shards to read \(split 'train'"):
        make_loader(tmp_path, "train")
    with pytest.raises(DataError, match=r"nothing-\d\.tar: shard file not found"):
        make_loader(str(tmp_path / "nothing-{0..1}.tar"), "train")


def test_unreadable_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "vggtk-shards/1", "splits": ')
    with pytest.raises(DataError, match=r"manifest\.json: unreadable manifest"):
        make_loader(tmp_path, "train")
    (tmp_path / "manifest.json").write_text('{"format": "vggtk-shards/1", "classes": []}')
    with pytest.raises(DataError, match=r"unreadable manifest \(missing key 'splits'\)"):
        Manifest.load(tmp_path)
    code, out = cli("inspect", tmp_path)
    assert code == 2 and "manifest.json" in one_line_error(out)


def test_changed_sha256(tmp_path):
    records = real_records(8)
    write_set(tmp_path, records)
    shard = tmp_path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000000\.tar: sha256 \w+\.\.\. does not match the manifest's"):
        read(tmp_path, "fail")
    keys, skipped = read(tmp_path, "skip")
    assert keys == [r.key for r in records[4:]]
    assert skipped.counts == {"checksum mismatch": 4}
    code, out = cli("verify", tmp_path)
    assert code == 2 and "sha256" in one_line_error(out)


def test_bad_policy_and_clean_verify(tmp_path):
    write_set(tmp_path, real_records(4))
    with pytest.raises(VggtkError, match="--on-error must be one of fail, skip"):
        make_loader(tmp_path, "train", on_error="ignore")
    code, out = cli("verify", tmp_path)
    assert code == 0 and "4 samples, 4 decoded" in out and "no bad samples" in out
