"""The store's data in one process's memory: usage tables, spend, cooldowns and lease windows.

The ``memory`` and ``file`` stores keep their state here, and so does the reference server of the
``http`` protocol; the ``redis`` store implements the same rules in Lua. Not thread-safe: one
event loop owns it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from truckllm.stores.base import (
    COST,
    DIMENSIONS,
    GRANULARITIES,
    METRICS,
    Adjust,
    Ask,
    Batch,
    Grant,
    Granularity,
    RowKey,
    UsageQuery,
    UsageResult,
    View,
    add_counts,
    day_of,
    month_of,
    row_key,
)
from truckllm.stores.rollups import Rollups

RETENTION_S: dict[str, float] = {"minute": 2 * 86400, "hour": 90 * 86400, "day": math.inf}
PEER_TTL_S = 15.0
_N = len(METRICS)


def bucket_width_ms(span_s: float) -> int:
    """Shared windows count in 60 buckets per span (one second for a minute)."""
    return max(int(span_s * 1000) // 60, 1)


def choose_granularity(q: UsageQuery, now: float) -> Granularity:
    """The coarsest table whose buckets line up with the query's edges (and its time split),
    falling back to a coarser one where the finer is no longer retained."""
    chosen: Granularity = "minute"
    names: tuple[Granularity, ...] = ("day", "hour", "minute")
    for name in names:
        g = GRANULARITIES[name]
        if q.start % g == 0 and (q.end is None or q.end % g == 0):
            chosen = name
            break
    if q.bucket is not None and GRANULARITIES[q.bucket] < GRANULARITIES[chosen]:
        chosen = q.bucket
    while chosen != "day" and q.start < now - RETENTION_S[chosen]:
        chosen = "hour" if chosen == "minute" else "day"
    return chosen


def group_rows(
    q: UsageQuery, buckets: Sequence[tuple[int, RowKey, Sequence[int]]], granularity: Granularity
) -> UsageResult:
    """Sum ``(bucket start, row, counts)`` into the query's groups (and time buckets)."""
    index = [DIMENSIONS.index(d) for d in q.group_by]
    split = GRANULARITIES[q.bucket] if q.bucket is not None else 0
    out: dict[tuple[tuple[str, ...], int | None], list[int]] = {}
    for ts, row, counts in buckets:
        if ts < q.start or (q.end is not None and ts >= q.end):
            continue
        k = (tuple(row[i] for i in index), ts // split * split if split else None)
        acc = out.get(k)
        if acc is None:
            acc = out[k] = [0] * _N
        add_counts(acc, counts)
    rows = [
        (g, t, c) for (g, t), c in sorted(out.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0]))
    ]
    return UsageResult(granularity, rows)


