"""Weights: safetensors round trips through every layout, foreign files, and the errors."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from vgg_toolkit import ModelInfo, WeightsError, create_model, load_weights, read_model_info, save_weights
from vgg_toolkit.models import weights as weights_module
from vgg_toolkit.models.weights import read_tensors

SMALL = dict(num_classes=7, width=1 / 16, fc_dim=24, input_size=64)


def _model(name="vgg-d", seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, init="glorot", **{**SMALL, **kw}).eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("layout", ["vggtk", "torchvision", "timm"])
@pytest.mark.parametrize("name,batch_norm", [("vgg-d", False), ("vgg-d", True), ("vgg-a-lrn", False), ("vgg-c", False)])
def test_round_trip_through_each_layout(tmp_path, layout, name, batch_norm):
    src = _model(name, seed=1, batch_norm=batch_norm)
    if batch_norm:  # make running statistics differ from their defaults so the test can fail
        src.train()(torch.randn(4, 3, 64, 64))
        src.eval()
    path = save_weights(src, tmp_path / "w.safetensors", layout=layout)
    dst = _model(name, seed=2, batch_norm=batch_norm)
    assert load_weights(dst, path) == layout
    _same_weights(src, dst)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(src(x), dst(x), rtol=0, atol=0)


def test_foreign_layouts_use_the_foreign_names_and_shapes(tmp_path):
    model = _model("vgg-d")
    save_weights(model, tmp_path / "tv.safetensors", layout="torchvision")
    save_weights(model, tmp_path / "timm.safetensors", layout="timm")
    tv, tm = read_tensors(tmp_path / "tv.safetensors"), read_tensors(tmp_path / "timm.safetensors")
    # torchvision's vgg16 Sequential: conv, relu per layer, pools between blocks.
    assert torch.equal(tv["features.0.weight"], model.features.block1.conv1.weight)
    assert torch.equal(tv["features.2.weight"], model.features.block1.conv2.weight)
    assert torch.equal(tv["features.5.weight"], model.features.block2.conv1.weight)
    assert torch.equal(tv["features.28.weight"], model.features.block5.conv3.weight)
    assert tv["classifier.0.weight"].shape == (24, 32 * 2 * 2)
    assert torch.equal(tv["classifier.6.bias"], model.classifier.fc8.bias)
    # timm keeps FC6/FC7 as convolutions.
    assert tm["pre_logits.fc1.weight"].shape == (24, 32, 2, 2)
    assert tm["pre_logits.fc2.weight"].shape == (24, 24, 1, 1)
    assert torch.equal(tm["head.fc.weight"], model.classifier.fc8.weight)


def test_torchvision_bn_indices(tmp_path):
    model = _model("vgg-a", batch_norm=True)
    save_weights(model, tmp_path / "tv.safetensors", layout="torchvision")
    tv = read_tensors(tmp_path / "tv.safetensors")
    # vgg11_bn: conv 0, bn 1, relu 2, pool 3, conv 4, bn 5 ...
    assert torch.equal(tv["features.4.weight"], model.features.block2.conv1.weight)
    assert torch.equal(tv["features.5.running_var"], model.features.block2.bn1.running_var)


def test_pth_is_read_without_unpickling_code(tmp_path):
    model = _model("vgg-a")
    torch.save({"state_dict": model.export_state_dict("torchvision")}, tmp_path / "tv.pth")
    dst = _model("vgg-a", seed=5)
    assert load_weights(dst, tmp_path / "tv.pth") == "torchvision"
    _same_weights(model, dst)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(WeightsError, match="evil.pth: cannot be read as a weights-only"):
        load_weights(dst, evil)


def test_loading_d_into_e_names_the_tensors_that_do_not_fit(tmp_path):
    path = save_weights(_model("vgg-d"), tmp_path / "d.safetensors")
    e = _model("vgg-e")
    before = {k: v.clone() for k, v in e.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_weights(e, path)
    message = str(err.value)
    assert "d.safetensors" in message and "missing features.block3.conv4.weight" in message
    for k, v in e.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k]), k


def test_wrong_number_of_classes_names_the_shapes(tmp_path):
    path = save_weights(_model("vgg-a"), tmp_path / "a.safetensors")
    with pytest.raises(WeightsError, match=r"classifier.fc8.weight: file has \(7, 24\), model needs \(9, 24\)"):
        load_weights(_model("vgg-a", num_classes=9), path)


def test_garbage_and_missing_files(tmp_path):
    model = _model("vgg-a")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors: not a readable safetensors"):
        load_weights(model, bad)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(model, tmp_path / "absent.safetensors")
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo": torch.zeros(2)}, str(unknown))
    with pytest.raises(WeightsError, match="no known layout"):
        load_weights(model, unknown)


@pytest.mark.parametrize("layout", ["vggtk", "torchvision", "timm"])
def test_the_model_info_is_recorded_in_every_layout(tmp_path, layout):
    path = save_weights(_model("vgg-b"), tmp_path / "b.safetensors", layout=layout)
    options = {"num_classes": 7, "init": "glorot", **{k: v for k, v in SMALL.items() if k != "num_classes"}}
    assert read_model_info(path) == ModelInfo("vgg-b", options, 64)


def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = save_weights(_model("vgg-b"), tmp_path / "b.safetensors")
    before = path.read_bytes()

    def dies_half_way(out, header, parts):
        out.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # as if Ctrl-C came while the bytes were going out

    monkeypatch.setattr(weights_module, "_write_values", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_weights(_model("vgg-b", seed=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temporary file left behind
