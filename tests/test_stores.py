"""The state stores against one contract (memory, file, http with its reference server, and a real
redis-server), plus the file store's crash safety."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.stores.base import COST, WIRE, Adjust, Ask, Batch, Store, UsageQuery
from truckllm.stores.file import FileStore
from truckllm.stores.http import HttpStore
from truckllm.stores.memory import MemoryStore
from truckllm.stores.redis import RedisStore
from truckllm.testing.store_server import StoreServer

ROW_A = ("team-a", "openai", "k1", "gpt-4o", "smart", "")
ROW_B = ("team-b", "anthropic", "k2", "claude", "", "s-1")


def counts(requests: int, cost: int, prompt: int = 10, completion: int = 5) -> list[int]:
    return [requests, 0, 0, prompt * requests, completion * requests, 0, 0, cost, 0]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


@asynccontextmanager
async def open_store(kind: str, tmp_path: Path, redis_url: str | None) -> AsyncIterator[Store]:
    if kind == "memory":
        yield MemoryStore()
    elif kind == "file":
        store = FileStore(tmp_path / "state.json")
        try:
            yield store
        finally:
            await store.close()
    elif kind == "http":
        server = StoreServer(token="t0ken")
        url = await server.start()
        http = HttpStore(url, "t0ken")
        try:
            yield http
        finally:
            await http.close()
            await server.stop()
    else:
        assert redis_url is not None
        redis = RedisStore(redis_url, prefix=f"t{time.monotonic_ns()}")
        try:
            yield redis
        finally:
            await redis.close()


KINDS = ["memory", "file", "http", "redis"]


@pytest.fixture
def store_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], Any]:
    def make(kind: str) -> Any:
        url = None
        if kind == "redis":
            url = request.getfixturevalue("redis_server").url
        return open_store(kind, tmp_path, url)

    return make


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_counts_once_and_queries_group_and_split(
    kind: str, store_case: Callable[[str], Any]
) -> None:
    async def main() -> None:
        async with store_case(kind) as store:
            now = time.time()
            minute = int(now) // 60 * 60
            batch = Batch(
                "proc-1",
                1,
                now,
                {(minute, ROW_A): counts(3, 1_500), (minute - 3600, ROW_B): counts(1, 7)},
                {"k1": now + 30},
            )
            view = await store.sync(batch)
            again = await store.sync(batch)  # lost answer: sent again, counted once
            assert view.spend_total == again.spend_total == {"team-a": 1_500, "team-b": 7}
            assert again.cooldowns.keys() == {"k1"} and again.cooldowns["k1"] > now
            today = await store.sync(Batch("proc-2", 1, now, {(minute, ROW_A): counts(1, 1)}))
            assert today.spend_total["team-a"] == 1_501 and today.peers == 2
            assert today.spend_day.get("team-a") == (1_501 if minute // 86400 == int(now) // 86400 else None)

            total = await store.query(UsageQuery())
            assert total.granularity == "day"
            assert [c for _, _, c in total.rows] == [[5, 0, 0, 50, 25, 0, 0, 1_508, 0]]
            # A start on a minute but never on an hour, whatever the time of day: an hour-aligned
            # start would (rightly) be answered from the hour table.
            start = minute - 7200 + (60 if (minute - 7200) % 3600 == 0 else 0)
            by_client = await store.query(UsageQuery(("client",), start=start))
            assert {g: c[COST] for g, _, c in by_client.rows} == {("team-a",): 1_501, ("team-b",): 7}
            assert by_client.granularity == "minute"
            hourly = await store.query(
                UsageQuery(("provider", "alias"), start=minute // 3600 * 3600 - 3600, bucket="hour")
            )
            assert hourly.granularity == "hour"
            assert len({t for _, t, _ in hourly.rows}) == 2
            assert (("openai", "smart") in {g for g, _, _ in hourly.rows})

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_leases_never_exceed_the_limit_and_give_back_what_went_unused(
    kind: str, store_case: Callable[[str], Any]
) -> None:
    async def main() -> None:
        async with store_case(kind) as store:
            ask = Ask("rpm", 60.0, 5, 3, 2.0, 1.0)
            first = await store.lease("key:a", [ask], [])
            assert first[0].amount == 3 and first[0].retry_s == 0
            second = await store.lease("key:a", [ask], [])
            assert second[0].amount == 2 and second[0].retry_s > 0
            third = await store.lease("key:a", [ask], [])
            assert third[0].amount == 0 and 50 < third[0].retry_s <= 64
            other = await store.lease("key:b", [ask], [])  # scopes are independent
            assert other[0].amount == 3
            back = Adjust("rpm", 60.0, -2, second[0].bucket)
            after = await store.lease("key:a", [Ask("rpm", 60.0, 5, 5, 2.0, 1.0)], [back])
            assert after[0].amount == 2
            charged = await store.lease(
                "key:a", [Ask("tpm", 60.0, 100, 100, 2.0, 1.0)], [Adjust("tpm", 60.0, 40)]
            )
            assert charged[0].amount == 60  # the 40 charged first count against the window

    run(main())


def test_http_store_refuses_a_wrong_token_and_reports_unhealthy() -> None:
    async def main() -> None:
        server = StoreServer(token="right")
        url = await server.start()
        store = HttpStore(url, "wrong")
        try:
            with pytest.raises(Exception, match="401"):
                await store.sync(Batch("p", 1, time.time()))
            ok, reason = store.health()
            assert not ok and reason is not None and "401" in reason
        finally:
            await store.close()
            await server.stop()

    run(main())


def test_file_store_recovers_from_a_torn_journal_tail_and_compacts_safely(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    minute = int(time.time()) // 60 * 60

    async def write(n: int, start_seq: int) -> None:
        store = FileStore(path)
        for i in range(n):
            await store.sync(Batch("p", start_seq + i, time.time(), {(minute, ROW_A): counts(1, 10)}))
        store._journal.close()  # die without the clean shutdown's compaction
        store._lock.close()

    async def total() -> list[int]:
        store = FileStore(path)
        try:
            rows = (await store.query(UsageQuery())).rows
            return rows[0][2] if rows else []
        finally:
            store._journal.close()
            store._lock.close()

    run(write(3, 1))
    journal = Path(str(path) + ".journal")
    size = journal.stat().st_size
    with open(journal, "ab") as f:  # a record cut off mid-write by a power failure
        f.write(b"TLJ1\x00\x00\x01\x00garbage")
    result: list[list[int]] = []

    async def check() -> None:
        result.append(await total())

    run(check())
    assert result[-1][0] == 3 and result[-1][COST] == 30
    assert journal.stat().st_size == size  # the torn tail is cut off

    data = bytearray(journal.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the last record: its checksum fails
    journal.write_bytes(bytes(data))
    sizes: list[int] = []

    async def more() -> None:
        result.append(await total())
        await write(2, 10)
        store = FileStore(path)
        await store.compact()  # snapshot written, journal emptied
        sizes.append(store._journal.tell())
        await store.sync(Batch("q", 1, time.time(), {(minute, ROW_B): counts(1, 1)}))
        await store.close()  # clean shutdown: compacts again
        result.append(await total())

    run(more())
    assert sizes == [0]
    assert result[-2][0] == 2  # the corrupt third record is dropped
    assert result[-1][0] == 5 and result[-1][COST] == 2 * 10 + 2 * 10 + 1


def test_file_store_is_for_one_process_at_a_time(tmp_path: Path) -> None:
    from truckllm.stores.base import StoreError

    first = FileStore(tmp_path / "s.json")
    with pytest.raises(StoreError, match="in use"):
        FileStore(tmp_path / "s.json")
    run(first.close())


def test_redis_store_reports_unreachable_and_recovers(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        store = RedisStore(redis_server.url, prefix="health", timeout_s=0.5)
        try:
            await store.sync(Batch("p", 1, time.time()))
            assert store.health() == (True, None)
            redis_server.stop()
            with pytest.raises(Exception, match="redis unreachable"):
                await store.sync(Batch("p", 2, time.time()))
            ok, reason = store.health()
            assert not ok and reason is not None
            redis_server.start()
            await store.sync(Batch("p", 2, time.time()))
            assert store.health() == (True, None)
        finally:
            await store.close()

    run(main())


def test_usage_rows_from_before_the_session_dimension_still_read() -> None:
    """A file store's snapshot and an http store's batch written with five dimensions (before
    ``session``) read as session ``""``."""
    from truckllm.stores.tables import Tables, batch_from_json

    read = counts(2, 30)
    counts_old = read[:WIRE]  # as written then: without saved_nanos, which reads as 0
    snapshot = {"usage": {"minute": [[600, "team-a", "openai", "k1", "gpt-4o", "smart", *counts_old]]}}
    table = Tables.load(snapshot).usage["minute"]
    assert table == {600: {("team-a", "openai", "k1", "gpt-4o", "smart", ""): read}}
    old = {"origin": "p", "seq": 1, "now": 0.0, "usage": [[600, *ROW_A[:5], *counts_old]]}
    new = {"origin": "p", "seq": 2, "now": 0.0, "usage": [[600, *ROW_B, *counts_old]]}
    assert batch_from_json(old).usage == {(600, ROW_A): read}
    assert batch_from_json(new).usage == {(600, ROW_B): read}
    with pytest.raises(ValueError):
        batch_from_json({"origin": "p", "seq": 3, "now": 0.0, "usage": [[600, "x", *counts_old]]})
