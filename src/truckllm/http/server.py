"""A lean HTTP/1.1 server for an ASGI 3 application: one :class:`asyncio.Protocol` per connection
over ``httptools`` (llhttp), on uvloop or asyncio's own loop.

Per request it allocates a scope, a header list and one :class:`_Cycle`; no regexes, no timers.
The app's task starts once the headers are in (the body usually arrives in the same read).

Every phase of a connection has a deadline (:class:`EdgeLimits`), checked by one periodic sweeper
for the whole server, so a deadline costs a timestamp, not a timer: the request head must arrive
within ``headers_timeout`` (408 if it began); the body may pause at most ``body_timeout`` between
reads and take ``body_total_timeout`` in all (408 while no response has started); a client that
takes nothing from a full write buffer for ``send_timeout`` is cut off (its request's task is
cancelled through the disconnect extension); an idle keep-alive connection lives
``keep_alive_timeout``. Beyond ``max_connections`` a new connection is closed at once; beyond
``max_in_flight`` requests being answered, a new one gets 503 with ``retry-after`` and a close.

Accepts that fail for lack of descriptors are counted and logged (once per interval). asyncio's
loop reports them to its exception handler ("socket.accept() out of system resource"), which the
server wraps while it listens. uvloop never reports them: libuv accepts and closes such connections
itself (its reserve-descriptor trick), so there the sweep probes for a free descriptor and counts
each sweep that finds none (a lower bound of the connections lost).

Request bodies are handed over as they arrive, everything buffered in one ``http.request``
message; reading pauses while more than 64 KiB are unread. Once the body is consumed,
``receive()`` waits until the response is complete or the client is gone, then answers
``http.disconnect``: that is how the app notices a client that hung up mid-request.

Responses: the status line and headers are held until the first body message and written with
it. A ``content-length`` from the app is used as is; a single body message gets one; a streamed
body without one is chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0).
``send()`` waits while the transport's write buffer is over its high-water mark, so a fast
stream to a slow client does not buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

from truckllm.http.acceptor import FD_ERRNOS, Loads, OneAtATime
from truckllm.http.forwarded import Networks, forwarded_client, trusted

log = logging.getLogger("truckllm.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

DISCONNECT_EXTENSION = "truckllm.disconnect"  # scope["extensions"]: see _Cycle.watch_disconnect
PUSH_EXTENSION = "truckllm.push"  # scope["extensions"]: see _Cycle.push
EDGE_STATS = "truckllm.edge"  # the lifespan scope's extensions: the server's EdgeStats
MAX_HEADER_BYTES = 64 * 1024  # request line + headers; more is answered with 431
BODY_HIGH_WATER = 64 * 1024  # unread request body that pauses reading
LOG_INTERVAL = 60.0  # seconds between two log lines about refused connections or failed accepts


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """Deadlines (seconds) and caps of the client side; defaults in line with nginx."""

    headers_timeout: float = 60.0  # the request line and headers, from the first byte
    body_timeout: float = 60.0  # silence between two reads of a request body
    body_total_timeout: float = 300.0  # a whole request body
    send_timeout: float = 60.0  # a client that takes nothing of a full write buffer
    keep_alive_timeout: float = 75.0  # an idle connection between requests
    max_header_count: int = 100  # header lines per request; more is answered with 431
    max_connections: int = 0  # open client connections; 0: no cap
    max_in_flight: int = 0  # requests being answered; more get 503 at once; 0: no cap
    # Peers whose X-Forwarded-For names the client (scope["client"]); none: the peer is the client.
    trusted_proxies: Networks = ()


class EdgeStats:
    """Counters of the edge (read by the metrics page): connections refused over
    ``max_connections``, accepts that failed, requests refused over ``max_in_flight``, and
    connections cut off per deadline."""

    __slots__ = ("accept_errors", "overloaded", "refused", "timeouts")

    def __init__(self) -> None:
        self.refused = 0
        self.accept_errors = 0
        self.overloaded = 0
        self.timeouts: dict[str, int] = {"headers": 0, "body": 0, "send": 0, "keep_alive": 0}


_ASGI = {"version": "3.0", "spec_version": "2.3"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_DISCONNECT: Message = {"type": "http.disconnect"}


def _error_body(message: str, type_: str) -> bytes:
    return b'{"error":{"message":"%s","type":"%s","param":null,"code":null}}' % (
        message.encode(),
        type_.encode(),
    )


_BAD_REQUEST = _error_body("Invalid HTTP request.", "invalid_request_error")
_TOO_LARGE = _error_body("Request header fields too large.", "invalid_request_error")
_TIMEOUT = _error_body("The request was not received in time.", "invalid_request_error")
_SERVER_ERROR = _error_body("Internal server error.", "server_error")
_OVERLOADED = _error_body("The server is at capacity, retry shortly.", "overloaded_error")
_RETRY_AFTER = b"retry-after: 1\r\n"
_JSON = [(b"content-type", b"application/json")]
_CLOSED_PARSER = httptools.HttpRequestParser(object())  # what an unconnected protocol holds


class DateHeader:
    """The ``date`` header line, formatted once a second (one per server: no module state)."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._line


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def _error_response(status: int, body: bytes, date: bytes, extra: bytes = b"") -> bytes:
    return b"%s%scontent-type: application/json\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        _status_line(status),
        date,
        len(body),
        extra,
        _CLOSE,
        body,
    )


