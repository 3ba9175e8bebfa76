"""The authors' Caffe release, read: a small VGG-D-shaped ``.caffemodel`` written by the test's own protobuf
encoder (V1 ``layers`` records as the release has them, and the newer ``layer`` records), converted, gives
the posteriors of a plain-torch forward with Caffe's preprocessing and pools that round up, at 224 and, in
dense evaluation, at a side that is not a multiple of 32; damaged or crafted files are one line each."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import vgg_toolkit as vt
from caffe_writer import blob, conv_params, field_bytes, field_varint, key, layer, random_vgg, varint, vgg_layers, write_net, write_vgg
from cli_runner import input_error, vggtk
from pretrained_refs import caffe_dense_scores, real_photos
from vgg_toolkit.models.caffe import read_caffemodel
from vgg_toolkit.models.weights import read_model_info

BLOCKS = [(8, 2), (16, 2), (32, 3), (64, 3), (64, 3)]  # configuration D at 1/8 width
CLASSES, FC = 5, 32


@pytest.fixture(scope="module")
def weights():
    return random_vgg(seed=4, blocks=BLOCKS, fc_dim=FC, classes=CLASSES)


def _square(side: int) -> torch.Tensor:
    photo = Image.fromarray(real_photos()["chelsea"]).resize((side, side), Image.BILINEAR)
    return torch.from_numpy(np.array(photo)).permute(2, 0, 1)


@pytest.mark.parametrize("v1", [True, False], ids=["V1 layers", "layer"])
def test_a_converted_release_equals_caffes_forward(weights, tmp_path, v1):
    write_vgg(tmp_path / "net.caffemodel", weights, BLOCKS, v1=v1)
    result = vggtk("convert", tmp_path / "net.caffemodel", tmp_path / "net.safetensors")
    assert result.exit_code == 0, result.output
    info = read_model_info(tmp_path / "net.safetensors")
    assert info.arch == "vgg-d" and info.options["ceil_pool"] and info.options["width"] == 0.125
    assert info.preprocessing == vt.Preprocessing.caffe() and str(info.train_scale) == "[256;512]"
    model = vt.load_trained(tmp_path / "net.safetensors", say=None)
    floor = vt.create_model("vgg-d", **{**info.options, "ceil_pool": False}).eval()
    floor.load_state_dict(model.state_dict())
    for side in (224, 250):  # 250: pools that round up keep rows a floor would drop
        image = _square(side)
        x = info.preprocessing.apply(image[None])
        ref = caffe_dense_scores(weights, BLOCKS, image)
        scale = ref.abs().max()
        with torch.no_grad():
            posteriors = vt.get_evaluator("dense", flip=False, scales=[side])(model, x)[0]
            got, floored = (_dense_scores(m, x) for m in (model, floor))
        assert (got - ref).abs().max() < 1e-5 * scale, side
        assert (posteriors - ref.softmax(0)).abs().max() < 1e-5
        if side == 250:  # so the rounding is what the test sees: a floor drops rows and sees another map
            assert (floored - ref).abs().max() > 1e-2 * scale


def _dense_scores(model, x):
    """The fully-convolutional net's class scores averaged over its map, on the whole image."""
    with vt.model_form(model, fully_conv=True):
        return model(vt.dense_input(model, x)).mean(dim=(2, 3))[0]


def test_naming_the_architecture_keeps_caffes_semantics(weights, tmp_path):
    write_vgg(tmp_path / "net.caffemodel", weights, BLOCKS)
    result = vggtk("convert", tmp_path / "net.caffemodel", tmp_path / "d.safetensors", "--arch", "vgg16")
    assert result.exit_code == 0, result.output
    info = read_model_info(tmp_path / "d.safetensors")
    assert info.options["ceil_pool"] and info.preprocessing == vt.Preprocessing.caffe()


def test_the_centre_view_of_a_converted_release_is_caffes_at_224(weights, tmp_path):
    write_vgg(tmp_path / "net.caffemodel", weights, BLOCKS)
    model = vt.load_trained(tmp_path / "net.caffemodel", say=None)  # read directly, converted in memory
    image = _square(224)
    with torch.no_grad():
        got = model(vt.input_preprocessing(model).apply(image[None]))[0]
    ref = caffe_dense_scores(weights, BLOCKS, image)
    assert (got - ref).abs().max() < 1e-5 * ref.abs().max()


