"""Weights written elsewhere, fed what they were trained on: a torchvision-layout file (seeded random weights,
non-zero biases) through predict, eval and extract-features equals torchvision's own preprocessing
reimplemented in the test (and fails that tolerance with the data-mean normalisation vggtk used for every
net before records); its architecture comes from the tensors; a file that fits no configuration is one line;
the paper's layer names are taps."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vgg_toolkit as vt
from cli_runner import input_error, vggtk
from pretrained_refs import (at_preset_geometry, real_photos, torchvision_dense_fc7, torchvision_logits,
                             torchvision_preset, torchvision_state)
from vgg_toolkit.models.weights import read_model_info

EXACT = 1e-4  # same pixels, same arithmetic up to float32 rounding
RESAMPLED = 0.02  # PIL's uint8 resize against the evaluators' float one, on natural photos (seen: <= 0.011)
# ImageNet ids of two classes, for data named like the net's own classes
TABBY, SPACE_SHUTTLE = "n02123045", "n04266014"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A torchvision-layout VGG-A (narrow, 1000 classes) as a .pth, the seven photos as they are and at the
    preset's geometry, and a shard set of the latter in two ImageNet classes."""
    root = tmp_path_factory.mktemp("pretrained")
    state = torchvision_state(seed=1)
    torch.save(state, root / "vgg11.pth")
    photos = real_photos()
    natural, exact = root / "natural", root / "exact"
    for folder in (natural, exact):
        folder.mkdir()
    for i, (name, photo) in enumerate(photos.items()):
        Image.fromarray(photo).save(natural / f"{name}.png")
        Image.fromarray(at_preset_geometry(photo)).save(exact / f"{name}.png")
        classed = root / "src" / (TABBY if i % 2 else SPACE_SHUTTLE)
        classed.mkdir(parents=True, exist_ok=True)
        Image.fromarray(at_preset_geometry(photo)).save(classed / f"{name}.png")
    made = vggtk("shards", "create", root / "src", root / "shards", "--splits", "test=1")
    assert made.exit_code == 0, made.output
    return root, state


def _reference(state, photo: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return torchvision_logits(state, torchvision_preset(photo)[None]).softmax(1)[0]


def _old_normalisation(photo: np.ndarray, model) -> torch.Tensor:
    """What every command fed every net before records: the data's mean colour, scaled by 1/255."""
    x = vt.Preprocessing.vggtk([125.0, 120.0, 105.0]).apply(torch.from_numpy(photo.copy()).permute(2, 0, 1)[None])
    with torch.no_grad():
        return vt.get_evaluator("center")(model, x)[0]


def _predicted(root, folder, *args):
    out = root / f"{folder}.json"
    result = vggtk("predict", root / "vgg11.pth", root / folder, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return {re.sub(r"\.png$", "", p["image"].rsplit("/", 1)[-1]): p for p in json.loads(out.read_text())["predictions"]}, \
        result


def test_predict_feeds_a_torchvision_file_as_torchvision_does(world):
    root, state = world
    rows, result = _predicted(root, "exact")
    assert "torchvision layout, vgg-a" in result.stderr and "assumed torchvision" in result.stderr
    model = vt.load_trained(root / "vgg11.pth", say=None)
    for name, photo in real_photos().items():
        photo = at_preset_geometry(photo)
        ref = _reference(state, photo)
        top5 = rows[name]["top5"]
        assert [t["index"] for t in top5] == ref.topk(5).indices.tolist()
        assert max(abs(t["probability"] - float(ref[t["index"]])) for t in top5) < EXACT
        assert top5[0]["class"] == vt.imagenet_classes()[top5[0]["index"]]  # a wnid, never tensor(N)
        assert top5[0]["label"] == vt.class_label(top5[0]["class"])
        assert (ref - _old_normalisation(photo, model)).abs().max() > 100 * EXACT  # so the test can fail


def test_on_natural_photos_only_the_resampling_differs(world):
    root, state = world
    rows, _ = _predicted(root, "natural")
    model = vt.load_trained(root / "vgg11.pth", say=None)
    for name, photo in real_photos().items():
        ref = _reference(state, photo)
        got = torch.zeros(1000)
        for t in rows[name]["top5"]:
            got[t["index"]] = t["probability"]
        top = ref.topk(5).indices
        assert (ref[top] - got[top]).abs().max() < RESAMPLED or set(top.tolist()) != {t["index"] for t in rows[name]["top5"]}
        assert (ref - _old_normalisation(photo, model)).abs().max() > RESAMPLED


def test_convert_reads_the_architecture_from_the_tensors(world, tmp_path):
    root, _ = world
    converted = tmp_path / "vgg11.safetensors"
    result = vggtk("convert", root / "vgg11.pth", converted)
    assert result.exit_code == 0, result.output
    info = read_model_info(converted)
    assert (info.arch, info.options["width"], info.options["fc_dim"], info.num_outputs) == ("vgg-a", 0.25, 64, 1000)
    assert info.preprocessing == vt.Preprocessing.torchvision() and info.classes == vt.imagenet_classes()
    assert str(info.train_scale) == "256" and info.input_size == 224
    direct = vt.load_trained(root / "vgg11.pth", say=None)
    again = vt.load_trained(converted, say=None)
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), again.state_dict().values()))
    caffe = tmp_path / "as-caffe.safetensors"
    assert vggtk("convert", root / "vgg11.pth", caffe, "--preprocess", "caffe").exit_code == 0
    assert read_model_info(caffe).preprocessing == vt.Preprocessing.caffe()


