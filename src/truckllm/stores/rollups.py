"""Usage pre-aggregated by one dimension: per granularity and bucket, the counts of each client,
provider, key, model and alias. The usage tables hold one row per (client, provider, key,
model, alias, session) combination and bucket, up to millions; a query grouped by one of these
dimensions (or by none) reads these instead: a row per distinct value per bucket.

Kept beside :class:`~truckllm.stores.tables.Tables` as batches are applied (a few more
additions per row, off the request path), pruned with them, rebuilt when a snapshot loads.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence

from truckllm.stores.base import (
    DIMENSIONS,
    GRANULARITIES,
    Granularity,
    RowKey,
    UsageQuery,
    UsageResult,
)

ROLLED = ("client", "provider", "key", "model", "alias")  # not session: one per conversation
_INDEX = tuple(DIMENSIONS.index(d) for d in ROLLED)

# granularity -> bucket start -> dimension position in ROLLED -> value -> counts
Table = dict[int, list[dict[str, list[int]]]]


class Rollups:
    def __init__(self) -> None:
        self.tables: dict[str, Table] = {g: {} for g in GRANULARITIES}

    def add(self, granularity: str, ts: int, row: RowKey, counts: Sequence[int]) -> None:
        per_dim = self.tables[granularity].get(ts)
        if per_dim is None:
            per_dim = self.tables[granularity][ts] = [{} for _ in ROLLED]
        for values, i in zip(per_dim, _INDEX, strict=True):
            acc = values.get(row[i])
            if acc is None:
                values[row[i]] = list(counts)
            else:
                acc[:] = map(operator.add, acc, counts)  # the loop in C: 15 of these a row

    def prune(self, granularity: str, before: float) -> None:
        table = self.tables[granularity]
        for ts in [ts for ts in table if ts < before]:
            del table[ts]

    @staticmethod
    def answers(q: UsageQuery) -> bool:
        return len(q.group_by) == 0 or (len(q.group_by) == 1 and q.group_by[0] in ROLLED)

    def query(self, q: UsageQuery, granularity: Granularity) -> UsageResult:
        """``q`` (which :meth:`answers`) from the rollups of ``granularity``."""
        # a total reads the provider rollup: the fewest values to sum
        dim = ROLLED.index(q.group_by[0]) if q.group_by else ROLLED.index("provider")
        split = GRANULARITIES[q.bucket] if q.bucket is not None else 0
        rows: list[tuple[tuple[str, ...], int | None, list[int]]]
        if q.group_by and split == GRANULARITIES[granularity]:
            # one row per value and bucket, as kept: nothing to add up
            rows = [
                ((value,), ts, list(counts))
                for ts, values in sorted(self._range(granularity, q))
                for value, counts in sorted(values[dim].items())
            ]
            return UsageResult(granularity, rows)
        out: dict[tuple[tuple[str, ...], int | None], list[int]] = {}
        for ts, values in self._range(granularity, q):
            when = ts // split * split if split else None
            for value, counts in values[dim].items():
                k = ((value,) if q.group_by else (), when)
                acc = out.get(k)
                if acc is None:
                    out[k] = list(counts)
                else:
                    acc[:] = map(operator.add, acc, counts)
        rows = [
            (g, t, c) for (g, t), c in sorted(out.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0]))
        ]
        return UsageResult(granularity, rows)

    def _range(
        self, granularity: str, q: UsageQuery
    ) -> Iterator[tuple[int, list[dict[str, list[int]]]]]:
        for ts, values in self.tables[granularity].items():
            if ts >= q.start and (q.end is None or ts < q.end):
                yield ts, values