def test_reading_holds_the_weights_once(weights, tmp_path):
    """Blobs go from the file's map straight into their tensors: the tensors own their memory."""
    write_vgg(tmp_path / "net.caffemodel", weights, BLOCKS)
    tensors = read_caffemodel(tmp_path / "net.caffemodel")
    assert set(tensors) == set(weights)
    assert all(np.array_equal(tensors[k].numpy(), weights[k]) for k in weights)
    assert tensors["fc6.weight"].shape == (FC, 64 * 49) and tensors["fc6.weight"].is_contiguous()


def _damaged(tmp_path, weights, how: str):
    path = tmp_path / f"{how}.caffemodel"
    buf = io.BytesIO()
    write_net(buf, vgg_layers(weights, BLOCKS))
    data = buf.getvalue()
    if how == "truncated":
        data = data[: len(data) * 2 // 3]
    elif how == "huge length":  # the net's name, then a layer record claiming 2^60 bytes
        name = io.BytesIO()
        write_net(name, [])
        data = name.getvalue() + key(2, 2) + varint(1 << 60) + b"\x00" * 64
    elif how == "wrong blob size":  # conv2_1's bias claims 16 values and holds 13
        bias = np.zeros(13, dtype="<f4")
        lying = b"".join(field_varint(n, d) for n, d in zip((1, 2, 3, 4), (1, 1, 1, 16))) + \
            field_bytes(5, bias.tobytes())
        record = field_bytes(4, b"conv2_1") + field_varint(5, 4) + field_bytes(10, conv_params(16)) + \
            field_bytes(6, blob(weights["conv2_1.weight"])) + field_bytes(6, lying)
        layers = [record if b"conv2_1" in body[:12] else body for body in vgg_layers(weights, BLOCKS)]
        buf = io.BytesIO()
        write_net(buf, layers)
        data = buf.getvalue()
    elif how == "unknown layer":
        buf = io.BytesIO()
        write_net(buf, [*vgg_layers(weights, BLOCKS), layer("mix", "Eltwise")])
        data = buf.getvalue()
    elif how in ("conv without parameters", "kernel mismatch", "no num_output"):
        params = {"conv without parameters": None, "kernel mismatch": conv_params(16, kernel=5, pad=2),
                  "no num_output": field_varint(3, 1) + field_varint(4, 3)}[how]
        record = field_bytes(4, b"conv2_1") + field_varint(5, 4) + \
            (field_bytes(10, params) if params is not None else b"") + \
            field_bytes(6, blob(weights["conv2_1.weight"])) + field_bytes(6, blob(weights["conv2_1.bias"]))
        buf = io.BytesIO()
        write_net(buf, [record if b"conv2_1" in body[:12] else body for body in vgg_layers(weights, BLOCKS)])
        data = buf.getvalue()
    elif how == "empty":
        data = b""
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("how,says", [
    ("truncated", "truncated or damaged"),
    ("huge length", "claims 1,152,921,504,606,846,976 bytes"),
    ("wrong blob size", "layer conv2_1: a blob of shape (16,) holds 13 values"),
    ("unknown layer", "layer 'mix' (Eltwise): a layer type vggtk does not convert"),
    ("empty", "an empty file"),
    ("conv without parameters", "layer 'conv2_1' (Convolution): no convolution_param"),
    ("kernel mismatch", "declares 5x5 kernels but holds weights of shape (16, 8, 3, 3)"),
    ("no num_output", "layer 'conv2_1' (Convolution): no num_output"),
])
def test_a_damaged_or_crafted_release_is_one_line(weights, tmp_path, how, says):
    path = _damaged(tmp_path, weights, how)
    message = input_error(vggtk("convert", path, tmp_path / "out.safetensors"))
    assert f"{path.name}" in message and says in message, message
    assert not (tmp_path / "out.safetensors").exists()
