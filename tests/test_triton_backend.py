"""The `triton` conv backend plugin: which conv+ReLU pairs it swaps, and that a swapped model keeps
its state_dict, its parameters and its logits. Without a GPU the swap runs under TRITON_INTERPRET=1
(set by conftest), the one case where the plugin allows 'triton' off CUDA."""

import copy
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from vgg_toolkit.errors import VggtkError
from vgg_toolkit import create_model, model_info, prepare_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_vgg(name="vgg-c", **kwargs):
    """The real network at 1/16 width and 32x32 input: the interpreter runs it in seconds."""
    torch.manual_seed(0)
    return create_model(name, num_classes=10, width=1 / 16, fc_dim=16, input_size=32, init="kaiming", **kwargs)


def fused_names(model):
    from vgg_toolkit.kernels.fused_conv import FusedConv2dReLU

    return [name for name, m in model.named_modules() if isinstance(m, FusedConv2dReLU)]


def test_plugin_is_a_builtin_with_the_prepare_hook(host):
    assert host.plugins["triton_backend"].builtin
    impls = host.pm.hook.vggtk_prepare_model.get_hookimpls()
    assert "triton_backend" in [impl.plugin_name for impl in impls]


def test_swap_keeps_state_dict_parameters_logits_and_gradients(host):
    model = tiny_vgg().eval()  # config C: ten 3x3 convs and three 1x1 convs
    plain = copy.deepcopy(model).to(DEVICE)
    keys, params = list(model.state_dict()), dict(model.named_parameters())
    prepare_model(model, DEVICE, {"conv_backend": "triton"})

    convs = [f"features.block{b}.conv{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)]
    assert fused_names(model) == model_info(model).runtime["fused_convs"] == convs
    assert model.features.block3.conv3.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.ReLU) for m in model.features.modules())
    assert list(model.state_dict()) == keys
    assert all(p is params[name] for name, p in model.named_parameters())

    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    logits, expected = model(x), plain(x)
    scale = expected.abs().max()
    assert (logits - expected).abs().max() <= 1e-4 * scale
    logits.square().sum().backward()
    expected.square().sum().backward()
    plain_params = dict(plain.named_parameters())
    for name in ("features.block1.conv1.weight", "features.block3.conv3.weight", "features.block5.conv3.bias"):
        ours, theirs = params[name].grad, plain_params[name].grad
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max(), name


def test_swap_rules_on_any_module_tree(host):
    class MyConv(nn.Conv2d):  # a subclass may compute something else: not fused
        pass

    hooked = nn.Conv2d(4, 4, 3, padding=1)
    hooked.register_forward_hook(lambda *args: None)  # a hook would silently stop firing: not fused
    net = nn.Sequential(OrderedDict(
        first=nn.Conv2d(3, 4, 3, padding=1), first_relu=nn.ReLU(),
        inner=nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True),
                            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU()),
        strided=nn.Conv2d(4, 4, 3, stride=2, padding=1), strided_relu=nn.ReLU(),
        five=nn.Conv2d(4, 4, 5, padding=2), five_relu=nn.ReLU(),
        grouped=nn.Conv2d(4, 4, 3, padding=1, groups=2), grouped_relu=nn.ReLU(),
        sub=MyConv(4, 4, 3, padding=1), sub_relu=nn.ReLU(),
        hooked=hooked, hooked_relu=nn.ReLU(),
        normed=nn.Conv2d(4, 4, 3, padding=1), bn=nn.BatchNorm2d(4), bn_relu=nn.ReLU(),
        last=nn.Conv2d(4, 2, 3, padding=1),
    )).eval()
    x = torch.randn(1, 3, 7, 9)
    expected = net(x)
    prepare_model(net, DEVICE, {"conv_backend": "triton"})
    assert fused_names(net) == ["first", "inner.0", "inner.2"]
    assert isinstance(net.first_relu, nn.Identity) and isinstance(net.strided_relu, nn.ReLU)
    assert net.inner[2].bias is None
    out = net(x.to(DEVICE))
    assert (out - expected.to(DEVICE)).abs().max() <= 1e-4 * expected.abs().max()
    prepare_model(net, DEVICE, {"conv_backend": "triton"})  # nothing left to fuse, nothing fused twice
    assert fused_names(net) == ["first", "inner.0", "inner.2"]


def test_conv_followed_by_batchnorm_is_left_alone(host):
    model = tiny_vgg("vgg-d", batch_norm=True)
    keys = list(model.state_dict())
    prepare_model(model, DEVICE, {"conv_backend": "triton"})
    assert model_info(model).runtime["fused_convs"] == [] and fused_names(model) == []
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_torch_and_auto_leave_a_cpu_model_alone(host, backend):
    model = tiny_vgg()
    prepare_model(model, "cpu", {"conv_backend": backend})
    assert "fused_convs" not in model_info(model).runtime
    assert sum(isinstance(m, nn.ReLU) for m in model.features.modules()) == 13


def test_triton_on_cpu_without_interpreter_is_an_error(host, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(VggtkError, match="'triton' needs a CUDA GPU.*use --conv-backend torch or auto"):
        prepare_model(tiny_vgg(), "cpu", {"conv_backend": "triton"})


def test_unknown_backend_is_an_error_listing_the_choices(host):
    with pytest.raises(VggtkError, match="conv_backend: 'cudnn' is not one of torch, triton, auto"):
        prepare_model(tiny_vgg(), "cpu", {"conv_backend": "cudnn"})


def test_loading_plugins_and_preparing_on_cpu_import_no_triton():
    """The plugin imports Triton and the kernels only to swap, so loading stays cheap and
    TRITON_INTERPRET is read when the kernels are first defined."""
    code = (
        "import sys\n"
        "from vgg_toolkit import create_model, model_info, prepare_model\n"
        "model = create_model('vgg-a', width=1 / 16, fc_dim=16, input_size=32)\n"
        "prepare_model(model, 'cpu', {'conv_backend': 'auto'})\n"
        "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith('vgg_toolkit.kernels.')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
