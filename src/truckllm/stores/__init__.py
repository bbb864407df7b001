"""State stores: where usage, cooldowns and shared limits live (memory, file, redis, http).

A store is built from ``storage.runtime`` by the factory registered under its ``type``; plugins
add types through the ``truckllm.stores`` entry-point group (a factory takes the
``RuntimeStoreConfig`` and returns a :class:`Store`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from truckllm.plugins import Registry
from truckllm.stores.base import (
    Adjust,
    Ask,
    Batch,
    Grant,
    Store,
    StoreError,
    UsageQuery,
    UsageResult,
    View,
)
from truckllm.stores.memory import MemoryStore

StoreFactory = Callable[[Any], Store]
BUILT_IN = ("memory", "file", "redis", "http")


def _file(config: Any) -> Store:
    from truckllm.stores.file import FileStore

    return FileStore.from_config(config)


def _redis(config: Any) -> Store:
    from truckllm.stores.redis import RedisStore

    return RedisStore.from_config(config)


def _http(config: Any) -> Store:
    from truckllm.stores.http import HttpStore

    return HttpStore.from_config(config)


def store_registry(load_plugins: bool = True) -> Registry[StoreFactory]:
    registry: Registry[StoreFactory] = Registry("store", "truckllm.stores")
    registry.register("memory", MemoryStore)
    registry.register("file", _file)
    registry.register("redis", _redis)
    registry.register("http", _http)
    if load_plugins:
        registry.load_entry_points()
    return registry


__all__ = [
    "BUILT_IN",
    "Adjust",
    "Ask",
    "Batch",
    "Grant",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoreFactory",
    "UsageQuery",
    "UsageResult",
    "View",
    "store_registry",
]
