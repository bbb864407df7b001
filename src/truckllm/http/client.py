"""A pooled HTTP/1.1 client for upstream calls: an :class:`asyncio.Protocol` per connection with
httptools' response parser, keep-alive pools per origin, TLS through the loop.

Why not aiohttp's ``ClientSession``: in py-spy profiles of the gateway at 32 connections it was
about a third of all samples (request building, header multidicts, timers, stream readers), and a
passthrough on this client served several times the requests/s of the same passthrough on aiohttp
(``bench/overhead.py``). What it does not do, on purpose: cookies, redirects, HTTP/2 and request
bodies of unknown length. An upstream call is one POST with a known body (bytes, pieces of a
buffer, or a :class:`BodySource` read as it is written); ``GET`` and ``DELETE`` go without one.

Routes: a request may name its TLS context (a provider's CA bundle or client certificate, see
:mod:`truckllm.http.tls`) and a forward proxy (:mod:`truckllm.http.proxy`: a CONNECT tunnel for
https, the absolute form for http). Connections are pooled per origin, context and proxy.

Timeouts: ``connect`` bounds opening a connection (and the TLS handshake); ``read`` bounds the
silence between two reads once the request is written; ``total``, when set, bounds the whole
exchange up to the end of the body. One timer per request checks both.

Connections per pool may be capped (``max_connections`` per request): at the cap, a request waits
for one to come back to the pool or close, at most ``pool_timeout`` seconds, then fails with
:class:`PoolTimeout`; waiters are served in order.

A connection taken from the pool may have been closed by the server while idle. If it breaks
before a single byte of the answer arrives, the request is sent again once on a new connection,
as browsers and urllib3 do.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

from truckllm.http.pool_stats import PoolStats
from truckllm.http.proxy import Proxy, ProxyEnv, open_tunnel
from truckllm.http.resolve import Resolver
from truckllm.http.tls import TLSSettings, build_context

__all__ = [
    "BodySource",
    "ConnectionBroken",
    "HTTPClient",
    "HTTPClientError",
    "InvalidResponse",
    "ParsedURL",
    "PoolTimeout",
    "Proxy",
    "ProxyEnv",
    "Response",
    "ResponseTooLarge",
    "TLSSettings",
]

# A pool's key: the origin, the TLS context (None: the default one) and the proxy (None: direct).
PoolKey = tuple[tuple[str, str, int], ssl.SSLContext | None, Proxy | None]

_BUFFER_HIGH = 1 << 20  # pause reading the socket when this much body is waiting unread
_IDLE_PER_ORIGIN = 512
# A pooled connection that breaks before answering is resent only if the break came this soon
# after the request left (or within the time the connection took to open, if longer): a close the
# server had already sent arrives within about one round trip; later, it may have run the prompt.
_STALE_WINDOW = 0.25
_WRITE_WINDOW = 256 * 1024  # a large request body is written this much at a time
_MAX_HEAD = 256 * 1024  # status line and headers of one answer
_INFLATE_STEP = 256 * 1024  # decompressed bytes per step: a bomb is stopped at the cap, not after
_CLOSED_PARSER = httptools.HttpResponseParser(object())  # what a closed connection holds


class BodySource(Protocol):
    """A request body of known ``length`` that is not in memory (an upload relayed as the client
    sends it): each :meth:`chunks` call reads it from the start, so a request can be sent again
    on a fresh connection. Yielding other than ``length`` bytes breaks the request."""

    @property
    def length(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]: ...


Pieces = Sequence[bytes | bytearray | memoryview] | BodySource


class HTTPClientError(Exception):
    """Anything that went wrong on the wire (timeouts raise :class:`TimeoutError`)."""


class ConnectionBroken(HTTPClientError):
    """The connection closed or reset before the answer was complete."""


class InvalidResponse(HTTPClientError):
    """The upstream's bytes are not HTTP/1.1."""


