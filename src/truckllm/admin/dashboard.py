"""The admin endpoints the dashboard (``/ui``) reads beside keys, usage, config and reload:
the overview over a window, the request tail, and the clients' budgets. Like every admin
endpoint they never return a secret.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from truckllm.accounting.money import format_usd
from truckllm.admin.recent import DAY_S, record_view, series, summary
from truckllm.errors import invalid_request

if TYPE_CHECKING:
    from truckllm.admin.api import AdminContext
    from truckllm.admin.handlers import Handler
    from truckllm.gateway import Runtime

_TAIL_FILTERS = {
    "model": "model",
    "provider": "provider",
    "key": "key_id",
    "client": "client_id",
    "endpoint": "endpoint",
    "alias": "alias",
}


def _int(query: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise invalid_request(f"'{name}' must be a number, got {raw!r}.", param=name) from None
    return max(lo, min(hi, value))


async def overview(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """``GET overview?window=<seconds>`` (60 to 86400, default 900): requests, error rate,
    p50/p95 latency, time to first token and gateway overhead, tokens and spend, per-minute
    series, and how many keys are in each state now."""
    window = _int(query, "window", 900, 60, DAY_S)
    wall, now = time.time(), rt.router.clock()
    minutes = ctx.recent.window(wall - window)
    states = rt.router.states().values()
    key_states = Counter(s.status(now)[0].value for s in states)
    in_flight = sum(s.in_flight for s in states)
    return 200, {
        "now": round(wall, 3),
        "window_s": window,
        "since": round(max(ctx.stats.started, wall - window), 3),
        **summary(minutes),
        "series": series(minutes),
        "keys": dict(key_states),
        "in_flight_upstream": in_flight,
        "config": rt.config.source,
    }


def _status_matches(status: int, want: str) -> bool:
    if want == "error":
        return status >= 400 or status == 0
    if want == "ok":
        return 0 < status < 400
    if len(want) == 3 and want.endswith("xx"):
        return str(status)[:1] == want[0]
    return str(status) == want


async def requests(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """``GET requests``: the latest requests, newest first. Filters: ``model``, ``provider``,
    ``key``, ``client``, ``endpoint``, ``alias`` (exact), ``status`` (``200``, ``4xx``,
    ``error``, ``ok``); ``after`` (a ``seq``: only newer ones); ``limit`` (default 100)."""
    limit = _int(query, "limit", 100, 1, 1000)
    after = _int(query, "after", 0, 0, 2**62)
    wanted = [(attr, query[name]) for name, attr in _TAIL_FILTERS.items() if query.get(name)]
    status = query.get("status", "").strip().lower()
    out: list[dict[str, Any]] = []
    for seq, rec in reversed(ctx.recent.tail):
        if seq <= after:
            break
        if any(getattr(rec, attr) != value for attr, value in wanted):
            continue
        if status and not _status_matches(rec.status, status):
            continue
        out.append(record_view(seq, rec))
        if len(out) >= limit:
            break
    last = ctx.recent.tail[-1][0] if ctx.recent.tail else 0
    return 200, {"object": "list", "data": out, "last_seq": last, "now": round(time.time(), 3)}


def _usd(nanos: int | None) -> str | None:
    return None if nanos is None else format_usd(nanos)


async def budgets(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """``GET budgets``: every client with rules, its spend today, this month and in total
    (UTC; every process's flushed spend plus this one's) against its budgets, and its limits."""
    accounting, wall = ctx.accounting, time.time()
    data = []
    if accounting is not None:
        for client_id, policy in sorted(accounting.policies.items()):
            spent = accounting.ledger.spent(client_id, wall)
            periods = {}
            for period, limit, used in zip(
                ("daily", "monthly", "total"), policy.budgets, spent, strict=True
            ):
                periods[period] = {
                    "limit_usd": _usd(limit),
                    "spent_usd": _usd(used),
                    "used": None if not limit else round(used / limit, 4),
                }
            data.append(
                {
                    "client": client_id,
                    "budgets": periods,
                    "rpm": None if policy.rpm is None else policy.rpm.limit,
                    "tpm": None if policy.tpm is None else policy.tpm.limit,
                    "allowed_models": None
                    if policy.allowed is None and policy.pattern is None
                    else sorted(policy.allowed or ()),
                }
            )
    return 200, {"object": "list", "data": data, "now": round(wall, 3)}


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "overview", overview),
    ("GET", "requests", requests),
    ("GET", "budgets", budgets),
)