class Tables:
    def __init__(self) -> None:
        self.usage: dict[str, dict[int, dict[RowKey, list[int]]]] = {g: {} for g in GRANULARITIES}
        self.rollups = Rollups()  # the same usage by one dimension: what dashboards ask for
        self.spend_day: dict[str, dict[str, int]] = {}  # day -> client -> nanos
        self.spend_month: dict[str, dict[str, int]] = {}
        self.spend_total: dict[str, int] = {}
        self.cooldowns: dict[str, float] = {}
        self.applied: dict[str, int] = {}  # origin -> last seq applied
        self.peers: dict[str, float] = {}  # origin -> last seen
        self.windows: dict[tuple[str, str], dict[int, int]] = {}  # (scope, window) -> buckets
        self._pruned = 0.0

    # -- usage --------------------------------------------------------------------------------

    def apply(self, batch: Batch) -> bool:
        """Add a batch; ``False`` (and nothing changes) when it was applied before."""
        self.peers[batch.origin] = batch.now
        if self.applied.get(batch.origin, -1) >= batch.seq:
            return False
        self.applied[batch.origin] = batch.seq
        for (minute, row), counts in batch.usage.items():
            for name, g in GRANULARITIES.items():
                rows = self.usage[name].setdefault(minute // g * g, {})
                acc = rows.get(row)
                if acc is None:
                    rows[row] = list(counts)
                else:
                    add_counts(acc, counts)
                self.rollups.add(name, minute // g * g, row, counts)
            cost = counts[COST]
            if cost and row[0]:
                client = row[0]
                day = self.spend_day.setdefault(day_of(minute), {})
                day[client] = day.get(client, 0) + cost
                month = self.spend_month.setdefault(month_of(minute), {})
                month[client] = month.get(client, 0) + cost
                self.spend_total[client] = self.spend_total.get(client, 0) + cost
        for key_id, until in batch.cooldowns.items():
            if until > self.cooldowns.get(key_id, 0.0):
                self.cooldowns[key_id] = until
        if batch.now - self._pruned > 60:
            self.prune(batch.now)
        return True

    def view(self, now: float) -> View:
        day, month = day_of(now), month_of(now)
        return View(
            day,
            month,
            dict(self.spend_day.get(day, {})),
            dict(self.spend_month.get(month, {})),
            dict(self.spend_total),
            {k: u for k, u in self.cooldowns.items() if u > now},
            max(sum(1 for seen in self.peers.values() if seen > now - PEER_TTL_S), 1),
        )

    def query(self, q: UsageQuery, now: float) -> UsageResult:
        granularity = choose_granularity(q, now)
        if self.rollups.answers(q):
            return self.rollups.query(q, granularity)
        flat = [
            (ts, row, counts)
            for ts, rows in self.usage[granularity].items()
            if ts >= q.start and (q.end is None or ts < q.end)
            for row, counts in rows.items()
        ]
        return group_rows(q, flat, granularity)

    def prune(self, now: float) -> None:
        self._pruned = now
        for name, keep in RETENTION_S.items():
            if math.isinf(keep):
                continue
            table = self.usage[name]
            for ts in [ts for ts in table if ts < now - keep]:
                del table[ts]
            self.rollups.prune(name, now - keep)
        for day in [d for d in self.spend_day if d < day_of(now - 2 * 86400)]:
            del self.spend_day[day]
        for key_id in [k for k, u in self.cooldowns.items() if u < now]:
            del self.cooldowns[key_id]
        for origin in [o for o, seen in self.peers.items() if seen < now - 86400]:
            del self.peers[origin]
            self.applied.pop(origin, None)

    # -- shared windows -----------------------------------------------------------------------

    def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust], now_ms: int
    ) -> list[Grant]:
        for adj in adjusts:
            w = self.windows.setdefault((scope, adj.window), {})
            b = adj.bucket if adj.bucket is not None else now_ms // bucket_width_ms(adj.span_s)
            if adj.amount < 0 and b not in w:
                continue  # the bucket aged out: nothing left to give back
            w[b] = max(w.get(b, 0) + adj.amount, 0)
        grants = []
        for a in asks:
            w = self.windows.setdefault((scope, a.window), {})
            width = bucket_width_ms(a.span_s)
            reach = int((a.span_s + a.ttl_s + a.slack_s) * 1000)
            lo = (now_ms - reach) // width
            for b in [b for b in w if b < lo]:
                del w[b]
            used = sum(w.values())
            n = max(min(a.amount, a.limit - used), 0)
            b = now_ms // width
            if n:
                w[b] = w.get(b, 0) + n
            retry = 0.0
            if n < a.amount:
                missing, freed = a.amount - n, 0
                for idx in sorted(w):
                    freed += w[idx]
                    if freed >= missing:
                        retry = max(((idx + 1) * width + reach - now_ms) / 1000.0, 0.001)
                        break
                else:
                    retry = (a.span_s + a.ttl_s + a.slack_s) if a.amount > a.limit else 0.001
            grants.append(Grant(a.window, n, b, retry))
        return grants

    # -- persistence (file store snapshots) ---------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "usage": {
                name: [
                    [ts, *row, *counts] for ts, rows in t.items() for row, counts in rows.items()
                ]
                for name, t in self.usage.items()
            },
            "spend_day": self.spend_day,
            "spend_month": self.spend_month,
            "spend_total": self.spend_total,
            "cooldowns": self.cooldowns,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Tables:
        t = cls()
        for name, items in data.get("usage", {}).items():
            table = t.usage[name]
            for item in items:
                dims = len(item) - 1 - _N  # six, or five in a snapshot from before ``session``
                ts, counts = item[0], [int(c) for c in item[1 + dims :]]
                row = row_key(item[1 : 1 + dims])
                table.setdefault(int(ts), {})[row] = counts
                t.rollups.add(name, int(ts), row, counts)
        t.spend_day = {d: dict(v) for d, v in data.get("spend_day", {}).items()}
        t.spend_month = {m: dict(v) for m, v in data.get("spend_month", {}).items()}
        t.spend_total = dict(data.get("spend_total", {}))
        t.cooldowns = {k: float(v) for k, v in data.get("cooldowns", {}).items()}
        return t


def batch_to_json(batch: Batch) -> dict[str, Any]:
    return {
        "origin": batch.origin,
        "seq": batch.seq,
        "now": batch.now,
        "usage": [[minute, *row, *counts] for (minute, row), counts in batch.usage.items()],
        "cooldowns": batch.cooldowns,
    }


def batch_from_json(data: dict[str, Any]) -> Batch:
    usage: dict[tuple[int, RowKey], list[int]] = {}
    for item in data.get("usage", ()):
        dims = len(item) - 1 - _N
        if dims not in (5, len(DIMENSIONS)):
            raise ValueError(
                f"a usage row needs a minute, {len(DIMENSIONS)} dimensions and {_N} counts"
            )
        usage[(int(item[0]), row_key(item[1 : 1 + dims]))] = [int(c) for c in item[1 + dims :]]
    return Batch(
        str(data["origin"]),
        int(data["seq"]),
        float(data["now"]),
        usage,
        {str(k): float(v) for k, v in (data.get("cooldowns") or {}).items()},
    )


def view_to_json(view: View) -> dict[str, Any]:
    return {
        "day": view.day,
        "month": view.month,
        "spend_day": view.spend_day,
        "spend_month": view.spend_month,
        "spend_total": view.spend_total,
        "cooldowns": view.cooldowns,
        "peers": view.peers,
    }


def view_from_json(data: dict[str, Any]) -> View:
    def ints(d: Any) -> dict[str, int]:
        return {str(k): int(v) for k, v in (d or {}).items()}

    return View(
        str(data.get("day", "")),
        str(data.get("month", "")),
        ints(data.get("spend_day")),
        ints(data.get("spend_month")),
        ints(data.get("spend_total")),
        {str(k): float(v) for k, v in (data.get("cooldowns") or {}).items()},
        int(data.get("peers", 1)),
    )
