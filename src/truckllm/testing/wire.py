"""Plumbing the fake upstreams share, whatever wire format they speak: scripted answers, recorded
requests, paced event streams with their faults (cut, stall, reset), the admission gate that
applies :class:`~truckllm.testing.behaviour.Conditions`, and starting an aiohttp app on a port.

Each format brings a :class:`Dialect`: how it says "slow down", "I failed" and "this much quota
is left". Everything else here is format-free.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import ClientConnectionResetError, hdrs, web

from truckllm.testing.behaviour import FAILURES, Conditions, Decision, Quota, Throttle

Event = dict[str, Any] | bytes | str


Stamped = tuple[bytes, bytes]
"""An encoded event that carries the (system-wide monotonic) time it is sent: ``(head, tail)``,
sent with the time as JSON between them. Benchmarks use it to measure how long each event takes to
arrive. (A plain tuple: streams make one per event.)"""


def stamped(p: Stamped, now: float | None = None) -> bytes:
    """The event's bytes, stamped now (or at ``now``)."""
    return p[0] + orjson.dumps(time.monotonic() if now is None else now) + p[1]


Payload = bytes | Stamped  # an event's bytes, as sent
Encode = Callable[[Event], Payload]
STALL_S = 3600.0  # a stalled answer waits this long (or until the client leaves)


class VirtualTime:
    """Time for a fake that never waits, to test its pacing exactly: set on its app before it
    starts (``fake.app[VIRTUAL_TIME] = VirtualTime()``), its latency, time-to-first-token and
    event delays move ``now`` on at once instead of sleeping, and each response's headers, stream
    events and non-streamed body are logged at the ``now`` they would have been sent. (A stall
    still waits for real: it is an absence, not a delay.) Meant for one request at a time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.headers: list[float] = []  # when each response's headers went out
        self.events: list[tuple[float, bytes]] = []  # every stream event, as sent
        self.bodies: list[float] = []  # when each non-streamed answer went out

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


VIRTUAL_TIME = web.AppKey("virtual_time", VirtualTime)


async def _sleep(request: web.Request, seconds: float) -> None:
    virtual = request.app.get(VIRTUAL_TIME)
    await (asyncio.sleep(seconds) if virtual is None else virtual.sleep(seconds))


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
    """One request as the fake read it, and the answer it gave (``status``, ``answer_headers``
    and the body bytes as written: for a stream, every event it sent, as encoded). The answer is
    recorded before it is sent, so it is complete once the client has read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    status: int | None = None
    answer_headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b""

    @property
    def bearer(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


RECEIVED = web.RequestKey("truckllm.received", Received)
"""The request's :class:`Received` record, when the fake records: its answer is added to it."""


def _record(request: web.Request, status: int, headers: Any, body: bytes) -> None:
    rec = request.get(RECEIVED)
    if rec is not None:
        rec.status = status
        rec.answer_headers = dict(headers)
        rec.answer = body


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
        await _sleep(request, d.latency)
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
    events: Sequence[Event | Stamped],
    encode: Encode,
    *,
    headers: dict[str, str],
    status: int = 200,
    delays: Sequence[float] | None = None,
    cut_after: int | None = None,
    stall_after: int | None = None,
) -> web.StreamResponse:
    """Send ``events`` (``Stamped`` ones as they are, the others through ``encode``) as a
    server-sent event stream, each after its delay; close the connection before event
    ``cut_after``, or go silent before event ``stall_after``.

    Every event is encoded before the first is sent. The first event goes out through aiohttp
    (with the headers), and so do events without a delay; a run of events with delays goes to
    the loop's :class:`_Pacer`, which writes them straight to the transport as HTTP/1.1 chunks,
    so a paced event costs no sleep, no task wake-up and no aiohttp write of its own. (Only a
    chunked, uncompressed body is paced that way; others, such as an HTTP/1.0 answer, sleep and
    write event by event, as do all under :class:`VirtualTime`.)"""
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    virtual = request.app.get(VIRTUAL_TIME)
    if virtual is not None:
        virtual.headers.append(virtual.now)
    payloads = [ev if isinstance(ev, tuple) else encode(ev) for ev in events]
    n = len(payloads)
    if RECEIVED in request:
        sent = min([n, *(x for x in (cut_after, stall_after) if x is not None)])
        _record(
            request,
            status,
            resp.headers,
            b"".join(p if isinstance(p, bytes) else p[0] + b"0" + p[1] for p in payloads[:sent]),
        )
    # The pacer writes chunks itself, so only a chunked, uncompressed body goes through it.
    paced = (
        resp.headers.get(hdrs.TRANSFER_ENCODING) == "chunked"
        and not resp.compression
        and virtual is None
    )
    i = 0
    while i < n:
        if cut_after is not None and i >= cut_after:
            assert request.transport is not None
            request.transport.abort()
            return resp
        if stall_after is not None and i >= stall_after:
            await asyncio.sleep(STALL_S)
        delay = delays[i] if delays is not None else 0.0
        transport = request.transport
        if delay and i and paced and transport is not None:
            stop = n if cut_after is None else min(n, cut_after)
            if stall_after is not None:
                stop = min(stop, max(stall_after, i + 1))
            i = await _pacer().send(_Paced(transport, payloads, delays or (), i, stop))
            continue
        if delay:
            await (asyncio.sleep(delay) if virtual is None else virtual.sleep(delay))
        p = payloads[i]
        if virtual is None:
            await resp.write(p if isinstance(p, bytes) else stamped(p))
        else:
            data = p if isinstance(p, bytes) else stamped(p, virtual.now)
            virtual.events.append((virtual.now, data))
            await resp.write(data)
        i += 1
    await resp.write_eof()
    return resp