def test_eval_maps_imagenet_classes_by_name_and_feeds_the_nets_preprocessing(world):
    root, state = world
    model = vt.load_trained(root / "vgg11.pth", say=None)
    manifest = vt.Manifest.load(root / "shards")
    assert sorted(manifest.classes) == sorted([TABBY, SPACE_SHUTTLE])
    result = vt.evaluate_on_shards([model], manifest, "test", ["center"], progress=False)[0]
    columns = [vt.imagenet_classes().index(c) for c in manifest.classes]
    keys = [b.keys for b in vt.read_split(manifest, "test", batch_size=1)]
    images = {p.stem: np.asarray(Image.open(p)) for p in (root / "src").rglob("*.png")}
    for (key,), got in zip(keys, result.posteriors):
        ref = _reference(state, images[key.split("_", 1)[1]])[columns]  # keys are CLASS_STEM
        assert (got - ref / ref.sum()).abs().max() < EXACT
    said = vggtk("eval", root / "vgg11.pth", "--data", root / "shards", "--methods", "center", "--out",
                 root / "e.json")
    assert said.exit_code == 0, said.output
    assert "scoring the data's 2 classes among the net's 1000, matched by name" in said.output.replace("\n", " ")


def test_extract_features_feeds_the_nets_preprocessing(world, tmp_path):
    root, state = world
    result = vggtk("extract-features", root / "vgg11.pth", "--data", root / "shards", "--scales", 256,
                   "--no-flip", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    saved = load_file(str(tmp_path / "f" / "test.safetensors"))["features"]
    manifest = vt.Manifest.load(root / "shards")
    order = [k.split("_", 1)[1] for b in vt.read_split(manifest, "test", batch_size=1) for k in b.keys]
    by_name = {p.stem: np.asarray(Image.open(p)) for p in (root / "src").rglob("*.png")}
    assert len(saved) == len(order) == len(by_name) == 7
    for row, key in zip(saved, order):
        x = torch.from_numpy(by_name[key].copy()).permute(2, 0, 1).float() / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        h, w = x.shape[-2:]  # dense evaluation trims to a multiple of 32, centred
        th, tw = h - h % 32, w - w % 32
        x = x[:, (h - th) // 2:(h - th) // 2 + th, (w - tw) // 2:(w - tw) // 2 + tw]
        with torch.no_grad():
            ref = torchvision_dense_fc7(state, x[None])[0]
        assert (row - ref).abs().max() < EXACT


def test_a_torchvision_file_that_fits_no_configuration_is_one_line(tmp_path):
    odd = torchvision_state(seed=2, config=[16, "M", 32, "M", 64, 64, 64, 64, 64, "M", 128, 128, "M", 128, 128, "M"])
    torch.save(odd, tmp_path / "odd.pth")
    message = input_error(vggtk("convert", tmp_path / "odd.pth", tmp_path / "o.safetensors"))
    assert "odd.pth: 11 conv layers" in message and "fit no configuration" in message
    assert not (tmp_path / "o.safetensors").exists()


def test_the_papers_layer_names_are_taps_of_every_configuration():
    for name, convs in (("vgg-a", 8), ("vgg-b", 10), ("vgg-c", 13), ("vgg-d", 13), ("vgg-e", 16)):
        model = vt.create_model(name, num_classes=3, width=1 / 16, fc_dim=8, input_size=32).eval()
        taps = model.feature_taps
        assert sum(t.startswith("conv") for t in taps) == convs and {f"pool{i}" for i in range(1, 6)} <= set(taps)
    model = vt.create_model("vgg-d", num_classes=3, width=1 / 16, fc_dim=8, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x, taps=("conv3_3", "relu3_3", "pool3", "block3", "conv1_1"))
        block = model.features.block1.conv1(x)
    assert torch.equal(out["relu3_3"], out["conv3_3"].relu())  # conv taps are before the ReLU
    assert out["conv1_1"].min() < 0 and torch.equal(out["conv1_1"], block)
    assert torch.equal(out["pool3"], out["block3"]) and out["pool3"].shape[-1] == 4
    with pytest.raises(vt.VggtkError, match="unknown feature tap.*conv3_4"):
        model.forward_features(x, taps=("conv3_4",))


def test_fine_tuning_keeps_the_starting_nets_preprocessing_unless_told(shards, tmp_path):
    """A torchvision-layout greyscale net (10 classes) fine-tuned on the tiny 3-class set: the run records
    torchvision's preprocessing, as its net expects; --preprocess vggtk gives the data's mean colour."""
    net = vt.create_model("vgg-a", num_classes=10, in_chans=1, width=0.25, fc_dim=256, input_size=32)
    torch.save(net.export_state_dict("torchvision"), tmp_path / "theirs.pth")
    common = ["--data", shards, "--init-from", tmp_path / "theirs.pth", "--epochs", 1, "--batch-size", 16,
              "--width", 0.25, "--fc-dim", 256]
    kept = vggtk("train", *common, "--run-dir", tmp_path / "kept")
    assert kept.exit_code == 0, kept.output
    assert read_model_info(tmp_path / "kept" / "best" / "model.safetensors").preprocessing == \
        vt.Preprocessing.torchvision()
    told = vggtk("train", *common, "--run-dir", tmp_path / "told", "--preprocess", "vggtk")
    assert told.exit_code == 0, told.output
    prep = read_model_info(tmp_path / "told" / "best" / "model.safetensors").preprocessing
    assert prep.family == "vggtk" and prep.mean == tuple(vt.Manifest.load(shards).stats.mean_rgb_255)


def test_a_vggtk_state_dict_without_its_record_is_fed_the_datas_mean(trained, shards, tmp_path):
    """A bare state_dict of a net trained here (its record lost): fed as vggtk feeds its nets, it scores
    as the checkpoint does; taken for torchvision's family it would not."""
    from safetensors.torch import save_file

    best = trained[0] / "best"
    save_file(load_file(str(best / "model.safetensors")), str(tmp_path / "bare.safetensors"))
    runs = {}
    for name, path in (("recorded", best), ("bare", tmp_path / "bare.safetensors")):
        result = vggtk("eval", path, "--data", shards, "--methods", "center", "--scales", 36,  # S is not in tensors
                       "--out", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"][0]["top1_err_pct"]
        if name == "bare":
            assert "vggtk layout" in result.stderr and "the data's mean colour" in result.stderr
    assert runs["bare"] == runs["recorded"]


def test_nets_that_read_outputs_by_index_need_the_datas_classes_in_its_order(world):
    """Localisation picks a box by class index: there a superset of the data's classes is refused, where
    classification eval maps them by name."""
    root, _ = world
    model = vt.load_trained(root / "vgg11.pth", say=None)
    manifest = vt.Manifest.load(root / "shards")
    with pytest.raises(vt.VggtkError, match="must be the data's, in its order"):
        vt.check_fits_data([model], manifest, ["vgg11.pth"])
    (feed,) = vt.feeds_for([model], manifest, ["vgg11.pth"])
    assert feed.columns == tuple(vt.imagenet_classes().index(c) for c in manifest.classes)


def test_a_net_whose_outputs_overflow_is_an_error_not_a_table(world, tmp_path):
    root, state = world
    broken = {**state, "classifier.6.weight": state["classifier.6.weight"] * 1e38}
    torch.save(broken, tmp_path / "overflow.pth")
    message = input_error(vggtk("eval", tmp_path / "overflow.pth", "--data", root / "shards", "--methods", "center"))
    assert "gives NaN or infinite posteriors" in message
