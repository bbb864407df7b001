"""What the dashboard shows of recent traffic, fed by the request records: the last requests
(a bounded ring, no bodies: a record has none) and per-minute aggregates with latency
histograms for the last day, so an overview over any window up to a day costs a few dozen
small merges and no scan of requests.

Each record costs its consumer a deque append, a dict lookup and three bisects. In-process:
with ``server.workers`` each worker sees its own requests.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from typing import Any

from truckllm.telemetry.record import RequestRecord

TAIL_SIZE = 1000  # requests kept for the tail
DAY_S = 86400
# Histogram bin edges in seconds: 10 µs to 10 min, 12 % apart; a percentile is read as its bin's
# geometric middle, so it is within 6 % of the true value.
_EDGES = tuple(1e-5 * 1.12**i for i in range(int(math.log(6e7) / math.log(1.12)) + 2))
_NBINS = len(_EDGES) + 1
_HIDDEN = ("/admin/", "/ui")  # the dashboard's own requests are not traffic


class Minute:
    """One minute's counts; histograms of latency, time to first token and gateway overhead."""

    __slots__ = (
        "cached",
        "completion",
        "cost_nanos",
        "errors",
        "latency",
        "overhead",
        "prompt",
        "rate_limited",
        "requests",
        "ttft",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.rate_limited = 0
        self.prompt = self.completion = self.cached = self.cost_nanos = 0
        self.latency = [0] * _NBINS
        self.ttft = [0] * _NBINS
        self.overhead = [0] * _NBINS

    def add(self, rec: RequestRecord, nanos: int | None = None) -> None:
        """Count ``rec``; ``nanos``: its cost in nano-dollars when the caller has it."""
        self.requests += 1
        if rec.status >= 400 or rec.status == 0:
            self.errors += 1
            if rec.status == 429:
                self.rate_limited += 1
        u = rec.usage
        if u is not None:
            self.prompt += u.prompt_tokens
            self.completion += u.completion_tokens
            self.cached += u.cached_tokens
        if nanos is None:
            cost = rec.cost_usd
            nanos = round(cost * 1e9) if cost else 0
        self.cost_nanos += nanos
        latency = rec.latency_s
        self.latency[bisect.bisect(_EDGES, latency)] += 1
        own = latency - rec.upstream_s  # RequestRecord.overhead_s, inlined
        self.overhead[bisect.bisect(_EDGES, own if own > 0.0 else 0.0)] += 1
        if rec.ttft_s is not None:
            self.ttft[bisect.bisect(_EDGES, rec.ttft_s)] += 1


def percentile_ms(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, in milliseconds; ``None`` when it is empty."""
    total = sum(hist)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            lo = _EDGES[i - 1] if i > 0 else _EDGES[0] / 1.12
            hi = _EDGES[i] if i < len(_EDGES) else _EDGES[-1] * 1.12
            return round(math.sqrt(lo * hi) * 1000, 3)
    return None


class Recent:
    """The consumer of the record bus behind the dashboard's overview and request tail."""

    def __init__(self, tail_size: int = TAIL_SIZE) -> None:
        self.tail: deque[tuple[int, RequestRecord]] = deque(maxlen=tail_size)
        self.minutes: dict[int, Minute] = {}
        self._seq = itertools.count(1)
        self._current = -1
        self._minute: Minute | None = None

    def __call__(self, rec: RequestRecord) -> None:
        cost = rec.cost_usd
        self.count(rec, int(rec.time) // 60 * 60, round(cost * 1e9) if cost else 0)

    def count(self, rec: RequestRecord, minute: int, nanos: int) -> None:
        """The consumer with the record's minute and cost in nano-dollars read by the caller,
        who shares them with the other counts (``api/counts.py``)."""
        endpoint = rec.endpoint
        if endpoint.startswith("/"):
            if endpoint.startswith(_HIDDEN):
                return
            self.tail.append((next(self._seq), rec))
            return  # an unknown URL: in the tail, not in the overview's API traffic
        self.tail.append((next(self._seq), rec))
        m = self._minute
        if m is None or minute != self._current:
            m = self._roll(minute)
        m.add(rec, nanos)

    def _roll(self, minute: int) -> Minute:
        m = self.minutes.get(minute)
        if m is None:
            m = self.minutes[minute] = Minute()
            for old in [t for t in self.minutes if t <= minute - DAY_S]:
                del self.minutes[old]
        if minute >= self._current:
            self._current, self._minute = minute, m
        return m

    def window(self, start: float) -> list[tuple[int, Minute]]:
        """The minutes from ``start`` on, oldest first."""
        first = int(start) // 60 * 60
        return sorted((t, m) for t, m in self.minutes.items() if t >= first)


def summary(minutes: list[tuple[int, Minute]]) -> dict[str, Any]:
    """Totals and percentiles over ``minutes``."""
    total = Minute()
    for _, m in minutes:
        for name in ("requests", "errors", "rate_limited", "prompt", "completion", "cached"):
            setattr(total, name, getattr(total, name) + getattr(m, name))
        total.cost_nanos += m.cost_nanos
        for name in ("latency", "ttft", "overhead"):
            acc, h = getattr(total, name), getattr(m, name)
            for i, n in enumerate(h):
                if n:
                    acc[i] += n
    return {
        "requests": total.requests,
        "errors": total.errors,
        "rate_limited": total.rate_limited,
        "error_rate": round(total.errors / total.requests, 4) if total.requests else 0.0,
        "tokens": {"prompt": total.prompt, "completion": total.completion, "cached": total.cached},
        "cost_usd": total.cost_nanos / 1e9,
        **{
            f"{name}_ms": {
                "p50": percentile_ms(getattr(total, name), 0.5),
                "p95": percentile_ms(getattr(total, name), 0.95),
            }
            for name in ("latency", "ttft", "overhead")
        },
    }


def series(minutes: list[tuple[int, Minute]]) -> dict[str, list[Any]]:
    """Per-minute requests, errors, p50/p95 latency and tokens, for the overview's charts."""
    return {
        "t": [t for t, _ in minutes],
        "requests": [m.requests for _, m in minutes],
        "errors": [m.errors for _, m in minutes],
        "p50_ms": [percentile_ms(m.latency, 0.5) for _, m in minutes],
        "p95_ms": [percentile_ms(m.latency, 0.95) for _, m in minutes],
        "tokens": [m.prompt + m.completion for _, m in minutes],
    }


def record_view(seq: int, rec: RequestRecord) -> dict[str, Any]:
    """One request of the tail: what it asked for, where it went and how it went; no body, no
    client address, no key but its id."""
    u = rec.usage

    def ms(s: float | None) -> float | None:
        return None if s is None else round(s * 1000, 2)

    return {
        "seq": seq,
        "time": round(rec.time, 3),
        "request_id": rec.request_id,
        "endpoint": rec.endpoint,
        "client": rec.client_id,
        "model": rec.model,
        "alias": rec.alias,
        "provider": rec.provider,
        "key": rec.key_id,
        "upstream_model": rec.upstream_model,
        "stream": rec.stream,
        "status": rec.status,
        "error_code": rec.error_code,
        "attempts": rec.attempts,
        "latency_ms": ms(rec.latency_s),
        "ttft_ms": ms(rec.ttft_s),
        "overhead_ms": ms(rec.overhead_s),
        "prompt_tokens": u.prompt_tokens if u else None,
        "completion_tokens": u.completion_tokens if u else None,
        "cached_tokens": u.cached_tokens if u else None,
        "cost_usd": rec.cost_usd,
    }