class _Paced:
    """One stream in the pacer's hands: it sends ``payloads[i:stop]``, each after its delay."""

    __slots__ = ("delays", "done", "i", "payloads", "stop", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        payloads: Sequence[Payload],
        delays: Sequence[float],
        i: int,
        stop: int,
    ) -> None:
        self.transport = transport
        self.payloads = payloads
        self.delays = delays
        self.i = i
        self.stop = stop
        # The index of the first event not sent, once the pacer is done with this stream.
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()


class _Pacer:
    """Sends the waiting events of every stream on one loop from shared timers: one timer per
    millisecond in which events fall due, instead of an ``asyncio.sleep`` (timer, future, task
    wake-up) and an aiohttp write per event. A due event is written straight to its transport as
    one HTTP/1.1 chunk, the same bytes aiohttp would write. As with a sleep after each write, an
    event is due its delay after the previous one was sent (on uvloop's clock of whole
    milliseconds, as ``asyncio.sleep`` there)."""

    def __init__(self) -> None:
        self.ticks: dict[int, list[_Paced]] = {}  # millisecond -> streams with an event due in it

    def send(self, s: _Paced) -> asyncio.Future[int]:
        """Send ``s.payloads[s.i]`` after ``s.delays[s.i]``, then each following one that has a
        delay, up to ``s.stop``; the future gives the index of the first event not sent."""
        loop = asyncio.get_running_loop()
        self._wait(s, loop.time(), loop)
        return s.done

    def _wait(self, s: _Paced, now: float, loop: asyncio.AbstractEventLoop) -> None:
        # The millisecond the event falls due in (never before it: uvloop's clock counts whole
        # milliseconds, and the epsilon keeps float error from adding one).
        tick = math.ceil((now + s.delays[s.i]) * 1000.0 - 1e-6)
        streams = self.ticks.get(tick)
        if streams is None:
            self.ticks[tick] = [s]
            loop.call_at(tick / 1000.0, self._fire, tick)
        else:
            streams.append(s)

    def _fire(self, tick: int) -> None:
        loop = asyncio.get_running_loop()
        for s in self.ticks.pop(tick):
            done = s.done
            if done.done():  # the client left and its handler was cancelled
                continue
            transport = s.transport
            if transport.is_closing():
                done.set_exception(ClientConnectionResetError("Cannot write to closing transport"))
                continue
            p = s.payloads[s.i]
            data = p if isinstance(p, bytes) else stamped(p)
            try:
                transport.write(b"%x\r\n%b\r\n" % (len(data), data))
            except Exception as exc:  # the handler raises it, as aiohttp would
                done.set_exception(exc)
                continue
            s.i += 1
            if s.i < s.stop and s.delays[s.i]:
                # From the time of this write, as a sleep after it would: a batch that takes a
                # while to write spreads over the following milliseconds instead of staying one.
                self._wait(s, loop.time(), loop)
            else:
                done.set_result(s.i)


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pacer] = weakref.WeakKeyDictionary()


def _pacer() -> _Pacer:
    loop = asyncio.get_running_loop()
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = _Pacer()
    return pacer


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
        await _sleep(request, wait)
    virtual = request.app.get(VIRTUAL_TIME)
    if virtual is not None:
        virtual.bodies.append(virtual.now)
    if fault not in ("cut", "stall"):
        return web.Response(status=status, body=body, headers=headers)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = len(body)
    _record(request, status, headers, body[: len(body) // 2])
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
        self.app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[self._record_answer]
        )
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
            rec = Received(request.method, path, dict(request.headers), body, raw)
            request[RECEIVED] = rec
            self.received.append(rec)
        return body, raw

    @web.middleware
    async def _record_answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Record a whole (not streamed) answer in the request's :class:`Received` before aiohttp
        sends it; :func:`stream` and :func:`answer` record what they send themselves."""
        resp = await handler(request)
        if isinstance(resp, web.Response) and RECEIVED in request:
            body = resp.body
            _record(request, resp.status, resp.headers, body if isinstance(body, bytes) else b"")
        return resp

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner, bound = await start_app(self.app, host, port, backlog=self.backlog)
        self.url = f"http://{host}:{bound}{self.url_suffix}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
