"""Writing shards: bit-exact round trips on real images, reproducible builds, the bundled demo data."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vgg_toolkit import DataError, VggtkError
from vgg_toolkit.data.errors import SkipLog
from vgg_toolkit.data.shards.create import create_shards
from vgg_toolkit.data.sources.labelme_composites import LABELME_ROOT
from vgg_toolkit.data.shards.manifest import Manifest, sha256_file
from vgg_toolkit.data.shards.reader import iter_raw, parse_sample, resolve_source
from vgg_toolkit.data.shards.records import Record, quantize_boxes
from vgg_toolkit.data.sources import FASHION_MNIST_ROOT, fashion_mnist, image_folder, image_list, read_idx

REPO = Path(__file__).resolve().parents[1]
SHARDS = REPO / "shards"
LABELME = Path(LABELME_ROOT)
needs_labelme = pytest.mark.skipif(not LABELME.is_dir(), reason="Debian package labelme-examples not installed")
needs_fmnist = pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(),
                                  reason="Debian package dataset-fashion-mnist not installed")


def voc_photos_csv(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A CSV list of the real VOC photos in labelme-examples with their real boxes."""
    rows = []
    for path in sorted((LABELME / "bbox_detection/data_annotated").glob("*.json")):
        meta = json.loads(path.read_text())
        boxes = [[min(p[0] for p in s["points"]), min(p[1] for p in s["points"]),
                  max(p[0] for p in s["points"]), max(p[1] for p in s["points"])] for s in meta["shapes"]]
        rows.append({"path": str(path.with_suffix(".jpg")), "label": meta["shapes"][0]["label"],
                     "boxes": json.dumps(boxes), "box_labels": json.dumps([s["label"] for s in meta["shapes"]])})
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "boxes", "box_labels"])
        writer.writeheader()
        writer.writerows(rows)
    return listing, rows


def read_all(manifest: Manifest) -> dict:
    out = {}
    for split in manifest.splits:
        for path in manifest.shard_locations(split):
            for raw in iter_raw(str(path)):
                out[raw["__key__"]] = (split, raw, parse_sample(raw, manifest.num_classes))
    return out


