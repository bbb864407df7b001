"""Metrics and request-log sinks for one app, built from its configuration at start-up.

The app's record bus feeds both. The metrics page is served by the API's metrics endpoint (GET,
no authentication: it is a Prometheus scrape target) and renders per-key state from whichever
runtime serves at the time of the scrape. Sinks and the metrics path are read once at start-up;
changing them takes a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from truckllm.config.schema import Config
from truckllm.plugins import Registry
from truckllm.telemetry.exposition import CONTENT_TYPE
from truckllm.telemetry.metrics import EdgeCounters, Metrics
from truckllm.telemetry.record import RecordBus
from truckllm.telemetry.sinks import Sink, SinkContext, SinkFactory, sink_registry
from truckllm.telemetry.tracing import Tracer, build_tracer

if TYPE_CHECKING:
    from truckllm.routing import Router

log = logging.getLogger("truckllm.telemetry")

METRICS_CONTENT_TYPE = CONTENT_TYPE.encode()


class Telemetry:
    """Owns the app's metrics (``None`` when ``metrics.enabled`` is false) and request-log sinks.
    ``registry`` holds the sink types: the built-ins and installed plugins unless given."""

    def __init__(
        self,
        config: Config,
        records: RecordBus,
        registry: Registry[SinkFactory] | None = None,
    ) -> None:
        self.config = config
        self.records = records
        self.registry = registry
        self.metrics: Metrics | None = Metrics() if config.metrics.enabled else None
        self.metrics_path: str | None = config.metrics.path if self.metrics is not None else None
        self.sinks: list[Sink] = []
        self.edge: EdgeCounters | None = None  # the HTTP server's counters, when it gives them
        self.tracer: Tracer | None = None  # built at start when tracing.endpoint is set
        # start() subscribes the metrics to the bus unless their owner feeds them (the app
        # does, with its other counts: api/counts.py)
        self.feed_metrics = True
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Subscribe to the record bus and start the sinks. A sink that cannot be built or
        started is logged and left out: it must not keep the gateway from serving."""
        if self._started:
            return
        self._started = True
        self.tracer = build_tracer(self.config.tracing)
        if self.tracer is not None:
            await self.tracer.start()
            if self.metrics is not None:
                self.metrics.extra.append(self.tracer.exporter.render)
        if self.metrics is not None:
            if self.feed_metrics:
                self.records.subscribe(self.metrics.consume)
            self.metrics.loop_lag.start()
        if not self.config.logging.sinks:
            return
        registry = self.registry if self.registry is not None else sink_registry()
        for i, sink_config in enumerate(self.config.logging.sinks):
            name = f"{sink_config.type}-{i}"
            try:
                sink = registry.get(sink_config.type)(SinkContext(name, sink_config))
                await sink.start()
            except Exception:
                log.exception("request-log sink could not start", extra={"sink": name})
                continue
            self.sinks.append(sink)
            self.records.subscribe(sink.submit)

    async def close(self, grace_s: float = 5.0) -> None:
        """Flush every sink, all at once, within ``grace_s`` seconds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.metrics is not None:
            self.metrics.loop_lag.stop()
        if self.tracer is not None:
            await self.tracer.close(grace_s)  # exports the spans still queued
        sinks = self.sinks
        results = await asyncio.gather(
            *(sink.close(grace_s) for sink in sinks), return_exceptions=True
        )
        for sink, result in zip(sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "request-log sink failed to close",
                    extra={"sink": sink.name, "error": repr(result)},
                )

    def reload_result(self, ok: bool, when: float) -> None:
        """A configuration reload happened (``when``: unix seconds); no-op without metrics."""
        if self.metrics is not None:
            self.metrics.reload_result(ok, when)

    def render_metrics(self, router: Router) -> bytes:
        """The metrics page (Prometheus text format) with the key state of ``router``."""
        assert self.metrics is not None
        return self.metrics.render(router, self.sinks, self.edge)
