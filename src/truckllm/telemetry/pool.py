"""The upstream pools' families on ``/metrics``: waits at ``providers[].max_connections``, the
waits that ended in a pool timeout, and the requests waiting now, per provider."""

from __future__ import annotations

from typing import Protocol

from truckllm.telemetry.exposition import Page


class PoolCounters(Protocol):
    """What the HTTP client counts (``truckllm.http.pool_stats.PoolStats``)."""

    waits: dict[str, int]
    timeouts: dict[str, int]
    waiting: dict[str, int]


def render_pool(page: Page, stats: PoolCounters) -> None:
    families = (
        (
            "truckllm_upstream_pool_waits_total",
            "counter",
            "Requests that found every connection providers[].max_connections allows busy and "
            "waited for one.",
            stats.waits,
        ),
        (
            "truckllm_upstream_pool_timeouts_total",
            "counter",
            "Requests that waited for a connection longer than providers[].pool_timeout "
            "(failed over).",
            stats.timeouts,
        ),
        (
            "truckllm_upstream_pool_waiting",
            "gauge",
            "Requests waiting for a connection to their upstream now.",
            stats.waiting,
        ),
    )
    for name, kind, help_text, values in families:
        page.family(name, kind, help_text)
        for provider in sorted(stats.waits):  # every provider that ever waited, 0 included
            page.sample(name, (("provider", provider),), values.get(provider, 0))
