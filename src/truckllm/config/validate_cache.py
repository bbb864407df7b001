"""Validation of the ``cache`` section and of ``routing.affinity``."""

from __future__ import annotations

from collections.abc import Callable

from truckllm.config.schema import Config


def validate_cache(cfg: Config, fail: Callable[[str, str], None]) -> None:
    c = cfg.cache
    if c.ttl <= 0:
        fail("cache.ttl", "must be positive")
    for name in ("max_entries", "max_bytes", "max_entry_bytes"):
        if getattr(c, name) < 1:
            fail(f"cache.{name}", "must be at least 1")
    if c.timeout <= 0:
        fail("cache.timeout", "must be positive")
    if c.prefix is not None and (not c.prefix or any(ch in c.prefix for ch in "{} ")):
        fail("cache.prefix", "must be non-empty, without braces or spaces")
    if c.enabled and c.type == "redis":
        store = cfg.storage.runtime
        url = c.url or (store.url if store.type == "redis" else None)
        text = url.reveal() if url is not None else ""
        if not text:
            fail("cache.url", "is required for a redis cache unless storage.runtime is redis")
        elif not text.startswith(("redis://", "rediss://", "unix://")):
            fail("cache.url", "must start with redis://, rediss:// or unix://")
    a = cfg.routing.affinity
    path = "routing.affinity"
    if a.prefix_bytes < 1:
        fail(f"{path}.prefix_bytes", "must be at least 1")
    if a.prefix_messages < 0:
        fail(f"{path}.prefix_messages", "must not be negative")
    if not 0 <= a.min_headroom <= 1:
        fail(f"{path}.min_headroom", "must be between 0 and 1")
    if a.max_entries < 1:
        fail(f"{path}.max_entries", "must be at least 1")
    if a.header is not None and (not a.header or a.header != a.header.strip()):
        fail(f"{path}.header", "must be a header name")
