"""The in-process cache backend: least recently used entries go first, past ``max_entries`` or
``max_bytes``; an entry past its time to live is never returned. The clock is injected."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryBackend:
    """Safe on one event loop (no awaits inside: each call is atomic there)."""

    def __init__(
        self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes or ttl_s <= 0:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self.clock() + ttl_s, value)
        self.bytes += len(value)
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(value)

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0
