"""The redis store's usage queries at scale: rollups against summing every ledger row.

Starts a redis-server (tests/redis_server.py), fills the ledger through ``RedisStore.sync`` with
``--rows`` distinct (minute, client, provider, key, model, alias) rows over the last two days
(in batches of ``--batch`` rows, as processes hand them over), then times the dashboard's usage
queries (grouped by one dimension, hourly buckets, last 24 h and 48 h; and the total) ``--runs``
times each: from the rollups, and from the full rows (the same store with its ``rsince`` marker
removed, which is how a ledger written before rollups is read). The answers must agree.

Usage::

    .venv/bin/python bench/redis_usage.py [--rows 1000000] [--batch 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from redis_server import RedisServer  # type: ignore[import-not-found]  # tests/redis_server.py

from truckllm.stores.base import Batch, RowKey, UsageQuery
from truckllm.stores.redis import RedisStore
from truckllm.stores.redis_rollups import since_key


def fill(rows: int, now: int, size: int) -> list[Batch]:
    rng = random.Random(1)
    usage: dict[tuple[int, RowKey], list[int]] = {}
    while len(usage) < rows:
        minute = (now - rng.randrange(2 * 86400)) // 60 * 60
        k = rng.randrange(1000)
        row: RowKey = (
            f"client{rng.randrange(50)}",
            f"p{k % 10}",
            f"key{k}",
            f"m{rng.randrange(20)}",
            "",
            "",
        )
        usage[(minute, row)] = [1, 0, 0, 120, 40, 0, 0, 3000]
    items = list(usage.items())
    # ``now`` one second before the oldest row: every bucket is one the rollups cover
    start = min(m for m, _ in usage) - 1
    return [
        Batch("bench", i // size + 1, start, dict(items[i : i + size]))
        for i in range(0, len(items), size)
    ]


async def timed(store: RedisStore, q: UsageQuery, runs: int) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = await store.query(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), answer


async def main(args: argparse.Namespace, url: str) -> None:
    import redis.asyncio as aioredis

    now = int(time.time())
    store = RedisStore(url, prefix="bench", timeout_s=120)
    raw = aioredis.Redis.from_url(url)
    t0 = time.perf_counter()
    for batch in fill(args.rows, now, args.batch):
        await store.sync(batch)
    print(
        f"filled {args.rows:,} rows in {time.perf_counter() - t0:.1f} s "
        f"(redis used_memory {(await raw.info('memory'))['used_memory_human']})"
    )
    hour = now // 3600 * 3600
    qs = [
        ("model, hourly, 24 h", UsageQuery(("model",), hour - 86400 + 3600, None, "hour")),
        ("client, hourly, 48 h", UsageQuery(("client",), hour - 2 * 86400, None, "hour")),
        ("key, 24 h", UsageQuery(("key",), hour - 86400 + 3600)),
        ("total, 48 h", UsageQuery((), hour - 2 * 86400)),
    ]
    since = await raw.get(since_key("bench:{ledger}"))
    assert since is not None
    print(f"{'query':<22} {'rollups':>10} {'full rows':>10}")
    for name, q in qs:
        fast, a = await timed(store, q, args.runs)
        await raw.delete(since_key("bench:{ledger}"))
        slow, b = await timed(store, q, args.runs)
        await raw.set(since_key("bench:{ledger}"), since)
        assert a == b, name
        print(f"{name:<22} {fast * 1000:>8.1f} ms {slow * 1000:>8.1f} ms")
    await raw.aclose()
    await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    server = RedisServer().start()
    try:
        asyncio.run(main(args, server.url))
    finally:
        server.stop()