class _Reject(Exception):
    """Raised from a parser callback to answer with ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Cycle:
    """One request and its response: the ASGI ``receive`` and ``send`` of one app call."""

    __slots__ = (
        "body",
        "buffered",
        "chunked",
        "conn",
        "continued",
        "discard",
        "head_sent",
        "headers",
        "http10",
        "is_head",
        "keep_alive",
        "message_complete",
        "no_body",
        "on_gone",
        "remaining",
        "request_read",
        "response_complete",
        "response_started",
        "scope",
        "status",
        "task",
        "waiters",
    )

    def __init__(self, conn: _Connection, scope: Scope, keep_alive: bool, http10: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.http10 = http10
        self.is_head = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0
        self.message_complete = False
        self.request_read = False  # the last http.request message was handed out
        self.discard = False  # the response is done: drop the rest of the request body
        self.continued = False  # 100 Continue written (or not wanted)
        self.waiters: list[asyncio.Future[None]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.on_gone: Callable[[], None] | None = None
        self.response_started = False
        self.response_complete = False
        self.head_sent = False
        self.status = 0
        self.headers: Any = ()
        self.chunked = False
        self.no_body = False
        self.remaining = -1  # bytes still owed under the app's content-length, -1: no limit

    # -- receive ------------------------------------------------------------------------------

    def watch_disconnect(self, callback: Callable[[], None] | None) -> None:
        """The ``truckllm.disconnect`` extension: ``callback`` runs once if the client goes away
        before the response is complete (``None`` stops watching). It spares the app a task or
        timer per request to notice a client that hung up."""
        self.on_gone = callback

    async def receive(self) -> Message:
        conn = self.conn
        while not self.request_read:
            if conn.closing:
                return _DISCONNECT
            if self.body or self.message_complete:
                body = self.body
                data = body[0] if len(body) == 1 else b"".join(body)
                self.body = []
                self.buffered = 0
                more = not self.message_complete
                self.request_read = not more
                if conn.reading_paused:
                    conn.maybe_resume_reading()
                return {"type": "http.request", "body": data, "more_body": more}
            if not self.continued:
                self.continued = True
                if not self.http10 and self._expects_continue():
                    conn.transport.write(_CONTINUE)
            await self._wait()
        while not (self.response_complete or conn.closing):
            await self._wait()
        return _DISCONNECT

    def _expects_continue(self) -> bool:
        for name, value in self.scope["headers"]:
            if name == b"expect" and value.lower() == b"100-continue":
                return True
        return False

    async def _wait(self) -> None:
        fut: asyncio.Future[None] = self.conn.loop.create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(fut)
        try:
            await fut
        finally:
            self.waiters.remove(fut)

    def wake(self) -> None:
        if self.waiters:
            for fut in self.waiters:
                if not fut.done():
                    fut.set_result(None)

    # -- send ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError(f"unexpected ASGI message {kind!r} at this point")
            more = message.get("more_body", False)
            self.write(message.get("body", b""), more)
            conn = self.conn
            if more and conn.write_paused and not conn.closing:
                await conn.drain()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("unexpected ASGI message 'http.response.start': already started")
            self.response_started = True
            self.status = message["status"]
            self.headers = message.get("headers", ())
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def push(self, body: bytes) -> bool:
        """The ``truckllm.push`` extension: a started response's next body part (not the last),
        written now by a plain call, from outside the app's task (a stream relayed from its
        upstream's read callback). True while the client keeps up; False once its socket is
        full or it is gone: the caller then goes back to ``send``, which waits for the drain."""
        if not self.response_started or self.response_complete:
            raise RuntimeError("truckllm.push outside a started response")
        conn = self.conn
        if conn.closing:  # dropped, as by send: the client is gone
            return False
        if self.chunked and body:
            conn.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.write(body, True)
        return not conn.write_paused

    def write(self, body: bytes, more: bool) -> None:
        """Write a body part (with the head first); completes the response when not ``more``."""
        conn = self.conn
        if conn.closing:
            # The client is gone: a silent no-op, but the response counts as done.
            if not more:
                self.response_complete = True
            return
        if self.head_sent:
            if self.chunked and more and body:  # a stream's next chunk: the usual write
                conn.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                return
            if self.no_body:
                data = b""
            elif self.chunked:
                if body:
                    data = b"%x\r\n%b\r\n" % (len(body), body)
                    if not more:
                        data += _LAST_CHUNK
                else:
                    data = b"" if more else _LAST_CHUNK
            else:
                data = body
                if self.remaining >= 0:
                    self._count(len(body), more)
        else:
            data = self._head(body, more)
        if data:
            conn.transport.write(data)
        if not more:
            self.response_complete = True
            conn.response_done(self)

    def _count(self, size: int, more: bool) -> None:
        self.remaining -= size
        if self.remaining < 0:
            self.keep_alive = False
            raise RuntimeError("response body longer than its content-length")
        if not more and self.remaining:
            raise RuntimeError("response body shorter than its content-length")

    def _head(self, body: bytes, more: bool) -> bytes:
        """The status line and headers, with the framing the response needs, plus ``body``."""
        status = self.status
        parts = [_status_line(status), self.conn.server.date()]
        lines = 2
        content_length = -1
        transfer_encoding = False
        server = self.conn.server
        keep_alive = self.keep_alive and not (server.draining or server.keep_alive_off)
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                content_length = int(value)
            elif lname == b"connection":
                if value.lower() == b"close":
                    keep_alive = False
                continue  # written below, from keep_alive
            elif lname == b"transfer-encoding":
                transfer_encoding = True
            parts.append(b"%b: %b\r\n" % (name, value))
            lines += 1
        no_body = chunked = False
        if self.is_head or status < 200 or status in (204, 304):
            no_body = True
        elif content_length >= 0:
            if len(body) > content_length or (not more and len(body) < content_length):
                raise RuntimeError("response body does not match its content-length")
        elif transfer_encoding:
            chunked = True
        elif not more:
            parts.append(b"content-length: %d\r\n" % len(body))
            lines += 1
        elif self.http10:
            keep_alive = False  # delimited by closing the connection
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
            chunked = True
        if not keep_alive:
            parts.append(_CLOSE)
            lines += 1
        elif self.http10:
            parts.append(_KEEP_ALIVE)
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # A CR or LF inside a header name or value would split the response: one count each.
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1:
            raise RuntimeError("invalid character in a response header")
        self.head_sent = True
        self.keep_alive = keep_alive
        if no_body:
            self.no_body = True
            return head
        if chunked:
            self.chunked = True
            if body:
                head += b"%x\r\n%b\r\n" % (len(body), body)
            return head + _LAST_CHUNK if not more else head
        if content_length >= 0:
            self.remaining = content_length - len(body)
        return head + body if body else head

    # -- the app's task -----------------------------------------------------------------------

    def task_done(self, task: asyncio.Task[None]) -> None:
        conn = self.conn
        conn.server.tasks.discard(task)
        # Break the request's reference cycles (the scope's extension is a method of this cycle;
        # a closed connection still names it as active) so it is freed by reference counting.
        self.on_gone = None
        extensions = self.scope.get("extensions")
        if extensions:
            extensions.clear()
        if conn.closing and conn.active is self:
            conn.active = None
        if task.cancelled():
            exc: BaseException | None = None
            cancelled = True
        else:
            exc = task.exception()
            cancelled = False
            if exc is not None:
                log.error("exception in the ASGI application", exc_info=exc)
        if self.response_complete or conn.closing:
            return
        if not self.head_sent:
            if exc is None and not cancelled:
                log.error("the ASGI application returned without a response")
            # Nothing written yet: a clean 500, and the connection lives on.
            self.status = 500
            self.headers = _JSON
            self.response_started = True
            self.write(_SERVER_ERROR, False)
        else:
            conn.close()  # half a response: the client must see it cut


class _Connection(asyncio.Protocol):
    __slots__ = (
        "active",
        "body_since",
        "client",
        "closing",
        "drain_waiter",
        "head_since",
        "header_bytes",
        "headers",
        "headers_pending",
        "idle_since",
        "last_body",
        "loop",
        "parser",
        "parsing",
        "partial_bytes",
        "queue",
        "reading_paused",
        "requests",
        "server",
        "sockname",
        "transport",
        "trusted_peer",
        "url",
        "write_paused",
        "write_paused_since",
    )

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = _CLOSED_PARSER  # the real one once connected (it holds this protocol)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.sockname: tuple[str, int] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.headers_pending = False  # a request's head has begun and is not complete
        self.partial_bytes = 0
        self.parsing: _Cycle | None = None  # the request whose body is being parsed
        self.active: _Cycle | None = None  # the request the app is answering
        self.queue: deque[_Cycle] = deque()  # pipelined requests waiting their turn
        self.closing = False
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.idle_since = 0.0  # since when no request is in (the keep-alive deadline)
        self.head_since = 0.0  # since when the head being parsed began
        self.body_since = 0.0  # since when the body being parsed began
        self.last_body = 0.0  # the last read of that body
        self.write_paused_since = 0.0
        self.requests = 0  # request heads parsed on this connection
        self.trusted_peer = False  # a proxy in trusted_proxies: X-Forwarded-For is believed

    # -- transport events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The parser holds this protocol (a reference cycle, broken in connection_lost): made
        # here, so a protocol whose connection never got made holds none.
        self.parser = httptools.HttpRequestParser(self)
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
            networks = self.server.limits.trusted_proxies
            self.trusted_peer = bool(networks) and trusted(peer[0], networks)
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            self.sockname = (sock[0], sock[1])
        self.idle_since = self.server.clock()
        server = self.server
        cap = server.limits.max_connections
        if server.draining or (cap and len(server.conns) >= cap):
            if not server.draining:
                server.refuse()
            self.closing = True
            transport.abort()
            return
        server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.conns.discard(self)
        for cycle in (self.active, self.parsing, *self.queue):
            if cycle is not None:
                cycle.wake()
                gone = cycle.on_gone
                if gone is not None and not cycle.response_complete:
                    cycle.on_gone = None
                    gone()
        self.queue.clear()
        self.parsing = None
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # The parser holds this protocol (its callbacks): without the link, a closed connection
        # is freed by reference counting instead of waiting, with its transport and requests, for
        # a full garbage collection. Nothing feeds it any more.
        self.parser = _CLOSED_PARSER

    def eof_received(self) -> bool | None:
        return None  # close: a client that half-closes is treated as gone

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.server.clock()

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is None or waiter.done():
            waiter = self.drain_waiter = self.loop.create_future()
        await asyncio.shield(waiter)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.headers_pending:
            self.partial_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No protocol switches here: the request was answered as plain HTTP; go on parsing.
            rest = data[exc.args[0] :]
            if rest:
                self.data_received(rest)
            return
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, _Reject):
                # Its traceback holds this protocol's frames: dropped, no reference cycle stays.
                reason.__traceback__ = None
                self.reject(reason.status)
            else:
                log.error("error while handling a request", exc_info=reason or exc)
                self.reject(400)
            return
        except httptools.HttpParserError as exc:
            log.debug("invalid HTTP request: %s", exc)
            self.reject(400)
            return
        if self.headers_pending and self.partial_bytes > MAX_HEADER_BYTES:
            self.reject(431)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.partial_bytes = 0
        self.headers_pending = True
        self.head_since = self.server.clock()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self.server.limits.max_header_count:
            raise _Reject(431)
        headers.append((name.lower(), value))
        self.header_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.headers_pending = False
        self.requests += 1
        self.body_since = self.last_body = self.server.clock()
        url = self.url
        if self.header_bytes + len(url) > MAX_HEADER_BYTES:
            raise _Reject(431)
        parser = self.parser
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        elif url == b"*":  # OPTIONS *
            raw_path, query = url, b""
        else:  # absolute-form
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400) from None
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
        path = (unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path).decode(
            "utf-8", "replace"
        )
        method = parser.get_method()
        version = parser.get_http_version()
        if version == "1.1":
            for name, _ in self.headers:
                if name == b"host":
                    break
            else:
                raise _Reject(400)  # RFC 9112 3.2: a 1.1 request without Host
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": _METHODS.get(method) or method.decode("ascii", "replace"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": self.headers,
            "client": self.client if not self.trusted_peer else self._forwarded_client(),
            "server": self.sockname,
        }
        server = self.server
        cap = server.limits.max_in_flight
        if cap and self.active is None and len(server.tasks) >= cap:
            server.overloaded()
            raise _Reject(503)
        if server.state:
            scope["state"] = server.state.copy()
        cycle = _Cycle(
            self,
            scope,
            parser.should_keep_alive() and not (server.draining or server.keep_alive_off),
            version == "1.0",
        )
        scope["extensions"] = {
            DISCONNECT_EXTENSION: cycle.watch_disconnect,
            PUSH_EXTENSION: cycle.push,
        }
        self.parsing = cycle
        if self.active is None:
            self.start(cycle)
        else:
            self.queue.append(cycle)
            self.pause_reading()

    def _forwarded_client(self) -> tuple[str, int] | None:
        """The address a trusted proxy's X-Forwarded-For names (port 0: unknown), else the
        peer."""
        values = [value for name, value in self.headers if name == b"x-forwarded-for"]
        client = forwarded_client(values, self.server.limits.trusted_proxies) if values else None
        return (client, 0) if client is not None else self.client

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.discard:
            self.last_body = self.server.clock()
            return
        self.last_body = self.server.clock()
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > BODY_HIGH_WATER and not self.reading_paused:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            self.parsing = None
            cycle.message_complete = True
            cycle.wake()

    # -- requests and responses ---------------------------------------------------------------

    def start(self, cycle: _Cycle) -> None:
        self.active = cycle
        server = self.server
        task = self.loop.create_task(server.app(cycle.scope, cycle.receive, cycle.send))
        cycle.task = task
        server.tasks.add(task)
        task.add_done_callback(cycle.task_done)

    def response_done(self, cycle: _Cycle) -> None:
        """The response is written: close, or go on to the next request."""
        if cycle is not self.active:
            return
        self.active = None
        cycle.wake()
        if not cycle.message_complete:
            # Answered before the body was read: drop the rest of it, unless the client waits
            # for a 100 Continue it never got and may not send the body at all.
            if not cycle.continued and cycle._expects_continue():
                cycle.keep_alive = False
            cycle.discard = True
            cycle.body = []
            cycle.buffered = 0
        if not cycle.keep_alive or self.server.draining:
            self.close()
            return
        if self.queue:
            self.start(self.queue.popleft())
        else:
            self.idle_since = self.server.clock()
        if self.reading_paused:
            self.maybe_resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def maybe_resume_reading(self) -> None:
        parsing = self.parsing
        if (
            self.reading_paused
            and not self.closing
            and not self.queue
            and (parsing is None or parsing.buffered <= BODY_HIGH_WATER)
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def reject(self, status: int) -> None:
        """A request that cannot be served: answer ``status`` if nothing is being written, and
        close."""
        if self.closing:
            return
        active = self.active
        if active is None or not active.head_sent:
            if active is not None:
                active.response_complete = True  # the app's sends become no-ops
                if active.task is not None:
                    active.task.cancel()
            date = self.server.date()
            if status == 503:
                self.transport.write(_error_response(503, _OVERLOADED, date, _RETRY_AFTER))
            else:
                body = _TOO_LARGE if status == 431 else _TIMEOUT if status == 408 else _BAD_REQUEST
                self.transport.write(_error_response(status, body, date))
        self.close()

    def abort(self) -> None:
        """Drop the connection without flushing what is left to write."""
        if not self.closing:
            self.close()
            self.transport.abort()

    def check_deadlines(self, now: float, limits: EdgeLimits) -> str | None:
        """Cut the connection off if its current phase is over its deadline; which one, if so."""
        if self.write_paused:
            if now - self.write_paused_since > limits.send_timeout:
                self.abort()
                return "send"
            return None
        if self.headers_pending:
            if now - self.head_since > limits.headers_timeout:
                self.reject(408)
                return "headers"
            return None
        parsing = self.parsing
        if parsing is not None and not parsing.message_complete:
            if self.reading_paused:  # our side is behind, not the client
                self.last_body = now
                return None
            if (
                now - self.last_body > limits.body_timeout
                or now - self.body_since > limits.body_total_timeout
            ):
                if parsing.discard or parsing is not self.active:
                    self.close()  # its response is written (or another one is being written)
                else:
                    self.reject(408)
                return "body"
            return None
        if self.idle:
            limit = limits.keep_alive_timeout if self.requests else limits.headers_timeout
            if now - self.idle_since > limit:
                self.close()
                return "keep_alive" if self.requests else "headers"
        return None

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()
            for cycle in (self.active, self.parsing, *self.queue):
                if cycle is not None:
                    cycle.wake()
            waiter = self.drain_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    @property
    def idle(self) -> bool:
        return self.active is None and not self.queue


class Lifespan:
    """The app's lifespan protocol: start-up before serving, shutdown after."""

    def __init__(
        self, app: ASGIApp, state: dict[str, Any], extensions: dict[str, Any] | None = None
    ) -> None:
        self.app = app
        self.state = state
        self.extensions = extensions or {}
        self.supported = True
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._received = False

    async def startup(self) -> bool:
        """Run the app's start-up; False if it failed."""
        scope = {
            "type": "lifespan",
            "asgi": _ASGI,
            "state": self.state,
            "extensions": self.extensions,
        }
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        await self._queue.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failed is not None:
            log.error("application start-up failed: %s", self._failed)
            return False
        return True

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._queue.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()
        if self._failed is not None:
            log.error("application shutdown failed: %s", self._failed)

    async def cancel(self) -> None:
        """Stop the app's lifespan without its shutdown (a forced exit)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)

    async def _main(self, scope: Scope) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._received:
                # An app that fails before reading the first message has no lifespan support.
                self.supported = False
                log.debug("the application does not support lifespan: %r", exc)
            else:
                self._failed = repr(exc)
                log.error("exception in the lifespan protocol", exc_info=exc)
        finally:
            if not self._received:
                self.supported = False
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> Message:
        self._received = True
        return await self._queue.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self._failed = message.get("message") or "no message"
            self._started.set()
        elif kind == "lifespan.shutdown.complete":
            self._stopped.set()
        elif kind == "lifespan.shutdown.failed":
            self._failed = message.get("message") or "no message"
            self._stopped.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")


class HTTPServer:
    """Serves an ASGI app: ``await startup()``, ``await listen(...)``, later
    ``await shutdown(timeout)``. Create and use it on the loop that serves."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keep_alive_timeout: float = 75.0,
        limits: EdgeLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits or EdgeLimits(keep_alive_timeout=keep_alive_timeout)
        self.keep_alive_timeout = self.limits.keep_alive_timeout
        self.stats = EdgeStats()
        self._refused_logged = -LOG_INTERVAL
        self._accept_logged = -LOG_INTERVAL
        self._overload_logged = -LOG_INTERVAL
        self._handler_installed = False
        self._previous_handler: Any = None
        self.loop = asyncio.get_running_loop()
        # What idleness is measured with (the loop's time; tests inject a clock they move).
        self.clock: Callable[[], float] = clock or self.loop.time
        self.state: dict[str, Any] = {}
        # The app finds the counters in its lifespan scope's extensions (for its metrics).
        self.lifespan = Lifespan(app, self.state, {EDGE_STATS: self.stats})
        self.date = DateHeader()
        self.conns: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.keep_alive_off = False  # serving, but every answer closes its connection
        self.servers: list[asyncio.Server | OneAtATime] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._forced = asyncio.Event()

    async def startup(self) -> bool:
        """The app's lifespan start-up; False if it failed (do not serve then)."""
        return await self.lifespan.startup()

    async def listen(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 2048,
        shared: Loads | None = None,
        slot: int = 0,
    ) -> None:
        """Accept connections on ``host:port``, or on an already bound socket; ``shared``: the
        loads of the processes that accept on it too (this one's is ``slot``), to take turns
        with them (:mod:`.acceptor`)."""
        server: asyncio.Server | OneAtATime
        if sock is not None and shared is not None:
            server = OneAtATime(
                self.loop,
                sock,
                lambda: _Connection(self),
                self.accept_failed,
                shared,
                slot,
                lambda: len(self.conns),
            )
        elif sock is not None:
            server = await self.loop.create_server(
                lambda: _Connection(self), sock=sock, backlog=backlog
            )
        else:
            server = await self.loop.create_server(
                lambda: _Connection(self), host, port or 0, backlog=backlog
            )
        self.servers.append(server)
        if not self._handler_installed:
            self._handler_installed = True
            self._previous_handler = self.loop.get_exception_handler()
            self.loop.set_exception_handler(self._loop_exception)
        if self._sweeper is None:
            self._schedule_sweep()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's report of an accept that failed for lack of resources is counted here; any
        other report goes on to the handler that was in place."""
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in FD_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            self.accept_failed(exc)
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def accept_failed(self, exc: OSError) -> None:
        """Count (and log, once per interval) an accept that failed for lack of descriptors."""
        self.stats.accept_errors += 1
        now = self.loop.time()
        if now - self._accept_logged >= LOG_INTERVAL:
            self._accept_logged = now
            log.error(
                "cannot accept client connections: %s (%d connections open, %d failed accepts "
                "since start); raise the open files limit or lower server.max_connections",
                exc.strerror or exc,
                len(self.conns),
                self.stats.accept_errors,
            )

    def _probe_descriptors(self) -> None:
        """uvloop only (see the module's docstring): is a descriptor left for the next accept?"""
        if isinstance(self.loop, asyncio.BaseEventLoop) or not self.servers:
            return
        if isinstance(self.servers[0], OneAtATime):
            return  # its accepts report their own failures
        for sock in self.sockets[:1]:
            try:
                os.close(os.dup(sock.fileno()))
            except OSError as exc:
                if exc.errno in FD_ERRNOS:
                    self.accept_failed(exc)

    def overloaded(self) -> None:
        """Count (and log, once per interval) a request refused over ``max_in_flight``."""
        self.stats.overloaded += 1
        now = self.loop.time()
        if now - self._overload_logged >= LOG_INTERVAL:
            self._overload_logged = now
            log.warning(
                "server.max_in_flight (%d) reached: answering new requests 503 "
                "(%d refused since start)",
                self.limits.max_in_flight,
                self.stats.overloaded,
            )

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for server in self.servers for s in server.sockets]

    def _schedule_sweep(self) -> None:
        limits = self.limits
        shortest = min(
            limits.headers_timeout,
            limits.body_timeout,
            limits.body_total_timeout,
            limits.send_timeout,
            limits.keep_alive_timeout,
        )
        interval = min(1.0, max(0.05, shortest / 4))
        self._sweeper = self.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Cut off every connection over the deadline of the phase it is in."""
        now = self.clock()
        limits = self.limits
        timeouts = self.stats.timeouts
        for conn in list(self.conns):
            phase = conn.check_deadlines(now, limits)
            if phase is not None:
                timeouts[phase] += 1
        self._probe_descriptors()
        self._schedule_sweep()

    def refuse(self) -> None:
        """Count (and log, once per interval) a connection closed over ``max_connections``."""
        self.stats.refused += 1
        now = self.loop.time()
        if now - self._refused_logged >= LOG_INTERVAL:
            self._refused_logged = now
            log.warning(
                "server.max_connections (%d) reached: closing new connections "
                "(%d refused since start)",
                self.limits.max_connections,
                self.stats.refused,
            )

    def force_exit(self) -> None:
        """Make a running :meth:`shutdown` stop waiting for requests to finish."""
        self._forced.set()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop accepting; close idle connections and let busy ones finish their response (up to
        ``timeout`` seconds), then cancel what is left; then the app's lifespan shutdown."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            if conn.idle:
                conn.close()
        deadline = None if timeout is None else self.loop.time() + timeout
        while (self.conns or self.tasks) and not self._forced.is_set():
            if deadline is not None and self.loop.time() >= deadline:
                log.warning(
                    "shutdown: %d connections and %d requests still busy: cancelling them",
                    len(self.conns),
                    len(self.tasks),
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._forced.wait(), 0.05)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._handler_installed and self.loop.get_exception_handler() == self._loop_exception:
            self.loop.set_exception_handler(self._previous_handler)
            self._handler_installed = False
        if self._forced.is_set():
            await self.lifespan.cancel()
        else:
            await self.lifespan.shutdown()
