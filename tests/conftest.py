import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Triton reads this when a kernel is defined: on a machine without CUDA every kernel runs in
# Triton's interpreter, so it must be set before any test imports vgg_toolkit.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests must be reproducible on a 2-core CI machine whatever the developer's box has.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def host():
    """A fresh plugin host, discarded after the test so inline plugins never leak."""
    from vgg_toolkit.host import manager as plugin_manager

    plugin_manager.reset_host()
    try:
        yield plugin_manager.get_host()
    finally:
        plugin_manager.reset_host()


# A tiny real training run, shared by the CLI, evaluation and transfer tests: three easy Fashion-MNIST
# classes, 80 images each, two epochs of a narrow VGG-A (seconds on a CPU).
TINY_CLASSES = {1: "trouser", 5: "sandal", 8: "bag"}


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    from PIL import Image

    from cli_runner import vggtk
    from realdata import fashion_sample

    root = tmp_path_factory.mktemp("tiny")
    images, labels = fashion_sample(1000)
    taken = {c: 0 for c in TINY_CLASSES}
    for image, label in zip(images, labels.tolist()):
        if label in TINY_CLASSES and taken[label] < 80:
            folder = root / "src" / TINY_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0, 2:30, 2:30].numpy()).save(folder / f"{label}_{taken[label]}.png")
            taken[label] += 1
    result = vggtk("shards", "create", root / "src", root / "shards", "--splits", "train=0.6,val=0.2,test=0.2",
                   "--samples-per-shard", 50)
    assert result.exit_code == 0, result.output
    return root / "shards"


@pytest.fixture(scope="session")
def trained(shards, tmp_path_factory):
    """(run directory, console output) of `vggtk train` on ``shards``."""
    from cli_runner import vggtk

    run = tmp_path_factory.mktemp("run")
    config = run / "run.toml"
    config.write_text('arch = "vgg-a"\nepochs = 2\nbatch_size = 16\n')
    result = vggtk("train", "--data", shards, "--run-dir", run, "--config", config, "--lr", "0.02")
    assert result.exit_code == 0, result.output
    return run, result.output


CLASSIC_NETS = Path(__file__).resolve().parents[1] / "examples" / "vggtk-classic-nets"


@pytest.fixture(scope="session")
def classic_nets_site(tmp_path_factory):
    """The example plugin package, installed by pip from the repository (no network, no build isolation)
    into a folder of its own: with that folder on PYTHONPATH the test venv's interpreter has it
    installed, without it not, so one session tests both."""
    site, source = tmp_path_factory.mktemp("classic-nets-site"), tmp_path_factory.mktemp("classic-nets-src")
    # pip builds in the source folder: a copy keeps build/ and egg-info out of the checkout (and a stale
    # build/ out of the wheel)
    shutil.copytree(CLASSIC_NETS, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-build-isolation", "--target", str(site), str(source)], check=True)
    return site
