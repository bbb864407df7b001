"""The ``memory`` store: the default for one process. Everything is lost when the process ends."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from truckllm.stores.base import Adjust, Ask, Batch, Grant, UsageQuery, UsageResult, View
from truckllm.stores.tables import Tables


class MemoryStore:
    shared = False

    def __init__(self, config: Any = None) -> None:
        self.tables = Tables()

    async def sync(self, batch: Batch) -> View:
        self.tables.apply(batch)
        return self.tables.view(batch.now)

    async def lease(self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]) -> list[Grant]:
        return self.tables.lease(scope, asks, adjusts, int(time.time() * 1000))

    async def query(self, q: UsageQuery) -> UsageResult:
        return self.tables.query(q, time.time())

    def health(self) -> tuple[bool, str | None]:
        return True, None

    async def close(self) -> None:
        return None
