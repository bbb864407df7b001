"""Hostile upstreams over real sockets: header values that are huge, negative, NaN or garbage
degrade to "unknown"; bodies past ``server.max_response_bytes`` (before or after inflation) are a
502. Never a 500, never unbounded memory."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable, Iterator

import pytest
from edge_helpers import CLIENT_KEY, edge_config
from helpers import Gateway

from truckllm.testing.loop import LoopThread

GatewayFactory = Callable[..., Gateway]
_OK = b'{"id":"x","object":"chat.completion","model":"gpt-4","choices":[],"usage":null}'


class RawUpstream:
    """Answers every request on loopback with ``answer`` (raw bytes: status line, headers and
    body as a hostile server would send them), then closes."""

    def __init__(self) -> None:
        self.answer = b""
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(self.answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def raw_upstream(loop_thread: LoopThread) -> Iterator[RawUpstream]:
    up = RawUpstream()
    loop_thread.run(up.start())
    yield up
    loop_thread.run(up.stop())


def answer(status: str, headers: list[str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat(gw: Gateway) -> int:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    return gw.post(
        "/v1/chat/completions", body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ).status


@pytest.mark.parametrize("value", ["1e400", "nan", "-5", "inf", "99999999999999999999", "x"])
def test_a_429_with_a_hostile_retry_after_is_no_500(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream, value: str
) -> None:
    raw_upstream.answer = answer(
        "429 Too Many Requests",
        [f"Retry-After: {value}", f"retry-after-ms: {value}", "Content-Type: application/json"],
        b'{"error":{"message":"slow down","type":"rate_limit_error","code":null}}',
    )
    gw = gateway_factory(edge_config(raw_upstream.url))
    assert chat(gw) in (429, 503)


@pytest.mark.parametrize("value", ["1e400", "nan", "-1", "inf", "1e30"])
def test_hostile_rate_limit_headers_on_a_200_are_no_500(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream, value: str
) -> None:
    raw_upstream.answer = answer(
        "200 OK",
        [
            "Content-Type: application/json",
            f"x-ratelimit-remaining-requests: {value}",
            f"x-ratelimit-remaining-tokens: {value}",
            f"x-ratelimit-limit-requests: {value}",
            f"x-ratelimit-reset-requests: {value}s",
            f"x-ratelimit-reset-tokens: {value}",
        ],
        _OK,
    )
    gw = gateway_factory(edge_config(raw_upstream.url))
    assert chat(gw) == 200
    assert chat(gw) == 200  # and the key's state it left behind serves the next


def test_hostile_anthropic_style_headers_are_no_500(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer = answer(
        "200 OK",
        [
            "Content-Type: application/json",
            "anthropic-ratelimit-requests-remaining: 1e400",
            "anthropic-ratelimit-tokens-remaining: nan",
            "anthropic-ratelimit-tokens-reset: 99999-01-01T00:00:00Z",
            "anthropic-ratelimit-requests-reset: 9999-12-31T23:59:59Z",
        ],
        _OK,
    )
    gw = gateway_factory(edge_config(raw_upstream.url))
    assert chat(gw) == 200


_CAP = "max_response_bytes: 100000"


def test_an_answer_over_max_response_bytes_is_a_502(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer = answer("200 OK", ["Content-Type: application/json"], b" " * 200_000)
    gw = gateway_factory(edge_config(raw_upstream.url, _CAP))
    assert chat(gw) == 502


def test_a_chunked_answer_over_max_response_bytes_is_a_502(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    chunk = b" " * 10_000
    body = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(30)) + b"0\r\n\r\n"
    raw_upstream.answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
    )
    gw = gateway_factory(edge_config(raw_upstream.url, _CAP))
    assert chat(gw) == 502


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_stopped_at_the_cap(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream, encoding: str
) -> None:
    inflated = b" " * (64 * 1024 * 1024)  # 64 MiB of spaces: about 64 KiB compressed
    packed = gzip.compress(inflated, 9) if encoding == "gzip" else zlib.compress(inflated, 9)
    del inflated
    raw_upstream.answer = answer(
        "200 OK", ["Content-Type: application/json", f"Content-Encoding: {encoding}"], packed
    )
    gw = gateway_factory(edge_config(raw_upstream.url, _CAP))
    assert chat(gw) == 502


def test_a_compressed_answer_under_the_cap_is_served(
    gateway_factory: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer = answer(
        "200 OK",
        ["Content-Type: application/json", "Content-Encoding: gzip"],
        gzip.compress(_OK),
    )
    gw = gateway_factory(edge_config(raw_upstream.url, _CAP))
    assert chat(gw) == 200
