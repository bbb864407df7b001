"""The redis store answers a usage query grouped by one dimension (or none) from its rollups
(stores/redis_rollups.py), against a real redis-server: the same rows as summing the full rows
(the memory tables, summed without their rollups), including buckets written before rollups
existed; and the full rows are not read for the buckets the rollups cover."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import redis as sync_redis
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture
from test_usage_rollups import brute

from truckllm.stores.base import DIMENSIONS, GRANULARITIES, METRICS, Batch, RowKey, UsageQuery
from truckllm.stores.redis import RedisStore
from truckllm.stores.rollups import ROLLED
from truckllm.stores.tables import Tables


def batches(rng: random.Random, origin: str, now: int, lo: int, hi: int, n: int) -> list[Batch]:
    out = []
    for seq in range(1, n + 1):
        usage: dict[tuple[int, RowKey], list[int]] = {}
        for _ in range(100):
            minute = rng.randrange(lo, hi) // 60 * 60
            row: RowKey = tuple(
                f"{d}{rng.randrange(4)}" if rng.random() > 0.1 else "" for d in DIMENSIONS
            )  # type: ignore[assignment]
            usage[(minute, row)] = [rng.randrange(100) for _ in METRICS]
        out.append(Batch(origin, seq, now, usage))
    return out


def queries(now: int) -> list[UsageQuery]:
    out = []
    for group in [(), *((d,) for d in ROLLED)]:
        for bucket in (None, *GRANULARITIES):
            for start, end in ((0, None), (now - 86400, None), (now - 7200, now - 3600)):
                out.append(UsageQuery(group, start, end, bucket))  # type: ignore[arg-type]
    return out


def test_redis_rollups_answer_as_the_full_rows_do(redis_server: RedisServer) -> None:  # noqa: F811
    rng = random.Random(5)
    now = int(time.time())
    since = now - 86400  # rollups start here; before it, a version without them wrote
    before = batches(rng, "old", since - 100, now - 3 * 86400, since, 6)
    after = batches(rng, "new", since, since, now, 6)
    tables = Tables()
    for b in before + after:
        tables.apply(b)
    tables.prune(now)
    raw = sync_redis.Redis.from_url(redis_server.url)

    async def main() -> None:
        store = RedisStore(redis_server.url, prefix="ro")
        try:
            for b in before:
                await store.sync(b)
            # what a version without rollups leaves: the full rows only
            assert raw.delete(*raw.keys("ro:{ledger}:r:*"), "ro:{ledger}:rsince")
            for b in after:
                await store.sync(b)
            assert int(raw.get("ro:{ledger}:rsince") or 0) == since
            for q in queries(now):
                assert await store.query(q) == brute(tables, q, now), q
            two = UsageQuery(("model", "key"), now - 86400)  # not a rollup's: full rows
            assert await store.query(two) == brute(tables, two, now)
            # the rollups alone answer for the buckets after ``since``: drop their full rows
            full: list[Any] = [
                k for k in raw.keys("ro:{ledger}:u:hour:*") if int(k.rsplit(b":", 1)[1]) > since
            ]
            assert full and raw.delete(*full)
            q = UsageQuery(("client",), since // 3600 * 3600 + 3600, None, "hour")
            assert await store.query(q) == brute(tables, q, now)
            assert await store.query(UsageQuery(("model", "key"), q.start, None, "hour")) != (
                brute(tables, UsageQuery(("model", "key"), q.start, None, "hour"), now)
            )
        finally:
            await store.close()

    asyncio.run(main())