class ResponseTooLarge(HTTPClientError):
    """The answer's body (decompressed) is over the request's ``max_body``."""


class PoolTimeout(HTTPClientError):
    """Every connection the request may open to its upstream was busy for ``pool_timeout``."""


class _Stale(Exception):
    """A reused connection broke before any byte of the answer: safe to send again."""


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """A parsed URL, reused for every request to it."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool key
    host_header: bytes
    path: bytes  # path and query, as sent on the request line

    @classmethod
    def parse(cls, url: str) -> ParsedURL:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls((scheme, host, port), host_header.encode("idna"), path.encode("ascii"))


def encode_headers(headers: dict[str, str]) -> bytes:
    """``name: value\\r\\n`` lines; refuses what would split a header (CR, LF, NUL)."""
    out = []
    for name, value in headers.items():
        line = f"{name}: {value}"
        if any(c in line for c in "\r\n\0"):
            raise ValueError(f"header {name!r} contains a line break or NUL")
        out.append(line.encode("latin-1") + b"\r\n")
    return b"".join(out)


class Response:
    """Status and headers (names lower-cased; repeated ones joined with ``", "``) once they
    arrive; the body by :meth:`read` or chunk by chunk with ``async for``. Call :meth:`release`
    when done: a connection whose answer was read to the end goes back to the pool, any other is
    closed (which is how a stream is abandoned)."""

    __slots__ = (
        "_backlog",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_ending",
        "_error",
        "_left",
        "_packed",
        "_sink",
        "_size",
        "_waiter",
        "_whole",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, max_body: int | None = None) -> None:
        self._conn: _Connection | None = conn
        # Bytes of (decompressed) body still allowed; -1: no cap (streams, read as they come).
        self._left = -1 if max_body is None else max_body
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Any = None
        self._packed = False  # compressed bytes were fed
        # Compressed bytes not inflated yet because the reader is behind (a stream read chunk by
        # chunk): a small bomb must not become a large buffer before anyone reads it.
        self._backlog = b""
        self._ending = False  # the message ended with a backlog still to inflate
        self._whole = False  # read() holds the whole body anyway (capped by max_body)
        self._sink: Callable[[bytes], bool] | None = None  # see splice

    # -- fed by the connection ----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._error is not None:  # over the cap (or corrupt): the rest is dropped
            return
        if self._decoder is not None:
            self._packed = True
            if self._backlog:
                self._backlog += data
                return
            self._inflate(data)
            return
        self._append(data)

    def _inflate(self, data: bytes) -> None:
        """Decompress in bounded steps, so a small bomb never becomes a large buffer: past the
        cap, the answer fails before the next step is made; while the reader has more than the
        high-water mark unread, the rest waits compressed (:meth:`_unpack` goes on)."""
        decoder = self._decoder
        while data:
            if self._size > _BUFFER_HIGH and not self._whole:
                self._backlog = data
                return
            out = decoder.decompress(data, _INFLATE_STEP)
            data = decoder.unconsumed_tail
            if out:
                self._append(out)
                if self._error is not None:
                    return

    def _append(self, data: bytes) -> None:
        sink = self._sink  # a spliced stream (no cap: streams have none)
        if sink is not None:
            try:
                keep = sink(data)
            except Exception as exc:  # the reader raises it, as from a read
                self._sink = None
                self._fail(exc)
                return
            if not keep:
                self._sink = None
                self._wake()
            return
        if self._left >= 0:
            self._left -= len(data)
            if self._left < 0:
                self._fail(ResponseTooLarge("the upstream's answer is over the size limit"))
                self._chunks.clear()
                self._size = 0
                if self._conn is not None:
                    self._conn.abort()
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _BUFFER_HIGH and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _unpack(self) -> None:
        """Inflate what was held back, up to the high-water mark again; the end of the body once
        all of it is."""
        data, self._backlog = self._backlog, b""
        try:
            self._inflate(data)
            if not self._backlog and self._ending:
                self._ending = False
                self._finish()
        except zlib.error as exc:
            self._fail(InvalidResponse(f"the upstream's compressed body is corrupt: {exc}"))

    def _finish(self) -> None:
        if self._error is not None:  # failed mid-body (a corrupt block): stays failed
            return
        if self._backlog:  # ends once the reader has taken the rest
            self._ending = True
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._append(tail)
                if self._error is not None:
                    return
            if self._packed and not self._decoder.eof:
                self._fail(InvalidResponse("the upstream's compressed body is cut short"))
                return
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- read by the caller -------------------------------------------------------------------

    def _arm(self) -> asyncio.Future[None]:
        """A future set when more of the body arrives (or its end, or an error); the connection
        reads again if it was paused. A plain method, not a coroutine: a stream waits on it
        between chunks, and one coroutine fewer per wait is fewer live objects. A waiter left
        behind by a cancelled reader is done, and ``_wake`` skips it."""
        conn = self._conn
        assert conn is not None
        waiter = self._waiter = conn.loop.create_future()
        conn.resume()
        return waiter

    async def read(self) -> bytes:
        """The whole body. The connection goes back to the pool."""
        self._whole = True
        try:
            while not self._done:
                if self._error is not None:
                    raise self._error
                if self._backlog:
                    self._unpack()
                    continue
                await self._arm()
        except BaseException:
            self.release()
            raise
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._size = 0
        self.release()
        return data

    def splice(self, sink: Callable[[bytes], bool]) -> asyncio.Future[None]:
        """Hand each part of the body to ``sink`` as it is read, from the connection's own
        callback: no future, no task wake-up per part. A future is returned, set when the
        splice ends: the body ended or failed, ``sink`` returned False (it took that part but
        wants no more now) or raised (the reader gets that error). Reading resumes with
        ``async for``/:meth:`read`, which see the end, the error and anything that came after.
        Parts already waiting are never skipped: with any (or for a body under a size cap, which
        only the reader counts), the future is set at once."""
        conn = self._conn
        waiting = self._chunks or self._backlog or self._done or self._error is not None
        if conn is None or waiting or self._left >= 0:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self._sink = sink
        return self._arm()

    def unsplice(self) -> None:
        """Stop a :meth:`splice` (its reader was cancelled): parts wait for the reader again."""
        self._sink = None

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        """Everything that has arrived since the last call, at least one byte; stops at the end."""
        while not self._chunks:
            if self._done:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self._backlog:
                self._unpack()
                continue
            await self._arm()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    @property
    def complete(self) -> bool:
        return self._done

    def release(self) -> None:
        self._sink = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(self)

    close = release


class _Connection(asyncio.Protocol):
    """One upstream connection; one request at a time."""

    def __init__(self, pool: _OriginPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = _CLOSED_PARSER  # the real one once connected (it holds this protocol)
        self.response: Response | None = None
        self.head: asyncio.Future[None] | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.received = False  # any byte of the current answer
        self.reusable = False
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = 0.0
        self.deadline: float | None = None
        self.used = 0  # requests sent on this connection
        self.sent_at = 0.0
        self.connect_s = 0.0  # how long opening it took: a round-trip estimate
        self.head_bytes = 0
        self.drained: asyncio.Future[None] | None = None  # set while the socket is full
        self.counted = False  # one of its pool's open connections (see _OriginPool.opened)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: the connection is unusable
            self.abort()
            return
        self.received = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(InvalidResponse("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._broken(InvalidResponse(f"the upstream sent invalid HTTP: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.resume_writing()  # a body writer waiting for room: there will be none
        # The parser holds this protocol: without the link, a closed connection is freed by
        # reference counting, not by a full garbage collection. Nothing feeds it any more.
        self.parser = _CLOSED_PARSER
        self.pool.forget(self)
        response = self.response
        if response is None or response._done or response._ending or response._error is not None:
            return
        if self.head is not None and not self.head.done():
            early = self.loop.time() - self.sent_at < max(_STALE_WINDOW, self.connect_s)
            if self.used > 1 and not self.received and early:
                self.head.set_exception(_Stale())
            else:
                self.head.set_exception(ConnectionBroken("the upstream closed the connection"))
            return
        if exc is None and self._ends_at_eof():
            response._finish()
            self.reusable = False
            return
        response._fail(ConnectionBroken("the upstream closed the connection mid-answer"))

    def pause_writing(self) -> None:
        # Only a large upload (:meth:`write_body`) waits for the socket; JSON bodies go at once.
        if self.drained is None:
            self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def write_body(self, pieces: Pieces) -> None:
        """Write a large body in windows, each once the socket has taken the last: never a
        copy of it in the transport's buffer. Stops early if the connection is lost (the
        answer's future then says why)."""
        if isinstance(pieces, Sequence):
            for piece in pieces:
                if not await self._write_piece(piece):
                    return
            return
        written = 0
        async for piece in pieces.chunks():
            written += memoryview(piece).nbytes
            if written > pieces.length or not await self._write_piece(piece):
                break
        if written != pieces.length and not self.closed:
            self._broken(ConnectionBroken("the request body did not match its length"))

    async def _write_piece(self, piece: bytes | bytearray | memoryview) -> bool:
        assert self.transport is not None
        view = memoryview(piece)
        for at in range(0, len(view), _WRITE_WINDOW):
            if self.closed:
                return False
            self.transport.write(view[at : at + _WRITE_WINDOW])
            self.last_read = self.loop.time()  # the upstream takes it: not silent
            drained = self.drained
            if drained is not None:
                await asyncio.shield(drained)
        return not self.closed

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.raw_headers = []  # trailers of the previous answer
        self.head_bytes = 0
        response = self.response
        if response is not None and response._done:  # raising stops the parser; see data_received
            raise InvalidResponse("the upstream sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD:
            raise InvalidResponse("the upstream's headers are too large")
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real answer follows
            self.raw_headers = []
            return
        response = self.response
        assert response is not None
        response.status = status
        raw = self.raw_headers
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
        if len(headers) != len(raw):  # a repeated name: its values joined, in order
            headers = {}
            for name, value in raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = headers[key] + ", " + text if key in headers else text
        self.raw_headers = []
        response.headers = headers
        length = headers.get("content-length")
        if (
            response._left >= 0
            and length is not None
            and length.strip().isdigit()
            and int(length) > response._left  # said up front: refused before a byte is read
        ):
            self._broken(ResponseTooLarge("the upstream's answer is over the size limit"))
            return
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            response._decoder = zlib.decompressobj(47 if encoding != "deflate" else 15)
        elif encoding != "identity":
            self._broken(InvalidResponse(f"the upstream sent an unsupported encoding {encoding!r}"))
            return
        head = self.head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and response.status:
            if response._decoder is None:  # the usual body: nothing to inflate, no zlib error
                if response._error is None:  # else over the cap: the rest is dropped
                    response._append(body)
                return
            try:
                response._feed(body)
            except zlib.error as exc:
                self._broken(InvalidResponse(f"the upstream's compressed body is corrupt: {exc}"))

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response.status:  # the end of a 1xx
            return
        self.reusable = self.parser.should_keep_alive()
        self._cancel_timer()
        try:
            response._finish()
        except zlib.error as exc:
            self._broken(InvalidResponse(f"the upstream's compressed body is corrupt: {exc}"))

    # -- driven by the client -----------------------------------------------------------------

    def send(
        self, data: bytes, read_timeout: float, total: float | None, max_body: int | None = None
    ) -> Response:
        assert self.transport is not None
        self.used += 1
        self.received = False
        self.reusable = False
        response = Response(self, max_body)
        self.response = response
        self.head = self.loop.create_future()
        now = self.loop.time()
        self.last_read = self.sent_at = now
        self.read_timeout = read_timeout
        self.deadline = now + total if total is not None else None
        wake = now + read_timeout
        if self.deadline is not None and self.deadline < wake:
            wake = self.deadline
        self.timer = self.loop.call_at(wake, self._check_time)
        self.transport.write(data)
        return response

    def _check_time(self) -> None:
        self.timer = None
        if self.response is None or self.closed:
            return
        now = self.loop.time()
        if self.paused:  # our reader is behind, not the upstream: only the deadline counts
            self.last_read = now
        silent_until = self.last_read + self.read_timeout
        if self.deadline is not None and now >= self.deadline:
            self._broken(TimeoutError("the upstream did not finish in time"))
        elif now >= silent_until:
            self._broken(TimeoutError("the upstream went silent"))
        else:
            wake = silent_until if self.deadline is None else min(silent_until, self.deadline)
            self.timer = self.loop.call_at(wake, self._check_time)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _ends_at_eof(self) -> bool:
        """A response with neither a length nor chunking ends when the connection does."""
        response = self.response
        if response is None or not response.status:
            return False
        headers = response.headers
        return (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        )

    def _broken(self, exc: BaseException) -> None:
        head = self.head
        if head is not None and not head.done():
            head.set_exception(exc)
        elif self.response is not None:
            self.response._fail(exc)
        self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()

    def finish(self, response: Response) -> None:
        """The caller is done with ``response``: back to the pool if the answer was read to the
        end on a connection that stays open, else close it."""
        if self.response is not response:
            return
        self.response = None
        self.head = None
        self._cancel_timer()
        if not response._done:  # wake a reader waiting on it in another task
            response._fail(ConnectionBroken("the response was released"))
        if response._done and response._error is None and self.reusable and not self.closed:
            self.resume()
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class _OriginPool:
    """Idle keep-alive connections to one origin, most recently used first; the number open or
    opening, and the requests waiting for one when a cap is reached (a connection put back goes
    to the first of them; one that closes wakes it to open another)."""

    def __init__(self, client: HTTPClient, key: PoolKey) -> None:
        self.client = client
        self.origin, self.tls, self.proxy = key
        self.idle: collections.deque[_Connection] = collections.deque()
        self.count = 0  # connections open or being opened
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    def opened(self, conn: _Connection) -> None:
        conn.counted = True

    def closed(self) -> None:
        """A connection closed, or failed to open: its place goes to the first waiter."""
        self.count -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait(self, seconds: float, said: float) -> _Connection | None:
        """A connection put back, or None once one closed (room to open one); waiting at most
        ``seconds``: :class:`PoolTimeout` then (``said``: the whole wait, for its message)."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as exc:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # given to us as we gave up: to the next one
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"all {self.count} connections to the upstream stayed busy for {said:g} s"
                ) from None
            raise

    def _pass_on(self, conn: _Connection | None) -> None:
        if conn is not None:
            self.put(conn)
            return
        self.count += 1  # the place it was woken for: counted back, then handed on
        self.closed()

    def take(self, now: float) -> _Connection | None:
        idle = self.idle
        expired = now - self.client.keepalive
        while idle and idle[0].idle_since < expired:
            idle.popleft().abort()
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: _Connection) -> None:
        if self.client.closed:
            conn.abort()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self.idle) >= _IDLE_PER_ORIGIN:
            conn.abort()
            return
        conn.idle_since = conn.loop.time()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if self.idle and conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self.closed()


class HTTPClient:
    """Shared by every adapter; safe for any number of concurrent requests on one event loop."""

    def __init__(
        self,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int | None = None,
        proxies: ProxyEnv | None = None,
    ) -> None:
        self.keepalive = keepalive
        # The proxies named by the environment when the gateway started; callers choose per
        # request (see :meth:`ProxyEnv.select`), the client only follows what a request names.
        self.proxies = proxies if proxies is not None else ProxyEnv()
        # The cap callers put on a whole (non-streamed) answer's body, after decompression.
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._pools: dict[PoolKey, _OriginPool] = {}
        self._resolver = Resolver()  # upstream names looked up once per DNS_TTL, not per connection
        self.pool_stats = PoolStats()  # waits at a connection cap, for /metrics
        self._contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        self.closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def tls_context(self, settings: TLSSettings | None) -> ssl.SSLContext | None:
        """The context for ``settings``, shared by every caller with the same settings and files
        (None: the client's default). Raises :class:`OSError` or :class:`ssl.SSLError`."""
        if settings is None or settings == TLSSettings():
            return None
        key = settings.cache_key()
        context = self._contexts.get(key)
        if context is None:
            if len(self._contexts) >= 256:  # files rewritten over and over: start afresh
                self._contexts.clear()
            context = self._contexts[key] = build_context(settings)
        return context

    async def post(
        self,
        target: ParsedURL,
        head: bytes,
        body: bytes | Pieces,
        *,
        connect_timeout: float,
        read_timeout: float,
        total: float | None = None,
        max_body: int | None = None,
        tls: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        max_connections: int | None = None,
        pool_timeout: float = 10.0,
        method: bytes = b"POST",
        label: str = "",
    ) -> Response:
        """Send ``POST`` (or ``method``: ``GET`` and ``DELETE`` with an empty body go without
        Content-Length) with ``head`` (pre-encoded header lines, without Host and
        Content-Length) and ``body``; return once the status line and headers are in. A body
        given as pieces (a large upload) or a :class:`BodySource` is written as the socket
        takes it, never joined or copied.
        ``max_body`` caps the answer's body after decompression (:class:`ResponseTooLarge`);
        ``tls``: the context for an https target (None: the default); ``proxy``: the forward
        proxy to go through (None: direct); ``max_connections`` caps the connections open to
        the target's pool (None: no cap), a request waiting at most ``pool_timeout`` for one,
        counted in :attr:`pool_stats` under ``label``.
        Raises :class:`HTTPClientError`, :class:`OSError` or :class:`TimeoutError`."""
        if self.closed:
            raise HTTPClientError("the client is closed")
        path = target.path
        if proxy is not None and target.origin[0] == "http":  # absolute form, to the proxy
            path = b"http://" + target.host_header + path
            head = proxy.auth + head
        pieces: Pieces = ()
        if not isinstance(body, bytes):
            pieces, body = body, b""
        if isinstance(pieces, Sequence):
            length = sum(memoryview(p).nbytes for p in pieces) if pieces else len(body)
        else:
            length = pieces.length
        framing = b"Content-Length: %d\r\n" % length
        if not length and method != b"POST":
            framing = b""
        data = b"".join(
            (
                method,
                b" ",
                path,
                b" HTTP/1.1\r\nHost: ",
                target.host_header,
                b"\r\n",
                head,
                framing,
                b"\r\n",
                body,
            )
        )
        loop = asyncio.get_running_loop()
        key: PoolKey = (target.origin, tls, proxy)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _OriginPool(self, key)
        cap = (max_connections, pool_timeout, label)
        conn = pool.take(loop.time())  # the usual case: no wait, no coroutine
        if conn is None:
            conn = await self._acquire(pool, loop, connect_timeout, cap, reuse=False)
        if conn.used:  # a pooled one: it may have closed while idle
            try:
                return await self._exchange(conn, data, read_timeout, total, max_body, pieces)
            except _Stale:
                conn = await self._acquire(pool, loop, connect_timeout, cap, reuse=False)
        try:
            return await self._exchange(conn, data, read_timeout, total, max_body, pieces)
        except _Stale:  # a fresh connection cannot be stale; say what happened
            raise ConnectionBroken("the upstream closed the connection") from None

    async def _acquire(
        self,
        pool: _OriginPool,
        loop: asyncio.AbstractEventLoop,
        connect_timeout: float,
        cap: tuple[int | None, float, str],
        reuse: bool = True,
    ) -> _Connection:
        """An idle connection (if ``reuse``), else a new one; at the cap, the first to come
        back (handed over by the pool) or, once one closes, a new one."""
        limit, wait_s, label = cap
        conn = pool.take(loop.time()) if reuse else None
        if conn is not None:
            return conn
        if not limit or (pool.count < limit and not pool.waiters):
            return await self._connect(pool, loop, connect_timeout)
        deadline = loop.time() + wait_s
        self.pool_stats.began(label)
        timed_out = False
        try:
            while conn is None:
                if pool.count < limit and not pool.waiters:
                    return await self._connect(pool, loop, connect_timeout)
                conn = await pool.wait(max(deadline - loop.time(), 0.0), wait_s)
                if conn is None and pool.count < limit:
                    return await self._connect(pool, loop, connect_timeout)
        except PoolTimeout:
            timed_out = True
            raise
        finally:
            self.pool_stats.ended(label, timed_out)
        return conn

    async def _exchange(
        self,
        conn: _Connection,
        data: bytes,
        read_timeout: float,
        total: float | None,
        max_body: int | None,
        pieces: Pieces = (),
    ) -> Response:
        response = conn.send(data, read_timeout, total, max_body)
        head = conn.head
        assert head is not None
        try:
            if pieces:
                await conn.write_body(pieces)
            await head
        except BaseException:
            response.release()
            raise
        return response

    async def _connect(
        self, pool: _OriginPool, loop: asyncio.AbstractEventLoop, limit: float
    ) -> _Connection:
        scheme = pool.origin[0]
        tls = (pool.tls or self._ssl_context()) if scheme == "https" else None
        started = loop.time()
        pool.count += 1
        try:
            async with asyncio.timeout(limit):
                if pool.proxy is not None and tls is not None:
                    conn = await self._tunnel(pool, loop, tls)
                else:
                    conn = await self._open(pool, loop, tls)
        except BaseException:
            pool.closed()
            raise
        if conn.closed:  # lost already: its connection_lost found it uncounted
            pool.closed()
            raise ConnectionBroken("the upstream closed the connection")
        pool.opened(conn)
        conn.connect_s = loop.time() - started
        return conn

    async def _open(
        self, pool: _OriginPool, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext | None
    ) -> _Connection:
        """A connection to the origin (or, plain http through a proxy, to the proxy), to its
        addresses in turn (:class:`~truckllm.http.resolve.Resolver`)."""
        _, host, port = pool.origin
        via = pool.proxy
        name, at = (host, port) if via is None else (via.host, via.port)
        failed: OSError | None = None
        for address in await self._resolver.addresses(loop, name, at):
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(pool, loop),
                    address,
                    at,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
            except OSError as exc:
                failed = exc
                continue
            return conn
        self._resolver.forget(name, at)
        assert failed is not None
        raise failed

    @staticmethod
    async def _tunnel(
        pool: _OriginPool, loop: asyncio.AbstractEventLoop, tls: ssl.SSLContext
    ) -> _Connection:
        """TLS to the origin inside a CONNECT tunnel through ``pool.proxy``."""
        _, host, port = pool.origin
        assert pool.proxy is not None
        raw = await open_tunnel(loop, pool.proxy, host, port)
        conn = _Connection(pool, loop)
        try:
            secure = await loop.start_tls(raw, conn, tls, server_hostname=host)
        except BaseException:
            raw.abort()
            raise
        if secure is None:  # the connection closed during the handshake
            raise ConnectionBroken("the proxy closed the tunnel")
        conn.connection_made(secure)
        return conn

    async def close(self) -> None:
        self.closed = True
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().abort()
            for waiter in pool.waiters:
                if not waiter.done():
                    waiter.set_exception(HTTPClientError("the client is closed"))
        self._pools.clear()
