"""``vggtk export``: each form of a small trained net, loaded back the way a server loads it (onnxruntime; a
torch.export program), gives vggtk's own numbers (the dense and centre posteriors, tap maps before pooling,
the localisation net's boxes) at several sizes, one of them not a multiple of 32; from uint8 images read
by PIL with ``--with-preprocessing``; pretrained nets (a torchvision-layout file, a Caffe release) export
with their own preprocessing; the serving example reproduces ``vggtk predict`` without vggtk."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import vgg_toolkit as vt
from caffe_writer import random_vgg, write_vgg
from cli_runner import input_error, vggtk
from pretrained_refs import (at_preset_geometry, caffe_dense_scores, real_photos, torchvision_logits,
                             torchvision_preset, torchvision_state)
from vgg_toolkit.plugins.localisation.dense import box_map

REPO = Path(__file__).resolve().parents[1]
CLOSE = 1e-4  # relative to the largest output, as the command checks


def _onnx(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session, lambda x: torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x)})[0])


def _close(got, want) -> bool:
    return float((got - want).abs().max()) <= CLOSE * max(float(want.abs().max()), 1e-6)


def _exported(tmp_path, source, name, *args):
    out = tmp_path / name
    result = vggtk("export", source, out, *args)
    assert result.exit_code == 0, result.output
    assert "largest difference" in result.output and "not exported" in result.output
    return out


def _pixels(n: int, side: int, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Real Fashion-MNIST garments (uint8), upscaled to ``side`` by PIL."""
    from realdata import fashion_sample

    images, _ = fashion_sample(n + seed)
    out = [np.asarray(Image.fromarray(im[0].numpy()).resize((side, side), Image.BILINEAR)) for im in images[seed:]]
    x = torch.from_numpy(np.stack(out))[:, None]
    return x.expand(-1, channels, -1, -1).contiguous()


def test_the_dense_form_gives_the_dense_protocols_posteriors_at_any_size(trained, tmp_path):
    best = trained[0] / "best"
    model = vt.load_trained(best, say=None)
    prep = vt.input_preprocessing(model)
    out = _exported(tmp_path, best, "dense.onnx", "--average", "--with-preprocessing")
    session, run = _onnx(out)
    record = json.loads(session.get_modelmeta().custom_metadata_map["vggtk_record"])
    assert record["output"] == "posteriors" and record["min_side"] == 32 and record["with_preprocessing"]
    assert session.get_modelmeta().custom_metadata_map["vggtk_kind"] == "onnx export"
    for side in (32, 40, 50):  # 50: trimmed to 32, centred, as vggtk eval's dense protocol trims it
        pixels = _pixels(3, side)
        want = vt.get_evaluator("dense", scales=[side], flip=False)(model, prep.apply(pixels))
        assert _close(run(pixels.numpy()), want), side


def test_the_classifier_form_gives_the_centre_protocols_posteriors(trained, tmp_path):
    best = trained[0] / "best"
    model = vt.load_trained(best, say=None)
    out = _exported(tmp_path, best, "classifier.onnx", "--form", "classifier", "--with-preprocessing")
    _, run = _onnx(out)
    pixels = _pixels(4, 32)
    want = vt.get_evaluator("center", scales=[32], flip=False)(model, vt.input_preprocessing(model).apply(pixels))
    assert _close(run(pixels.numpy()).softmax(1), want)


def test_a_tap_form_gives_the_dense_nets_map_before_pooling(trained, tmp_path):
    best = trained[0] / "best"
    model = vt.load_trained(best, say=None)
    for fmt, tap in (("onnx", "fc7"), ("pt2", "relu3_2")):
        out = _exported(tmp_path, best, f"{tap}.{fmt}", "--format", fmt, "--form", f"features:{tap}")
        run = _onnx(out)[1] if fmt == "onnx" else torch.export.load(str(out)).module()
        for side in (32, 45):
            x = vt.input_preprocessing(model).apply(_pixels(2, side))
            with torch.no_grad(), vt.model_form(model, fully_conv=True):
                want = model.forward_features(vt.dense_input(model, x), taps=(tap,))[tap]
                got = run(x.numpy()) if fmt == "onnx" else run(x)
            assert got.shape == want.shape and _close(got, want), (tap, side)


