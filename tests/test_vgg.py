"""The six configurations of Table 1, exercised through the registry itself."""

import pytest
import torch

from vgg_toolkit import VggtkError, create_model, list_models, model_info
from vgg_toolkit.models.stats import model_stats

PAPER_PARAMETERS = {  # Table 2, exact counts with 1000 classes
    "vgg-a": 132_863_336, "vgg-a-lrn": 132_863_336, "vgg-b": 133_047_848,
    "vgg-c": 133_638_952, "vgg-d": 138_357_544, "vgg-e": 143_667_240,
}
WEIGHT_LAYERS = {"vgg-a": 11, "vgg-a-lrn": 11, "vgg-b": 13, "vgg-c": 16, "vgg-d": 16, "vgg-e": 19}
TINY = dict(num_classes=10, width=1 / 16, fc_dim=32, input_size=32)


def test_registry_holds_the_six_configs():
    assert set(PAPER_PARAMETERS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_parameter_count_and_depth_match_the_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    stats = model_stats(model)
    assert stats.parameters == PAPER_PARAMETERS[name]
    assert stats.weight_layers == WEIGHT_LAYERS[name]


@pytest.mark.parametrize("alias,name", [("vgg11", "vgg-a"), ("vgg13", "vgg-b"), ("vgg16", "vgg-d"), ("VGG19", "vgg-e")])
def test_aliases(alias, name):
    with torch.device("meta"):
        assert model_info(create_model(alias)).arch == name


def test_forward_cost_matches_the_paper():
    # The paper quotes about 7.6, 11.3, 15.5 and 19.6 GMACs at 224.
    for name, gmacs in [("vgg-a", 7.6), ("vgg-b", 11.3), ("vgg-d", 15.5), ("vgg-e", 19.6)]:
        with torch.device("meta"):
            model = create_model(name)
        assert model_stats(model).gmacs == pytest.approx(gmacs, abs=0.06)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_forward_and_backward_on_tiny_inputs(name, batch_norm):
    torch.manual_seed(0)
    model = create_model(name, batch_norm=batch_norm, init="glorot", **TINY)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_lrn_only_in_a_lrn():
    lrn = create_model("vgg-a-lrn", **TINY)
    plain = create_model("vgg-a", **TINY)
    assert isinstance(lrn.features.block1.lrn, torch.nn.LocalResponseNorm)
    assert lrn.features.block1.lrn.size == 5 and lrn.features.block1.lrn.k == 2.0
    assert not any(isinstance(m, torch.nn.LocalResponseNorm) for m in plain.modules())


def test_config_c_has_three_1x1_convs():
    model = create_model("vgg-c", **TINY)
    ones = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert ones == ["features.block3.conv3", "features.block4.conv3", "features.block5.conv3"]


def test_in_chans_and_width():
    model = create_model("vgg-d", in_chans=1, width=0.25, fc_dim=64, input_size=32, num_classes=10)
    assert model.features.block1.conv1.weight.shape == (16, 1, 3, 3)
    assert model.features.block5.conv3.weight.shape == (128, 128, 3, 3)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("init,std", [("paper", 0.01), ("glorot", None)])
def test_initialisation(init, std):
    torch.manual_seed(0)
    model = create_model("vgg-a", init=init, width=0.5, fc_dim=256, input_size=64)
    w = model.features.block4.conv2.weight  # 256 -> 256 channels at width 0.5
    assert all((m.bias == 0).all() for m in model.modules() if hasattr(m, "bias") and m.bias is not None)
    if std is not None:
        assert w.std().item() == pytest.approx(std, rel=0.02)
    else:  # Glorot uniform: bound sqrt(6 / (fan_in + fan_out))
        bound = (6 / (2 * 256 * 9)) ** 0.5
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_linear_and_fully_conv_classifiers_agree_at_the_training_size(name):
    torch.manual_seed(0)
    model = create_model(name, init="glorot", **{**TINY, "input_size": 64}).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model.state_dict()
    linear = model(x)
    dense = model.to_fully_conv()(x)
    assert dense.shape == (2, 10, 1, 1)
    torch.testing.assert_close(dense.flatten(1), linear, rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == before.keys()


def test_fully_conv_gives_a_class_score_map_on_larger_inputs():
    torch.manual_seed(0)
    model = create_model("vgg-a", init="glorot", **{**TINY, "input_size": 64}).eval().to_fully_conv()
    x = torch.randn(1, 3, 96, 96)
    scores = model(x)
    assert scores.shape == (1, 10, 2, 2)  # pool5 is 3x3, FC6 is a 2x2 conv
    pool5 = model.forward_features(x, taps=["block5"])["block5"]
    model.to_linear()
    for i in range(2):
        for j in range(2):
            window = pool5[:, :, i:i + 2, j:j + 2]
            torch.testing.assert_close(model.classifier(window), scores[:, :, i, j], rtol=1e-5, atol=1e-5)


def test_linear_classifier_refuses_the_wrong_size_with_a_hint():
    model = create_model("vgg-a", **TINY).eval()
    with pytest.raises(VggtkError, match="to_fully_conv"):
        model(torch.randn(1, 3, 64, 64))


def test_feature_taps():
    torch.manual_seed(0)
    model = create_model("vgg-d", init="glorot", **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    taps = model.forward_features(x, taps=("block1", "block3", "fc6", "fc7", "logits"))
    assert taps["block1"].shape == (2, 4, 16, 16)
    assert taps["block3"].shape == (2, 16, 4, 4)
    assert taps["fc6"].shape == (2, 32) and taps["fc7"].shape == (2, 32)
    assert (taps["fc7"] >= 0).all()  # after ReLU
    torch.testing.assert_close(taps["logits"], model(x))
    torch.testing.assert_close(taps["logits"], model.classifier.fc8(taps["fc7"]))
    with pytest.raises(VggtkError, match="known: block1"):
        model.forward_features(x, taps=["conv5_4"])  # D has three convs in block 5


def test_bad_arguments_are_clear_errors():
    with pytest.raises(VggtkError, match="multiple of 32"):
        create_model("vgg-a", input_size=100)
    with pytest.raises(VggtkError, match="unknown init"):
        create_model("vgg-a", init="xavier", **TINY)


def test_receptive_field():
    with torch.device("meta"):
        assert create_model("vgg-d").receptive_field() == 212
        assert create_model("vgg-e").receptive_field() == 268
