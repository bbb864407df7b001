"""The response cache's counters, rendered into the metrics page."""

from __future__ import annotations

from collections.abc import Callable

from truckllm.telemetry.exposition import Page


class CacheStats:
    """Counts since start; used on the event loop only. ``size`` reads the backend's entries and
    bytes (memory only; ``None`` for a shared backend whose size is Redis's business)."""

    def __init__(self) -> None:
        self.results = {"hit": 0, "miss": 0, "bypass": 0}
        self.coalesced = 0  # hits that waited for an identical request in flight
        self.bytes_served = 0
        self.bytes_stored = 0
        self.stored = 0
        self.saved_nanos = 0
        self.size: Callable[[], tuple[int, int] | None] = lambda: None
        self.backend_errors: Callable[[], int] = lambda: 0

    def render(self, page: Page) -> None:
        name = "truckllm_cache_requests_total"
        page.family(name, "counter", "Requests the response cache looked at, by result.")
        for result, n in self.results.items():
            page.sample(name, (("result", result),), n)
        name = "truckllm_cache_coalesced_total"
        page.family(name, "counter", "Hits served by waiting for an identical request in flight.")
        page.sample(name, (), self.coalesced)
        name = "truckllm_cache_bytes_total"
        page.family(name, "counter", "Answer bytes served from the cache and stored in it.")
        page.sample(name, (("direction", "served"),), self.bytes_served)
        page.sample(name, (("direction", "stored"),), self.bytes_stored)
        name = "truckllm_cache_saved_usd_total"
        page.family(name, "counter", "What the upstream calls that cache hits replaced cost.")
        page.sample(name, (), self.saved_nanos / 1e9)
        name = "truckllm_cache_backend_errors_total"
        page.family(name, "counter", "Cache backend calls that failed (served as misses).")
        page.sample(name, (), self.backend_errors())
        size = self.size()
        if size is not None:
            page.family("truckllm_cache_entries", "gauge", "Answers in the in-memory cache.")
            page.sample("truckllm_cache_entries", (), size[0])
            page.family("truckllm_cache_memory_bytes", "gauge", "Their size in bytes.")
            page.sample("truckllm_cache_memory_bytes", (), size[1])
