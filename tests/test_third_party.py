"""A third-party package, installed as its own distribution, that adds an architecture (not a VGG) and a
task head through the public contract: it trains, evaluates and extracts features through the real
command line, with no change to vggtk. Uninstalled, its names are the clean unknown-name error."""

import json
import os
import subprocess
import sys

import pytest

from test_plugins import make_distribution

PACKAGE = '''
"""A small all-convolutional net with global average pooling, and a multi-class hinge head."""

import torch
import torch.nn.functional as F
from torch import nn

import vgg_toolkit as vt


class PoolNet(nn.Module):
    feature_taps = ("trunk", "pool")

    def __init__(self, num_classes: int = 1000, *, in_chans: int = 3, input_size: int = 224, width: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward_features(self, x, taps=("pool",)):
        trunk = self.trunk(x)
        return {name: value for name, value in (("trunk", trunk), ("pool", trunk.mean((2, 3)))) if name in taps}

    def forward(self, x):
        return self.fc(self.trunk(x).mean((2, 3)))


class HingeHead:
    name = "hinge"
    monitor = "top1_err"

    def num_outputs(self, num_classes):
        return num_classes

    def loss(self, outputs, targets):
        outputs = outputs.float()
        right = outputs.gather(1, targets[:, None])
        margins = (1 + outputs - right).clamp(min=0).scatter(1, targets[:, None], 0)
        return margins.sum(1).mean()

    def error_counts(self, outputs, targets):
        right = outputs.gather(1, targets[:, None])
        inside = ((1 + outputs - right).scatter(1, targets[:, None], 0) > 0).any(1)
        return {"top1_err": vt.topk_misses(outputs, targets, (1,))[1], "margin_err": inside.sum()}


@vt.hookimpl
def vggtk_register_architectures(register):
    register("poolnet", PoolNet, description="all-convolutional, global average pooling", input_size=32)


@vt.hookimpl
def vggtk_register_heads(register):
    register("hinge", HingeHead, description="multi-class hinge loss")
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    make_distribution(root, dist="vggtk-poolnet", module="vggtk_poolnet", source=PACKAGE)
    return root


def run(site, *args, check=True):
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(filter(None, [str(site) if site else "",
                                                                                     os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "vgg_toolkit", *map(str, args)], env=env, capture_output=True,
                         text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def trained(installed, shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("poolnet")
    out = run(installed, "train", "--arch", "poolnet", "--head", "hinge", "--data", shards, "--run-dir", run_dir,
              "--epochs", 6, "--batch-size", 16, "--lr", 0.1)
    return run_dir, out.stdout


def test_a_third_party_net_and_head_train_through_the_command_line(trained, shards):
    run_dir, output = trained
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) >= 2
    # The head's own error measure reaches the log: the loop took its errors from the head.
    assert all("val_margin_err" in e and e["monitor"] == "val_top1_err" for e in epochs)
    assert epochs[-1]["val_top1_err"] < 50  # three classes: chance is 67%
    plan = json.loads((run_dir / "config.json").read_text())
    assert plan["arch"] == "poolnet" and plan["model_options"] == {"in_chans": 1, "input_size": 32}
    assert "test top1_err" in output


def test_a_third_party_net_evaluates_and_gives_transfer_features(installed, trained, shards, tmp_path):
    run_dir, _ = trained
    run(installed, "eval", run_dir / "best", "--data", shards, "--methods", "center,dense,multicrop",
        "--out", tmp_path / "eval.json")
    rows = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert [r["config"] for r in rows] == ["poolnet"] * 3 and all(r["top1_err_pct"] < 50 for r in rows)
    run(installed, "extract-features", run_dir / "best", "--data", shards, "--splits", "test", "--tap", "pool",
        "--out", tmp_path / "features")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "features" / "test.safetensors"), "pt") as f:
        assert f.get_tensor("features").shape[1] == 16  # the pooled trunk: 2 x width 8


def test_without_the_package_its_names_are_a_clean_unknown_name_error(trained, shards, tmp_path):
    run_dir, _ = trained
    out = run(None, "train", "--arch", "poolnet", "--data", shards, "--run-dir", tmp_path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("vggtk: error: unknown architecture 'poolnet'")
    out = run(None, "eval", run_dir / "best", "--data", shards, "--out", tmp_path / "e.json", check=False)
    assert out.returncode == 2 and "unknown architecture 'poolnet'" in out.stderr and "Traceback" not in out.stderr


def test_an_unknown_model_option_names_the_closest(installed, shards, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('arch = "poolnet"\n[model]\nwidht = 4\n')
    out = run(installed, "train", "--data", shards, "--config", config, "--run-dir", tmp_path / "r", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.widht: not an option of architecture 'poolnet' (did you mean 'width'?)" in out.stderr
