"""Framing at the edge over real sockets: Host required on HTTP/1.1, the header-count cap, HEAD on
GET routes, Allow on 405, client path segments kept out of upstream URLs; and property tests of
the request parser (random splits parse identically; random bytes are a 400 and a close)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from edge_helpers import ADMIN_KEY, CLIENT_KEY, connect, make_gateway, read_all, status_of
from helpers import Gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from truckllm.http.server import EdgeLimits, HTTPServer
from truckllm.testing.mock import MockUpstream

GatewayFactory = Callable[..., Gateway]


def test_http11_without_host_is_a_400(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status_of(read_all(sock)) == 400
    with connect(gw) as sock:  # HTTP/1.0 needs none
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert status_of(read_all(sock).replace(b"HTTP/1.0", b"HTTP/1.1", 1)) == 200


def test_too_many_headers_is_a_431(gateway_factory: GatewayFactory, upstream: MockUpstream) -> None:
    gw = make_gateway(gateway_factory, upstream)
    many = b"".join(b"a%d: b\r\n" % i for i in range(10_000))  # the 10,000 lines
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many[:60_000])
        assert status_of(read_all(sock)) == 431


def test_head_on_get_routes_and_allow_on_405(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gw = make_gateway(gateway_factory, upstream)
    head = gw.request("HEAD", "/healthz")
    assert head.status == 200 and head.body == b""
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert gw.request("HEAD", "/v1/models", headers=auth).status == 200
    resp = gw.request("DELETE", "/healthz")
    assert resp.status == 405
    assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD"}
    resp = gw.request("GET", "/v1/chat/completions", headers=auth)
    assert resp.status == 405 and resp.headers["allow"] == "POST"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    resp = gw.request("DELETE", "/admin/v1/reload", headers=admin)
    assert resp.status == 405 and "POST" in resp.headers["allow"]


class _Recorder:
    """An upstream that records request paths and answers 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.url = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1beta"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.paths.append(head.split(b" ")[1].decode())
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("model", ["../../admin/x", "models/../../x", "a//b", "./x", "x/.."])
def test_gemini_model_names_never_move_in_the_upstream_url(
    gateway_factory: GatewayFactory, loop_thread: Any, model: str
) -> None:
    rec = _Recorder()
    loop_thread.run(rec.start())
    gw = gateway_factory(
        textwrap.dedent(f"""
        providers:
          - id: gemini
            type: gemini
            base_url: {rec.url}
            keys: [{{id: g1, secret: gk-1}}]
            models: ["*"]
        """)
    )
    body = {"model": f"gemini:{model}", "messages": [{"role": "user", "content": "hi"}]}
    resp = gw.post("/v1/chat/completions", body)
    assert resp.status == 400, resp.body
    assert all(".." not in p and "/./" not in p for p in rec.paths), rec.paths


# -- property tests of the request parser ------------------------------------------------------


class _Echo:
    """Answers with what it parsed: method, path, query, headers and body."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = repr((scope["method"], scope["path"], scope["query_string"], scope["headers"], body))
        out = seen.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": out})


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> HTTPServer:
        server = HTTPServer(_Echo(), limits=EdgeLimits(headers_timeout=2, body_timeout=2))
        await server.listen("127.0.0.1", 0)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield server.sockets[0].getsockname()[1]
    asyncio.run_coroutine_threadsafe(server.shutdown(1), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _exchange(port: int, pieces: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            try:
                sock.sendall(piece)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/", max_size=30).map(str.strip)


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    path = "/" + "/".join(draw(st.lists(_token, max_size=4)))
    query = draw(st.one_of(st.just(""), _token.map(lambda t: "?q=" + t)))
    headers = draw(st.lists(st.tuples(_token.map(lambda t: "x-" + t), _value), max_size=8))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    lines = [f"POST {path}{query} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{n}: {v}" for n, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        framed = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + framed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p]


_FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FAST
@given(request=_request(), cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_random_splits_of_a_valid_request_parse_identically(
    echo_port: int, request: bytes, cuts: list[int]
) -> None:
    whole = _exchange(echo_port, [request])
    split = _exchange(echo_port, _split(request, cuts))
    assert status_of(whole) == 200
    assert whole.partition(b"\r\n\r\n")[2] == split.partition(b"\r\n\r\n")[2]


@_FAST
@given(junk=st.binary(min_size=1, max_size=400))
def test_random_bytes_are_a_400_and_a_close_or_nothing(echo_port: int, junk: bytes) -> None:
    answer = _exchange(echo_port, [junk])
    if answer:  # bytes that never finish a head are simply closed (at the end of input)
        assert status_of(answer) in (400, 408, 431), answer[:100]
        assert b"connection: close" in answer
