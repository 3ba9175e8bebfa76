"""Loads plugins (built-ins and third-party, all through the ``vggtk`` entry-point group) and
builds the registries from their hooks."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
from dataclasses import dataclass
from functools import partial

import pluggy

from .. import hookspecs
from ..contract.options import OptionSpec
from ..errors import VggtkError
from .registry import Registry

GROUP = "vggtk"
OWN_DISTRIBUTION = "vgg-toolkit"
DISABLE_ENV = "VGGTK_DISABLE_PLUGIN_AUTOLOAD"
REGISTRY_HOOKS = {
    "architectures": "vggtk_register_architectures",
    "augmentations": "vggtk_register_augmentations",
    "evaluators": "vggtk_register_evaluators",
    "heads": "vggtk_register_heads",
    "options": "vggtk_register_options",
    "tasks": "vggtk_register_tasks",
}

hookimpl = pluggy.HookimplMarker(GROUP)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool
    error: str | None = None  # set when the plugin failed to import


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


class PluginHost:
    """A pluggy manager plus what vggtk knows about each plugin and the registries they fill."""

    def __init__(self, autoload_third_party: bool | None = None):
        if autoload_third_party is None:
            autoload_third_party = os.environ.get(DISABLE_ENV, "") in ("", "0")
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}
        self._load_entry_points(autoload_third_party)

    def _load_entry_points(self, third_party: bool) -> None:
        def owner(ep) -> str:
            return ep.dist.metadata["Name"] if ep.dist is not None else "?"

        # Built-ins first, whatever the order of sys.path, so a clash names the newcomer second.
        found = sorted(md.entry_points(group=GROUP), key=lambda ep: _canonical(owner(ep)) != OWN_DISTRIBUTION)
        if not any(_canonical(owner(ep)) == OWN_DISTRIBUTION for ep in found):
            raise VggtkError(
                "vgg-toolkit's built-in plugins were not found: the package is not installed. "
                "Run `make setup` (or `pip install -e .`)."
            )
        for ep in found:
            dist_name = owner(ep)
            builtin = _canonical(dist_name) == OWN_DISTRIBUTION
            if (not builtin and not third_party) or ep.name in self.plugins or self.pm.has_plugin(ep.name):
                continue  # disabled, or the same distribution found twice on sys.path
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                self.register(ep.load(), ep.name, distribution=dist_name, version=version, builtin=builtin)
            except Exception as exc:  # a broken third-party plugin must not break other commands
                if builtin:
                    raise
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                self.plugins[ep.name] = PluginInfo(ep.name, dist_name, version, False, f"{type(exc).__name__}: {exc}")
                print(f"vggtk: warning: plugin {ep.name!r} from package {dist_name!r} failed to load "
                      f"({type(exc).__name__}: {exc}); continuing without it", file=sys.stderr)

    def register(self, module, name: str, distribution: str = "(inline)", version: str = "", builtin: bool = False):
        """Register a plugin object; used for entry points and by tests that add a plugin inline."""
        self.pm.register(module, name=name)
        try:
            self.pm.check_pending()  # a misspelt hook name
        except Exception:
            self.pm.unregister(name=name)
            raise
        self.plugins[name] = PluginInfo(name, distribution, version, builtin)
        self._registries.clear()

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        self._registries.clear()

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (architectures, augmentations, evaluators, heads), built on first use."""
        if kind not in self._registries:
            if kind not in REGISTRY_HOOKS:
                raise VggtkError(f"unknown registry kind {kind!r}; known: {', '.join(REGISTRY_HOOKS)}")
            registry = Registry(kind, callable_values=kind != "options")
            hook = getattr(self.pm.hook, REGISTRY_HOOKS[kind])
            # Call each implementation on its own, in registration order (built-ins first), so every
            # entry knows its plugin and a clash names the newcomer second.
            for impl in hook.get_hookimpls():
                impl.function(register=_adder(kind, registry, impl.plugin_name))
            self._registries[kind] = registry
        return self._registries[kind]

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        """What ``plugin`` put in each registry."""
        return {
            kind: sorted(e.name for e in self.registry(kind) if e.plugin == plugin)
            for kind in REGISTRY_HOOKS
        }


def _adder(kind: str, registry: Registry, plugin: str):
    if kind != "options":
        return partial(registry.add, plugin=plugin)

    def register(spec: OptionSpec) -> None:
        if not isinstance(spec, OptionSpec):
            raise VggtkError(f"plugin {plugin!r} registered an option that is not an OptionSpec: {spec!r}")
        registry.add(spec.name, spec, plugin)
    return register


_host: PluginHost | None = None


def get_host() -> PluginHost:
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host() -> None:
    """Forget the loaded plugins, so the next ``get_host()`` reads the entry points again."""
    global _host
    _host = None
