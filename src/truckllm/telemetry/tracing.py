"""Tracing of proxied requests, the part on the request path: W3C trace context in from the client
and out to each upstream attempt, and the times and outcomes the spans are built from.

A traced request pays here for a few random ids, clock reads and one header line per attempt. The spans themselves (``telemetry/otel.py``) are built once the
response is finished, from the request's record and its attempts, and exported in the
background. With ``tracing.endpoint`` unset there is no :class:`Tracer` at all and the request
path pays an ``is None`` check.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Protocol

from truckllm.config.schema import Config, TracingConfig
from truckllm.providers.base import Reply, RequestRejected, UpstreamError
from truckllm.providers.http import UPSTREAM_TRACE
from truckllm.routing import OutcomeKind, Pick
from truckllm.telemetry.exposition import Page
from truckllm.telemetry.record import RequestRecord

log = logging.getLogger("truckllm.telemetry")

_MASK64 = (1 << 64) - 1
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_MAX_TRACESTATE = 512  # bytes; a longer one is not forwarded


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C ``traceparent``; ``None`` when invalid."""
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_hex, span_hex, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def header_lines(trace_id: int, span_id: int, sampled: bool, state: bytes = b"") -> bytes:
    """The ``traceparent`` (and ``tracestate``) header lines for a request made in that span."""
    flags = b"01" if sampled else b"00"
    return b"traceparent: 00-%032x-%016x-%s\r\n%s" % (trace_id, span_id, flags, state)


class Exporter(Protocol):
    """Builds and exports the spans of finished requests, off the request's critical path."""

    def export(self, trace: RequestTrace, rec: RequestRecord, output: bytes | None) -> None:
        """Take a finished request's trace (on the event loop: must not block)."""

    async def start(self) -> None: ...

    async def close(self, grace_s: float) -> None:
        """Export what is queued within ``grace_s`` seconds, then stop."""

    def render(self, page: Page) -> None:
        """Its counters on the metrics page."""


@dataclass(slots=True)
class Attempt:
    """One upstream attempt: times in unix nanoseconds; ``error`` set when it failed."""

    span_id: int
    number: int
    provider_id: str
    key_id: str
    model: str
    start_ns: int
    end_ns: int = 0
    error: str | None = None  # the outcome kind of a failed attempt: error.type
    status: int | None = None  # the upstream's HTTP status, when it answered
    key_status: str | None = None  # the key's state once the router learnt from the attempt
    cooldown_s: float | None = None  # seconds until the key serves again, when it is held back


class Tracer:
    """One per app, built at start when ``tracing.endpoint`` is set. Runs on the event loop."""

    def __init__(self, config: TracingConfig, exporter: Exporter, seed: int | None = None) -> None:
        self.config = config
        self.exporter = exporter
        self.capture = config.capture_content
        self.rng = random.Random(seed)
        self._bound = round(config.sample_ratio * (1 << 64))

    def begin(
        self, scope: Mapping[str, Any], endpoint: str, body: Any, config: Config
    ) -> RequestTrace:
        """The trace of the request of ASGI ``scope``: the client's trace continued (its sampling
        decision followed), or a new one sampled at ``tracing.sample_ratio``. ``config``: the
        runtime's that serves it."""
        parent, state = None, None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = value
            elif name == b"tracestate":
                state = value
        ctx = parse_traceparent(parent) if parent is not None else None
        rng = self.rng
        if ctx is None:
            trace_id = rng.getrandbits(128) or 1
            parent_id, sampled, state = None, (trace_id & _MASK64) < self._bound, None
        else:
            trace_id, parent_id, sampled = ctx
        line = b""
        if state and len(state) <= _MAX_TRACESTATE and not any(c in state for c in b"\r\n\0"):
            line = b"tracestate: " + state.strip() + b"\r\n"
        return RequestTrace(
            self,
            trace_id,
            rng.getrandbits(64) or 1,
            parent_id,
            sampled,
            line,
            (scope["method"], scope["path"], endpoint),
            body if self.capture and isinstance(body, dict) else None,
            config,
        )

    async def start(self) -> None:
        await self.exporter.start()

    async def close(self, grace_s: float) -> None:
        await self.exporter.close(grace_s)


class RequestTrace:
    """One request's trace, filled as it runs; implements the attempt loop's ``AttemptTrace``."""

    __slots__ = (
        "_token",
        "attempts",
        "body",
        "config",
        "parent_id",
        "request",
        "sampled",
        "span_id",
        "start_ns",
        "state",
        "trace_id",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        trace_id: int,
        span_id: int,
        parent_id: int | None,
        sampled: bool,
        state: bytes,
        request: tuple[str, str, str],
        body: dict[str, Any] | None,
        config: Config,
    ) -> None:
        self.tracer = tracer
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.sampled, self.state = sampled, state
        self.request = request  # method, path, endpoint
        self.body = body  # the client's request, kept only with capture_content
        self.config = config  # of the runtime serving the request: provider types and URLs
        self.start_ns = time.time_ns()
        self.attempts: list[Attempt] = []
        self._token: Token[bytes | None] | None = None

    def attempt(self, pick: Pick, model: str, number: int) -> None:
        span_id = self.tracer.rng.getrandbits(64) or 1
        self.attempts.append(
            Attempt(span_id, number, pick.provider.id, pick.key.id, model, time.time_ns())
        )
        token = UPSTREAM_TRACE.set(header_lines(self.trace_id, span_id, self.sampled, self.state))
        if self._token is None:
            self._token = token

    def failed(
        self,
        pick: Pick,
        kind: OutcomeKind,
        failure: Reply | UpstreamError | RequestRejected | None,
        now: float,
    ) -> None:
        if kind is OutcomeKind.NOT_SENT:  # the adapter refused it: nothing went upstream
            self.attempts.pop()
            return
        a = self.attempts[-1]
        a.end_ns, a.error = time.time_ns(), kind.value
        if isinstance(failure, Reply):
            a.status = failure.status
        elif isinstance(failure, UpstreamError):
            a.status = failure.upstream_status
        status, _, until = pick.state.status(now)
        a.key_status = status.value
        if until is not None:
            a.cooldown_s = max(until - now, 0.0)

    def end(self, rec: RequestRecord, output: bytes | None = None) -> None:
        """The response is finished and ``rec`` complete: the spans go to the exporter (when the
        trace is sampled). ``output``: the whole answer's body, for capture_content."""
        if self._token is not None:
            with contextlib.suppress(ValueError):  # set in another context: ends with it
                UPSTREAM_TRACE.reset(self._token)
            self._token = None
        if self.sampled:
            try:
                self.tracer.exporter.export(self, rec, output)
            except Exception:
                log.exception("spans not exported", extra={"request_id": rec.request_id})


def build_tracer(config: TracingConfig) -> Tracer | None:
    """The app's tracer, or ``None`` when tracing is off (then the exporter is never imported)."""
    if config.endpoint is None:
        return None
    from truckllm.telemetry.otel import OtlpExporter

    return Tracer(config, OtlpExporter(config))
