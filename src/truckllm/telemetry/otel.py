"""OpenTelemetry spans of finished requests, sent to a collector over OTLP/HTTP.

Built only when ``tracing.endpoint`` is set. A finished request's trace is queued as it is (an
append); one named task on the event loop builds its spans from the record and the attempts, with
the times they really started and ended, encodes them (``telemetry/otlp.py``) and POSTs them in
batches on the gateway's own HTTP client. The queue is bounded in spans: when the collector is
slow or away, spans beyond it are dropped (and logged once per streak), never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from truckllm import __version__
from truckllm.config.schema import Config, TracingConfig
from truckllm.http.client import HTTPClient, HTTPClientError, ParsedURL
from truckllm.http.exchange import post_whole
from truckllm.providers.called import shown_url
from truckllm.telemetry.batching import batch_ready
from truckllm.telemetry.exposition import Page
from truckllm.telemetry.otlp import CLIENT, SERVER, Encoder, request
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.spans import (
    ProviderInfo,
    attempt_attributes,
    content,
    operation,
    provider_info,
    server_attributes,
    traces_url,
)
from truckllm.telemetry.tracing import RequestTrace

log = logging.getLogger("truckllm.telemetry")

BATCH_SPANS = 512  # spans per export at most; a full batch leaves without waiting
_ENCODE_CHUNK = 16  # requests encoded between two yields to the event loop
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_Queued = tuple[RequestTrace, RequestRecord, bytes | None, int]


def resource_attributes(config: TracingConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,...``), then the gateway's own."""
    attrs: dict[str, Any] = {}
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    attrs.update(
        {
            "service.name": config.service_name,
            "service.version": __version__,
            "telemetry.sdk.name": "truckllm",
            "telemetry.sdk.language": "python",
        }
    )
    return attrs