@needs_labelme
def test_round_trip_keeps_jpeg_bytes_labels_and_boxes_exactly(tmp_path):
    listing, rows = voc_photos_csv(tmp_path)
    source = image_list(listing)
    manifest = create_shards(source, tmp_path / "out", samples_per_shard=2, splits={"train": 1.0}, workers=2)
    got = read_all(manifest)
    assert len(got) == len(rows) == 3
    for ref in source.refs:
        split, raw, sample = got[ref.key]
        original = Path(ref.path).read_bytes()
        assert raw["jpg"] == original  # the JPEG is stored untouched
        decoded = sample["image"].materialize()
        expected = torch.from_numpy(np.array(Image.open(ref.path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(decoded, expected)
        assert source.classes[sample["label"]] == source.classes[ref.label]
        want = torch.tensor(quantize_boxes(ref.boxes), dtype=torch.float32)
        assert torch.equal(sample["boxes"], want)
        assert (sample["boxes"] - torch.tensor(ref.boxes)).abs().max() < 1e-4
        assert sample["box_labels"].tolist() == list(ref.box_labels)
    assert len(manifest.splits["train"]) == 2  # 2 samples per shard


@needs_fmnist
def test_bundled_fashion_mnist_pixels_equal_the_packaged_idx_files():
    manifest = Manifest.load(SHARDS / "fashion-mnist")
    train_x = read_idx(Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz")
    train_y = read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(Path(FASHION_MNIST_ROOT) / "t10k-images-idx3-ubyte.gz")
    checked = 0
    for split in ("val", "test"):
        for raw in iter_raw(str(manifest.shard_locations(split)[0])):
            sample = parse_sample(raw, 10)
            kind, index = raw["__key__"].split("_")[1:]
            pixels = (train_x if kind == "train" else test_x)[int(index)]
            assert torch.equal(sample["image"].materialize()[0], torch.from_numpy(pixels.copy()))
            if kind == "train":
                assert sample["label"] == train_y[int(index)]
            checked += 1
    assert checked == 4000


def test_bundled_shards_match_their_manifests_and_stay_small():
    total = 0
    for name in ("fashion-mnist", "localisation"):
        manifest = Manifest.load(SHARDS / name)
        for split in manifest.splits:
            for info in manifest.split(split):
                path = Path(manifest.shard_location(info.name))
                assert sha256_file(path) == info.sha256
                total += path.stat().st_size
        assert (SHARDS / name / "manifest.json").exists()
    assert total < 15 * 2**20
    fm = Manifest.load(SHARDS / "fashion-mnist")
    assert {s: fm.samples(s) for s in fm.splits} == {"train": 12000, "val": 2000, "test": 2000}
    assert fm.channels == 1 and fm.num_classes == 10
    loc = Manifest.load(SHARDS / "localisation")
    assert loc.samples("train") >= 200 and "licence" in loc.extra


def test_bundled_localisation_boxes_lie_inside_their_images():
    manifest = Manifest.load(SHARDS / "localisation")
    samples = read_all(manifest)
    photos = 0
    for key, (split, raw, sample) in samples.items():
        w, h = sample["image"].size
        boxes = sample["boxes"]
        assert len(boxes) >= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        photos += key.startswith("photo_")
        if key.startswith("loc_"):
            assert len(boxes) == 1 and sample["box_labels"].tolist() == [sample["label"]]
    assert photos >= 3


@needs_fmnist
def test_rebuild_is_byte_identical_and_stats_are_the_training_pixels(tmp_path):
    source = fashion_mnist(train=100, val=20, test=20, seed=3)
    a = create_shards(source, tmp_path / "a", samples_per_shard=40, workers=2)
    b = create_shards(fashion_mnist(train=100, val=20, test=20, seed=3), tmp_path / "b", samples_per_shard=40,
                      workers=1)
    assert [s.sha256 for s in a.splits["train"]] == [s.sha256 for s in b.splits["train"]]
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert [s.samples for s in a.splits["train"]] == [40, 40, 20]
    assert all(s.name.endswith(".tar.gz") for s in a.splits["train"])  # PNG shards are gzipped by default
    pixels = np.stack([r.pixels for r in source.refs if r.split == "train"]).astype(np.float64) / 255
    assert a.stats.mean_rgb == pytest.approx([pixels.mean()] * 3, abs=1e-12)
    assert a.stats.eigval[0] == pytest.approx(3 * pixels.var(), rel=1e-9)


@needs_labelme
def test_image_folder_with_bytes_per_shard_and_split_fractions(tmp_path):
    photos = sorted({p.name: p for p in LABELME.rglob("data_annotated/*.jpg")}.values())
    for i, path in enumerate(photos):
        cls = tmp_path / "src" / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        (cls / path.name).write_bytes(path.read_bytes())
    source = image_folder(tmp_path / "src")
    assert source.classes == ["cat", "dog"]
    manifest = create_shards(source, tmp_path / "out", bytes_per_shard=150_000,
                             splits={"train": 0.5, "val": 0.5}, seed=1)
    assert manifest.samples("train") + manifest.samples("val") == len(photos)
    for info in manifest.splits["train"]:
        assert info.name.endswith(".tar")  # JPEG shards stay plain tar
    assert len(manifest.splits["train"]) > 1
    refs, _ = resolve_source(str(tmp_path / "out" / f"train-{{000000..{len(manifest.splits['train']) - 1:06d}}}.tar"))
    assert sum(r.samples for r in refs) == manifest.samples("train")
    assert all(r.sha256 for r in refs)  # matched with the manifest beside them


def test_json_list_with_class_names(tmp_path):
    fm = Manifest.load(SHARDS / "fashion-mnist")
    raw = next(iter_raw(str(fm.shard_locations("val")[0])))
    (tmp_path / "a.png").write_bytes(raw["png"])
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"classes": ["x", "y"], "samples": [
        {"path": "a.png", "label": "y", "boxes": [[1, 2, 10, 20.5]]}]}))
    source = image_list(listing)
    record = source.refs[0].load()
    assert record.label == 1 and record.boxes == [[1.0, 2.0, 10.0, 20.5]] and record.image == raw["png"]


# --- images that decode wrong when taken at face value --------------------------------------------------------

def _real_grey(n: int = 4) -> np.ndarray:
    from realdata import fashion_sample

    return fashion_sample(n)[0][:, 0].numpy()  # uint8 (n, 32, 32)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    grey = _real_grey()
    for i, image in enumerate(grey):
        folder = tmp_path / "src" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint16) * 257).save(folder / f"{i}.png")  # the same image, 16-bit
    manifest = create_shards(image_folder(tmp_path / "src"), tmp_path / "out", splits={"train": 1.0})
    assert manifest.channels == 1
    for split, raw, sample in read_all(manifest).values():
        index = int(raw["__key__"].rsplit("_", 1)[-1])
        assert torch.equal(sample["image"].materialize()[0], torch.from_numpy(grey[index]))
    mean = float(grey.astype(np.float64).mean())
    assert manifest.stats.mean_rgb_255 == pytest.approx([mean] * 3, abs=1e-6)


