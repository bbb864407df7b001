"""Registries for the extension points: providers, state stores, request-log sinks.

Each registry maps a unique name to a factory. Built-ins register first; third-party packages add
theirs through the entry-point groups ``truckllm.providers``, ``truckllm.stores`` and
``truckllm.sinks``. A registry is an object (never module state), so tests can build several.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])

log = logging.getLogger("truckllm.plugins")
_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


class PluginError(Exception):
    pass


class Registry(Generic[F]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._factories: dict[str, F] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, factory: F, origin: str = "built-in") -> None:
        if not _NAME.match(name):
            raise PluginError(
                f"{self.kind} name {name!r} must be lower-case letters, digits, '_' or '-'"
            )
        if not callable(factory):
            raise PluginError(f"{self.kind} {name!r} from {origin} is not callable")
        if name in self._factories:
            raise PluginError(
                f"{self.kind} {name!r} from {origin} is already registered by {self._origin[name]}"
            )
        self._factories[name] = factory
        self._origin[name] = origin

    def load_entry_points(self) -> list[str]:
        """Register every factory that installed packages declare in this registry's group.

        A plugin that fails to load is logged and skipped: one broken package must not stop the
        gateway. Names already registered (e.g. the built-ins declared by this package) are kept.
        """
        loaded: list[str] = []
        for ep in entry_points(group=self.group):
            if ep.name in self._factories:
                continue
            origin = f"entry point {ep.value!r}" + (f" of {ep.dist.name}" if ep.dist else "")
            try:
                factory = ep.load()
                self.register(ep.name, factory, origin)
            except Exception as exc:  # a plugin's import error is the plugin's problem
                log.error("cannot load %s plugin %r from %s: %s", self.kind, ep.name, origin, exc)
                continue
            loaded.append(ep.name)
        return loaded

    def get(self, name: str) -> F:
        try:
            return self._factories[name]
        except KeyError:
            raise PluginError(f"unknown {self.kind} {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))
