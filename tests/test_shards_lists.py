"""`vggtk shards create` from CSV / JSON lists, and manifests that cannot be right: a list's labels become the
classes it means or one line naming the entry, and a manifest with a wrong field is refused where it is loaded
(every command), naming the field; a `channels` that its images contradict is found by `shards verify` and refused
by `train`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import input_error, vggtk
from realdata import fashion_sample
from vgg_toolkit.data.errors import DataError
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.sources import image_list


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[Path]:
    """Six real 32x32 Fashion-MNIST images as greyscale PNG files."""
    root = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, image in enumerate(fashion_sample(6)[0]):
        paths.append(root / f"{i}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    return paths


def write_list(folder: Path, name: str, body) -> Path:
    path = folder / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def create(src, out, *args):
    return vggtk("shards", "create", src, out, "--splits", "train=1", "--samples-per-shard", 4, *args)


# --- lists that mean other labels than they would be written as, or that are not lists ------------------------

def bad_lists(p: list[str]) -> list[tuple[str, str, object, str]]:
    """(case, file name, its content, what the one line must say), for the image paths ``p``."""
    return [
        ("classes as one string", "l.json", {"classes": "catdog", "samples": [{"path": p[0], "label": "c"}]},
         "l.json: \"classes\" must be a list of class names"),
        ("a class listed twice", "l.json", {"classes": ["a", "b", "a"], "samples": [{"path": p[0], "label": "a"}]},
         "l.json: \"classes\" lists 'a' twice"),
        ("a name after an index", "l.json", [{"path": p[0], "label": 0}, {"path": p[1], "label": "cat"}],
         "l.json:1: label 'cat' is a class name"),
        ("an index after a name", "l.csv", f"path,label\n{p[0]},cat\n{p[1]},1\n",
         "l.csv:3: label '1' is a class index"),
        ("an index box label of named classes", "l.json",
         [{"path": p[0], "label": "cat", "boxes": [[1, 1, 9, 9]], "box_labels": [0]}], "l.json:0: label 0"),
        ("a null label", "l.json", [{"path": p[0], "label": None}], "l.json:0: label None is neither"),
        ("a list as a label", "l.json", [{"path": p[0], "label": [1]}], "l.json:0: label [1] is neither"),
        ("a fraction as a label", "l.json", [{"path": p[0], "label": 0.5}], "l.json:0: label 0.5 is neither"),
        ("true as a label", "l.json", [{"path": p[0], "label": True}], "l.json:0: label True is neither"),
        ("an empty label", "l.csv", f"path,label\n{p[0]},\n", "l.csv:2: label '' is neither"),
        ("numbers for entries", "l.json", [1, 2], "l.json:0: an entry is an object with 'path' and 'label'"),
        ("a string for a list", "l.json", '"abc"', "l.json: a JSON image list is a list of entries"),
        ("samples that are no list", "l.json", {"samples": 3}, "l.json: a JSON image list is a list"),
        ("a number for a path", "l.json", [{"path": 5, "label": 0}], "l.json:0: path 5 is not a file name"),
        ("the root for a path", "l.json", [{"path": "/", "label": 0}], "l.json:0: path '/' is not a file name"),
        ("a NUL in a path", "l.csv", "path,label\na\x00b.png,0\n", "l.csv:2: path 'a\\x00b.png' is not a file name"),
        ("a word in a box", "l.json", [{"path": p[0], "label": 0, "boxes": [[0, 0, "a", 5]]}],
         "l.json:0: box 0 holds 'a', not a number"),
        ("null in a box", "l.json", [{"path": p[0], "label": 0, "boxes": [[0, None, 4, 5]]}],
         "l.json:0: box 0 holds None"),
        ("a box of 10^400 pixels", "l.json", [{"path": p[0], "label": 0, "boxes": [[0, 0, 10 ** 400, 5]]}],
         "l.json:0: a box coordinate is too large"),
        ("more box labels than boxes", "l.json",
         [{"path": p[0], "label": 0, "boxes": [[0, 0, 5, 5]], "box_labels": [0, 0]}],
         "l.json:0: 2 box labels for 1 boxes"),
        ("box labels with no boxes", "l.csv", f"path,label,box_labels\n{p[0]},0,[0]\n",
         "l.csv:2: 1 box labels for 0 boxes"),
        ("a number for box labels", "l.json",
         [{"path": p[0], "label": 0, "boxes": [[0, 0, 5, 5]], "box_labels": 3}], "l.json:0: no list of box labels"),
        ("an index of a trillion", "l.json", [{"path": p[0], "label": 0}, {"path": p[1], "label": 10 ** 12}],
         "l.json: no label is class index 1"),
        ("a list nested 100,000 deep", "l.json", "[" * 100000 + "]" * 100000, "l.json: unreadable image list"),
    ]


CASES = [case[0] for case in bad_lists(["x"] * 6)]


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_list_is_one_line_naming_its_entry_and_writes_nothing(pictures, tmp_path, case):
    _, name, body, says = next(c for c in bad_lists([str(p) for p in pictures]) if c[0] == case)
    listing = write_list(tmp_path, name, body)
    message = input_error(create(listing, tmp_path / "out"))
    assert says in message, message
    assert not (tmp_path / "out").exists()


def test_box_labels_are_classes_of_their_own_and_one_outside_the_listed_classes_is_bad_data(pictures, tmp_path):
    p = [str(x) for x in pictures]
    # Index labels: a box label names a class as much as an image label does.
    source = image_list(write_list(tmp_path, "i.json", [
        {"path": p[0], "label": 0}, {"path": p[1], "label": 1, "boxes": [[1, 1, 9, 9]], "box_labels": [2]}]))
    assert source.classes == ["0", "1", "2"]
    # Listed classes: names and indices of them may mix; a box label outside them is named, or skipped and
    # counted, and the set written then verifies.
    listing = write_list(tmp_path, "l.json", {"classes": ["a", "b"], "samples": [
        {"path": p[0], "label": "a"}, {"path": p[1], "label": 1, "boxes": [[1, 1, 9, 9]], "box_labels": ["a"]},
        {"path": p[2], "label": "b", "boxes": [[1, 1, 9, 9]], "box_labels": [7]}]})
    assert input_error(create(listing, tmp_path / "out")).endswith(f"{p[2]}: box label 7 out of range for 2 classes")
    result = create(listing, tmp_path / "out", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.classes == ["a", "b"] and manifest.samples("train") == 2
    verified = vggtk("shards", "verify", tmp_path / "out")
    assert verified.exit_code == 0 and "no bad samples" in verified.output, verified.output


# --- manifests that cannot be right --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grey_set(pictures, tmp_path_factory) -> Path:
    """A shard set of the six greyscale pictures (a 1-channel manifest), three classes, four to train, two to
    validate."""
    root = tmp_path_factory.mktemp("grey")
    listing = write_list(root, "l.json", [{"path": str(p), "label": i % 3, "split": "train" if i < 4 else "val"}
                                          for i, p in enumerate(pictures)])
    result = create(listing, root / "set")
    assert result.exit_code == 0, result.output
    assert Manifest.load(root / "set").channels == 1
    return root / "set"


def edited(shards: Path, folder: Path, edit) -> Path:
    """A copy of the set ``shards`` whose manifest ``edit`` changed."""
    shutil.copytree(shards, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def first_shard(m: dict) -> dict:
    return m["splits"]["train"]["shards"][0]


MANIFEST_EDITS = [
    ("a class named twice", lambda m: m.update(classes=["0", "1", "0"]), "classes: '0' is listed 2 times"),
    ("classes as one string", lambda m: m.update(classes="012"), "classes: must be a non-empty list"),
    ("no classes", lambda m: m.update(classes=[]), "classes: must be a non-empty list"),
    ("a negative sample count", lambda m: first_shard(m).update(samples=-3), "splits.train: samples is -3"),
    ("a sample count of true", lambda m: first_shard(m).update(samples=True), "splits.train: samples is True"),
    ("a negative size", lambda m: first_shard(m).update(bytes=-1), "splits.train: bytes is -1"),
    ("a NaN mean", lambda m: m["stats"].update(mean_rgb=[float("nan"), 0.2, 0.2]), "stats: a mean"),
    ("a mean in 0-255 units", lambda m: m["stats"].update(mean_rgb=[120.0, 0.2, 0.2]), "stats.mean_rgb"),
    ("a negative eigenvalue", lambda m: m["stats"].update(eigval=[0.1, 0.0, -0.5]), "stats.eigval"),
    ("an eigenvalue of 10^400", lambda m: m["stats"].update(eigval=[10 ** 400, 0, 0]), "stats: a value is too large"),
    ("no splits", lambda m: m.update(splits={}), "splits: the manifest lists no split"),
    ("a split of no shard list", lambda m: m["splits"].update(train={"shards": 3}), "splits.train: must hold"),
    ("2 channels", lambda m: m.update(channels=2), "channels: 2, where"),
    ("0 channels", lambda m: m.update(channels=0), "channels: 0, where"),
]


@pytest.mark.parametrize("case,edit,says", MANIFEST_EDITS, ids=[c[0] for c in MANIFEST_EDITS])
def test_a_manifest_that_cannot_be_right_is_refused_where_it_is_loaded(grey_set, tmp_path, case, edit, says):
    shards = edited(grey_set, tmp_path / "set", edit)
    with pytest.raises(DataError, match="manifest.json: unreadable manifest"):
        Manifest.load(shards)
    message = input_error(vggtk("shards", "verify", shards))
    assert f"{shards / 'manifest.json'}: " in message and says in message, message


def test_train_refuses_a_channel_count_no_image_has_in_one_line(grey_set, tmp_path):
    shards = edited(grey_set, tmp_path / "set", lambda m: m.update(channels=2))
    message = input_error(vggtk("train", "--data", shards, "--run-dir", tmp_path / "run", "--epochs", 1))
    assert "manifest.json" in message and "channels: 2" in message, message
    assert not (tmp_path / "run").exists()


def test_verify_finds_a_three_channel_manifest_over_greyscale_images(grey_set, tmp_path):
    shards = edited(grey_set, tmp_path / "set", lambda m: m.update(channels=3))
    message = input_error(vggtk("shards", "verify", shards))
    assert "manifest.json: the manifest says 3 channels and every image is greyscale" in message
    result = vggtk("shards", "verify", shards, "--on-error", "skip")
    assert result.exit_code == 1 and "1 wrong channels" in result.stderr, result.output
    # One split alone may be greyscale in a set of colour photos: nothing is said then.
    assert vggtk("shards", "verify", shards, "--split", "train").exit_code == 0


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory) -> Path:
    """Six Fashion-MNIST images tinted a colour per class, as RGB PNG files in class folders, made a set of
    two splits."""
    root = tmp_path_factory.mktemp("colour")
    tints = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]])
    for i, image in enumerate(fashion_sample(6)[0]):
        folder = root / "src" / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        rgb = (image[0].numpy()[..., None] * tints[i % 3]).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.png")
    result = vggtk("shards", "create", root / "src", root / "set", "--splits", "train=0.5,val=0.5")
    assert result.exit_code == 0, result.output
    assert Manifest.load(root / "set").channels == 3
    return root / "set"


def test_a_colour_image_in_a_one_channel_set_is_bad_data_to_verify_and_to_train(colour_set, tmp_path):
    shards = edited(colour_set, tmp_path / "set", lambda m: m.update(channels=1))
    message = input_error(vggtk("shards", "verify", shards))
    assert "train-000000.tar.gz[" in message and "a colour (RGB) image, and the manifest says" in message
    result = vggtk("shards", "verify", shards, "--on-error", "skip")
    assert result.exit_code == 1 and "6 wrong channels" in result.stderr, result.output
    message = input_error(vggtk("train", "--data", shards, "--run-dir", tmp_path / "run", "--epochs", 1))
    assert "train-00000" in message and "a colour (RGB) image" in message, message


def test_images_that_decode_to_one_channel_make_a_one_channel_set_that_verifies(tmp_path):
    """Greyscale with alpha (LA) decodes to one channel: the set says so, and verify agrees."""
    for i, image in enumerate(fashion_sample(6)[0]):
        folder = tmp_path / "src" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        grey = image[0].numpy()
        Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(folder / f"{i}.png")
    assert create(tmp_path / "src", tmp_path / "set").exit_code == 0
    assert Manifest.load(tmp_path / "set").channels == 1
    assert vggtk("shards", "verify", tmp_path / "set").exit_code == 0
