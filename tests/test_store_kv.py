"""The stores' key-value table (``kv_*``): what the Responses API's stored conversations rely on,
in every store type; the bounded table the in-process stores share; the file store's log across
a restart and a torn tail."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis_server import redis_server  # noqa: F401 - a fixture
from test_stores import KINDS, store_case  # noqa: F401 - a fixture

from truckllm.stores.file import FileStore
from truckllm.stores.kv import KVTable


@pytest.mark.parametrize("kind", KINDS)
def test_set_get_replace_delete_and_expire(kind: str, store_case: Callable[[str], Any]) -> None:  # noqa: F811
    async def main() -> None:
        async with store_case(kind) as store:
            assert await store.kv_get("responses:a") is None
            await store.kv_set("responses:a", b"\x00one\xff", 60)
            assert await store.kv_get("responses:a") == b"\x00one\xff"
            await store.kv_set("responses:a", b"two", 60)
            assert await store.kv_get("responses:a") == b"two"
            assert await store.kv_delete("responses:a") is True
            assert await store.kv_delete("responses:a") is False
            assert await store.kv_get("responses:a") is None
            await store.kv_set("responses:short", b"x", 0.001)
            await asyncio.sleep(0.01)
            assert await store.kv_get("responses:short") is None

    asyncio.run(main())


def test_the_table_drops_the_oldest_entries_beyond_its_bound() -> None:
    now = [1000.0]
    table = KVTable(max_bytes=100, clock=lambda: now[0])
    for i in range(5):
        assert table.set(f"k{i}", b"x" * 30, 60)
    assert [k for k, _, _ in table.items()] == ["k2", "k3", "k4"] and table.size <= 100
    assert not table.set("big", b"x" * 200, 60)  # larger than the whole table: not kept
    now[0] += 61
    assert table.get("k4") is None and list(table.items()) == []


def tear(path: Path) -> None:
    """A write cut off mid-record."""
    with open(path, "ab") as f:
        f.write(b"TLK1\x01 torn")


def test_the_table_holds_about_what_it_counts() -> None:
    """Values made by ``orjson.dumps`` keep the buffer orjson reserved (4 KB and more for a
    hundred bytes); the table keeps a copy of each value's own size, so the memory its
    ``max_bytes`` bounds is the memory it holds."""
    table = KVTable()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(2000):
            record = {
                "id": f"resp_{i}",
                "client": "c1",
                "items": [{"role": "user", "content": "hi"}],
            }
            table.set(f"responses:resp_{i}", orjson.dumps(record), 60)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 2000 * 60 < table.size < 2000 * 200
    # the entries' own bytes plus the table's bookkeeping (a tuple and a slot each); the
    # values as orjson returned them held 4,000 bytes and more apiece
    assert held < 2000 * 600, (held, table.size)


def test_the_file_store_keeps_its_table_across_a_restart_and_a_torn_tail(tmp_path: Path) -> None:
    async def main() -> None:
        store = FileStore(tmp_path / "state.json")
        await store.kv_set("a", b"alpha", 60)
        await store.kv_set("b", b"beta", 60)
        await store.kv_delete("a")
        await store.kv_set("c", b"gamma", 60)
        store._journal.close()  # die without the clean shutdown
        assert store._kv_log is not None
        store._kv_log.close()
        store._lock.close()
        tear(tmp_path / "state.json.kv")
        again = FileStore(tmp_path / "state.json")
        try:
            assert await again.kv_get("a") is None
            assert await again.kv_get("b") == b"beta" and await again.kv_get("c") == b"gamma"
            await again.kv_set("d", b"delta", 60)
        finally:
            await again.close()
        third = FileStore(tmp_path / "state.json")
        try:
            assert await third.kv_get("d") == b"delta" and await third.kv_get("b") == b"beta"
        finally:
            await third.close()

    asyncio.run(main())
