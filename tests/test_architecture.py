"""The layering the code promises (ARCHITECTURE.md), checked on its imports: every import points down the
layers, none runs in a circle, and the built-in plugins use only the public API."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "vgg_toolkit"
PLUGINS = REPO / "plugins"

# Lowest first. A module may import from its own package and from lower layers only.
LAYERS = [
    {"errors", "version"},
    {"hookspecs", "contract", "runtime"},
    {"host"},
    {"data", "models"},
    {"evaluation", "losses"},
    {"train"},
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as absolute names (``from X import
    y`` imports X.y when that is a module, else X)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = {f"{target}.{a.name}" for a in node.names} & set(ALL)
            found |= submodules or {target}
    return found


def modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(p, root, package): p for p in root.rglob("*.py")}


ALL = {**modules(CORE, "vgg_toolkit"), **modules(PLUGINS, "vgg_toolkit.plugins")}


def graph(root: Path, package: str) -> dict[str, set[str]]:
    return {name: {t for t in imports(path, name) if t in ALL and t != name}
            for name, path in modules(root, package).items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_core_imports_point_down_the_layers():
    wrong = []
    for module, targets in graph(CORE, "vgg_toolkit").items():
        for target in targets:
            a, b = layer(module), layer(target)
            if a != b and RANK[b] >= RANK[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that do not point down: " + ", ".join(sorted(wrong))


def test_no_module_imports_itself_through_others():
    edges = graph(CORE, "vgg_toolkit")
    edges.update(graph(PLUGINS, "vgg_toolkit.plugins"))
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_built_in_plugins_use_only_the_public_api():
    """Anything a built-in plugin does, a third-party package can do."""
    wrong = []
    for name, targets in graph(PLUGINS, "vgg_toolkit.plugins").items():
        own = ".".join(name.split(".")[:3])  # vgg_toolkit.plugins.<plugin>
        for target in targets:
            if target in ("vgg_toolkit", "vgg_toolkit.plugins") or target.startswith(own):
                continue
            wrong.append(f"{name} -> {target}")
    assert not wrong, "plugins reaching past the public API: " + ", ".join(sorted(wrong))
