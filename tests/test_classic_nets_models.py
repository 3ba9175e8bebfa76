"""The nets of the example plugin package examples/vggtk-classic-nets, installed by pip into a folder of
its own and reached only through vggtk's registry: their published sizes, small-input forms, auxiliary
outputs, fully-convolutional form and feature taps."""

import sys

import pytest
import torch
import torch.nn.functional as F

import vgg_toolkit as vt

NETS = ("alexnet", "zfnet", "googlenet", "resnet18", "resnet34", "resnet50")
PAPER_SIZE = {"alexnet": 227}  # the others: 224
# Small-image nets as the plugin's defaults build them, FC6/FC7 narrower still to keep the tests fast.
SMALL = {"num_classes": 10, "in_chans": 1, "input_size": 32, "width": 0.25}
SMALL_FC = {"alexnet": {"fc_dim": 32}, "zfnet": {"fc_dim": 32}}


@pytest.fixture
def plugin_on_path(classic_nets_site, monkeypatch):
    monkeypatch.syspath_prepend(str(classic_nets_site))
    yield
    for name in [m for m in sys.modules if m == "vggtk_classic_nets" or m.startswith("vggtk_classic_nets.")]:
        del sys.modules[name]


@pytest.fixture
def nets(plugin_on_path, host):
    """The plugin host, made after the package's folder is on sys.path so it finds the entry point."""
    return host


def small(name, **options):
    torch.manual_seed(0)
    return vt.create_model(name, **{**SMALL, **SMALL_FC.get(name, {}), **options})


def paper(name, **options):
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        return vt.create_model(name, input_size=PAPER_SIZE.get(name, 224), **options)


def first_conv(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_the_nets_come_from_the_installed_package_through_the_entry_point(nets):
    for name in NETS:
        entry = nets.registry("architectures").get(name)
        assert entry.plugin == "classic_nets" and entry.info["input_size"] == PAPER_SIZE.get(name, 224)
    assert nets.plugins["classic_nets"].distribution == "vggtk-classic-nets"
    assert vt.model_info(vt.create_model("inception-v1", **SMALL)).arch == "googlenet"


@pytest.mark.parametrize("name,parameters,gmacs", [
    ("resnet18", 11_689_512, 1.82), ("resnet34", 21_797_672, 3.67), ("resnet50", 25_557_032, 4.11)])
def test_resnets_have_the_published_parameters_and_cost(nets, name, parameters, gmacs):
    stats = vt.model_stats(paper(name), 224)
    assert stats.parameters == parameters
    # The published GMACs also count the additions of the shortcuts and BatchNorm; these count convs and FC.
    assert stats.gmacs == pytest.approx(gmacs, rel=0.01)


def test_alexnet_and_zfnet_parameters_one_tower(nets):
    # weights + biases: conv1 96*3*11*11 + 96 = 34,944; conv2 256*96*5*5 + 256 = 614,656;
    # conv3 384*256*9 + 384 = 885,120; conv4 384*384*9 + 384 = 1,327,488; conv5 256*384*9 + 256 = 884,992;
    # fc6 (256*6*6)*4096 + 4096 = 37,752,832; fc7 4096*4096 + 4096 = 16,781,312; fc8 4096*1000 + 1000 = 4,097,000
    assert vt.model_stats(paper("alexnet"), 227).parameters == 62_378_344
    # ZFNet: conv1 96*3*7*7 + 96 = 14,208 instead of 34,944; the rest the same
    assert vt.model_stats(paper("zfnet"), 224).parameters == 62_378_344 - 34_944 + 14_208


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_alexnet_and_zfnet_end_at_six_by_six_at_their_paper_size(nets, name):
    model = paper(name).eval()
    size = PAPER_SIZE.get(name, 224)
    pool5 = model.forward_features(torch.zeros(1, 3, size, size, device="meta"), taps=["pool5"])["pool5"]
    assert pool5.shape == (1, 256, 6, 6)
    assert model.output_stride == 32 and first_conv(model).stride == ((4, 4) if name == "alexnet" else (2, 2))
    if name == "zfnet":  # Figure 3 of the paper: 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6
        sides = []
        handles = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
                   for m in model.features if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d))]
        model(torch.zeros(1, 3, 224, 224, device="meta"))
        for h in handles:
            h.remove()
        assert sides == [110, 55, 26, 13, 13, 13, 13, 6]


