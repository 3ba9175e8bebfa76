"""VGG as a loss: LPIPS-VGG against a reference written here from the published description (Zhang et al.
2018 and the reference implementation's documented steps), content and style losses against hand
computation, and the paper's layer names against the modules they name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vgg_toolkit as vt
from lpips_refs import IMAGENET_MEAN, IMAGENET_STD, reference_lpips, reference_taps, unit, write_lpips_files
from pretrained_refs import real_photos

@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lpips")
    return (root, *write_lpips_files(root))


def photo_pair(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two real photos and a distorted copy of each, in [0, 1]."""
    photos = real_photos()
    a = torch.stack([torch.from_numpy(np.array(Image.fromarray(photos[n]).resize((size, size), Image.BILINEAR)))
                     .permute(2, 0, 1).float() / 255 for n in ("astronaut", "coffee")])
    g = torch.Generator().manual_seed(2)
    b = (a + 0.08 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    return a, b


def test_lpips_equals_the_reference_for_both_input_ranges_and_its_input_gradient(lpips_files):
    root, sd, heads = lpips_files
    metric = vt.LPIPS(vt.load_trained(root / "vgg16.pth", say=None), root / "vgg.pth")
    a, b = photo_pair()
    want = reference_lpips(sd, heads, 2 * a - 1, 2 * b - 1)
    assert torch.allclose(metric(2 * a - 1, 2 * b - 1), want, rtol=1e-5, atol=1e-7)
    assert torch.allclose(metric(a, b, normalize=True), want, rtol=1e-5, atol=1e-7)
    assert (want > 0).all() and float(metric(a, a, normalize=True).abs().max()) == 0.0
    distances, per_layer = metric(a, b, normalize=True, per_layer=True)
    assert list(per_layer) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"]
    assert torch.allclose(sum(per_layer.values()), distances)

    x_ours = (2 * a - 1).requires_grad_(True)
    x_ref = (2 * a - 1).requires_grad_(True)
    metric(x_ours, 2 * b - 1).sum().backward()
    reference_lpips(sd, heads, x_ref, 2 * b - 1).sum().backward()
    assert torch.isfinite(x_ours.grad).all() and float(x_ours.grad.abs().max()) > 0
    assert torch.allclose(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-6 * float(x_ref.grad.abs().max()))
    assert all(p.grad is None for p in metric.parameters())  # the trunk is frozen


def test_lpips_refuses_heads_of_the_wrong_shape_a_trunk_that_is_not_vgg16_and_pickled_code(lpips_files, tmp_path):
    root, _, heads = lpips_files
    trunk = vt.load_trained(root / "vgg16.pth", say=None)
    bad = {f"lin{i}.model.1.weight": h for i, h in enumerate(heads)}
    bad["lin2.model.1.weight"] = torch.ones(1, 128, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(vt.VggtkError, match=r"bad.pth: lin2.model.1.weight has shape \(1, 128, 1, 1\).*\(1, 256, 1, 1\)"):
        vt.LPIPS(trunk, tmp_path / "bad.pth")
    torch.save({"something": torch.ones(3)}, tmp_path / "other.pth")
    with pytest.raises(vt.VggtkError, match="other.pth: no lin0.model.1.weight"):
        vt.LPIPS(trunk, tmp_path / "other.pth")

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    torch.save({"lin0.model.1.weight": Payload()}, tmp_path / "code.pth")
    with pytest.raises(vt.VggtkError, match="code.pth: not a readable LPIPS heads file"):
        vt.LPIPS(trunk, tmp_path / "code.pth")
    with pytest.raises(vt.VggtkError, match="trunk is VGG16"):
        vt.LPIPS(vt.create_model("vgg-a", num_classes=10, input_size=32, width=0.25, fc_dim=16), root / "vgg.pth")


def test_lpips_feeds_a_trunk_without_a_record_as_the_reference_and_a_caffe_trunk_its_own_input(lpips_files):
    root, sd, heads = lpips_files
    a, b = photo_pair(32)
    bare = vt.create_model("vgg-d", num_classes=10, fc_dim=32)
    trunk = vt.load_trained(root / "vgg16.pth", say=None)
    bare.load_state_dict(trunk.state_dict())
    assert vt.model_info(bare).preprocessing is None
    want = reference_lpips(sd, heads, 2 * a - 1, 2 * b - 1)
    assert torch.allclose(vt.LPIPS(bare, heads)(a, b, normalize=True), want, rtol=1e-5, atol=1e-7)
    # Recorded as Caffe's: BGR 0-255 minus the mean pixel, not the scaling layer (which gives other numbers).
    caffe = vt.LPIPS(vt.load_trained(root / "vgg16.pth", assume=vt.parse_preprocess("caffe"), say=None), heads)
    mean_bgr = torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    fa, fb = (reference_taps(sd, (255 * x).flip(1) - mean_bgr) for x in (a, b))
    by_hand = sum(F.conv2d((unit(u) - unit(v)) ** 2, h).mean([2, 3]) for u, v, h in zip(fa, fb, heads)).flatten()
    got = caffe(a, b, normalize=True)
    assert torch.allclose(got, by_hand, rtol=1e-5, atol=1e-7) and not torch.allclose(got, want, rtol=1e-2)


def test_features_take_any_input_range_apply_the_record_and_pass_gradients_to_the_input(lpips_files):
    root, sd, _ = lpips_files
    trunk = vt.load_trained(root / "vgg16.pth", say=None)
    assert vt.model_info(trunk).preprocessing.family == "torchvision"
    a, _ = photo_pair(32)
    by_range = {r: vt.VGGFeatures(trunk, ["relu2_2", "pool3"], input_range=r) for r in ("0-1", "-1-1", "0-255")}
    got = {r: f(x)["relu2_2"] for (r, f), x in zip(by_range.items(), (a, 2 * a - 1, 255 * a))}
    # torchvision's record: (x - mean) / std on 0-1 pixels; relu2_2 ends the reference's second slice.
    x = reference_taps(sd, (a - IMAGENET_MEAN) / IMAGENET_STD)[1]
    for r in got:
        assert torch.allclose(got[r], x, rtol=1e-4, atol=1e-5), r
    image = a.clone().requires_grad_(True)
    by_range["0-1"](image)["pool3"].sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in trunk.parameters()) and not trunk.training
    with pytest.raises(vt.VggtkError, match="the net takes 3-channel images, got 1 channels"):
        by_range["0-1"](a[:, :1])
    with pytest.raises(vt.VggtkError, match="unknown tap.*relu3_4"):
        vt.VGGFeatures(trunk, ["relu3_4"])


@pytest.mark.parametrize("arch", ["vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e"])
def test_each_paper_layer_name_is_the_module_it_names(arch):
    """``reluB_K`` is the n-th ReLU and ``convB_K`` the n-th conv in the order the paper lists them: for D,
    relu3_3 is the 7th ReLU."""
    torch.manual_seed(0)
    model = vt.create_model(arch, num_classes=10, input_size=32, width=0.25, fc_dim=16).eval()
    seen = {"relu": [], "conv": []}
    hooks = [m.register_forward_hook(lambda m, i, o, kind=kind: seen[kind].append(o.detach().clone()))
             for kind, cls in (("relu", torch.nn.ReLU), ("conv", torch.nn.Conv2d))
             for m in model.features.modules() if isinstance(m, cls)]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.features(x)
    for h in hooks:
        h.remove()
    names = [t for t in model.feature_taps if t[:4] in ("relu", "conv") and "_" in t]
    relus, convs = [t for t in names if t.startswith("relu")], [t for t in names if t.startswith("conv")]
    assert len(relus) == len(seen["relu"]) == len(convs) == len(seen["conv"]) == {
        "vgg-a": 8, "vgg-a-lrn": 8, "vgg-b": 10, "vgg-c": 13, "vgg-d": 13, "vgg-e": 16}[arch]
    with torch.no_grad():
        taps = model.forward_features(x, names)
    for i, name in enumerate(relus):
        assert torch.equal(taps[name], seen["relu"][i]), name
    for i, name in enumerate(convs):
        assert torch.equal(taps[name], seen["conv"][i]), name
    if arch == "vgg-d":
        assert relus.index("relu3_3") == 6


def test_the_gram_matrix_and_the_losses_on_hand_worked_tensors():
    x = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # N=1, C=2, H=W=2
    # F = [[1, 2, 0, -1], [3, 0, 1, 1]]: F F^T = [[6, 2], [2, 11]], divided by C H W = 8.
    assert torch.equal(vt.gram(x), torch.tensor([[[6.0, 2.0], [2.0, 11.0]]]) / 8)
    y = torch.zeros_like(x)
    # style: mean over the 4 entries of (G - 0)^2 = (36 + 4 + 4 + 121) / 64 / 4
    assert torch.isclose(vt.style_loss({"t": x}, {"t": y}), torch.tensor(165 / 64 / 4))
    # content: the mean of squared (17 in all) and absolute (9) differences over the 8 elements
    assert torch.isclose(vt.perceptual_loss({"t": x}, {"t": y}), torch.tensor(17 / 8))
    assert torch.isclose(vt.perceptual_loss({"t": x}, {"t": y}, distance="l1"), torch.tensor(9 / 8))
    # cosine over channels at each of the 4 positions against (1, 1) everywhere
    ones = torch.ones_like(x)
    vectors = x[0].permute(1, 2, 0).reshape(4, 2)
    cos = [(v.sum() / (v.norm() * 2 ** 0.5)).item() for v in vectors]
    assert torch.isclose(vt.perceptual_loss({"t": x}, {"t": ones}, distance="cosine"),
                         torch.tensor(sum(1 - c for c in cos) / 4), atol=1e-6)
    # weights per layer, a target of batch 1 for a batch of 2, and per-image values
    two = torch.cat([x, 2 * x])
    per_image = vt.perceptual_loss({"a": two, "b": two}, {"a": y, "b": x}, weights={"a": 0.5, "b": 2.0},
                                   reduction="none")
    assert torch.allclose(per_image, torch.tensor([0.5 * 17 / 8 + 0, 0.5 * 68 / 8 + 2.0 * 17 / 8]))
    # normalise: unit channel vectors, so a feature map and twice it are at distance 0
    assert float(vt.perceptual_loss({"t": 2 * x}, {"t": x}, normalise=True)) < 1e-12
    with pytest.raises(vt.VggtkError, match="distance 'l3'"):
        vt.perceptual_loss({"t": x}, {"t": y}, distance="l3")
    with pytest.raises(vt.VggtkError, match=r"tap\(s\) u that the features do not hold"):
        vt.style_loss({"t": x}, {"t": y}, weights={"u": 1.0})


def test_the_readme_style_transfer_step_runs_on_the_bundled_photos_and_lowers_its_loss(lpips_files, capsys):
    """The README's "VGG as a loss" example as written, the catalogue name swapped for seeded weights in
    torchvision's layout (no download here): ten Adam steps, each loss below the last."""
    root, _, _ = lpips_files
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## VGG as a loss", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"vgg16-torchvision"') == 1 and len(code.strip().splitlines()) <= 16
    exec(compile(code.replace('"vgg16-torchvision"', repr(str(root / "vgg16.pth"))), "README.md", "exec"), {})
    losses = [float(line.rsplit(" ", 1)[1]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 10 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused kernels at VGG16's full width need a GPU "
                    "(Triton's interpreter takes about ten minutes for one 16x16 pair)")
def test_lpips_through_the_fused_triton_kernels_gives_the_torch_paths_distances_and_input_gradients(lpips_files):
    root, _, heads = lpips_files
    a, b = (x.cuda() for x in photo_pair(64))
    results = {}
    for backend in ("torch", "triton"):
        trunk = vt.load_trained(root / "vgg16.pth", "cuda", {"conv_backend": backend}, command="distance", say=None)
        assert len(vt.model_info(trunk).runtime.get("fused_convs", [])) == (13 if backend == "triton" else 0)
        x = a.clone().requires_grad_(True)
        distance = vt.LPIPS(trunk, heads).cuda()(x, b, normalize=True)
        distance.sum().backward()
        results[backend] = (distance.detach(), x.grad)
    (d0, g0), (d1, g1) = results["torch"], results["triton"]
    assert torch.allclose(d1, d0, rtol=1e-3) and float((g1 - g0).abs().max() / g0.abs().max()) < 1e-2
