"""Named registries filled by plugins through the ``vggtk_register_*`` hooks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import RegistryError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Any  # a callable for most kinds; an OptionSpec for options
    plugin: str
    info: dict = field(default_factory=dict)


def _key(name: str) -> str:
    return name.strip().lower()


class Registry:
    """Maps names (and aliases) to factories, remembering which plugin registered each."""

    def __init__(self, kind: str, callable_values: bool = True):
        self.kind = kind
        self.callable_values = callable_values
        self._entries: dict[str, Entry] = {}
        self._lookup: dict[str, str] = {}  # name or alias -> canonical name

    def add(self, name: str, factory: Callable[..., Any], plugin: str, **info) -> None:
        if self.callable_values and not callable(factory):
            raise RegistryError(f"plugin {plugin!r} registered {self.kind[:-1]} {name!r} with a factory that is not callable")
        entry = Entry(name, factory, plugin, info)
        for claimed in [name, *info.get("aliases", ())]:
            owner = self._lookup.get(_key(claimed))
            if owner is not None:
                raise RegistryError(
                    f"{self.kind[:-1]} name {claimed!r} is claimed by two plugins: "
                    f"{self._entries[owner].plugin!r} and {plugin!r}"
                )
        self._entries[name] = entry
        for claimed in [name, *info.get("aliases", ())]:
            self._lookup[_key(claimed)] = name

    def get(self, name: str) -> Entry:
        canonical = self._lookup.get(_key(name))
        if canonical is None:
            known = sorted(self._entries)
            close = difflib.get_close_matches(_key(name), list(self._lookup), n=1, cutoff=0.5)
            hint = f" Did you mean {self._lookup[close[0]]!r}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind[:-1]} {name!r}.{hint} Known: {', '.join(known) if known else '(none)'}"
            )
        return self._entries[canonical]

    def __contains__(self, name: str) -> bool:
        return _key(name) in self._lookup

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)