def test_a_photo_turned_by_its_exif_orientation_is_stored_upright(tmp_path):
    import skimage.data

    photo = Image.fromarray(skimage.data.chelsea()).resize((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the pixels rotated 90 degrees clockwise
    folder = tmp_path / "src" / "cat"
    folder.mkdir(parents=True)
    photo.save(folder / "turned.jpg", exif=exif, quality=95)
    photo.save(tmp_path / "src" / "cat" / "plain.jpg", quality=95)
    (tmp_path / "src" / "dog").mkdir()
    photo.save(tmp_path / "src" / "dog" / "other.jpg", quality=95)
    manifest = create_shards(image_folder(tmp_path / "src"), tmp_path / "out", splits={"train": 1.0})
    images = {raw["__key__"].rsplit("_", 1)[-1]: sample["image"].materialize()
              for _, raw, sample in read_all(manifest).values()}
    assert images["turned"].shape == (3, 60, 40) and images["plain"].shape == (3, 40, 60)
    upright = ImageOps.exif_transpose(Image.open(folder / "turned.jpg"))
    assert torch.equal(images["turned"], torch.from_numpy(np.array(upright)).permute(2, 0, 1))


def test_colour_statistics_of_a_large_photo_come_from_a_reduced_decode(tmp_path):
    import skimage.data

    from vgg_toolkit.data.shards import create as create_module
    from vgg_toolkit.data.shards.records import Record

    big = Image.fromarray(skimage.data.astronaut()).resize((2048, 2048))  # 4 Mpx: reduced by 2 per side
    data = io.BytesIO()
    big.save(data, "PNG")
    (w, h, mode), (s1, s2, n) = create_module._examine(Record("big", data.getvalue(), "png", 0), True)
    full = np.asarray(big, dtype=np.float64).reshape(-1, 3) / 255.0
    assert (w, h, mode, n) == (2048, 2048, "RGB", 2048 * 2048)
    np.testing.assert_allclose(s1 / n, full.mean(0), atol=2e-3)
    np.testing.assert_allclose(s2 / n, full.T @ full / len(full), atol=2e-3)


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    images = _real_grey(2).copy()
    for i, image in enumerate(images):
        (tmp_path / "src" / f"c{i}").mkdir(parents=True)
        Image.fromarray(image).resize((300, 300)).save(tmp_path / "src" / f"c{i}" / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 300 x 300 is then over twice PIL's limit
    with pytest.raises(VggtkError, match=r"0\.png: cannot decode image \(DecompressionBombError"):
        create_shards(image_folder(tmp_path / "src"), tmp_path / "out", splits={"train": 1.0})
    assert not (tmp_path / "out").exists()


def test_create_can_skip_unreadable_images_and_counts_them(tmp_path):
    images = _real_grey(6)
    for i, image in enumerate(images):
        (tmp_path / "src" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "src" / f"c{i % 2}" / f"{i}.png")
    (tmp_path / "src" / "c0" / "broken.png").write_bytes(b"\x89PNG not really")
    skipped = SkipLog()
    manifest = create_shards(image_folder(tmp_path / "src"), tmp_path / "out", splits={"train": 1.0},
                             on_error="skip", skipped=skipped)
    assert manifest.samples("train") == 6 and skipped.total == 1 and "broken.png" in skipped.examples[0]


def test_boxes_outside_their_image_or_inverted_are_refused_when_read(tmp_path):
    from vgg_toolkit.data.shards.writer import ShardWriter

    png = io.BytesIO()
    Image.fromarray(_real_grey(1)[0]).save(png, "PNG")
    for name, box in (("outside", [2, 2, 100, 100]), ("inverted", [20, 20, 2, 2]), ("nan", [0, 0, float("nan"), 5])):
        writer = ShardWriter(tmp_path / f"{name}.tar")
        writer.write(Record(name, png.getvalue(), "png", 0, [box]))
        writer.close()
        raw = next(iter_raw(str(tmp_path / f"{name}.tar")))
        with pytest.raises(DataError, match=rf"{name}.json\]: bad box annotation \(box 0 .*"):
            parse_sample(raw, 1)


@needs_fmnist
def test_garments_on_photos_rebuild_the_same_and_their_boxes_are_the_pasted_pixels(tmp_path, monkeypatch):
    import importlib

    module = importlib.import_module("vgg_toolkit.data.sources.garments_on_photos")  # the module, not the function

    small = dict(train=20, val=10, test=10)
    a = create_shards(module.garments_on_photos(**small), tmp_path / "a", samples_per_shard=25)
    b = create_shards(module.garments_on_photos(**small), tmp_path / "b", samples_per_shard=25)
    assert [(s.name, s.sha256) for sp in a.splits.values() for s in sp] == \
        [(s.name, s.sha256) for sp in b.splits.values() for s in sp]
    assert (a.samples("train"), a.samples("val"), a.samples("test"), a.channels) == (20, 10, 10, 3)
    keys = {split: {k.rsplit("_", 1)[-1] for k, (sp, _, _) in read_all(a).items() if sp == split}
            for split in ("train", "val", "test")}
    assert not keys["train"] & keys["val"]  # never the same garment twice among the training file's
    # On a black photo, the pasted pixels are the only bright ones: the box is exactly their extent.
    monkeypatch.setattr(module, "_background", lambda path: Image.new("RGB", (300, 300)))
    for ref in module.garments_on_photos(**small).refs[:10]:
        record = ref.load()
        canvas = np.asarray(Image.open(io.BytesIO(record.image)))
        ys, xs = np.nonzero(canvas.max(2) > 0)
        assert record.boxes[0] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@needs_fmnist
def test_garments_read_from_the_bundled_shards_are_the_idx_files_garments():
    from vgg_toolkit.data.sources.fashion_mnist import fashion_mnist_arrays

    (idx_x, idx_y, _), (idx_tx, idx_ty, _) = fashion_mnist_arrays(FASHION_MNIST_ROOT)
    (x, y, ids), (tx, ty, tids) = fashion_mnist_arrays(SHARDS / "fashion-mnist")
    assert (len(x), len(tx)) == (14000, 2000) and len(set(ids.tolist())) == 14000
    assert np.array_equal(x, idx_x[ids]) and np.array_equal(y, idx_y[ids])
    assert np.array_equal(tx, idx_tx[tids]) and np.array_equal(ty, idx_ty[tids])


def test_garments_on_photos_build_from_the_bundled_shards_without_the_debian_package(tmp_path):
    from vgg_toolkit.data.sources import garments_on_photos

    source = garments_on_photos(SHARDS / "fashion-mnist", train=30, val=10, test=10)
    manifest = create_shards(source, tmp_path / "set", samples_per_shard=50)
    assert manifest.extra["source"]["garments"] == "fashion-mnist shards"
    bundled = {raw["__key__"].rsplit("_", 1)[-1] for split in ("train", "val")
               for path in Manifest.load(SHARDS / "fashion-mnist").shard_locations(split) for raw in iter_raw(str(path))}
    train_keys = {k.rsplit("_", 1)[-1] for k, (sp, _, _) in read_all(manifest).items() if sp != "test"}
    assert train_keys <= bundled  # keys still name the garment's index in the IDX training file
    with pytest.raises(VggtkError, match="shards are no source for it"):
        fashion_mnist(SHARDS / "fashion-mnist")