# Table 1 of Szegedy et al.: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj, and the depth.
TABLE1 = {"3a": (64, 96, 128, 16, 32, 32, 256), "3b": (128, 128, 192, 32, 96, 64, 480),
          "4a": (192, 96, 208, 16, 48, 64, 512), "4b": (160, 112, 224, 24, 64, 64, 512),
          "4c": (128, 128, 256, 24, 64, 64, 512), "4d": (112, 144, 288, 32, 64, 64, 528),
          "4e": (256, 160, 320, 32, 128, 128, 832), "5a": (256, 160, 320, 32, 128, 128, 832),
          "5b": (384, 192, 384, 48, 128, 128, 1024)}


def test_googlenet_has_the_channels_of_table_1(nets):
    total, c_in = 0, 192
    for n1, r3, n3, r5, n5, proj, depth in TABLE1.values():
        assert n1 + n3 + n5 + proj == depth
        total += c_in * (n1 + r3 + r5 + proj) + r3 * n3 * 9 + r5 * n5 * 25 + (n1 + r3 + n3 + r5 + n5 + proj)
        c_in = depth
    stem = (3 * 64 * 49 + 64) + (64 * 64 + 64) + (64 * 192 * 9 + 192)
    main = stem + total + 1024 * 1000 + 1000
    aux = sum(c * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))
    assert vt.model_stats(paper("googlenet", aux_logits=False)).parameters == main
    assert vt.model_stats(paper("googlenet")).parameters == main + aux
    # The paper: "1.5 billion multiply-adds"; Table 1 counts 34M for conv1, whose 9,408 weights at 112x112 make 118M.
    assert vt.model_stats(paper("googlenet")).gmacs == pytest.approx(1.5 + (118 - 34) / 1000, abs=0.01)
    feats = paper("googlenet").eval().forward_features(torch.zeros(1, 3, 224, 224, device="meta"),
                                                       taps=["inception3", "inception4", "inception5", "pool"])
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "inception3": (1, 480, 28, 28), "inception4": (1, 832, 14, 14), "inception5": (1, 1024, 7, 7),
        "pool": (1, 1024)}


@pytest.mark.parametrize("name", NETS)
def test_each_net_runs_at_its_paper_size(nets, name):
    model = paper(name).eval()
    size = PAPER_SIZE.get(name, 224)
    assert model(torch.zeros(2, 3, size, size, device="meta")).shape == (2, 1000)
    assert model.output_stride == 32 and first_conv(model).stride[0] > 1


@pytest.mark.parametrize("name,stride", [("alexnet", 8), ("zfnet", 8), ("googlenet", 4), ("resnet18", 8),
                                         ("resnet34", 8), ("resnet50", 8)])
def test_each_net_trains_and_predicts_on_32_px_greyscale(nets, name, stride):
    model = small(name)
    assert first_conv(model).stride == (1, 1) and model.output_stride == stride
    x = torch.randn(2, 1, 32, 32)
    outputs = model.train()(x)
    main = outputs.main if isinstance(outputs, vt.AuxiliaryOutputs) else outputs
    assert main.shape == (2, 10)
    loss = F.cross_entropy(main, torch.tensor([1, 7]))
    if isinstance(outputs, vt.AuxiliaryOutputs):
        loss = loss + sum(F.cross_entropy(aux, torch.tensor([1, 7])) for aux in outputs.auxiliary)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.eval()(x).shape == (2, 10)
    assert small(name, in_chans=3).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_small_input_stems(nets):
    zf = small("zfnet")
    assert zf.features.conv2.stride == (1, 1) and paper("zfnet").features.conv2.stride == (2, 2)
    assert isinstance(small("resnet18").maxpool, torch.nn.Identity)
    assert isinstance(paper("resnet18").maxpool, torch.nn.MaxPool2d)
    stem = small("googlenet").stem
    layers = [m for m in stem.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d))]
    assert len(layers) == 1 and layers[0].kernel_size == (3, 3) and layers[0].out_channels == 48  # 192 x 0.25
    # 63 px still takes the small stem, 64 the paper's
    assert first_conv(small("alexnet", input_size=63)).stride == (1, 1)
    assert first_conv(small("alexnet", input_size=64)).stride == (4, 4)


