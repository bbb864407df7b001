"""Prometheus metrics: counted per request in plain Python, rendered as text at scrape time.

Per request, :meth:`Metrics.consume` does one dict lookup and a handful of integer additions
(about 1 us; ``prometheus_client``'s ``labels().inc()``/``observe()`` for the same families took
about 18 us, measured). Every request-derived family is a projection of one table of rows keyed
by ``(endpoint, alias, provider, key_id, status)``, summed when the page is rendered. Per-key
state is read from the router at scrape time, so it costs requests nothing.

Label values are bounded: provider and key ids and aliases come from the configuration (a model
name a client sends becomes a label only when it is a configured alias), the endpoint is one of a
fixed set, the status an HTTP code. Secrets never reach this module.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from truckllm import __version__
from truckllm.routing.keystate import KeyState, ProviderState, Status
from truckllm.telemetry.exposition import Page
from truckllm.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from truckllm.routing.router import Router
    from truckllm.telemetry.sinks import Sink

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class LoopLag:
    """How late a timer fires on the event loop, every ``interval`` seconds. Every request and
    stream chunk waits about that long before the gateway can touch it, so a growing lag says
    the process is short of CPU (busy, or sharing its cores) before latencies show it."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.total = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._arm(self._loop.time())

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval
        self._timer = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = now - self._due if now > self._due else 0.0
        self.counts[bisect_left(LAG_BUCKETS, lag)] += 1
        self.total += lag
        self._arm(now)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def render(self, page: Page) -> None:
        name = "truckllm_event_loop_lag_seconds"
        page.family(name, "histogram", "How late a periodic timer ran on the event loop.")
        page.histogram(name, (), LAG_BUCKETS, self.counts, self.total)


TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")
_ENDPOINTS = frozenset(
    {"chat", "embeddings", "messages", "models", "responses"}
    | {"completions", "moderations", "images"}
    | {"audio.speech", "audio.transcriptions", "audio.translations"}
)
_STATUSES = tuple(Status)

RowKey = tuple[str, str, str, str, int]  # endpoint, alias, provider, key_id, status


