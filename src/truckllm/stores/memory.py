"""The ``memory`` store: the default for one process. Everything is lost when the process ends."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from truckllm.stores.base import Adjust, Ask, Batch, Grant, UsageQuery, UsageResult, View
from truckllm.stores.kv import DEFAULT_MAX_BYTES, KVTable
from truckllm.stores.tables import Tables


class MemoryStore:
    shared = False

    def __init__(self, config: Any = None) -> None:
        self.tables = Tables()
        self.kv = KVTable(getattr(config, "kv_max_bytes", DEFAULT_MAX_BYTES))

    async def sync(self, batch: Batch) -> View:
        self.tables.apply(batch)
        return self.tables.view(batch.now)

    async def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]
    ) -> list[Grant]:
        return self.tables.lease(scope, asks, adjusts, int(time.time() * 1000))

    async def query(self, q: UsageQuery) -> UsageResult:
        return self.tables.query(q, time.time())

    async def kv_get(self, key: str) -> bytes | None:
        return self.kv.get(key)

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.kv.set(key, value, ttl_s)

    async def kv_delete(self, key: str) -> bool:
        return self.kv.delete(key)

    def health(self) -> tuple[bool, str | None]:
        return True, None

    async def close(self) -> None:
        return None
