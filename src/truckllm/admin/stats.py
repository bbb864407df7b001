"""Counts since start for the admin API, fed by the request records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from truckllm.providers.base import Usage
from truckllm.telemetry.record import RequestRecord


@dataclass
class KeyUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0  # integer micro-dollars: sums stay exact


@dataclass
class Stats:
    """Counts since start, fed by the request records (one dict update per request)."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_key: dict[str, KeyUsage] = field(default_factory=dict)

    def __call__(self, rec: RequestRecord) -> None:
        self.count(rec.status, rec.key_id, rec.usage, rec.cost_usd)

    def count(self, status: int, key_id: str | None, u: Usage | None, cost: float | None) -> None:
        """The consumer with the record's fields read by the caller, who shares them with the
        other counts (``api/counts.py``)."""
        self.requests += 1
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        if key_id is None:
            return
        usage = self.by_key.get(key_id)
        if usage is None:
            usage = self.by_key[key_id] = KeyUsage()
        usage.requests += 1
        if u is not None:
            usage.prompt_tokens += u.prompt_tokens
            usage.completion_tokens += u.completion_tokens
        if cost:
            usage.cost_micro_usd += round(cost * 1_000_000)
