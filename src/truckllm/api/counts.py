"""The in-process counts every finished request updates, in one pass: the admin API's counts
since start (``admin/stats.py``), the dashboard's request tail and minutes (``admin/recent.py``),
the usage ledger and a client's tpm reconcile (``accounting``), and the Prometheus metrics when
they are on (``telemetry/metrics.py``).

One consumer of the record bus for the four, not four consumers: one call per request from the
bus, and what several of them read (the record's minute, its cost in nano-dollars, its status,
usage and key) read once. Each part keeps its own tables and its own code; a part that raises is
logged and does not keep the others from counting, as on the bus.
"""

from __future__ import annotations

import logging

from truckllm.accounting import Accounting
from truckllm.admin.recent import Recent
from truckllm.admin.stats import Stats
from truckllm.telemetry.metrics import Metrics
from truckllm.telemetry.record import RequestRecord

log = logging.getLogger("truckllm.telemetry")


class Counts:
    __slots__ = ("accounting", "metrics", "recent", "stats")

    def __init__(
        self, stats: Stats, recent: Recent, accounting: Accounting, metrics: Metrics | None
    ) -> None:
        self.stats = stats
        self.recent = recent
        self.accounting = accounting
        self.metrics = metrics

    def __call__(self, rec: RequestRecord) -> None:
        cost = rec.cost_usd
        nanos = round(cost * 1e9) if cost else 0  # ledger.nanos_of, inlined
        minute = int(rec.time) // 60 * 60
        try:
            self.stats.count(rec.status, rec.key_id, rec.usage, cost)
        except Exception:
            _failed(rec, "admin stats")
        try:
            self.accounting.count(rec, minute, nanos)
        except Exception:
            _failed(rec, "usage ledger")
        try:
            self.recent.count(rec, minute, nanos)
        except Exception:
            _failed(rec, "dashboard")
        metrics = self.metrics
        if metrics is not None:
            try:
                metrics.consume(rec)
            except Exception:
                _failed(rec, "metrics")


def _failed(rec: RequestRecord, part: str) -> None:
    log.exception(
        "request record consumer failed", extra={"request_id": rec.request_id, "part": part}
    )
