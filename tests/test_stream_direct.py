"""A passthrough stream written from the upstream's read callback (``truckllm.push``, see
``truckllm.providers.direct``): the server's writer says when the client is full, and a client
that reads nothing for a while, then everything, gets every byte of the stream, in order, once.
(The hand-over itself, at the upstream side, is in tests/test_http_client.py: ``splice``.)"""

from __future__ import annotations

import asyncio
import gc
import socket
import textwrap
import threading
import zlib
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from edge_helpers import CLIENT_KEY
from helpers import Gateway, LoopServer, cyclic_of, request, request_types

from truckllm.api import App
from truckllm.config import parse_config
from truckllm.http.server import PUSH_EXTENSION, HTTPServer
from truckllm.providers import provider_registry
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.behaviour import KeyBehaviour
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread

GatewayFactory = Callable[..., Gateway]

EVENTS = 8_000
CONTENT = "x" * 2_000  # 8,000 events of about 2 kB: 16 MB, more than the buffers on the way


def _event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4",
        "choices": [{"index": 0, "delta": {"content": f"{i:05d}{CONTENT}"}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


STREAM = b"".join(_event(i) for i in range(EVENTS)) + b"data: [DONE]\n\n"


class Upstream(LoopServer):
    """An OpenAI-compatible upstream that writes ``stream`` (gzip-compressed, flushed every
    16 kB, with ``gzip``) as fast as it is taken; ``stalled`` is set once a write has to wait for
    the gateway (or all is written)."""

    def __init__(self, stream: bytes = STREAM, gzip: bool = False) -> None:
        self.stream = stream
        self.gzip = gzip
        self.stalled = threading.Event()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        if self.gzip:
            writer.write(b"content-encoding: gzip\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        packer = zlib.compressobj(6, zlib.DEFLATED, 31) if self.gzip else None
        stream = self.stream
        for start in range(0, len(stream), 16_384):
            part = stream[start : start + 16_384]
            if packer is not None:
                part = packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH)
                if start + 16_384 >= len(stream):
                    part += packer.flush()
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            if writer.transport.get_write_buffer_size() > 65_536:
                self.stalled.set()  # the gateway takes no more for now
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.stalled.set()
        writer.close()
        await writer.wait_closed()


def _body_of(data: bytes) -> bytes:
    """A 200 answer's body, chunked or delimited by the connection's end."""
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    out: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        rest = rest[size + 2 :]


def _gateway(factory: GatewayFactory, upstream_url: str) -> Gateway:
    return factory(f"""
        server:
          api_keys: [{CLIENT_KEY}]
        providers:
          - id: openai
            base_url: {upstream_url}
            keys: [{{id: k1, secret: sk-1}}]
        model_aliases:
          gpt-4: openai:gpt-4
        """)


@pytest.mark.parametrize("gzip", [False, True], ids=["identity", "gzip"])
@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_client_that_stops_reading_then_reads_gets_every_byte_of_a_passthrough_stream(
    gateway_factory: GatewayFactory, version: str, gzip: bool
) -> None:
    """Also from a gzip-compressed upstream (inflated in bounded steps), and to an HTTP/1.0
    client (no chunks: the body ends when the connection does)."""
    upstream = Upstream(gzip=gzip)
    try:
        gw = _gateway(gateway_factory, upstream.url)
        body = orjson.dumps(
            {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
        with socket.socket() as sock:
            sock.settimeout(30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few kB
            sock.connect((gw.server.host, gw.server.port))
            sock.sendall(
                b"POST /v1/chat/completions HTTP/%b\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: Bearer %b\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b"
                % (version.encode(), CLIENT_KEY.encode(), len(body), body)
            )
            # Read nothing until the gateway has stopped taking the upstream's writes (its
            # buffers towards this client are full) or the upstream has written everything.
            assert upstream.stalled.wait(30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read it quickly
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        assert _body_of(b"".join(chunks)) == STREAM
    finally:
        upstream.stop()


class _Pusher:
    """An app that writes its stream by the server's ``truckllm.push`` until it says the client
    is full, then ends the response by ``send``."""

    def __init__(self) -> None:
        self.pushed = 0
        self.full = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        push = scope["extensions"][PUSH_EXTENSION]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"start", "more_body": True})
        part = b"y" * 65_536
        while self.pushed < 1_024:  # 64 MB: far past any socket's buffers
            self.pushed += 1
            if not push(part):
                self.full = True
                break
        await send({"type": "http.response.body", "body": b"end", "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_push_writes_at_once_and_says_when_the_client_is_full() -> None:
    app = _Pusher()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> HTTPServer:
        server = HTTPServer(app)
        await server.listen("127.0.0.1", 0)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    port = server.sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(1), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert app.full and app.pushed < 1_024
    assert _body_of(b"".join(chunks)) == b"start" + b"y" * 65_536 * app.pushed + b"end"


def test_streams_spread_over_many_reads_arrive_whole_in_each_dialect(
    serve_fake: Callable[..., Any], gateway_factory: GatewayFactory
) -> None:
    """Events a few ms apart reach the gateway in separate reads, so all but the first go by the
    read-callback relay: a chat client (passthrough), a Messages client and a Responses client
    (both translated from chat) each get the whole answer, and each request's record its usage
    and its first byte's time."""
    import anthropic
    import openai

    upstream = serve_fake(MockUpstream, reply_words=30, event_delay=0.003)
    gw = _gateway(gateway_factory, upstream.url)
    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    hi = [{"role": "user", "content": "Hi"}]
    whole = openai.OpenAI(base_url=gw.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    answer = whole.chat.completions.create(model="gpt-4", messages=cast(Any, hi))
    expected = answer.choices[0].message.content
    assert expected and len(expected.split()) == 30
    chunks = whole.chat.completions.create(model="gpt-4", messages=cast(Any, hi), stream=True)
    chat_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)
    with claude.messages.stream(model="gpt-4", max_tokens=64, messages=cast(Any, hi)) as stream:
        messages_text = "".join(stream.text_stream)
    responses = whole.responses.create(model="gpt-4", input="Hi", stream=True)
    responses_text = "".join(e.delta for e in responses if e.type == "response.output_text.delta")
    gw.settled()
    assert chat_text == messages_text == responses_text == expected
    streamed = [r for r in records if r.stream]
    assert [r.endpoint for r in streamed] == ["chat", "messages", "responses"]
    for rec in streamed:
        assert rec.status == 200 and rec.ttft_s is not None
        assert rec.usage is not None and rec.usage.completion_tokens > 0


@pytest.mark.filterwarnings("ignore:unclosed transport:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fault", ["cut", "stall"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stream_broken_mid_way_ends_with_an_error_event_and_leaves_no_cycles(
    serve_fake: Callable[..., Any], loop: str, fault: str
) -> None:
    """The upstream cuts the connection, or goes silent past its read timeout, after the first
    events: the client's stream ends with an error event, and the request's objects (the client's
    connection among them) are freed by reference counting, not left in a cycle through the
    error's traceback."""
    upstream = serve_fake(
        MockUpstream,
        event_delay=0.005,
        reply_words=40,
        keys={"sk-1": KeyBehaviour(faults={fault: 1.0})},
    )
    cfg = parse_config(
        textwrap.dedent(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: k1, secret: sk-1}}]
            timeout: {{read: 0.3}}
        model_aliases:
          gpt-4: openai:gpt-4
        """),
        "<test>",
        {},
        provider_registry().names(),
    )
    body = {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    gc.collect()
    server = ServerThread(App(cfg), loop=loop).start()
    try:
        for _ in range(2):
            got = request("POST", server.url + "/v1/chat/completions", body)
            assert got.status == 200
            events = [e for e in got.body.split(b"\n\n") if e]
            assert b'"content"' in events[0]  # the stream had begun
            assert events[-1].startswith(b'data: {"error"'), events[-1]
            assert b"[DONE]" not in got.body
    finally:
        server.stop()
    assert cyclic_of(request_types()) == []
