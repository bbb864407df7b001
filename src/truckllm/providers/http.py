"""The HTTP side every provider adapter shares: the one upstream client, header blocks encoded
once per key, parsed URLs cached, timeouts, and transport errors translated into
:class:`UpstreamError` at this boundary (raised ``from`` the client's), so nothing above the
adapters knows the client's exceptions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar

from truckllm import __version__
from truckllm.config.schema import KeyConfig
from truckllm.http.client import (
    BodySource,
    HTTPClientError,
    ParsedURL,
    PoolTimeout,
    Proxy,
    Response,
    TLSSettings,
    encode_headers,
)
from truckllm.http.exchange import exchange_whole
from truckllm.providers.base import (
    ProviderContext,
    Reply,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from truckllm.providers.called import note_call
from truckllm.providers.direct import Direct, Feed
from truckllm.providers.sse import SSEFramer

_TARGET_CACHE_LIMIT = 4096
_TRANSPORT_ERRORS = (HTTPClientError, OSError)

UPSTREAM_TRACE: ContextVar[bytes | None] = ContextVar("truckllm_upstream_trace", default=None)
"""The current attempt's trace headers (``traceparent``, encoded header lines), added to the
upstream request when set: by the tracing of the request (see ``telemetry/tracing.py``)."""

AuthHeaders = Callable[[str], dict[str, str]]  # secret -> the headers that carry it


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + secret}


def header(name: str) -> AuthHeaders:
    """The secret as the value of one header (``x-api-key``, ``x-goog-api-key``, Azure's ``api-key``)."""
    return lambda secret: {name: secret}


class UpstreamHTTP:
    """Safe to share between concurrent requests; holds no per-request state."""

    def __init__(
        self, ctx: ProviderContext, auth: AuthHeaders, fixed: dict[str, str] | None = None
    ) -> None:
        self.id = ctx.config.id
        self.client = ctx.client
        self._auth = auth
        self._fixed = {
            "Content-Type": "application/json",
            "User-Agent": f"truckllm/{__version__}",
            **(fixed or {}),
            **ctx.config.headers,
        }
        self._heads: dict[str, bytes] = {}
        self._targets: dict[str, tuple[ParsedURL, Proxy | None]] = {}
        tls = ctx.config.tls
        self._tls = (
            None
            if tls is None
            else self.client.tls_context(
                TLSSettings(tls.ca_file, tls.cert_file, tls.key_file, tls.verify)
            )
        )
        self._proxy_option = (ctx.config.proxy or "").strip()
        self._max_connections = ctx.config.max_connections or None
        self._pool_timeout = ctx.config.pool_timeout
        self._secrets = [
            k.secret.reveal().encode()
            for k in ctx.config.keys
            if k.secret is not None and k.secret.reveal()
        ]
        t = ctx.timeouts
        self._connect = t.connect
        self._read = t.read
        self._total = t.total
        self._sending = TransportErrors(self.id, "did not answer in time", "is unreachable")
        self._reading = TransportErrors(
            self.id, "stopped sending its response", "broke off its response"
        )
        self._streaming = TransportErrors(self.id, "stalled mid-stream", "broke off the stream")

    def headers(self, key: KeyConfig) -> dict[str, str]:
        headers = dict(self._fixed)
        if key.secret is not None and key.secret.reveal():
            headers.update(self._auth(key.secret.reveal()))
        return headers

    def _head(self, key: KeyConfig) -> bytes:
        head = self._heads.get(key.id)
        if head is None:
            head = self._heads[key.id] = encode_headers(self.headers(key))
        return head

    def _target(self, url: str) -> tuple[ParsedURL, Proxy | None]:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= _TARGET_CACHE_LIMIT:
                self._targets.clear()
            parsed = ParsedURL.parse(url)
            target = self._targets[url] = (parsed, self._proxy_for(parsed))
        return target

    def _proxy_for(self, target: ParsedURL) -> Proxy | None:
        """The provider's ``proxy`` option: absent, the environment's choice for this origin;
        "none", direct; else that proxy."""
        option = self._proxy_option
        if not option:
            return self.client.proxies.select(*target.origin)
        if option.lower() == "none":
            return None
        return Proxy.parse(option)

    async def post(
        self,
        url: str,
        data: bytes | Sequence[bytes | bytearray | memoryview] | BodySource,
        key: KeyConfig,
        stream: bool,
        extra: bytes = b"",
        content_type: str | None = None,
        method: bytes = b"POST",
    ) -> Response:
        """Status and headers; the body is read with :meth:`read` or iterated (streams).
        ``extra``: more header lines, encoded, for this request only; ``content_type`` the
        body's when it is not JSON (a form upload), whose ``data`` may come in pieces or from a
        :class:`BodySource`, written as the socket takes them (never joined). ``method``:
        ``GET`` or ``DELETE`` with an empty ``data`` for the calls that carry no body."""
        target, proxy = self._target(url)
        note_call("POST" if method == b"POST" else method.decode("ascii"), url)
        head = self._head(key)
        if content_type is not None:
            head = encode_headers({**self.headers(key), "Content-Type": content_type})
        trace = UPSTREAM_TRACE.get()
        if trace is not None:
            extra += trace
        with self._sending:
            return await self.client.post(
                target,
                head + extra if extra else head,
                data,
                connect_timeout=self._connect,
                read_timeout=self._read,
                total=None if stream else self._total,
                # A stream is relayed as it comes; a whole answer is held: capped.
                max_body=None if stream else self.client.max_response_bytes,
                tls=self._tls,
                proxy=proxy,
                max_connections=self._max_connections,
                pool_timeout=self._pool_timeout,
                method=method,
                label=self.id,
            )

    async def read(self, resp: Response) -> bytes:
        """The whole body; the connection goes back to the pool."""
        with self._reading:
            return await resp.read()

    async def read_start(self, resp: Response, limit: int) -> tuple[bytes, bool]:
        """``(body, True)`` when the whole body is within about ``limit`` bytes (the connection
        goes back to the pool), else ``(its beginning, False)``: at least ``limit`` bytes, the
        rest left on the wire for :meth:`reading` to relay, so a large answer is never held whole."""
        if resp.complete:  # the usual case: the body came with the head
            with self._reading:
                return await resp.read(), True
        parts: list[bytes] = []
        size = 0
        try:
            with self._reading:
                while size < limit:
                    chunk = await anext(resp)
                    parts.append(chunk)
                    size += len(chunk)
        except StopAsyncIteration:
            resp.release()
            return b"".join(parts), True
        except BaseException:
            resp.release()
            raise
        return b"".join(parts), False

    def reading(self) -> TransportErrors:
        """Wrap reading the rest of a relayed body (:meth:`read_start`)."""
        return self._reading

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every one of this provider's secrets replaced, should an upstream echo
        one in an error (any of them: the key used, or another it mentions)."""
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"********")
        return data

    def mid_stream(self) -> TransportErrors:
        """Wrap reading a stream: a stall or a broken connection becomes an UpstreamError."""
        return self._streaming

    async def get_whole(self, url: str, key: KeyConfig, seconds: float) -> tuple[int, bytes]:
        """``(status, body)`` of one GET with the key's headers, TLS and proxy, all within
        ``seconds`` (``truckllm check --probe``). Raises the client's errors as they are:
        :class:`HTTPClientError`, :class:`OSError` or :class:`TimeoutError`."""
        target, proxy = self._target(url)
        status, _, body = await exchange_whole(
            self.client,
            target,
            self._head(key),
            b"",
            seconds,
            64 * 1024 * 1024,
            method=b"GET",
            tls=self._tls,
            proxy=proxy,
        )
        return status, body


class TransportErrors:
    """A context that turns the client's timeouts and transport errors into UpstreamTimeout and
    UpstreamUnavailable (raised ``from`` the original), with this provider's words for the stage.
    Built once per stage and provider: no allocation per request."""

    __slots__ = ("_broken", "_late", "_pool")

    def __init__(self, provider_id: str, late: str, broken: str) -> None:
        self._late = f"provider {provider_id!r} {late}"
        self._broken = f"provider {provider_id!r} {broken}"
        self._pool = f"provider {provider_id!r} is at its max_connections"

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, PoolTimeout):  # our own cap, not the upstream: say which
            raise UpstreamUnavailable(f"{self._pool}: {exc}") from exc
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(self._late) from exc
        if isinstance(exc, _TRANSPORT_ERRORS):
            raise UpstreamUnavailable(f"{self._broken}: {type(exc).__name__}") from exc


def relay_events(
    reply: Reply,
    http: UpstreamHTTP,
    resp: Response,
    markers: tuple[bytes, ...],
    read: Callable[[bytes], None],
) -> None:
    """A passthrough stream's events, batched as they arrive and framed on event boundaries;
    ``read`` sees a batch holding any of ``markers`` (the events usage is read from) before it
    goes on."""
    framer = SSEFramer(http.id)

    def feed(chunk: bytes) -> bytes:
        batch = framer.feed(chunk)
        if batch and any(marker in batch for marker in markers):
            read(batch)
        return batch

    stream_through(reply, http, resp, feed, framer.close)


def stream_through(
    reply: Reply, http: UpstreamHTTP, resp: Response, feed: Feed, close: Callable[[], bytes]
) -> None:
    """Set ``reply.events`` to the events ``feed`` makes of each read of ``resp`` (``close``:
    what is left at its end), and ``reply.direct`` to the same relayed from the read callback.
    The response is released at the end, however the stream ends."""
    events = _fed(http, resp, feed, close)
    reply.events = events
    reply.direct = Direct(events, resp, feed)


async def _fed(
    http: UpstreamHTTP, resp: Response, feed: Feed, close: Callable[[], bytes]
) -> AsyncIterator[bytes]:
    try:
        with http.mid_stream():
            async for chunk in resp:
                batch = feed(chunk)
                if batch:
                    yield batch
            rest = close()
            if rest:
                yield rest
    finally:
        resp.release()
