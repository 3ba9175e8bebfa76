"""Plugin loading through real entry points, registry conflicts and unknown names."""

import os
import subprocess
import sys

import pytest
import torch

from vgg_toolkit import RegistryError, create_model, hookimpl
from vgg_toolkit.host.manager import PluginHost

THIRD_PARTY = '''
import torch
from vgg_toolkit import hookimpl


class TinyNet(torch.nn.Module):
    def __init__(self, num_classes=1000, width=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
        self.fc = torch.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@hookimpl
def vggtk_register_architectures(register):
    register("tinynet", TinyNet, description="a third-party test net")
'''


def make_distribution(root, dist="vggtk-tinynet", module="vggtk_tinynet", source=THIRD_PARTY, version="0.3.1"):
    """A real installed distribution: a module and a .dist-info with an entry point in group vggtk."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[vggtk]\ntinynet = {module}\n")
    return root


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    make_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("vggtk_tinynet", None)


def test_builtins_load_through_the_entry_point_group(host):
    assert host.plugins["vgg"].builtin and host.plugins["vgg"].distribution == "vgg-toolkit"
    assert host.registry("architectures").get("vgg-d").plugin == "vgg"


def test_third_party_architecture_is_seen_by_create_model(third_party, host):
    info = host.plugins["tinynet"]
    assert (info.distribution, info.version, info.builtin) == ("vggtk-tinynet", "0.3.1", False)
    model = create_model("tinynet", num_classes=4)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 4)
    assert host.registered_by("tinynet")["architectures"] == ["tinynet"]


def test_autoload_can_be_disabled(third_party, monkeypatch):
    monkeypatch.setenv("VGGTK_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = PluginHost()
    assert "tinynet" not in host.plugins and "vgg" in host.plugins
    assert "vgg-d" in host.registry("architectures")


def test_broken_third_party_plugin_is_reported_and_does_not_break_others(tmp_path, monkeypatch, capsys):
    make_distribution(tmp_path, dist="vggtk-broken", module="vggtk_broken", source="import not_a_real_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = PluginHost()
    err = capsys.readouterr().err
    assert "'vggtk-broken'" in err and "ModuleNotFoundError" in err and "continuing without it" in err
    assert host.plugins["tinynet"].error.startswith("ModuleNotFoundError")
    assert "vgg-a" in host.registry("architectures")


def test_third_party_plugin_with_a_misspelt_hook_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    source = "from vgg_toolkit import hookimpl\n\n@hookimpl\ndef vggtk_register_architecture(register):\n    pass\n"
    make_distribution(tmp_path, dist="vggtk-typo", module="vggtk_typo", source=source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        host = PluginHost()
    finally:
        sys.modules.pop("vggtk_typo", None)
    assert "'vggtk-typo'" in capsys.readouterr().err
    assert host.plugins["tinynet"].error.startswith("PluginValidationError")
    assert not host.pm.has_plugin("tinynet") and "vgg-d" in host.registry("architectures")


def test_name_claimed_twice_names_both_plugins(host):
    class Impostor:
        @hookimpl
        def vggtk_register_architectures(self, register):
            register("vgg16", lambda num_classes=1000: None)

    host.register(Impostor(), "impostor")
    with pytest.raises(RegistryError, match="'vgg16' is claimed by two plugins: 'vgg' and 'impostor'"):
        host.registry("architectures")


def test_unknown_name_lists_known_ones_and_the_closest(host):
    with pytest.raises(RegistryError) as err:
        create_model("vgg-dd")
    message = str(err.value)
    assert "Did you mean 'vgg-d'?" in message and "vgg-a-lrn" in message and "vgg-e" in message


def test_misspelt_hook_is_caught(host):
    class Misspelt:
        @hookimpl
        def vggtk_register_architecture(self, register):  # missing the final s
            pass

    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError):
        host.register(Misspelt(), "misspelt")


def test_inline_plugin_registers_and_unregisters(host):
    class Inline:
        @hookimpl
        def vggtk_register_evaluators(self, register):
            register("noop-eval", lambda **kw: (lambda model, images: images))

    host.register(Inline(), "inline")
    try:
        assert host.registry("evaluators").get("noop-eval").plugin == "inline"
    finally:
        host.unregister("inline")
    assert "noop-eval" not in host.registry("evaluators")


def test_cli_sees_a_third_party_architecture(third_party):
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(third_party), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "vgg_toolkit", "models"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "tinynet" in out and "vgg-e" in out and "143,667,240" in out
    out = subprocess.run([sys.executable, "-m", "vgg_toolkit", "plugins"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "vggtk-tinynet" in out and "0.3.1" in out
