"""The Redis cache backend: entries shared by every process that points at the same Redis
(``<prefix>:<namespace>:<digest>`` strings with an expiry). An outage makes misses, never
errors: a failed call is logged (once per outage) and, for ``down_for`` seconds after it, calls
are not even tried, so a dead Redis costs requests nothing but the cache."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("truckllm.cache")


class RedisBackend:
    def __init__(
        self,
        url: str,
        prefix: str,
        timeout_s: float,
        down_for: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.down_for = down_for
        self.clock = clock
        self.errors = 0
        self._down_until = 0.0

    async def _call(self, op: str, *args: Any) -> Any:
        if self._down_until and self.clock() < self._down_until:
            return None
        try:
            result = await asyncio.wait_for(getattr(self._redis, op)(*args), self.timeout_s * 2)
        except Exception as exc:  # any failure: the cache steps aside for a while
            self.errors += 1
            if not self._down_until:
                log.warning(
                    "response cache: redis unreachable, serving without it",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            self._down_until = self.clock() + self.down_for
            return None
        if self._down_until:
            log.info("response cache: redis is back")
            self._down_until = 0.0
        return result

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", f"{self.prefix}:{key}")
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s > 0:
            await self._call("set", f"{self.prefix}:{key}", value, None, max(int(ttl_s * 1000), 1))

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # closing a connection to a Redis that went away
            log.debug("response cache: redis close failed", exc_info=True)
