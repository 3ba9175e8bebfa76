"""The built wheel, installed on its own, holds every package: each sub-package and built-in plugin
imports, and the command line runs from it (not from this checkout)."""

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "vgg_toolkit", "plugins", "kernels"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:  # built from a copy, so the build leaves nothing in the checkout
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("dist")
    # The venv's own setuptools, when it has one: no download for the build environment.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    return next(out.glob("vgg_toolkit-*.whl"))


def test_the_wheel_holds_every_package_of_the_tree(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(REPO)) for p in REPO.glob("vgg_toolkit/**/__init__.py")}
    packages |= {"vgg_toolkit/plugins/" + str(p.parent.relative_to(REPO / "plugins"))
                 for p in REPO.glob("plugins/**/__init__.py")}
    packages |= {"vgg_toolkit/kernels"}
    missing = sorted(p for p in packages if f"{p.replace('/plugins/.', '/plugins')}/__init__.py" not in names)
    assert not missing, f"packages missing from the wheel (list them in pyproject.toml): {missing}"
    assert not any(n.startswith(("plugins/", "kernels/")) for n in names)  # no generic top-level modules


def test_the_installed_wheel_imports_everything_and_runs(wheel, tmp_path):
    """A fresh venv, the wheel installed in it with pip; the dependencies (torch and the rest, which pip
    must not fetch here) are lent from this interpreter's site-packages through a .pth line, which puts
    them on the path without running their .pth files, so the checkout's editable install stays out."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "lent-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    code = (
        "import importlib, pkgutil, vgg_toolkit\n"
        "assert vgg_toolkit.__file__.startswith(%r), vgg_toolkit.__file__\n"
        "found = [m.name for m in pkgutil.walk_packages(vgg_toolkit.__path__, 'vgg_toolkit.')]\n"
        "for name in found:\n"
        "    if not name.endswith('__main__'):  # that one runs the command line\n"
        "        importlib.import_module(name)\n"
        "assert 'vgg_toolkit.plugins.vgg.net' in found and 'vgg_toolkit.kernels.fused_conv' in found, found\n"
        "host = vgg_toolkit.get_host()\n"
        "print(sorted(p for p, info in host.plugins.items() if info.builtin and not info.error))\n"
    ) % str(site)
    env = {"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(["augment", "classification", "compare", "evaluators", "export", "localisation",
                                      "perceptual", "transfer", "triton_backend", "vgg"])
    models = subprocess.run([str(venv / "bin" / "vggtk"), "models"], capture_output=True, text=True, env=env,
                            timeout=300, cwd=tmp_path)
    assert models.returncode == 0 and "138,357,544" in models.stdout, models.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "vggtk"), "weights", "list", "--json"], capture_output=True,
                            text=True, env=env, timeout=300, cwd=tmp_path)  # the catalogue is package data
    assert listed.returncode == 0 and "vgg16-caffe" in listed.stdout, listed.stderr[-2000:]
    assert vgg_imagenet_classes(venv) == 1000


def vgg_imagenet_classes(venv) -> int:
    code = "import vgg_toolkit as vt; print(len(vt.imagenet_classes()))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         env={"TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout)


def test_every_declared_dependency_is_imported_by_the_code():
    """No dependency stays in pyproject.toml that the toolkit's own code never imports."""
    import ast
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    module_of = {"pillow": "PIL", "protobuf": "google"}
    wanted = {module_of.get(name, name) for name in (re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower()
                                                      for d in declared)}
    imported = set()
    for folder in ("vgg_toolkit", "plugins", "kernels"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    assert wanted <= imported, f"declared but never imported: {sorted(wanted - imported)}"
    assert {"webdataset", "einops"} <= wanted
