"""``GET /admin/v1/usage``: the usage ledger's aggregates, grouped and filtered by time.

Query parameters: ``group_by`` (comma-separated: ``client``, ``provider``, ``key``, ``model``,
``alias``; none: one total), ``from`` and ``to`` (unix seconds, or ISO 8601 such as ``2025-06-01``
or ``2025-06-01T12:00:00Z``; ``to`` is exclusive; default: all time), ``bucket`` (``minute``,
``hour`` or ``day``: one row per group and period), ``top`` (a number: the groups that cost
most, by requests when equal; the rest summed per period into one row with ``"other": true``).
Costs are exact decimal strings in USD.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from truckllm.accounting.money import format_usd
from truckllm.errors import APIError, invalid_request
from truckllm.stores.base import (
    COST,
    DIMENSIONS,
    GRANULARITIES,
    METRICS,
    UsageQuery,
    UsageResult,
)


def _time(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    with contextlib.suppress(ValueError):
        return int(float(value))
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise invalid_request(
            f"'{name}' must be unix seconds or an ISO 8601 date or time, got {value!r}.", param=name
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def parse_query(query: dict[str, str]) -> UsageQuery:
    group_by = tuple(g.strip() for g in query.get("group_by", "").split(",") if g.strip())
    for g in group_by:
        if g not in DIMENSIONS:
            raise invalid_request(
                f"Unknown group_by {g!r}: use any of {', '.join(DIMENSIONS)}.", param="group_by"
            )
    start = _time(query.get("from"), "from") or 0
    end = _time(query.get("to"), "to")
    if end is not None and end <= start:
        raise invalid_request("'to' must be later than 'from'.", param="to")
    bucket = query.get("bucket") or None
    if bucket is not None and bucket not in GRANULARITIES:
        raise invalid_request("'bucket' must be minute, hour or day.", param="bucket")
    return UsageQuery(tuple(dict.fromkeys(group_by)), start, end, bucket)  # type: ignore[arg-type]


def metrics_json(counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {name: counts[i] for i, name in enumerate(METRICS) if i != COST}
    out["cost_usd"] = format_usd(counts[COST])
    out["cost_nanos"] = counts[COST]
    return out


async def usage_view(
    query_store: Callable[[UsageQuery], Awaitable[UsageResult]], query: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    q = parse_query(query)
    try:
        result = await query_store(q)
    except Exception as exc:
        raise APIError(
            503,
            f"The state store cannot be read: {exc}",
            code="store_unavailable",
            type_="api_error",
        ) from exc
    rows = result.rows
    top = query.get("top")
    if top and q.group_by:
        if not top.isdigit():
            raise invalid_request(f"'top' must be a whole number, got {top!r}.", param="top")
        rows = keep_top(rows, int(top))
    total = [0] * len(METRICS)
    data = []
    for group, bucket, counts in rows:
        if q.group_by and not group:  # the groups beyond ``top``
            row: dict[str, Any] = {**dict.fromkeys(q.group_by), "other": True}
        else:
            row = dict(zip(q.group_by, group, strict=True))
        if q.bucket is not None:
            row["bucket_start"] = bucket
        row.update(metrics_json(counts))
        data.append(row)
        for i, c in enumerate(counts):
            total[i] += c
    return 200, {
        "object": "usage",
        "from": q.start,
        "to": q.end,
        "group_by": list(q.group_by),
        "bucket": q.bucket,
        "granularity": result.granularity,
        "data": data,
        "total": metrics_json(total),
    }


Rows = list[tuple[tuple[str, ...], int | None, list[int]]]


def keep_top(rows: Rows, n: int) -> Rows:
    """The rows of the ``n`` groups that cost most (then by requests); the other groups' rows
    summed per period under the empty group."""
    totals: dict[tuple[str, ...], list[int]] = {}
    for group, _, counts in rows:
        acc = totals.setdefault(group, [0, 0])
        acc[0] += counts[COST]
        acc[1] += counts[0]
    kept = set(sorted(totals, key=lambda g: (-totals[g][0], -totals[g][1], g))[:n])
    out: Rows = []
    other: dict[int | None, list[int]] = {}
    for group, bucket, counts in rows:
        if group in kept:
            out.append((group, bucket, counts))
            continue
        summed = other.get(bucket)
        if summed is None:
            summed = other[bucket] = [0] * len(METRICS)
        for i, c in enumerate(counts):
            summed[i] += c
    out.extend(((), bucket, counts) for bucket, counts in other.items())
    return out