class OtlpExporter:
    """Queues traces on the event loop (:meth:`export`), sends them from one task."""

    def __init__(self, config: TracingConfig, environ: Mapping[str, str] = os.environ) -> None:
        assert config.endpoint is not None
        self.url = ParsedURL.parse(traces_url(config.endpoint))
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"truckllm/{__version__}",
            **{name: secret.reveal() for name, secret in config.headers.items()},
        }
        self.config = config
        self.shown_url = shown_url(traces_url(config.endpoint))  # for logs: no query, password
        self.encoder = Encoder()
        self.head = self.encoder.resource(
            resource_attributes(config, environ), ("truckllm", __version__)
        )
        self.exported = 0  # spans the collector took
        self.dropped = 0  # spans given up: queue full, collector failing, shutdown
        self._queue: deque[_Queued] = deque()
        self._spans = 0  # spans queued or being sent
        self._wake = asyncio.Event()
        self._closing = False
        self._failing: str | None = None
        self._unbuildable_seen: set[str] = set()  # exception classes logged
        self._client: HTTPClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._config: Config | None = None
        self._providers: dict[str, ProviderInfo] = {}

    def export(self, trace: RequestTrace, rec: RequestRecord, output: bytes | None) -> None:
        n = 1 + len(trace.attempts)
        if self._spans + n > self.config.max_queue or self._closing:
            self._drop(n, "shutting down" if self._closing else "queue full")
            return
        self._queue.append((trace, rec, output, time.time_ns()))
        self._spans += n
        if len(self._queue) == 1 or self._spans >= BATCH_SPANS:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Spans queued or being sent."""
        return self._spans

    def render(self, page: Page) -> None:
        """The exporter's families on the metrics page."""
        name = "truckllm_trace_spans_total"
        page.family(name, "counter", "Spans of traced requests: sent to the collector, or dropped.")
        page.sample(name, (("result", "exported"),), self.exported)
        page.sample(name, (("result", "dropped"),), self.dropped)
        name = "truckllm_trace_queue_spans"
        page.family(name, "gauge", "Spans waiting to be sent (tracing.max_queue at most).")
        page.sample(name, (), self.queued)

    async def start(self) -> None:
        if self._task is None:
            self._client = HTTPClient(keepalive=30.0)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="truckllm-otlp-export"
            )

    async def close(self, grace_s: float) -> None:
        """Send what is queued within ``grace_s`` seconds (no retries), then stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=grace_s)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._spans:
            self._drop(self._spans, "shutting down")
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        def full() -> bool:
            return self._spans >= BATCH_SPANS

        def closing() -> bool:
            return self._closing

        interval = self.config.flush_interval
        while await batch_ready(self._queue, self._wake, full, closing, interval):
            spans, taken = await self._batch()
            try:
                if spans:
                    await self._send(request(self.head, spans), len(spans))
            except Exception as exc:  # a bug in encoding must not stop tracing for good
                self._unbuildable(len(spans), exc)
            finally:
                self._spans -= taken

    async def _batch(self) -> tuple[list[bytes], int]:
        """The next batch's encoded spans, and how many queued spans it took off the queue (a
        request whose spans cannot be built is dropped, and counted, alone)."""
        queue = self._queue
        spans: list[bytes] = []
        taken = requests = 0
        while queue and len(spans) < BATCH_SPANS:
            trace, rec, output, end_ns = queue.popleft()
            n = 1 + len(trace.attempts)
            taken += n
            try:
                spans += self.spans(trace, rec, output, end_ns)
            except Exception as exc:
                self._unbuildable(n, exc)
            requests += 1
            if requests % _ENCODE_CHUNK == 0:
                await asyncio.sleep(0)
        return spans, taken

    def _unbuildable(self, n: int, exc: Exception) -> None:
        """Spans that could not be built or encoded: dropped; logged once per exception class
        (the class only: its message may hold request content)."""
        self.dropped += n
        name = type(exc).__name__
        if name not in self._unbuildable_seen:
            self._unbuildable_seen.add(name)
            log.error("spans could not be encoded, dropped", extra={"error": name, "spans": n})

    def spans(
        self, trace: RequestTrace, rec: RequestRecord, output: bytes | None, end_ns: int
    ) -> list[bytes]:
        """The encoded spans of one request: its own, then one per attempt."""
        method, path, endpoint = trace.request
        op = operation(endpoint)
        info = self._provider(trace.config, rec.provider)
        stable, varying = server_attributes(rec, op, info, method, path)
        if self.config.capture_content and trace.body is not None:
            varying.update(content(trace.body, output))
        encode, tid, sid = self.encoder.span, trace.trace_id, trace.span_id
        name = f"{op} {rec.model}" if rec.model else op
        times = (trace.start_ns, end_ns)
        error = rec.status >= 500
        out = [encode((tid, sid, trace.parent_id), name, SERVER, times, (stable, varying), error)]
        last = len(trace.attempts) - 1
        for i, a in enumerate(trace.attempts):
            if i == last and a.error is None:  # the committed attempt ends with the response
                a.end_ns = end_ns
                a.status = None if rec.status == 499 else rec.status
                a.error = rec.error_code
            info = self._provider(trace.config, a.provider_id)
            served = i == last
            child = attempt_attributes(
                a, op, info, rec.usage if served else None, rec.response_model if served else None
            )
            ids = (tid, a.span_id, sid)
            times = (a.start_ns, a.end_ns)
            out.append(encode(ids, f"{op} {a.model}", CLIENT, times, child, a.error is not None))
        return out

    def _provider(self, config: Config, provider_id: str | None) -> ProviderInfo | None:
        if provider_id is None:
            return None
        if config is not self._config:  # a reload: providers may have moved
            self._config, self._providers = config, {}
        info = self._providers.get(provider_id)
        if info is None:
            p = next((p for p in config.providers if p.id == provider_id), None)
            info = provider_info(p.type, p.base_url) if p is not None else ("unknown", None, None)
            self._providers[provider_id] = info
        return info

    async def _send(self, body: bytes, n: int) -> None:
        """POST one batch; 429, 502, 503, 504 and transport errors are retried with backoff
        within ``tracing.timeout`` (not when closing), then the batch is dropped."""
        assert self._client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        backoff = 0.25
        while True:
            left = max(deadline - loop.time(), 0.1)
            try:
                status, _, _ = await post_whole(self._client, self.url, self.headers, body, left)
            except (HTTPClientError, OSError, TimeoutError) as exc:
                detail, retry = f"{type(exc).__name__}: {exc}", True
            else:
                if status < 300:
                    self.exported += n
                    if self._failing is not None:
                        self._failing = None
                        log.info("span export recovered", extra={"url": self.shown_url})
                    return
                detail, retry = f"HTTP {status}", status in _RETRY_STATUSES
            if not retry or self._closing or loop.time() + backoff >= deadline:
                self._drop(n, detail)
                return
            await asyncio.sleep(backoff)
            backoff *= 2

    def _drop(self, n: int, reason: str) -> None:
        """Count dropped spans; logged when a streak of failures starts, not per batch."""
        self.dropped += n
        if self._failing is None:
            self._failing = reason
            log.warning(
                "spans dropped",
                extra={"url": self.shown_url, "reason": reason, "spans": n},
            )
