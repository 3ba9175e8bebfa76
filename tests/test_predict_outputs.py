"""What ``vggtk predict`` writes: a drawing per image even when two share a name, nothing at all when one
of its outputs is a user's file, a CSV it can replace on the next run, boxes clipped to their image."""

import json

import torch
from PIL import Image

import vgg_toolkit as vt
from cli_runner import input_error, vggtk
from realdata import fashion_sample
from vgg_toolkit.runtime.files import written_kind


def _images(root, names):
    images, _ = fashion_sample(len(names))
    for name, image in zip(names, images):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)
    return root


def test_drawings_of_images_with_one_name_do_not_overwrite_each_other(trained, tmp_path):
    photos = _images(tmp_path / "in", ["dup1/x.jpg", "dup1/x.png", "dup2/x.jpg"])
    result = vggtk("predict", trained[0] / "best", photos, "--draw", tmp_path / "drawn")
    assert result.exit_code == 0, result.output
    drawn = sorted(str(p.relative_to(tmp_path / "drawn")) for p in (tmp_path / "drawn").rglob("*.png"))
    assert drawn == ["dup1/x.jpg.png", "dup1/x.png.png", "dup2/x.jpg.png"]
    assert {written_kind(tmp_path / "drawn" / d) for d in drawn} == {"drawing"}


def test_a_users_file_among_the_drawings_stops_everything_before_any_work(trained, tmp_path):
    photos = _images(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "drawn").mkdir()
    (tmp_path / "drawn" / "b.png.png").write_bytes(b"the user's picture")
    failed = vggtk("predict", trained[0] / "best", photos, "--draw", tmp_path / "drawn", "--out", tmp_path / "p.json")
    assert "b.png.png: exists and was not written by vggtk" in input_error(failed)
    assert failed.stdout == "" and not (tmp_path / "p.json").exists()  # no table, no JSON, no other drawing
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["b.png.png"]


def test_predictions_as_csv_are_marked_and_replaced_by_the_next_run(trained, tmp_path):
    photos = _images(tmp_path / "in", ["a.png", "b.png"])
    for _ in range(2):
        result = vggtk("predict", trained[0] / "best", photos, "--out", tmp_path / "p.csv")
        assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "# written_by: vggtk; vggtk_kind: predictions"
    assert lines[1] == "image,rank,class,probability,x1,y1,x2,y2" and len(lines) == 2 + 2 * 3
    (tmp_path / "mine.csv").write_text("image,rank\nmine,1\n")
    assert "not written by vggtk" in input_error(vggtk("predict", trained[0] / "best", photos, "--out",
                                                        tmp_path / "mine.csv"))


def test_a_box_past_the_image_edge_is_clipped_to_it(trained, tmp_path):
    """An SCR net whose box is centred on its window's corner and twice its size: the box printed and
    written is the part inside the image, with no -0."""
    classifier = vt.load_trained(trained[0] / "best", say=None)
    info = vt.model_info(classifier)
    net = vt.create_model("vgg-a", **{**info.options, "num_classes": 4})
    with torch.no_grad():
        net.classifier.fc8.weight.zero_()
        net.classifier.fc8.bias.copy_(torch.tensor([0.0, 0.0, 2.0, 2.0]))  # (cx, cy, w, h) of the window
    vt.set_model_info(net, vt.model_info(net).trained_on(info.classes, info.train_scale, info.mean_rgb, head="scr"))
    vt.save_weights(net, tmp_path / "scr.safetensors")
    photos = _images(tmp_path / "in", ["a.png"])
    result = vggtk("predict", trained[0] / "best", tmp_path / "scr.safetensors", photos, "--out", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "p.json").read_text())["predictions"]
    x1, y1, x2, y2 = row["box"]["xyxy"]
    width, height = Image.open(photos / "a.png").size
    assert (x1, y1) == (0.0, 0.0) and 0 < x2 <= width and 0 < y2 <= height
    assert "-0" not in result.output


def test_only_checkpoints_and_no_image_says_so(trained):
    assert "name images or folders of images after the checkpoints" in input_error(
        vggtk("predict", trained[0] / "best"))


def test_a_transparent_pixel_is_white_not_whatever_colour_it_holds(tmp_path):
    import numpy as np

    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, opaque only in the middle
    rgba[10:30, 10:40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "grey.png")
    image = vt.read_image(tmp_path / "logo.png", 3)
    assert image[:, 0, 0].tolist() == [255, 255, 255] and image[:, 20, 20].tolist() == [200, 0, 0]
    grey = vt.read_image(tmp_path / "grey.png")
    assert grey.shape[0] == 1 and grey[0, 0, 0] == 255 and grey[0, 20, 20] == 200


def test_a_one_pixel_photo_reads_without_a_numpy_warning(tmp_path):
    import warnings

    import numpy as np

    Image.fromarray(np.full((1, 1, 3), 7, np.uint8)).save(tmp_path / "dot.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the read-only view of a 1x1 image once reached torch as it was
        assert vt.read_image(tmp_path / "dot.png", 3).flatten().tolist() == [7, 7, 7]


def test_an_inverted_box_is_said_never_printed_or_drawn_as_a_box(trained, tmp_path):
    classifier = vt.load_trained(trained[0] / "best", say=None)
    info = vt.model_info(classifier)
    net = vt.create_model("vgg-a", **{**info.options, "num_classes": 4})
    with torch.no_grad():
        net.classifier.fc8.weight.zero_()
        net.classifier.fc8.bias.copy_(torch.tensor([0.5, 0.5, -0.5, 0.5]))  # a negative width: x2 < x1
    vt.set_model_info(net, vt.model_info(net).trained_on(info.classes, info.train_scale, info.mean_rgb, head="scr"))
    vt.save_weights(net, tmp_path / "scr.safetensors")
    photos = _images(tmp_path / "in", ["a.png"])
    result = vggtk("predict", trained[0] / "best", tmp_path / "scr.safetensors", photos, "--out", tmp_path / "p.json",
                   "--draw", tmp_path / "drawn")
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert row["box"]["xyxy"] is None and "inverted or empty" in row["box"]["problem"]
    assert "inverted or empty" in result.output
    from vgg_toolkit.plugins.localisation.drawing import draw_box, is_box

    assert not is_box(torch.tensor([10.0, 5.0, 4.0, 20.0])) and is_box(torch.tensor([1.0, 1.0, 2.0, 2.0]))
    canvas = Image.new("RGB", (32, 32), "white")
    from PIL import ImageDraw

    assert draw_box(ImageDraw.Draw(canvas), torch.tensor([20.0, 5.0, 4.0, 20.0]), (255, 0, 0)) is False
    assert (tmp_path / "drawn" / "a.png.png").is_file()