class _Row:
    """Everything counted for one label combination. Histogram slots are per bucket (not
    cumulative); the last slot is above the highest bound."""

    __slots__ = (
        "cached",
        "completion",
        "cost",
        "duration",
        "duration_sum",
        "overhead",
        "overhead_sum",
        "prompt",
        "reasoning",
        "requests",
        "retries",
        "ttft",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.prompt = 0
        self.completion = 0
        self.cached = 0
        self.reasoning = 0
        self.cost = 0.0
        self.retries = 0
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.overhead = [0] * (len(OVERHEAD_BUCKETS) + 1)
        self.overhead_sum = 0.0


def _key_ids(ps: ProviderState, s: KeyState) -> tuple[tuple[str, str], ...]:
    return (("provider", ps.id), ("key_id", s.key.id))


class Metrics:
    """The gateway's metrics. Lives as long as the app (across reloads); used on the event loop
    only (no locks)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._rows: dict[RowKey, _Row] = {}
        self._reload_ok = True
        self._reload_success_at = clock()
        self._reloads = {"success": 0, "failure": 0}
        self.loop_lag = LoopLag()
        self.extra: list[Callable[[Page], None]] = []  # more families, rendered with the page

    # -- per request (hot path) ---------------------------------------------------------------

    def consume(self, r: RequestRecord) -> None:
        endpoint = r.endpoint if r.endpoint in _ENDPOINTS else "other"
        key = (endpoint, r.alias or "", r.provider or "", r.key_id or "", r.status)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = _Row()
        row.requests += 1
        latency = r.latency_s
        if latency > 0.0:  # measured: the request reached the proxy path
            row.duration[bisect_left(DURATION_BUCKETS, latency)] += 1
            row.duration_sum += latency
        if r.upstream_s > 0.0:  # an upstream was called: the gateway's own share is known
            own = latency - r.upstream_s
            if own < 0.0:
                own = 0.0
            row.overhead[bisect_left(OVERHEAD_BUCKETS, own)] += 1
            row.overhead_sum += own
        ttft = r.ttft_s
        if ttft is not None:
            row.ttft[bisect_left(TTFT_BUCKETS, ttft)] += 1
            row.ttft_sum += ttft
        u = r.usage
        if u is not None:
            row.prompt += u.prompt_tokens
            row.completion += u.completion_tokens
            row.cached += u.cached_tokens
            row.reasoning += u.reasoning_tokens
        if r.cost_usd:
            row.cost += r.cost_usd
        if r.attempts > 1:
            row.retries += r.attempts - 1

    # -- events -------------------------------------------------------------------------------

    def reload_result(self, ok: bool, when: float) -> None:
        """Record a configuration reload attempt (``when``: unix seconds)."""
        self._reload_ok = ok
        self._reloads["success" if ok else "failure"] += 1
        if ok:
            self._reload_success_at = when

    # -- the page -----------------------------------------------------------------------------

    def render(
        self,
        router: Router | None = None,
        sinks: Sequence[Sink] = (),
        edge: EdgeCounters | None = None,
    ) -> bytes:
        page = Page()
        page.family("truckllm_build_info", "gauge", "TruckLLM version (always 1).")
        page.sample("truckllm_build_info", (("version", __version__),), 1)
        self._render_requests(page)
        if router is not None:
            self._render_keys(page, router)
        self._render_reloads(page)
        self._render_sinks(page, sinks)
        for render in self.extra:  # families other parts own (the response cache)
            render(page)
        if edge is not None:
            _render_edge(page, edge)
        self.loop_lag.render(page)
        return page.render()

    def _render_requests(self, page: Page) -> None:
        rows = sorted(self._rows.items())
        page.family(
            "truckllm_requests_total",
            "counter",
            "Client requests by endpoint, alias (configured aliases only), provider, key and "
            "HTTP status.",
        )
        for (endpoint, alias, provider, key_id, status), row in rows:
            page.sample(
                "truckllm_requests_total",
                (
                    ("endpoint", endpoint),
                    ("alias", alias),
                    ("provider", provider),
                    ("key_id", key_id),
                    ("status", str(status)),
                ),
                row.requests,
            )
        self._render_usage(page, rows)
        self._render_retries(page, rows)
        self._render_histograms(page, rows)

    @staticmethod
    def _render_usage(page: Page, rows: list[tuple[RowKey, _Row]]) -> None:
        by_key: dict[tuple[str, str, str], list[float]] = {}
        for (_, alias, provider, key_id, _), row in rows:
            acc = by_key.setdefault((alias, provider, key_id), [0, 0, 0, 0, 0.0])
            acc[0] += row.prompt
            acc[1] += row.completion
            acc[2] += row.cached
            acc[3] += row.reasoning
            acc[4] += row.cost
        page.family(
            "truckllm_tokens_total",
            "counter",
            "Tokens by type (prompt includes cached), as the upstreams reported them.",
        )
        for (alias, provider, key_id), acc in by_key.items():
            if provider:
                for i, kind in enumerate(TOKEN_TYPES):
                    page.sample(
                        "truckllm_tokens_total",
                        (
                            ("alias", alias),
                            ("provider", provider),
                            ("key_id", key_id),
                            ("type", kind),
                        ),
                        int(acc[i]),
                    )
        page.family(
            "truckllm_cost_usd_total", "counter", "Cost in US dollars, from per-key pricing."
        )
        for (alias, provider, key_id), acc in by_key.items():
            if provider:
                page.sample(
                    "truckllm_cost_usd_total",
                    (("alias", alias), ("provider", provider), ("key_id", key_id)),
                    acc[4],
                )

    @staticmethod
    def _render_retries(page: Page, rows: list[tuple[RowKey, _Row]]) -> None:
        retries: dict[tuple[str, str, str], int] = {}
        for (endpoint, alias, provider, _, _), row in rows:
            if provider:
                k = (endpoint, alias, provider)
                retries[k] = retries.get(k, 0) + row.retries
        page.family(
            "truckllm_retries_total",
            "counter",
            "Upstream attempts beyond the first (retries and failovers), by the provider that "
            "answered in the end.",
        )
        for (endpoint, alias, provider), n in retries.items():
            page.sample(
                "truckllm_retries_total",
                (("endpoint", endpoint), ("alias", alias), ("provider", provider)),
                n,
            )

    def _render_histograms(self, page: Page, rows: list[tuple[RowKey, _Row]]) -> None:
        self._histogram(
            page,
            rows,
            "truckllm_request_duration_seconds",
            "Time from a request's arrival to its last byte.",
            DURATION_BUCKETS,
            lambda k: (("endpoint", k[0]), ("alias", k[1]), ("provider", k[2])),
            lambda r: (r.duration, r.duration_sum),
        )
        self._histogram(
            page,
            rows,
            "truckllm_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first byte.",
            TTFT_BUCKETS,
            lambda k: (("alias", k[1]), ("provider", k[2])),
            lambda r: (r.ttft, r.ttft_sum),
        )
        self._histogram(
            page,
            rows,
            "truckllm_gateway_overhead_seconds",
            "The gateway's own time per request: total time minus time waiting on upstreams.",
            OVERHEAD_BUCKETS,
            lambda k: (("endpoint", k[0]),),
            lambda r: (r.overhead, r.overhead_sum),
        )

    @staticmethod
    def _histogram(
        page: Page,
        rows: list[tuple[RowKey, _Row]],
        name: str,
        help_text: str,
        bounds: Sequence[float],
        project: Callable[[RowKey], tuple[tuple[str, str], ...]],
        pick: Callable[[_Row], tuple[list[int], float]],
    ) -> None:
        merged: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}
        for key, row in rows:
            counts, total = pick(row)
            if not any(counts):
                continue
            acc, acc_sum = merged.setdefault(project(key), ([0] * (len(bounds) + 1), [0.0]))
            for i, n in enumerate(counts):
                acc[i] += n
            acc_sum[0] += total
        page.family(name, "histogram", help_text)
        for pairs, (acc, acc_sum) in merged.items():
            page.histogram(name, pairs, bounds, acc, acc_sum[0])

    def _render_keys(self, page: Page, router: Router) -> None:
        now = router.clock()
        wall = self.clock()
        keys = [(ps, s) for ps in router.providers.values() for s in ps.keys]

        page.family(
            "truckllm_key_status",
            "gauge",
            "1 for the key's current state (active, cooling, disabled, out_of_service, "
            "circuit_open, ejected), 0 for the others.",
        )
        for ps, s in keys:
            current = s.status(now)[0]
            for st in _STATUSES:
                page.sample(
                    "truckllm_key_status",
                    (*_key_ids(ps, s), ("status", st.value)),
                    1 if st is current else 0,
                )
        page.family("truckllm_key_in_flight_requests", "gauge", "Upstream attempts in flight.")
        for ps, s in keys:
            page.sample("truckllm_key_in_flight_requests", _key_ids(ps, s), s.in_flight)
        self._render_key_health(page, keys, now, wall)
        self._render_key_outcomes(page, router, keys)

    @staticmethod
    def _render_key_health(
        page: Page, keys: list[tuple[ProviderState, KeyState]], now: float, wall: float
    ) -> None:
        page.family(
            "truckllm_key_remaining_requests",
            "gauge",
            "Requests the provider last said remain in the key's window (keys it reported for).",
        )
        for ps, s in keys:
            if s.quota.remaining_requests is not None:
                page.sample(
                    "truckllm_key_remaining_requests",
                    _key_ids(ps, s),
                    s.quota.remaining_requests,
                )
        page.family(
            "truckllm_key_remaining_tokens",
            "gauge",
            "Tokens the provider last said remain in the key's window (keys it reported for).",
        )
        for ps, s in keys:
            if s.quota.remaining_tokens is not None:
                page.sample(
                    "truckllm_key_remaining_tokens", _key_ids(ps, s), s.quota.remaining_tokens
                )
        page.family(
            "truckllm_key_cooldown_until_timestamp_seconds",
            "gauge",
            "Unix time a rate-limited key's cooldown ends; 0 when it is not cooling down.",
        )
        for ps, s in keys:
            until = wall + (s.cooling_until - now) if s.cooling_until > now else 0.0
            page.sample("truckllm_key_cooldown_until_timestamp_seconds", _key_ids(ps, s), until)
        page.family(
            "truckllm_key_success_ratio",
            "gauge",
            "Decaying share of the key's recent attempts that succeeded (0 to 1).",
        )
        for ps, s in keys:
            page.sample("truckllm_key_success_ratio", _key_ids(ps, s), s.success_rate)
        page.family(
            "truckllm_key_latency_seconds",
            "gauge",
            "Moving average of the key's time to the answer's start (keys with a sample).",
        )
        for ps, s in keys:
            if s.latency_s is not None:
                page.sample("truckllm_key_latency_seconds", _key_ids(ps, s), s.latency_s)

    @staticmethod
    def _render_key_outcomes(
        page: Page, router: Router, keys: list[tuple[ProviderState, KeyState]]
    ) -> None:
        page.family(
            "truckllm_key_attempts_total",
            "counter",
            "Upstream attempts by key and outcome (success, rate_limited, server_error, ...).",
        )
        for ps, s in keys:
            for kind, n in sorted(s.outcomes.items(), key=lambda item: item[0].value):
                page.sample(
                    "truckllm_key_attempts_total",
                    (*_key_ids(ps, s), ("outcome", kind.value)),
                    n,
                )
        page.family(
            "truckllm_provider_circuit_open",
            "gauge",
            "1 while the provider's circuit breaker is open or probing, else 0.",
        )
        for ps in router.providers.values():
            page.sample(
                "truckllm_provider_circuit_open",
                (("provider", ps.id),),
                0 if ps.breaker.state == "closed" else 1,
            )
        page.family(
            "truckllm_provider_ejected",
            "gauge",
            "1 while the provider is ejected for its success rate or on probation, else 0.",
        )
        for ps in router.providers.values():
            page.sample(
                "truckllm_provider_ejected",
                (("provider", ps.id),),
                1 if ps.outlier.ejected_until else 0,
            )

    def _render_reloads(self, page: Page) -> None:
        page.family(
            "truckllm_config_last_reload_successful",
            "gauge",
            "1 if the last configuration reload succeeded (or none was tried), else 0.",
        )
        page.sample("truckllm_config_last_reload_successful", (), 1 if self._reload_ok else 0)
        page.family(
            "truckllm_config_last_reload_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful configuration load.",
        )
        page.sample(
            "truckllm_config_last_reload_success_timestamp_seconds", (), self._reload_success_at
        )
        page.family("truckllm_config_reloads_total", "counter", "Configuration reloads by result.")
        for result, n in self._reloads.items():
            page.sample("truckllm_config_reloads_total", (("result", result),), n)

    @staticmethod
    def _render_sinks(page: Page, sinks: Sequence[Sink]) -> None:
        page.family("truckllm_sink_queue_depth", "gauge", "Request records a sink holds now.")
        for sink in sinks:
            page.sample(
                "truckllm_sink_queue_depth", (("sink", sink.name), ("type", sink.type)), sink.depth
            )
        page.family(
            "truckllm_sink_delivered_records_total", "counter", "Request records a sink delivered."
        )
        for sink in sinks:
            page.sample(
                "truckllm_sink_delivered_records_total",
                (("sink", sink.name), ("type", sink.type)),
                sink.delivered,
            )
        page.family(
            "truckllm_sink_dropped_records_total",
            "counter",
            "Request records a sink gave up, by reason (queue_full, delivery_failed, rejected, "
            "write_failed, shutdown, error).",
        )
        for sink in sinks:
            for reason, n in sorted({"queue_full": 0, **sink.dropped}.items()):
                page.sample(
                    "truckllm_sink_dropped_records_total",
                    (("sink", sink.name), ("type", sink.type), ("reason", reason)),
                    n,
                )


class EdgeCounters(Protocol):
    """What the HTTP server counts at its edge (``truckllm.http.server.EdgeStats``)."""

    refused: int
    accept_errors: int
    overloaded: int
    timeouts: dict[str, int]


def _render_edge(page: Page, edge: EdgeCounters) -> None:
    name = "truckllm_http_connections_refused_total"
    page.family(name, "counter", "Client connections closed at once over server.max_connections.")
    page.sample(name, (), edge.refused)
    name = "truckllm_http_accept_errors_total"
    page.family(name, "counter", "Failed accepts of client connections (out of descriptors).")
    page.sample(name, (), edge.accept_errors)
    name = "truckllm_http_overloaded_total"
    page.family(name, "counter", "Requests answered 503 at once over server.max_in_flight.")
    page.sample(name, (), edge.overloaded)
    name = "truckllm_http_timeouts_total"
    page.family(name, "counter", "Client connections cut off by a deadline, by phase.")
    for phase, n in edge.timeouts.items():
        page.sample(name, (("phase", phase),), n)
