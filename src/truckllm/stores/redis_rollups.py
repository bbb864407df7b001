"""The ``redis`` store's usage by one dimension, as :mod:`truckllm.stores.rollups` keeps it in
memory: a query grouped by client, provider, key, model or alias (or by nothing) reads a hash per
bucket with a field per distinct value, instead of every (client, provider, key, model, alias,
session) row of the bucket.

- ``<prefix>:{ledger}:r:<g>:<dimension>:<bucket start>`` (hash): field ``value \\x1f metric`` ->
  count; written by the same Lua script, in the same call, as the full rows (so they agree), and
  expiring with them.
- ``<prefix>:{ledger}:rsince`` (string): when the first rollup was written (unix seconds). Buckets
  that start before it were (partly) written by a version without rollups: those are read whole.

A process of a version without rollups that still writes to the same Redis (during a rolling
upgrade) adds rows the rollups miss: grouped queries over that window undercount until its
buckets age out; ungrouped-by-two queries (the admin API's ``group_by=a,b``) read the full rows
and stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from truckllm.stores.base import DIMENSIONS, GRANULARITIES, METRICS, Batch, RowKey, UsageQuery
from truckllm.stores.rollups import ROLLED

SEP = "\x1f"
_INDEX = tuple((d, DIMENSIONS.index(d)) for d in ROLLED)


def rollup_key(ledger: str, granularity: str, dim: str, start: int) -> str:
    return f"{ledger}:r:{granularity}:{dim}:{start}"


def since_key(ledger: str) -> str:
    return f"{ledger}:rsince"


def rollup_incr(
    ledger: str,
    usage: Mapping[tuple[int, RowKey], Sequence[int]],
    ki: Callable[[str], int],
) -> tuple[list[list[Any]], list[tuple[int, str]]]:
    """The ``HINCRBY`` entries ``[key index, field, amount]`` adding ``usage`` to the rollups
    (summed here first: one entry per bucket, value and metric), and the keys written (index,
    granularity)."""
    sums: dict[tuple[str, str], int] = {}
    keys: dict[str, str] = {}
    for (minute, row), counts in usage.items():
        for name, g in GRANULARITIES.items():
            start = minute // g * g
            for dim, i in _INDEX:
                hkey = rollup_key(ledger, name, dim, start)
                keys[hkey] = name
                prefix = row[i] + SEP
                for m, c in enumerate(counts):
                    if c:
                        k = (hkey, prefix + str(m))
                        sums[k] = sums.get(k, 0) + c
    incr = [[ki(hkey), field, str(c)] for (hkey, field), c in sums.items()]
    written = [(ki(hkey), name) for hkey, name in keys.items()]
    return incr, written


def rollup_writes(
    ledger: str,
    batch: Batch,
    ki: Callable[[str], int],
    incr: list[list[Any]],
    expire: list[list[Any]],
    expire_s: Mapping[str, int],
) -> list[list[Any]]:
    """Add ``batch``'s rollup increments and expiries to the sync script's lists; return its
    ``SET NX`` entries (the ``rsince`` marker)."""
    if not batch.usage:
        return []
    more, written = rollup_incr(ledger, batch.usage, ki)
    incr.extend(more)
    expire.extend([h, expire_s[name]] for h, name in written if expire_s[name])
    return [[ki(since_key(ledger)), str(int(batch.now))]]


def rollup_dim(q: UsageQuery) -> str | None:
    """The rollup that answers ``q``, or ``None``: it groups by two dimensions or by session."""
    if not q.group_by:
        return "provider"  # a total: the fewest values to add up
    if len(q.group_by) == 1 and q.group_by[0] in ROLLED:
        return q.group_by[0]
    return None


def rollup_rows(
    dim: str, starts: Iterable[int], hashes: Iterable[Mapping[bytes, bytes]]
) -> list[tuple[int, RowKey, list[int]]]:
    """``(bucket start, row, counts)`` from rollup hashes: the row carries the value at the
    dimension's place and "" elsewhere, which is what grouping by that dimension reads."""
    at = DIMENSIONS.index(dim)
    out: list[tuple[int, RowKey, list[int]]] = []
    for start, h in zip(starts, hashes, strict=True):
        rows: dict[str, list[int]] = {}
        for field, value in h.items():
            name, _, metric = field.decode().rpartition(SEP)
            counts = rows.get(name)
            if counts is None:
                counts = rows[name] = [0] * len(METRICS)
            counts[int(metric)] = int(value)
        for name, counts in rows.items():
            parts = [""] * len(DIMENSIONS)
            parts[at] = name
            out.append((start, tuple(parts), counts))  # type: ignore[arg-type]
    return out
