"""A small key-value table with expiry and a size bound, for the stores that keep state in this
process (memory, file, the http store's reference server). Values are opaque bytes; what the
gateway keeps there (Responses API conversations, later cached answers) is its callers' business.

When a write would pass ``max_bytes``, the entries written longest ago go first; expired entries
are dropped as they are met and by a sweep every ``_SWEEP_EVERY`` writes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_KEY_BYTES = 512
_SWEEP_EVERY = 256


class KVTable:
    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.size = 0
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, until)
        self._writes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            self.delete(key)
            return None
        return entry[0]

    def set(self, key: str, value: bytes, ttl_s: float, until: float | None = None) -> bool:
        """Keep ``value`` for ``ttl_s`` seconds (or until the wall-clock time ``until``). False
        when it is larger than the whole table may be."""
        if len(value) + len(key) > self.max_bytes or len(key.encode()) > MAX_KEY_BYTES:
            return False
        self.delete(key)
        # A copy of the value's own size: ``orjson.dumps`` (how the gateway makes most values)
        # returns bytes that keep the buffer orjson reserved, 4 KB and more for a few hundred
        # bytes, which ``max_bytes`` (counted by length) would not see: 20,000 small
        # conversations held 83 MB instead of 3 (tests/test_stores_memory.py).
        value = bytes(memoryview(value))
        self._data[key] = (value, until if until is not None else self.clock() + ttl_s)
        self.size += len(value) + len(key)
        while self.size > self.max_bytes:
            old, (v, _) = self._data.popitem(last=False)
            self.size -= len(v) + len(old)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self.sweep()
        return True

    def delete(self, key: str) -> bool:
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self.size -= len(entry[0]) + len(key)
        return True

    def sweep(self) -> None:
        now = self.clock()
        for key in [k for k, (_, until) in self._data.items() if until <= now]:
            self.delete(key)

    def items(self) -> Iterator[tuple[str, bytes, float]]:
        """Live entries, oldest first: (key, value, until)."""
        now = self.clock()
        for key, (value, until) in self._data.items():
            if until > now:
                yield key, value, until
