"""``vggtk distance`` on real photos: LPIPS-VGG and one tap's distance as the references compute them for
the pixels the command read, folders paired by name, and the inputs it refuses in one line."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vgg_toolkit as vt
from cli_runner import input_error, vggtk
from lpips_refs import IMAGENET_MEAN, IMAGENET_STD, reference_lpips, reference_taps, unit, write_lpips_files
from pretrained_refs import real_photos

NAMES = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Folder ``a`` holds three real photos at 64x48 as PNG; ``b`` the same, JPEG-compressed at quality 20 and
    named ``.jpg`` (pairs go by name, the suffix aside), one of them in a subfolder of both."""
    root = tmp_path_factory.mktemp("distance")
    sd, heads = write_lpips_files(root)
    for name in NAMES:
        sub = "more/" if name == "coffee" else ""
        (root / "a" / sub).mkdir(parents=True, exist_ok=True)
        (root / "b" / sub).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(real_photos()[name]).resize((64, 48), Image.BILINEAR)
        image.save(root / "a" / f"{sub}{name}.png")
        image.save(root / "b" / f"{sub}{name}.jpg", quality=20)
    return root, sd, heads


def pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255


def test_lpips_of_each_pair_is_the_reference_on_the_pixels_read_and_the_csv_holds_it(photos, tmp_path):
    root, sd, heads = photos
    result = vggtk("distance", root / "a", root / "b", "--weights", root / "vgg16.pth", "--lpips-heads",
                   root / "vgg.pth", "--json", "--out", tmp_path / "d.csv")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pairs = report["pairs"]
    assert [(p["a"][len(str(root)):], p["b"][len(str(root)):]) for p in pairs] == [
        ("/a/astronaut.png", "/b/astronaut.jpg"), ("/a/chelsea.png", "/b/chelsea.jpg"),
        ("/a/more/coffee.png", "/b/more/coffee.jpg")]
    for pair in pairs:
        a, b = pixels(pair["a"]), pixels(pair["b"])
        want = float(reference_lpips(sd, heads, 2 * a - 1, 2 * b - 1))
        assert pair["distance"] == pytest.approx(want, rel=1e-5) and want > 0
        assert sum(pair["layers"].values()) == pytest.approx(want, rel=1e-5)
    assert report["mean"] == pytest.approx(np.mean([p["distance"] for p in pairs]), rel=1e-9)
    assert report["metric"] == "lpips" and report["skipped"] == []
    lines = (tmp_path / "d.csv").read_text().splitlines()
    assert lines[0] == "# written_by: vggtk; vggtk_kind: distances"
    rows = list(csv.DictReader(lines[1:]))
    assert [float(r["lpips"]) for r in rows] == [p["distance"] for p in pairs]
    assert list(rows[0])[3:] == ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]

    table = vggtk("distance", root / "a" / "chelsea.png", root / "b" / "chelsea.jpg", "--weights",
                  root / "vgg16.pth", "--lpips-heads", root / "vgg.pth")
    assert table.exit_code == 0, table.output
    assert str(root / "a" / "chelsea.png") in table.stdout and f"{pairs[1]['distance']:.6f}" in table.stdout


