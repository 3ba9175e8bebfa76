"""The example plugin package examples/vggtk-classic-nets, installed by pip, through the real command
line only: each of its nets trains on the bundled Fashion-MNIST images, evaluates with the paper's
protocols and gives transfer features; `vggtk compare` sees them; uninstalled, its names are the clean
unknown-name error."""

import json
import sys

import pytest
from safetensors import safe_open

from cli_runner import input_error, vggtk
from vgg_toolkit.host import manager as plugin_manager

NETS = ("alexnet", "zfnet", "googlenet", "resnet18", "resnet34", "resnet50")
TAP = {"alexnet": ("fc7", 256), "zfnet": ("fc7", 256)}  # the others: their pooled last block


@pytest.fixture(scope="module")
def installed(classic_nets_site):
    """The package on sys.path for this module's commands, and a plugin host that has found it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(classic_nets_site))
        plugin_manager.reset_host()
        try:
            yield
        finally:
            plugin_manager.reset_host()
            for name in [m for m in sys.modules if m.split(".")[0] == "vggtk_classic_nets"]:
                del sys.modules[name]


def epochs_of(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == "epoch"]


@pytest.mark.parametrize("net", NETS)
def test_each_net_trains_evaluates_and_extracts_features(installed, net, shards, tmp_path):
    run = tmp_path / "run"
    result = vggtk("train", "--arch", net, "--data", shards, "--run-dir", run, "--epochs", 2, "--batch-size", 16,
                   "--lr", 0.02)
    assert result.exit_code == 0, result.output
    plan = json.loads((run / "config.json").read_text())
    assert plan["arch"] == net and plan["model_options"]["width"] == 0.25  # the plugin's small-image recipe
    losses = [e["train_loss"] for e in epochs_of(run)]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)  # finite, and the loop ran its steps

    out = tmp_path / "eval.json"
    result = vggtk("eval", run / "best", "--data", shards, "--methods", "center,dense,multicrop", "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["config"] for r in rows] == [net] * 3 and all(r["images"] == 48 for r in rows)

    tap, dim = TAP.get(net, ("pool", None))
    result = vggtk("extract-features", run / "best", "--data", shards, "--splits", "test", "--tap", tap,
                   "--out", tmp_path / "features")
    assert result.exit_code == 0, result.output
    with safe_open(str(tmp_path / "features" / "test.safetensors"), "pt") as f:
        features = f.get_tensor("features")
    assert features.shape[0] == 48 and (dim is None or features.shape[1] == dim)


def test_googlenet_learns_the_easy_classes_with_its_auxiliary_classifiers(installed, shards, tmp_path):
    """Trained through its side heads (the task contract's auxiliary loss) for a few epochs, it is well above
    chance on three Fashion-MNIST classes (chance: 67% error). Without BatchNorm its 22 layers need the
    lower rate on 144 images: at 0.02 some seeds stay near chance for 8 epochs, at 0.01 seeds 0 and 1
    reach 8% and 10%."""
    run = tmp_path / "run"
    result = vggtk("train", "--arch", "googlenet", "--data", shards, "--run-dir", run, "--epochs", 8,
                   "--batch-size", 16, "--lr", 0.01)
    assert result.exit_code == 0, result.output
    assert min(e["val_top1_err"] for e in epochs_of(run)) < 30


def test_compare_sees_the_plugins_nets(installed, tmp_path):
    out = tmp_path / "table.json"
    result = vggtk("compare", "resnet18", "resnet50", "googlenet", "--no-timing", "--out", out)
    assert result.exit_code == 0, result.output
    rows = {r["arch"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["resnet18"]["parameters"] == 11_689_512 and rows["resnet50"]["parameters"] == 25_557_032
    assert rows["resnet50"]["gmacs"] > rows["resnet18"]["gmacs"] > rows["googlenet"]["gmacs"] > 1


def test_uninstalled_its_names_are_the_unknown_name_error(classic_nets_site, shards, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(classic_nets_site)])
    plugin_manager.reset_host()
    try:
        message = input_error(vggtk("train", "--arch", "resnet18", "--data", shards, "--run-dir", tmp_path / "r",
                                    "--batch-size", 16))
    finally:
        plugin_manager.reset_host()
    assert "resnet18" in message and "vgg-a" in message  # names the unknown one, lists the known ones
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
