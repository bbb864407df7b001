"""Test helpers: a handle on a running gateway, a tiny stdlib HTTP client, and waiting for a
condition (never for a stretch of wall-clock time)."""

from __future__ import annotations

import asyncio
import gc
import http.client
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from truckllm.api import App
from truckllm.testing.serve import ServerThread

T = TypeVar("T")


@dataclass
class Gateway:
    app: App
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        return request(method, self.url + path, body, headers, raw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def states(self) -> dict[str, Any]:
        self.settled()
        return self.app.runtime.router.states()

    def settled(self) -> None:
        """Wait until the gateway's loop has finished the step that wrote the last response: the
        work after a write (a success's report to the router, the record) happens in that same
        step, which a test thread reading state could otherwise overtake."""
        loop = self.server.loop
        assert loop is not None
        done = threading.Event()
        loop.call_soon_threadsafe(done.set)
        assert done.wait(5), "the gateway's loop is stuck"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 15.0,
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(
            method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=hdrs
        )
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sse_events(body: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order."""
    out = []
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out


def wait_until(
    cond: Callable[[], T],
    timeout: float = 5.0,
    what: str = "the condition",
    *,
    interval: float = 0.01,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Poll ``cond`` until it returns something true, and return that. ``timeout`` only bounds
    the test (a generous failure deadline), it is never an assertion about how long things take.
    Exceptions of the ``ignore`` types count as "not yet" (e.g. ``OSError`` while a server
    starts); an ``AssertionError`` inside ``cond`` fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except ignore:
            pass
        else:
            if value:
                return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


def wait_serving(
    url: str,
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = 15.0,
    status: int | None = None,
    **kw: Any,
) -> Response:
    """Wait until ``url`` answers (with ``status``, if given), failing at once if ``proc`` exited;
    returns that answer. Keyword arguments go to :func:`request` (method ``GET`` unless given)."""
    method = kw.pop("method", "GET")
    kw.setdefault("timeout", 2.0)

    def answered() -> Response | None:
        if proc is not None:
            assert proc.poll() is None, f"the process exited ({proc.returncode})"
        resp = request(method, url, **kw)
        return resp if status is None or resp.status == status else None

    return wait_until(answered, timeout, f"{url} answering", interval=0.05, ignore=(OSError,))


def assert_no_attempt_in_flight(gw: Gateway) -> None:
    """Every attempt the gateway started has reported back to its key (waits for the reports
    that follow a response, which the loop may not have run yet)."""
    wait_until(
        lambda: not any(s.in_flight for s in gw.states().values()),
        what="an attempt that never reported to its key",
    )


def cyclic_of(types: tuple[type, ...]) -> list[str]:
    """The objects of ``types`` that only a full garbage collection frees now (held in reference
    cycles), by type name: ``[]`` when reference counting freed them all."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if isinstance(o, types)
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def request_types() -> tuple[type, ...]:
    """The classes a served request and its upstream call leave behind: each must be freed by
    reference counting (see ``truckllm.collector``), which :func:`cyclic_of` checks."""
    from truckllm.http import client as http_client
    from truckllm.http import server as http_server
    from truckllm.providers.base import Reply
    from truckllm.providers.direct import Direct

    return (
        http_server._Connection,
        http_server._Cycle,
        http_client._Connection,
        http_client.Response,
        Reply,
        Direct,
    )


class LoopServer:
    """A raw TCP server on an event loop of its own (a daemon thread), for upstreams and stores
    that must misbehave in ways the fakes do not: a subclass serves each connection in
    :meth:`serve`. ``port`` once made; :meth:`stop` closes it and its loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.serve, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
