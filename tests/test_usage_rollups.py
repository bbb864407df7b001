"""The usage tables answer a query grouped by one dimension (or none) from their rollups: the
same rows as summing the full tables, for every dimension, time split, edge and after pruning
and a snapshot's reload."""

from __future__ import annotations

import random

from truckllm.stores.base import DIMENSIONS, GRANULARITIES, METRICS, Batch, RowKey, UsageQuery
from truckllm.stores.rollups import ROLLED
from truckllm.stores.tables import Tables, choose_granularity, group_rows


def brute(t: Tables, q: UsageQuery, now: float):  # type: ignore[no-untyped-def]
    g = choose_granularity(q, now)
    flat = [(ts, row, c) for ts, rows in t.usage[g].items() for row, c in rows.items()]
    return group_rows(q, flat, g)


def test_rollups_answer_as_the_full_tables_do() -> None:
    rng = random.Random(3)
    now = 1_800_000_000
    t = Tables()
    for seq in range(1, 30):
        usage: dict[tuple[int, RowKey], list[int]] = {}
        for _ in range(200):
            minute = (now - rng.randrange(3 * 86400)) // 60 * 60
            row: RowKey = tuple(
                f"{d}{rng.randrange(4)}" if rng.random() > 0.1 else "" for d in DIMENSIONS
            )  # type: ignore[assignment]
            usage[(minute, row)] = [rng.randrange(100) for _ in METRICS]
        t.apply(Batch("o", seq, now, usage))
    t.prune(now)
    loaded = Tables.load(t.dump())
    for tables in (t, loaded):
        for group in [(), *((d,) for d in ROLLED)]:
            for bucket in (None, *GRANULARITIES):
                for start, end in (
                    (0, None),
                    (now - 86400, None),
                    (now - 7200, now - 3600),
                    (now - 90, now),
                ):
                    q = UsageQuery(group, start, end, bucket)  # type: ignore[arg-type]
                    assert tables.rollups.answers(q)
                    assert tables.query(q, now) == brute(tables, q, now), q
    q = UsageQuery(("model", "key"), now - 86400)
    assert not t.rollups.answers(q) and t.query(q, now) == brute(t, q, now)
