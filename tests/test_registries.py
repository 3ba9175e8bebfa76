"""Every registered architecture, evaluator, augmentation, head, option and command, as the live
registries hold them: a newly registered plugin is tested here without a line of new test code."""

import pytest
import torch
from typer.main import get_command

from cli_runner import vggtk
from realdata import FASHION_SHARDS, fashion_sample
from vgg_toolkit import BoxTargets, DataFacts, FullyConvolutional, Head, TrainScale, create_model, get_host, model_info
from vgg_toolkit.cli import build_app
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw, parse_sample

SMALL = DataFacts(tuple(f"c{i}" for i in range(4)), 1, (72.9, 72.9, 72.9), 32, TrainScale(32, 40))


def names(kind: str) -> list[str]:
    return get_host().registry(kind).names()


def small_model(name: str):
    """The architecture as `vggtk train` builds it for 32x32 greyscale images of 4 classes."""
    entry = get_host().registry("architectures").get(name)
    recipe = entry.info.get("defaults")
    torch.manual_seed(0)
    return create_model(name, num_classes=4, in_chans=1, input_size=32, **(recipe(SMALL) if recipe else {}))


def images(n: int = 3) -> torch.Tensor:
    return fashion_sample(n)[0].float() / 255 - 0.3  # real 32x32 images, roughly centred


@pytest.mark.parametrize("name", names("architectures"))
def test_every_architecture_trains_a_step_at_the_small_image_recipe(name):
    model = small_model(name)
    info = model_info(model)
    assert info.arch == name and info.input_size == 32 and info.num_outputs == 4
    out = model(images())
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", names("evaluators"))
def test_every_evaluator_gives_posteriors_for_same_size_and_mixed_size_images(name):
    model = small_model("vgg-a").eval()
    evaluator = get_host().registry("evaluators").get(name).factory(scales=[32, 40])
    batch = images()
    posteriors = evaluator(model, batch)
    assert posteriors.shape == (3, 4) and (posteriors >= 0).all()
    torch.testing.assert_close(posteriors.sum(1), torch.ones(3))
    if getattr(evaluator, "accepts_lists", False):
        mixed = evaluator(model, [batch[0], torch.nn.functional.interpolate(batch[1:2], size=(40, 48))[0]])
        assert mixed.shape == (2, 4)
        torch.testing.assert_close(mixed[0], posteriors[0])  # each image as if alone


# Options for the built-in augmentations that cannot do without (a third party's is built with none).
EXAMPLES = {"rescale": {"scale": [32, 40]}, "random_crop": {"size": 24}, "center_crop": {"size": 24},
            "color_shift": {"eigval": [0.2, 0.02, 0.005], "eigvec": torch.eye(3).tolist()},
            "subtract_mean": {"mean": [72.9]}, "channels": {"channels": 3}}


@pytest.mark.parametrize("name", names("augmentations"))
def test_every_augmentation_is_a_deterministic_function_of_its_generator(name):
    from vgg_toolkit.data.pipeline import Pipeline

    manifest = Manifest.load(FASHION_SHARDS)
    raw = next(iter_raw(str(manifest.shard_locations("val")[0])))
    pipeline = Pipeline([(name, EXAMPLES.get(name, {}))])
    runs = [pipeline(parse_sample(raw, 10), torch.Generator().manual_seed(seed)) for seed in (7, 7)]
    for out in runs:
        assert out["image"].ndim == 3 and out["image"].shape[0] in (1, 3) and out["label"] == runs[0]["label"]
    assert torch.equal(runs[0]["image"], runs[1]["image"])


@pytest.mark.parametrize("name", names("heads"))
def test_every_head_gives_a_differentiable_loss_and_error_counts(name):
    head = get_host().registry("heads").get(name).factory()
    assert isinstance(head, Head)
    outputs = torch.randn(6, head.num_outputs(4), requires_grad=True)
    targets = labels = torch.tensor([0, 1, 2, 3, 0, 1])
    if isinstance(head, BoxTargets):  # boxes in a 32 x 32 window, one of each image's class
        boxes = [torch.tensor([[4.0 + i, 2.0, 20.0 + i, 30.0]]) for i in range(6)]
        targets = head.box_targets(labels, boxes, [label.reshape(1) for label in labels], 32, 32)
    loss = head.loss(outputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert outputs.grad.abs().sum() > 0
    counts = head.error_counts(outputs.detach(), targets)
    assert head.monitor in counts
    for value in counts.values():
        assert not value.is_floating_point() and 0 <= int(value) <= 6


@pytest.mark.parametrize("name", names("options"))
def test_every_declared_option_shows_on_each_of_its_commands(name):
    spec = get_host().registry("options").get(name).factory
    for command in spec.commands:
        result = vggtk(command, "--help")
        assert result.exit_code == 0 and spec.flag in result.output, (command, spec.flag)


def commands() -> list[list[str]]:
    def walk(group, prefix):
        for sub_name, sub in getattr(group, "commands", {}).items():
            yield from walk(sub, prefix + [sub_name]) if hasattr(sub, "commands") else [prefix + [sub_name]]

    return list(walk(get_command(build_app()), []))


@pytest.mark.parametrize("command", commands(), ids=" ".join)
def test_every_command_has_help(command):
    result = vggtk(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_the_vgg_nets_run_fully_convolutionally():
    for name in names("architectures"):
        model = small_model(name)
        if isinstance(model, FullyConvolutional):
            with torch.no_grad():
                scores = model.to_fully_conv()(torch.nn.functional.pad(images(1), (16, 16, 16, 16)))
            assert scores.shape == (1, 4, 2, 2)