def test_the_pt2_program_round_trips_and_carries_the_record(trained, tmp_path):
    best = trained[0] / "best"
    model = vt.load_trained(best, say=None)
    out = _exported(tmp_path, best, "dense.pt2", "--format", "pt2")
    extra = {"vggtk.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["vggtk.json"])
    assert meta["vggtk_kind"] == "pt2 export" and json.loads(meta["vggtk_record"])["form"] == "dense"
    x = vt.input_preprocessing(model).apply(_pixels(2, 70))
    with torch.no_grad(), vt.model_form(model, fully_conv=True):
        want = model(vt.dense_input(model, x))
        assert _close(program.module()(x), want)


def test_the_boxes_form_gives_the_localisation_nets_boxes(tmp_path):
    torch.manual_seed(0)
    net = vt.create_model("vgg-a", num_classes=4 * 3, in_chans=3, width=1 / 8, fc_dim=32, input_size=64,
                          init="kaiming")
    info = vt.model_info(net).trained_on(["a", "b", "c"], vt.TrainScale(72, 72), [110.0, 100.0, 90.0], head="pcr")
    vt.set_model_info(net, info)
    vt.save_weights(net, tmp_path / "pcr.safetensors")
    model = vt.load_trained(tmp_path / "pcr.safetensors", say=None)
    out = _exported(tmp_path, tmp_path / "pcr.safetensors", "boxes.onnx", "--with-preprocessing")
    _, run = _onnx(out)
    photo = real_photos()["coffee"]
    for h, w in ((72, 72), (72, 108), (99, 140)):
        pixels = torch.from_numpy(np.asarray(Image.fromarray(photo).resize((w, h), Image.BILINEAR)).copy())
        pixels = pixels.permute(2, 0, 1)[None]
        want = box_map(model, vt.input_preprocessing(model).apply(pixels), min(h, w))[0]  # Q = the short side
        got = run(pixels.numpy())[0]
        assert _close(got.reshape(-1, 3, 4), want), (h, w)


def test_pretrained_nets_export_with_their_own_preprocessing(tmp_path):
    state = torchvision_state(seed=7)
    torch.save(state, tmp_path / "vgg11.pth")
    out = _exported(tmp_path, tmp_path / "vgg11.pth", "tv.onnx", "--form", "classifier", "--with-preprocessing")
    _, run = _onnx(out)
    for name, photo in list(real_photos().items())[:3]:
        photo = at_preset_geometry(photo)
        h, w = photo.shape[:2]
        top, left = (h - 224) // 2, (w - 224) // 2
        crop = np.ascontiguousarray(photo[top:top + 224, left:left + 224].transpose(2, 0, 1)[None])
        with torch.no_grad():
            want = torchvision_logits(state, torchvision_preset(photo)[None])
        assert _close(run(crop), want), name
    blocks = [(8, 2), (16, 2), (32, 3), (64, 3), (64, 3)]
    weights = random_vgg(seed=8, blocks=blocks, fc_dim=32, classes=5)
    write_vgg(tmp_path / "d.caffemodel", weights, blocks)
    out = _exported(tmp_path, tmp_path / "d.caffemodel", "caffe.onnx", "--with-preprocessing", "--check-sizes",
                    "224,250")
    _, run = _onnx(out)
    photo = torch.from_numpy(np.asarray(Image.fromarray(real_photos()["rocket"]).resize((250, 250))).copy())
    photo = photo.permute(2, 0, 1)
    assert _close(run(photo[None].numpy())[0].mean(dim=(1, 2)), caffe_dense_scores(weights, blocks, photo))


def test_the_serving_example_reproduces_predict_without_vggtk(trained, tmp_path):
    best = trained[0] / "best"
    out = _exported(tmp_path, best, "serve.onnx", "--average", "--with-preprocessing")
    images, _ = __import__("realdata").fashion_sample(1)
    Image.fromarray(images[0][0].numpy()).save(tmp_path / "garment.png")
    predicted = vggtk("predict", best, tmp_path / "garment.png", "--method", "dense", "--out", tmp_path / "p.json")
    assert predicted.exit_code == 0, predicted.output
    top = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top5"]
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
            "assert not any(m.startswith(('vgg_toolkit', 'torch')) for m in sys.modules), 'imported vggtk or torch'")
    served = subprocess.run([sys.executable, "-c", code, str(REPO / "examples" / "serve_onnx.py"), str(out),
                             str(tmp_path / "garment.png")], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    rows = [line.split("\t") for line in served.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == [t["class"] for t in top]
    assert all(abs(float(r[1]) - t["probability"]) < 0.02 for r, t in zip(rows, top))


@pytest.mark.parametrize("args,says", [
    (["--form", "fancy"], "--form 'fancy': not a form"),
    (["--form", "features:fc9"], "has no tap 'fc9'"),
    (["--form", "boxes"], "--form boxes: the net has the classification head"),
    (["--form", "classifier", "--average"], "--average: only for --form dense"),
    (["--check-sizes", "16"], "16x16 is outside 32..8192"),
    (["--format", "pt2"], "a --format pt2 file is named *.pt2"),
])
def test_bad_requests_are_one_line_and_write_nothing(trained, tmp_path, args, says):
    message = input_error(vggtk("export", trained[0] / "best", tmp_path / "x.onnx", *args))
    assert says in message, message
    assert list(tmp_path.iterdir()) == []


def test_an_output_vggtk_did_not_write_is_not_replaced(trained, tmp_path):
    (tmp_path / "mine.onnx").write_bytes(b"the user's model")
    assert "not written by vggtk" in input_error(vggtk("export", trained[0] / "best", tmp_path / "mine.onnx"))
    assert (tmp_path / "mine.onnx").read_bytes() == b"the user's model"


def test_without_the_export_extra_onnx_is_one_line(monkeypatch):
    from vgg_toolkit.plugins.export import files

    real = files.importlib.util.find_spec
    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    with pytest.raises(vt.VggtkError, match=r"needs onnx, onnxscript and onnxruntime \(pip install 'vgg-toolkit\[export\]'\); missing: onnxscript"):
        files.check_format_available("onnx")
    files.check_format_available("pt2")  # torch.export alone
