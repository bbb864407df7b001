"""Counts since start for the admin API, fed by the request records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
        self.requests += 1
        self.by_status[rec.status] = self.by_status.get(rec.status, 0) + 1
        if rec.key_id is None:
            return
        usage = self.by_key.get(rec.key_id)
        if usage is None:
            usage = self.by_key[rec.key_id] = KeyUsage()
        usage.requests += 1
        if rec.usage is not None:
            usage.prompt_tokens += rec.usage.prompt_tokens
            usage.completion_tokens += rec.usage.completion_tokens
        if rec.cost_usd:
            usage.cost_micro_usd += round(rec.cost_usd * 1_000_000)
