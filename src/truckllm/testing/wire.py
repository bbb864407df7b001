"""Plumbing the fake upstreams share, whatever wire format they speak: scripted answers, recorded
requests, paced event streams with their faults (cut, stall, reset), the admission gate that
applies :class:`~truckllm.testing.behaviour.Conditions`, and starting an aiohttp app on a port.

Each format brings a :class:`Dialect`: how it says "slow down", "I failed" and "this much quota
is left". Everything else here is format-free.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from truckllm.testing.behaviour import FAILURES, Conditions, Decision, Quota, Throttle

Event = dict[str, Any] | bytes | str
Encode = Callable[[Event], bytes]
STALL_S = 3600.0  # a stalled answer waits this long (or until the client leaves)


@dataclass
class Scripted:
    """One scripted answer. ``events`` makes an SSE answer: dicts become ``data: {json}``, bytes
    are sent as they are (include the blank line), ``"[DONE]"`` the terminator."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any] | bytes | str] | None = None
    delay: float = 0.0  # before the response starts
    event_delay: float = 0.0  # between events
    reset: bool = False  # close the connection without answering
    cut_after: int | None = None  # close the connection after this many events
    stall_after: int | None = None  # stop sending (but keep the connection) after this many events


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def bearer(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


class Dialect(Protocol):
    """How one wire format says what :class:`Conditions` decided."""

    def throttled(self, throttle: Throttle) -> web.Response:
        """A 429 with the format's body, rate-limit and retry headers (or body fields)."""
        ...

    def failure(self, status: int) -> web.Response:
        """The format's error answer for an injected 500, 503 or 529."""
        ...

    def quota_headers(self, quota: Quota) -> dict[str, str]:
        """Rate-limit headers for a successful answer (empty if the format sends none)."""
        ...


def reset(request: web.Request) -> None:
    """Close the connection without an answer: the client sees it reset."""
    assert request.transport is not None
    request.transport.close()
    raise asyncio.CancelledError  # aiohttp drops the handler


async def gate(
    request: web.Request, conditions: Conditions, dialect: Dialect, key: str, prompt_tokens: int
) -> tuple[Decision, web.StreamResponse | None]:
    """Admit one request: a 429 at once when the key is over a limit, else the latency, then an
    injected failure or reset if one hits. Returns the decision and, when the request ends here,
    its answer."""
    d = conditions.admit(key, prompt_tokens)
    if d.throttle is not None:
        return d, dialect.throttled(d.throttle)
    if d.latency:
        await asyncio.sleep(d.latency)
    if d.fault in FAILURES:
        return d, dialect.failure(int(d.fault))
    if d.fault == "reset":
        reset(request)
    return d, None


def fault_point(d: Decision, count: int) -> tuple[int | None, int | None]:
    """``(cut_after, stall_after)`` for a stream of ``count`` events: the middle of it."""
    middle = max(1, count // 2)
    return (middle if d.fault == "cut" else None, middle if d.fault == "stall" else None)


async def stream(
    request: web.Request,
    events: Sequence[Event],
    encode: Encode,
    *,
    headers: dict[str, str],
    status: int = 200,
    delays: Sequence[float] | None = None,
    cut_after: int | None = None,
    stall_after: int | None = None,
) -> web.StreamResponse:
    """Send ``events`` as a server-sent event stream, each after its delay; close the connection
    before event ``cut_after``, or go silent before event ``stall_after``."""
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    for i, ev in enumerate(events):
        if cut_after is not None and i >= cut_after:
            assert request.transport is not None
            request.transport.abort()
            return resp
        if stall_after is not None and i >= stall_after:
            await asyncio.sleep(STALL_S)
        if delays is not None and delays[i]:
            await asyncio.sleep(delays[i])
        await resp.write(encode(ev))
    await resp.write_eof()
    return resp


async def answer(
    request: web.Request,
    body: bytes,
    headers: dict[str, str],
    fault: str | None = None,
    wait: float = 0.0,
    status: int = 200,
) -> web.StreamResponse:
    """A non-streamed answer after ``wait`` seconds (its generation time); a ``cut`` fault
    closes the connection half-way through the body, a ``stall`` stops sending there."""
    if wait:
        await asyncio.sleep(wait)
    if fault not in ("cut", "stall"):
        return web.Response(status=status, body=body, headers=headers)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    if fault == "stall":
        await asyncio.sleep(STALL_S)
    assert request.transport is not None
    request.transport.abort()
    return resp


async def play(
    request: web.Request,
    s: Scripted,
    encode: Encode,
    *,
    json_type: str = "application/json",
    sse_type: str = "text/event-stream",
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Play a scripted answer: JSON (``body``) or an SSE stream (``events``)."""
    if s.delay:
        await asyncio.sleep(s.delay)
    if s.reset:
        reset(request)
    base = headers or {}
    if s.events is None:
        body = (
            s.body
            if isinstance(s.body, bytes)
            else orjson.dumps(s.body if s.body is not None else {})
        )
        return web.Response(
            status=s.status, body=body, headers={"Content-Type": json_type, **base, **s.headers}
        )
    delays = [s.event_delay if i else 0.0 for i in range(len(s.events))]
    return await stream(
        request,
        s.events,
        encode,
        headers={"Content-Type": sse_type, **base, **s.headers},
        status=s.status,
        delays=delays,
        cut_after=s.cut_after,
        stall_after=s.stall_after,
    )


async def start_app(
    app: web.Application, host: str, port: int, *, backlog: int = 128
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port). Handlers are cancelled when their client
    leaves, so a stalled answer ends with its connection. Returns the runner and the port."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    server = site._server
    assert server is not None and hasattr(server, "sockets")
    return runner, int(server.sockets[0].getsockname()[1])


class FakeServer:
    """The life cycle every fake upstream shares: an aiohttp app of its ``routes()``, served on a
    free port by :meth:`start`, which sets ``url`` (the host plus ``url_suffix``)."""

    url_suffix = ""
    backlog = 128

    def __init__(self, conditions: Conditions) -> None:
        self.conditions = conditions  # per-key behaviour, shareable between fakes
        self.script: deque[Scripted] = deque()  # answers to give, first in first out
        self.received: list[Received] = []  # every request, when ``record`` is on
        self.record = True
        self.cancelled = 0  # handlers cancelled because the client (the gateway) went away
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(self.routes())

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def take(self, request: web.Request, path: str) -> tuple[Any, bytes]:
        """Read a request: its JSON body (``None`` if it is not JSON) and raw bytes, recorded in
        ``received`` under ``path`` when ``record`` is on."""
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if self.record:
            self.received.append(Received(request.method, path, dict(request.headers), body, raw))
        return body, raw

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner, bound = await start_app(self.app, host, port, backlog=self.backlog)
        self.url = f"http://{host}:{bound}{self.url_suffix}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
