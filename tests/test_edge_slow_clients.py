"""Slow clients over real sockets: every phase of a connection has a deadline (server.timeouts),
answered with a 408 while a response is still possible, and the connection closed."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
from edge_helpers import ADMIN_KEY, CLIENT_KEY, connect, make_gateway, read_all, status_of
from helpers import Gateway

from truckllm.http.server import DISCONNECT_EXTENSION, EdgeLimits, HTTPServer
from truckllm.testing.mock import MockUpstream

GatewayFactory = Callable[..., Gateway]


def test_a_request_head_that_never_ends_gets_408(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        data = read_all(sock)
    assert status_of(data) == 408
    assert b"connection: close" in data


def test_a_connection_that_sends_nothing_is_closed(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        assert read_all(sock) == b""


@pytest.mark.parametrize(
    ("path", "key"),
    [("/v1/chat/completions", CLIENT_KEY), ("/admin/v1/reload", ADMIN_KEY)],
    ids=["client key", "admin key"],
)
def test_a_stalled_body_gets_408(
    gateway_factory: GatewayFactory, upstream: MockUpstream, path: str, key: str
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        data = read_all(sock)
    assert status_of(data) == 408


def test_a_body_trickled_forever_hits_the_whole_body_cap(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        got = threading.Event()
        answer: list[bytes] = []

        def reader() -> None:
            answer.append(read_all(sock))
            got.set()

        threading.Thread(target=reader, daemon=True).start()
        # One byte per 0.05 s: never silent for the 0.2 s between reads, but over 1 s in all.
        for _ in range(2000):
            if got.wait(0.05):
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
        assert got.wait(10)
    assert status_of(answer[0]) == 408


def test_an_idle_keep_alive_connection_is_closed(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_all(sock)  # the answer, then the close once idle
    assert status_of(data) == 200
    assert b"connection: close" not in data


class _Endless:
    """Streams forever; records when the server says the client is gone."""

    def __init__(self) -> None:
        self.gone = threading.Event()
        self.started = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        task = asyncio.current_task()
        assert task is not None

        def gone() -> None:  # as the gateway's DisconnectWatch: the request is cancelled
            self.gone.set()
            task.cancel()

        scope["extensions"][DISCONNECT_EXTENSION](gone)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.started.set()
        chunk = b"x" * 65536
        while True:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


def test_a_client_that_stops_reading_is_dropped_and_its_request_cancelled() -> None:
    app = _Endless()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> HTTPServer:
        server = HTTPServer(app, limits=EdgeLimits(send_timeout=0.2))
        await server.listen("127.0.0.1", 0)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        assert app.started.wait(10)
        assert app.gone.wait(10), "the stream to a client that reads nothing was never cut"
        assert server.stats.timeouts["send"] == 1
        sock.close()
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.parametrize("path", ["/admin/v1/reload", "/admin/v1/nowhere", "/nowhere"])
def test_no_key_no_body_read(
    gateway_factory: GatewayFactory, upstream: MockUpstream, path: str
) -> None:
    """The issue's first row: no admin key, Content-Length 1000 and one byte. Answered at once
    (401 or 404) without waiting for the body, and the connection is closed within the body
    deadline rather than held."""
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        data = read_all(sock)
    assert status_of(data) in (401, 404)
