"""Large non-streamed upstream answers relayed as they arrive, over real sockets: the client gets
the first bytes before the upstream has sent the last (so the body is never held whole), the
bytes are the upstream's own, the usage at the end of the body is still recorded, and a body
that breaks off or grows past ``server.max_response_bytes`` after the head went out cuts the
client's connection instead of completing it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import orjson
import pytest
from edge_helpers import CLIENT_KEY, connect, edge_config
from helpers import Gateway, request, wait_until

from truckllm.telemetry.record import RequestRecord
from truckllm.testing.loop import LoopThread

MiB = 1024 * 1024
_USAGE = b'"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}'


def completion(size: int) -> bytes:
    """An OpenAI chat completion of about ``size`` bytes, its usage last."""
    head = b'{"id":"c1","object":"chat.completion","model":"gpt-4","choices":[{"index":0,'
    head += b'"message":{"role":"assistant","content":"'
    tail = b'"},"finish_reason":"stop"}],' + _USAGE
    return head + b"x" * (size - len(head) - len(tail)) + tail


class ScriptedUpstream:
    """Records each request's head, then writes ``script`` in order: bytes as they are, an
    :class:`asyncio.Event` waited for; then closes."""

    def __init__(self) -> None:
        self.url = ""
        self.heads: list[bytes] = []
        self.script: list[bytes | asyncio.Event] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            length = next(
                (
                    int(line[15:])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            for step in self.script:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                else:
                    writer.write(step)
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
def upstream(loop_thread: LoopThread) -> Iterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    loop_thread.run(up.start())
    yield up
    loop_thread.run(up.stop())


def _head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _send_chat(sock: socket.socket) -> None:
    body = orjson.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {CLIENT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _read_at_least(sock: socket.socket, buf: bytearray, size: int) -> bool:
    """Read until ``buf`` holds ``size`` bytes; False if the server closed first."""
    while len(buf) < size:
        data = sock.recv(1 << 20)
        if not data:
            return False
        buf += data
    return True


def _read_to_close(sock: socket.socket, buf: bytearray) -> None:
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return
        if not data:
            return
        buf += data


def _records(gw: Gateway) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    return records


def test_a_large_answer_reaches_the_client_before_the_upstream_has_sent_all_of_it(
    gateway_factory: object, upstream: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    body = completion(3 * MiB)
    release = loop_thread.run(_event())
    upstream.script = [_head(len(body)), body[: 2 * MiB], release, body[2 * MiB :]]
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    records = _records(gw)
    sock = connect(gw)
    _send_chat(sock)
    got = bytearray()
    # Two MiB of body reach the client while the upstream still holds the rest back.
    assert _read_at_least(sock, got, 2 * MiB), bytes(got[:300])
    head = bytes(got).partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"content-length: {len(body)}".encode() in head.lower()  # identity: passed on
    loop_thread.run(_set(release))
    assert _read_at_least(sock, got, len(head) + 4 + len(body))
    assert bytes(got).partition(b"\r\n\r\n")[2] == body  # byte for byte
    sock.close()
    wait_until(lambda: records, what="the record")
    usage = records[0].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 22)
    assert records[0].error_code is None and records[0].cost_usd is not None
    # The upstream was asked for the body as it is: nothing to inflate on the way.
    assert b"accept-encoding: identity" in upstream.heads[0].lower()
    key = gw.states()["k1"]  # the attempt reported once, as a success
    assert key.in_flight == 0 and key.success_rate == 1.0


def test_a_chunked_large_answer_is_relayed_whole_and_accounted(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    body = completion(int(2.5 * MiB))
    pieces = [body[i : i + 300_000] for i in range(0, len(body), 300_000)]
    upstream.script = [_head(None), *(_chunked(p) for p in pieces), b"0\r\n\r\n"]
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    records = _records(gw)
    resp = request(
        "POST",
        gw.url + "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        {"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert resp.status == 200 and resp.body == body
    wait_until(lambda: records, what="the record")
    assert records[0].usage is not None and records[0].usage.completion_tokens == 22


def test_an_answer_cut_short_after_its_head_went_out_cuts_the_client(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    body = completion(3 * MiB)
    upstream.script = [_head(len(body)), body[: 2 * MiB]]  # then the upstream closes
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    records = _records(gw)
    sock = connect(gw)
    _send_chat(sock)
    got = bytearray()
    _read_to_close(sock, got)
    head, _, received = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert 1 * MiB <= len(received) < len(body)  # short of its content-length: the client knows
    wait_until(lambda: records, what="the record")
    assert records[0].error_code == "upstream_unavailable"
    key = gw.states()["k1"]  # the attempt reported once, as a failure
    assert key.in_flight == 0 and key.success_rate < 1.0


def test_a_chunked_answer_growing_past_the_cap_after_its_head_cuts_the_client(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    piece = b"x" * 256 * 1024
    upstream.script = [_head(None), *(_chunked(piece) for _ in range(16)), b"0\r\n\r\n"]
    gw = gateway_factory(edge_config(upstream.url, f"max_response_bytes: {2 * MiB}"))  # type: ignore[operator]
    records = _records(gw)
    sock = connect(gw)
    _send_chat(sock)
    got = bytearray()
    _read_to_close(sock, got)
    head, _, received = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"0\r\n\r\n" not in received[-5:]  # no last chunk: the body is seen incomplete
    assert len(received) < 3 * MiB
    wait_until(lambda: records, what="the record")
    assert records[0].error_code == "upstream_unavailable"


def test_a_large_answer_translated_for_a_messages_client_is_read_whole(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    body = completion(2 * MiB)
    upstream.script = [_head(len(body)), body]
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    resp = request(
        "POST",
        gw.url + "/v1/messages",
        {"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
    )
    assert resp.status == 200, resp.body[:300]
    answer = resp.json()
    assert answer["type"] == "message" and len(answer["content"][0]["text"]) > MiB
    assert answer["usage"] == {"input_tokens": 11, "output_tokens": 22} or (
        answer["usage"]["input_tokens"],
        answer["usage"]["output_tokens"],
    ) == (11, 22)


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _set(event: asyncio.Event) -> None:
    event.set()


def test_a_huge_error_answer_is_read_no_further_than_its_beginning(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    endless = _chunked(b"<html>" + b"x" * 65536)
    head = b"HTTP/1.1 500 Oops\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    upstream.script = [head, *([endless] * 200)]  # 13 MB of error page, under the cap
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    resp = request(
        "POST",
        gw.url + "/v1/chat/completions",
        {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        {"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert resp.status == 500 and len(resp.body) < 2000
    message = resp.json()["error"]["message"]
    assert "answered 500" in message and ": <html>xxx" in message


def test_a_large_image_answer_is_relayed_and_its_images_counted(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    image = b'{"b64_json":"' + b"A" * 700_000 + b'","revised_prompt":"a cat"}'
    body = b'{"created":1,"data":[' + image + b"," + image + b"," + image + b"]}"
    upstream.script = [_head(len(body)), body]
    gw = gateway_factory(edge_config(upstream.url))  # type: ignore[operator]
    records = _records(gw)
    resp = request(
        "POST",
        gw.url + "/v1/images/generations",
        {"model": "gpt-4", "prompt": "a cat", "n": 3},
        {"Authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert resp.status == 200 and resp.body == body
    wait_until(lambda: records, what="the record")
    assert records[0].usage is not None and records[0].usage.images == 3


def test_a_relayed_answer_too_large_for_the_cache_is_relayed_and_not_kept(
    gateway_factory: object, upstream: ScriptedUpstream
) -> None:
    body = completion(3 * MiB)
    upstream.script = [_head(len(body)), body]
    config = edge_config(upstream.url) + "cache: {enabled: true}\n"
    gw = gateway_factory(config)  # type: ignore[operator]
    chat = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    for _ in range(2):
        resp = request(
            "POST", gw.url + "/v1/chat/completions", chat, {"Authorization": f"Bearer {CLIENT_KEY}"}
        )
        assert resp.status == 200 and resp.body == body
        assert resp.headers["x-truckllm-cache"] == "miss"
    assert len(upstream.heads) == 2  # over max_entry_bytes (1 MiB): never kept


def anthropic_message(size: int) -> bytes:
    """An Anthropic Message of about ``size`` bytes, in its real field order: ``usage`` last,
    with the nested ``cache_creation`` object and a string (``service_tier``) inside."""
    head = b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
    head += b'"content":[{"type":"text","text":"'
    tail = (
        b'"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":11,'
        b'"cache_creation_input_tokens":3,"cache_read_input_tokens":5,"cache_creation":'
        b'{"ephemeral_5m_input_tokens":3,"ephemeral_1h_input_tokens":0},"output_tokens":22,'
        b'"service_tier":"standard"}}'
    )
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_a_large_anthropic_passthrough_answer_is_relayed_as_it_arrives(
    gateway_factory: object, upstream: ScriptedUpstream, loop_thread: LoopThread
) -> None:
    body = anthropic_message(3 * MiB)
    release = loop_thread.run(_event())
    upstream.script = [_head(len(body)), body[: 2 * MiB], release, body[2 * MiB :]]
    config = edge_config(upstream.url).replace(
        "  - id: openai\n", "  - id: openai\n    type: anthropic\n"
    ).replace(upstream.url, upstream.url.removesuffix("/v1"))
    gw = gateway_factory(config)  # type: ignore[operator]
    records = _records(gw)
    sock = connect(gw)
    payload = orjson.dumps(
        {"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"x-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    got = bytearray()
    # Two MiB of body reach the Messages client while the upstream still holds the rest back.
    assert _read_at_least(sock, got, 2 * MiB), bytes(got[:300])
    head = bytes(got).partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 ")
    loop_thread.run(_set(release))
    assert _read_at_least(sock, got, len(head) + 4 + len(body))
    assert bytes(got).partition(b"\r\n\r\n")[2] == body  # byte for byte
    sock.close()
    wait_until(lambda: records, what="the record")
    usage = records[0].usage  # read from the body's end, in Anthropic's terms
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_creation_tokens) == (19, 5, 3)
    assert usage.completion_tokens == 22 and records[0].error_code is None
    assert b"/v1/messages " in upstream.heads[0]  # passed through, not translated
    assert b"accept-encoding: identity" in upstream.heads[0].lower()
    key = gw.states()["k1"]
    assert key.in_flight == 0 and key.success_rate == 1.0
