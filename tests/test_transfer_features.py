"""The paper's transfer descriptors (Appendix B) and `vggtk extract-features`, on real images."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from cli_runner import input_error, vggtk
from realdata import fashion_sample, photo
import vgg_toolkit as vt
from vgg_toolkit import Manifest, TrainScale, VggtkError, create_model, model_info, set_model_info
from vgg_toolkit.plugins.transfer.linear_probe import fit_linear_svm, svm_objective
from vgg_toolkit.plugins.transfer.features import descriptor_scales, image_descriptors

SHARDS = Path(__file__).resolve().parents[1] / "shards"


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("vgg-a", num_classes=10, input_size=32, width=0.125, fc_dim=64, init="kaiming").eval()


def test_descriptors_are_unit_length_and_the_same_for_an_image_and_its_mirror_image(net):
    images = torch.stack([photo("chelsea", 64), photo("coffee", 64)])
    assert images.shape[-1] > 64  # landscape: the mirror image is a different input
    d = image_descriptors(net, images, scales=[64, 96])
    assert d.shape == (2, 64)
    assert torch.allclose(d.norm(dim=1), torch.ones(2), atol=1e-6)
    assert torch.allclose(image_descriptors(net, images.flip(-1), scales=[64, 96]), d, atol=1e-5)
    assert not torch.allclose(image_descriptors(net, images, scales=[64, 96], flip=False),
                              image_descriptors(net, images.flip(-1), scales=[64, 96], flip=False), atol=1e-3)


def test_at_the_input_size_the_dense_descriptor_is_the_linear_nets_fc7(net):
    images = fashion_sample(4)[0].float().expand(-1, 3, -1, -1) - 70.0  # 32x32, the net's input size
    with torch.no_grad():
        fc7 = net.forward_features(images, taps=("fc7",))["fc7"]  # Linear classifier, no flip
    dense = image_descriptors(net, images, scales=[32], flip=False)
    assert torch.allclose(dense, F.normalize(fc7, dim=1), atol=1e-5)
    assert not net.fully_conv  # the classifier's form is restored


def test_stacked_scales_hold_each_scales_descriptor(net):
    image = photo("coffee", 48)[None]
    both = image_descriptors(net, image, scales=[48, 80], combine="stack")
    assert both.shape == (1, 128)
    for i, q in enumerate([48, 80]):
        alone = image_descriptors(net, image, scales=[q])
        assert torch.allclose(F.normalize(both[:, 64 * i:64 * (i + 1)], dim=1), alone, atol=1e-5)
    with pytest.raises(VggtkError, match="unknown way to combine scales 'sum'"):
        image_descriptors(net, image, scales=[48], combine="sum")


def test_default_scales_are_the_papers_multi_scale_set_raised_to_the_input_size(net):
    untrained = model_info(net)
    try:
        set_model_info(net, untrained.trained_on(None, TrainScale(32, 40), None))
        assert descriptor_scales(net) == (32, 36, 40)
        set_model_info(net, untrained.trained_on(None, TrainScale(32, 32), None))
        assert descriptor_scales(net) == (32, 64)  # {S-32, S, S+32}: 0 -> 32 and 32 merge
        assert descriptor_scales(net, [16, 48]) == (32, 48)
    finally:
        set_model_info(net, untrained)


def read(path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("features"), f.get_tensor("labels"), f.metadata()


@pytest.fixture(scope="module")
def extracted(trained, shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    result = vggtk("extract-features", trained[0] / "best", "--data", shards, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_extract_features_writes_each_split_and_its_features_separate_the_classes(extracted, shards):
    out, output = extracted
    manifest = Manifest.load(shards)
    data = {}
    for split in ("train", "val", "test"):
        features, labels, meta = read(out / f"{split}.safetensors")
        assert features.shape == (manifest.samples(split), 256) and labels.shape == (manifest.samples(split),)
        keys = json.loads(meta["keys"])
        assert len(set(keys)) == len(keys) == len(labels)
        assert json.loads(meta["scales"]) == [[32, 36, 40]] and json.loads(meta["tap"]) == "fc7"
        assert f"{split}: {len(labels)} images x 256 features" in output
        data[split] = features, labels
    # A nearest-class-mean classifier on the training split's descriptors sorts the test images.
    features, labels = data["train"]
    means = F.normalize(torch.stack([features[labels == c].mean(0) for c in range(3)]), dim=1)
    test_features, test_labels = data["test"]
    accuracy = ((test_features @ means.T).argmax(1) == test_labels).float().mean().item()
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize("c", [1.0, 1000.0])
def test_the_linear_svm_reaches_its_optimum_on_real_features(extracted, c):
    features, labels, _ = read(extracted[0] / "train.safetensors")
    svm = fit_linear_svm(features, labels, 3, c=c)
    assert svm.converged and svm.gradient <= 1e-6
    # Checked independently: at the solution the objective's gradient vanishes (by autograd, in float64,
    # at the float32 weights it returns), and plain gradient-based L-BFGS from scratch ends no lower.
    w = svm.weight.double().requires_grad_()
    b = svm.bias.double().requires_grad_()
    ours = svm_objective(w, b, features, labels, c)
    ours.backward()
    assert torch.cat([w.grad.flatten(), b.grad]).norm() < 1e-3 * max(1.0, c)
    lw = torch.zeros_like(w, requires_grad=True)
    lb = torch.zeros_like(b, requires_grad=True)
    lbfgs = torch.optim.LBFGS([lw, lb], max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
                              history_size=50, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        value = svm_objective(lw, lb, features, labels, c)
        value.backward()
        return value

    lbfgs.step(closure)
    assert ours.item() <= svm_objective(lw, lb, features, labels, c).item() * (1 + 1e-6)
    assert (svm.predict(features) == labels).float().mean() > 0.95


def test_a_fit_that_stops_short_says_so(extracted):
    features, labels, _ = read(extracted[0] / "train.safetensors")
    svm = fit_linear_svm(features, labels, 3, c=1000.0, max_steps=1)
    assert not svm.converged and svm.newton_steps == 1 and svm.gradient > 1e-6
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(VggtkError, match="C must be a positive number"):
            fit_linear_svm(features, labels, 3, c=bad)


def test_linear_probe_picks_c_on_val_and_scores_the_test_split(extracted, tmp_path):
    out, _ = extracted
    result = vggtk("linear-probe", out)
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines() if line.startswith("C=")] == \
        ["C=0.1", "C=1", "C=10", "C=100", "C=1000"]
    accuracy = float(result.output.split("test accuracy")[1].split("%")[0])
    assert accuracy >= 90, result.output
    fixed = vggtk("linear-probe", out, "--c", "1", "--val", "")
    assert fixed.exit_code == 0 and "C=0.1" not in fixed.output and "linear SVM (C=1)" in fixed.output
    missing = vggtk("linear-probe", tmp_path)
    assert "train.safetensors: no such features file" in input_error(missing)


def test_two_checkpoints_are_stacked_and_bad_requests_are_named(trained, shards, tmp_path):
    run, _ = trained
    one = vggtk("extract-features", run / "best", "--data", shards, "--splits", "val", "--out", tmp_path / "one",
                "--scales", "32", "--no-flip")
    two = vggtk("extract-features", run / "best", run / "best", "--data", shards, "--splits", "val",
                "--out", tmp_path / "two", "--scales", "32", "--no-flip")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    single, _, _ = read(tmp_path / "one" / "val.safetensors")
    double, _, meta = read(tmp_path / "two" / "val.safetensors")
    assert torch.allclose(double, torch.cat([single, single], 1) / 2**0.5, atol=1e-6)
    assert len(json.loads(meta["checkpoints"])) == 2
    missing = vggtk("extract-features", run / "best", "--data", shards, "--splits", "holdout", "--out", tmp_path)
    assert "no split 'holdout'; this manifest has: train, val, test" in input_error(missing)
    tap = vggtk("extract-features", run / "best", "--data", shards, "--tap", "fc9", "--out", tmp_path)
    assert "--tap 'fc9': not a tap of" in input_error(tap)


def test_photos_of_many_sizes_are_described_one_at_a_time(tmp_path):
    """The localisation shards hold real photos of different sizes: no batch is padded, and each photo's
    row is what the protocol gives that photo alone."""
    from vgg_toolkit.data.loader import make_loader, normalize_on_device
    from vgg_toolkit.models.weights import save_weights

    shards = SHARDS / "localisation"
    torch.manual_seed(0)
    model = create_model("vgg-a", num_classes=5, input_size=32, width=0.125, fc_dim=64, init="kaiming")
    weights = save_weights(model, tmp_path / "net.safetensors")
    result = vggtk("extract-features", weights, "--data", shards, "--splits", "test", "--limit", 6,
                   "--scales", "64", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    features, labels, meta = read(tmp_path / "test.safetensors")
    assert features.shape == (6, 64)
    loader = make_loader(shards, "test", batch_size=1, augment="none", shuffle=False, drop_last=False)
    photos = [batch for _, batch in zip(range(6), loader)]
    assert len({tuple(b.images.shape[-2:]) for b in photos}) > 1  # really of different sizes
    assert json.loads(meta["keys"]) == [b.keys[0] for b in photos]
    for row, batch in zip(features, photos):
        x = normalize_on_device(batch.images, Manifest.load(shards))
        alone = image_descriptors(model, x, scales=[64])
        assert torch.allclose(row, alone[0], atol=1e-4)


def test_features_of_another_tasks_images_need_only_the_channels(trained, tmp_path):
    """The point of transfer features: a net trained on three garment classes describes the bundled
    ten-class Fashion-MNIST test images; only images of another channel count are refused."""
    run, _ = trained
    result = vggtk("extract-features", run / "best", "--data", SHARDS / "fashion-mnist", "--splits", "test",
                   "--limit", 20, "--scales", "32", "--out", tmp_path / "other")
    assert result.exit_code == 0, result.output
    features, labels, _ = read(tmp_path / "other" / "test.safetensors")
    assert features.shape == (20, 256) and int(labels.max()) > 2  # labels of the new task's ten classes
    photos = vggtk("extract-features", run / "best", "--data", SHARDS / "localisation", "--out", tmp_path / "p")
    assert "takes 1-channel images but" in input_error(photos)


def test_linear_probe_tells_nets_by_their_weights_not_their_paths(trained, shards, tmp_path, monkeypatch):
    """One net named by an absolute path for one split and a relative one for another is one net; another
    net put at the same path since is not."""
    run, _ = trained
    net = tmp_path / "net"
    shutil.copytree(run / "best", net)
    first = vggtk("extract-features", net, "--data", shards, "--splits", "train", "--out", tmp_path / "f")
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path)
    second = vggtk("extract-features", "net", "--data", shards, "--splits", "test", "--out", tmp_path / "f")
    assert second.exit_code == 0, second.output
    assert vggtk("linear-probe", tmp_path / "f", "--val", "", "--c", "1").exit_code == 0
    other = vt.create_model("vgg-a", **vt.model_info(vt.load_trained(net, say=None)).options)  # new random weights
    vt.set_model_info(other, vt.model_info(vt.load_trained(net, say=None)))
    vt.save_weights(other, net / "model.safetensors")
    again = vggtk("extract-features", net, "--data", shards, "--splits", "test", "--out", tmp_path / "f")
    assert again.exit_code == 0, again.output
    assert "weights_sha256" in input_error(vggtk("linear-probe", tmp_path / "f", "--val", "", "--c", "1"))


def test_a_net_without_named_taps_gives_its_pre_logits():
    """timm's fallback: the input of the last layer, pooled, flip-averaged and normalised as any tap."""
    from torch import nn

    from vgg_toolkit.plugins.transfer.features import PRE_LOGITS, image_descriptors

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    x = torch.randn(2, 1, 32, 32)
    got = image_descriptors(net, x, scales=[32], tap=PRE_LOGITS, flip=True)
    with torch.no_grad():
        pooled = [net[:4](v) for v in (x, x.flip(-1))]
    assert torch.allclose(got, F.normalize((pooled[0] + pooled[1]) / 2, dim=1), atol=1e-6)
    with pytest.raises(VggtkError, match="no forward_features"):
        image_descriptors(net, x, scales=[32], tap="fc7")