def test_googlenet_returns_auxiliary_outputs_only_in_training(nets):
    model = small("googlenet")
    x, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 5])
    outputs = model.train()(x)
    assert isinstance(outputs, vt.AuxiliaryOutputs) and outputs.weights == (0.3, 0.3)
    assert len(outputs.auxiliary) == 2 and all(a.shape == (2, 10) for a in outputs.auxiliary)
    head = nets.registry("heads").get("classification").factory()
    by_hand = F.cross_entropy(outputs.main, y) + 0.3 * sum(F.cross_entropy(a, y) for a in outputs.auxiliary)
    assert torch.allclose(vt.task_loss(head, outputs, y), by_hand)
    assert isinstance(model.eval()(x), torch.Tensor)

    plain = small("googlenet", aux_logits=False)
    assert isinstance(plain.train()(x), torch.Tensor) and plain.aux is None
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NETS)
def test_fully_convolutional_form_averages_to_the_linear_scores(nets, name):
    model = small(name).eval()
    assert isinstance(model, vt.FullyConvolutional) and model.fully_conv is False
    x = torch.randn(2, 1, 32, 32)
    keys = list(model.state_dict())
    with torch.no_grad():
        linear = model(x)
        assert model.to_fully_conv() is model and model.fully_conv
        scores = model(x)
        bigger = model(torch.randn(2, 1, 48, 48))
    assert list(model.state_dict()) == keys
    assert scores.ndim == 4 and scores.shape[:2] == (2, 10)
    torch.testing.assert_close(scores.mean((2, 3)), linear, atol=1e-5, rtol=1e-5)
    assert bigger.shape[-1] > scores.shape[-1] and bigger.shape[-2] > scores.shape[-2]
    assert model.to_linear() is model and not model.fully_conv


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_alexnet_linear_form_needs_its_training_size(nets, name):
    model = small(name).eval()
    with pytest.raises(vt.VggtkError, match="to_fully_conv"):
        model(torch.randn(1, 1, 48, 48))
    model.to_fully_conv()
    with pytest.raises(ValueError, match="too small"):  # pool5 2x2, under FC6's 4x4 window
        model(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_global_pooling_nets_take_any_size_in_the_linear_form(nets, name):
    assert small(name).eval()(torch.randn(1, 1, 40, 40)).shape == (1, 10)


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_an_input_too_small_for_the_layout_is_a_clear_error(nets, name):
    with pytest.raises(vt.VggtkError, match=r"too small.*at least 12"):
        small(name, input_size=11)
    assert small(name, input_size=12).eval()(torch.randn(1, 1, 12, 12)).shape == (1, 10)


@pytest.mark.parametrize("options,message", [
    ({"width": 0.0}, "width must be positive"), ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"fc_dim": 0}, "fc_dim must be at least 1"), ({"width": "wide"}, "width: expected"),
    ({"fc_dims": 8}, "did you mean 'fc_dim'")])
def test_bad_options_are_clean_errors(nets, options, message):
    with pytest.raises(vt.VggtkError, match=message):
        small("alexnet", **options)


EXPECTED_TAPS = {  # at 32 px, width 0.25 (channels: the papers' x 0.25), FC6/FC7 of 32
    "alexnet": {"pool5": (2, 64, 4, 4), "fc6": (2, 32), "fc7": (2, 32)},
    "resnet18": {"layer1": (2, 16, 32, 32), "layer2": (2, 32, 16, 16), "layer3": (2, 64, 8, 8),
                 "layer4": (2, 128, 4, 4), "pool": (2, 128)},
    "resnet50": {"layer4": (2, 512, 4, 4), "pool": (2, 512)},
    "googlenet": {"inception3": (2, 120, 32, 32), "inception4": (2, 208, 16, 16), "inception5": (2, 256, 8, 8),
                  "pool": (2, 256)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TAPS))
def test_feature_taps(nets, name):
    model = small(name).eval()
    assert isinstance(model, vt.FeatureTaps)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x, taps=EXPECTED_TAPS[name])
        logits = model(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == EXPECTED_TAPS[name]
    # the last tap is exactly what the last layer reads
    last = model.classifier.fc8(feats["fc7"]) if name == "alexnet" else model.fc(feats["pool"])
    torch.testing.assert_close(last, logits)
    with pytest.raises(ValueError, match="unknown feature tap.*known: " + ", ".join(model.feature_taps)):
        model.forward_features(x, taps=["fc8"])


def test_alexnet_fc_taps_are_maps_in_the_fully_convolutional_form(nets):
    model = small("alexnet").eval().to_fully_conv()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 48, 48), taps=["fc6", "fc7"])
    assert feats["fc6"].shape == feats["fc7"].shape == (2, 32, 3, 3)


def test_training_defaults_for_small_images(nets):
    registry = nets.registry("architectures")
    scale = vt.TrainScale.parse(32)

    def facts(crop):
        return vt.DataFacts(classes=("a", "b"), channels=1, mean_rgb=(0.0, 0.0, 0.0), crop=crop, scale=scale)

    for name in NETS:
        recipe = registry.get(name).info["defaults"]
        expected = {"width": 0.25, **({"fc_dim": 256} if name in ("alexnet", "zfnet") else {})}
        assert recipe(facts(32)) == expected and recipe(facts(224)) == {}