def test_a_tap_distance_is_one_minus_the_cosine_averaged_over_positions_on_the_recorded_input(photos):
    root, sd, _ = photos
    result = vggtk("distance", root / "a" / "astronaut.png", root / "b" / "astronaut.jpg", "--weights",
                   root / "vgg16.pth", "--metric", "features:relu3_3", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["pairs"][0]["distance"]
    # torchvision's record: ImageNet mean and std on 0-1 RGB; relu3_3 is the third of the reference's taps.
    fa, fb = (reference_taps(sd, (pixels(root / d / f"astronaut.{s}") - IMAGENET_MEAN) / IMAGENET_STD)[2]
              for d, s in (("a", "png"), ("b", "jpg")))
    want = float((1 - (unit(fa) * unit(fb)).sum(1)).mean())
    assert got == pytest.approx(want, rel=1e-4) and 0 < want < 2


def test_size_resizes_both_and_a_photo_is_nearer_itself_at_another_size_than_another_photo(photos, tmp_path):
    root, sd, heads = photos
    big = tmp_path / "chelsea-96.png"
    Image.open(root / "a" / "chelsea.png").resize((96, 72), Image.BICUBIC).save(big)
    args = ["--weights", root / "vgg16.pth", "--lpips-heads", root / "vgg.pth", "--json"]
    message = input_error(vggtk("distance", root / "a" / "chelsea.png", big, *args[:-1]))
    assert "chelsea.png is 64x48 and" in message and "chelsea-96.png 96x72: give --size N" in message
    same = vggtk("distance", root / "a" / "chelsea.png", big, "--size", 48, *args)
    other = vggtk("distance", root / "a" / "more" / "coffee.png", big, "--size", 48, *args)
    assert same.exit_code == 0 and other.exit_code == 0, same.output + other.output
    near, far = (json.loads(r.stdout)["pairs"][0]["distance"] for r in (same, other))
    assert 0 < near < far
    # 16 pixels leave relu5_3 one position, as in the reference, which never runs the pool after it.
    Image.open(root / "a" / "chelsea.png").resize((16, 16), Image.BILINEAR).save(tmp_path / "x16.png")
    Image.open(big).resize((16, 16), Image.BILINEAR).save(tmp_path / "y16.png")
    smallest = vggtk("distance", tmp_path / "x16.png", tmp_path / "y16.png", *args)
    assert smallest.exit_code == 0, smallest.output
    want = float(reference_lpips(sd, heads, 2 * pixels(tmp_path / "x16.png") - 1, 2 * pixels(tmp_path / "y16.png") - 1))
    assert json.loads(smallest.stdout)["pairs"][0]["distance"] == pytest.approx(want, rel=1e-5)


def test_the_refused_inputs_each_say_one_line(photos, tmp_path):
    root, _, heads = photos
    w = ["--weights", root / "vgg16.pth"]
    lp = [*w, "--lpips-heads", root / "vgg.pth"]
    bad = {f"lin{i}.model.1.weight": h for i, h in enumerate(heads)}
    bad["lin3.model.1.weight"] = torch.ones(1, 256, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    assert "bad.pth: lin3.model.1.weight has shape (1, 256, 1, 1)" in input_error(
        vggtk("distance", root / "a", root / "b", *w, "--lpips-heads", tmp_path / "bad.pth"))
    # a folder pair with unmatched names
    (tmp_path / "c").mkdir()
    Image.open(root / "a" / "chelsea.png").save(tmp_path / "c" / "chelsea.png")
    Image.open(root / "a" / "chelsea.png").save(tmp_path / "c" / "kitten.png")
    message = input_error(vggtk("distance", root / "a", tmp_path / "c", *lp))
    assert "do not pair by name" in message and "astronaut, more/coffee in" in message and "kitten in" in message
    Image.open(root / "a" / "chelsea.png").save(tmp_path / "c" / "kitten.jpg")
    assert "kitten.jpg and kitten.png have one name" in input_error(vggtk("distance", tmp_path / "c", root / "b", *lp))
    assert "give two images or two folders" in input_error(
        vggtk("distance", root / "a", root / "b" / "chelsea.jpg", *lp))
    assert "nothing.png: no such image or folder" in input_error(
        vggtk("distance", tmp_path / "nothing.png", root / "b" / "chelsea.jpg", *lp))
    # metrics, taps, trunks
    assert "--metric 'ssim': lpips, or features:TAP" in input_error(
        vggtk("distance", root / "a", root / "b", *w, "--metric", "ssim"))
    assert "--metric features:relu3_4: unknown" in input_error(
        vggtk("distance", root / "a", root / "b", *w, "--metric", "features:relu3_4"))
    assert "--metric 'features:fc7': a tap of the conv trunk" in input_error(
        vggtk("distance", root / "a", root / "b", *w, "--metric", "features:fc7"))
    assert "--lpips-heads: only for --metric lpips" in input_error(
        vggtk("distance", root / "a", root / "b", *lp, "--metric", "features:relu2_2"))
    from pretrained_refs import torchvision_state
    torch.save(torchvision_state(11, classes=10, fc=32), tmp_path / "vgg11.pth")
    assert "trunk is VGG16" in input_error(vggtk("distance", root / "a", root / "b", "--weights",
                                                 tmp_path / "vgg11.pth", "--lpips-heads", root / "vgg.pth"))
    # a net trained on grey images: LPIPS refuses it, a tap's distance reads the photos grey
    grey = vt.create_model("vgg-d", num_classes=10, in_chans=1, fc_dim=32)
    vt.set_model_info(grey, vt.model_info(grey).trained_on(None, vt.TrainScale(256, 256), [120.0]))
    vt.save_weights(grey, tmp_path / "grey.safetensors")
    assert "trunk takes RGB images; this VGG16 takes 1 channel(s)" in input_error(
        vggtk("distance", root / "a", root / "b", "--weights", tmp_path / "grey.safetensors", "--lpips-heads",
              root / "vgg.pth"))
    read_grey = vggtk("distance", root / "a", root / "b", "--weights", tmp_path / "grey.safetensors", "--metric",
                      "features:relu2_1", "--json")
    assert read_grey.exit_code == 0, read_grey.output
    assert all(0 < p["distance"] < 2 for p in json.loads(read_grey.stdout)["pairs"])
    # images too small for relu5_3, sizes out of range, a target that is not vggtk's
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    assert "tiny.png: 8x8 is too small for lpips" in input_error(
        vggtk("distance", tmp_path / "tiny.png", tmp_path / "tiny.png", *lp))
    assert "--size 4: must be within 16..8192" in input_error(
        vggtk("distance", root / "a", root / "b", *lp, "--size", 4))
    (tmp_path / "notes.csv").write_text("mine\n")
    assert "notes.csv: exists and was not written by vggtk" in input_error(
        vggtk("distance", root / "a", root / "b", *lp, "--out", tmp_path / "notes.csv"))
    assert (tmp_path / "notes.csv").read_text() == "mine\n"


def test_an_unreadable_image_fails_or_its_pair_is_skipped_and_counted(photos, tmp_path):
    root, _, _ = photos
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for name in ("astronaut", "chelsea"):
            Image.open(root / "a" / f"{name}.png").save(tmp_path / side / f"{name}.png")
    (tmp_path / "b" / "chelsea.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lp = ["--weights", root / "vgg16.pth", "--lpips-heads", root / "vgg.pth"]
    assert "chelsea.png" in input_error(vggtk("distance", tmp_path / "a", tmp_path / "b", *lp))
    result = vggtk("distance", tmp_path / "a", tmp_path / "b", *lp, "--on-error", "skip", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["a"].rsplit("/", 1)[1] for p in report["pairs"]] == ["astronaut.png"]
    assert report["pairs"][0]["distance"] == 0.0  # the same pixels on both sides
    assert len(report["skipped"]) == 1 and "chelsea.png" in report["skipped"][0]
    assert "skipped 1 pair(s)" in result.stderr


def test_the_heads_default_to_those_of_an_installed_lpips_package(photos, tmp_path, monkeypatch):
    root, _, _ = photos
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing lpips needs torchvision')\n")
    (package / "weights" / "v0.1" / "vgg.pth").write_bytes((root / "vgg.pth").read_bytes())
    args = ("distance", root / "a" / "chelsea.png", root / "b" / "chelsea.jpg", "--weights", root / "vgg16.pth", "--json")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = vggtk(*args)
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["lpips_heads"] == str(package / "weights" / "v0.1" / "vgg.pth")
    given = vggtk(*args, "--lpips-heads", root / "vgg.pth")
    assert json.loads(given.stdout)["pairs"] == json.loads(found.stdout)["pairs"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no lpips installed
    assert "--metric lpips needs --lpips-heads FILE" in input_error(vggtk(*args))
