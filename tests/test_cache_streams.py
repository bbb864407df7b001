"""The response cache and streams passed through untranslated (an Anthropic upstream to a Messages
client, a Responses API upstream to a Responses client), read with the official SDKs; and streamed
misses over real sockets: concurrent identical ones, and a client that leaves mid-stream."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import anthropic
import openai
import orjson
import pytest
from helpers import Gateway, wait_until

from truckllm.cache.events import EventKeeper, whole_of
from truckllm.providers.base import ANTHROPIC_MESSAGES
from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.mock import MockUpstream

CONFIG = """
server:
  api_keys: [{{key: client-a, id: a}}]
providers:
  - id: claude
    type: anthropic
    base_url: {anthropic}
    models: [claude-x]
    keys: [{{id: ka, secret: sk-ant-1, pricing: {pricing}}}]
  - id: native
    base_url: {native}
    responses_api: true
    models: [gpt-x]
    keys: [{{id: kn, secret: sk-n-1, pricing: {pricing}}}]
cache: {{enabled: true, sampled: true}}  # the Messages API has no temperature to set to 0
"""
PRICING = "{input_token_cost: 1.0, output_token_cost: 2.0, unit: per_1m_tokens}"


class Stack:
    def __init__(self, gw: Gateway, claude: FakeAnthropic, native: MockUpstream) -> None:
        self.gw, self.claude, self.native = gw, claude, native

    def calls(self, path: str) -> int:
        fakes: list[Any] = [self.claude, self.native]
        return sum(1 for f in fakes for r in f.received if r.path == path)


@pytest.fixture
def stack(serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]) -> Stack:
    claude = serve_fake(FakeAnthropic)
    native = serve_fake(MockUpstream)
    gw = gateway_factory(CONFIG.format(anthropic=claude.url, native=native.url, pricing=PRICING))
    return Stack(gw, claude, native)


def claude_sdk(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="client-a", max_retries=0, timeout=10)


def openai_sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-a", max_retries=0, timeout=10)


ASK: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_an_anthropic_passthrough_stream_is_kept_and_replayed_as_it_came(stack: Stack) -> None:
    client = claude_sdk(stack.gw)
    with client.messages.with_streaming_response.create(**ASK, stream=True) as first:
        assert first.headers["x-truckllm-cache"] == "miss"
        raw = first.read()
    with client.messages.with_streaming_response.create(**ASK, stream=True) as again:
        assert again.headers["x-truckllm-cache"] == "hit"
        assert float(again.headers["x-truckllm-cache-saved-usd"]) > 0
        assert again.read() == raw  # the events, byte for byte
    with client.messages.stream(**ASK) as stream:  # the SDK reads the replay as a stream
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = client.messages.with_raw_response.create(**ASK)
    assert whole.headers["x-truckllm-cache"] == "hit"
    message = whole.parse()
    assert message.content[0].text == text
    assert message.id == final.id and message.stop_reason == final.stop_reason == "end_turn"
    assert message.usage.output_tokens == final.usage.output_tokens > 0
    assert stack.calls("/v1/messages") == 1


def test_a_responses_passthrough_stream_is_kept_and_replayed(stack: Stack) -> None:
    client = openai_sdk(stack.gw)
    ask: dict[str, Any] = {"model": "gpt-x", "input": "hi", "temperature": 0}
    with client.responses.with_streaming_response.create(**ask, stream=True) as first:
        assert first.headers["x-truckllm-cache"] == "miss"
        raw = first.read()
    stream = client.responses.create(**ask, stream=True)
    events = list(stream)
    assert events[-1].type == "response.completed"
    streamed = events[-1].response
    whole = client.responses.with_raw_response.create(**ask)
    assert whole.headers["x-truckllm-cache"] == "hit"
    answer = whole.parse()
    assert answer.id == streamed.id and answer.output_text == streamed.output_text != ""
    assert answer.usage is not None and answer.usage.output_tokens > 0
    with client.responses.with_streaming_response.create(**ask, stream=True) as again:
        assert again.headers["x-truckllm-cache"] == "hit"
        assert again.read() == raw
    assert stack.calls("/v1/responses") == 1


def test_a_passthrough_stream_that_ends_in_an_error_is_never_kept() -> None:
    ok = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":'
        b'"message","role":"assistant","model":"x","content":[],"usage":{"input_tokens":1}}}\n\n'
    )
    bad = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    keeper = EventKeeper(ANTHROPIC_MESSAGES, 1 << 20)
    for batch in (ok, bad, stop):
        keeper.feed(batch)
    assert keeper.events is None
    keeper = EventKeeper(ANTHROPIC_MESSAGES, len(ok))
    keeper.feed(ok + stop)  # past the size bound
    assert keeper.events is None
    keeper = EventKeeper(ANTHROPIC_MESSAGES, 1 << 20)
    keeper.feed(ok)
    assert keeper.events is None  # not ended yet
    keeper.feed(stop)
    assert keeper.events == ok + stop
    assert orjson.loads(whole_of(ANTHROPIC_MESSAGES, ok + stop) or b"")["content"] == []


# -- streamed misses over real sockets --------------------------------------------------------

CHAT_CONFIG = """
server:
  api_keys: [{{key: client-a, id: a}}]
providers:
  - id: p
    base_url: {url}
    models: [m]
    keys: [{{id: k1, secret: sk-1}}]
cache: {{enabled: true}}
"""
CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
    "stream": True,
}


def test_concurrent_identical_streamed_misses_each_get_a_whole_stream(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    upstream = upstream_factory(latency=0.3)
    gw = gateway_factory(CHAT_CONFIG.format(url=upstream.url))
    client = openai_sdk(gw)

    def ask(_: int) -> tuple[str, str]:
        with client.chat.completions.with_streaming_response.create(**CHAT) as resp:
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            return resp.headers["x-truckllm-cache"], text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert len({text for _, text in answers}) == 1 and answers[0][1]
    calls = sum(1 for r in upstream.received if r.path == "/v1/chat/completions")
    assert [r for r, _ in answers].count("miss") == calls  # streams are not coalesced
    gw.settled()
    assert gw.app.cache.stats.stored == calls  # each whole stream stored, none partial
    result, text = ask(0)
    assert (result, text) == ("hit", answers[0][1])


def test_a_client_leaving_mid_stream_never_leaves_a_partial_answer(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    upstream = upstream_factory(event_delay=0.05, reply_words=20)
    gw = gateway_factory(CHAT_CONFIG.format(url=upstream.url))
    records: list[Any] = []
    gw.app.records.subscribe(records.append)
    host = urlsplit(gw.url)
    body = orjson.dumps(CHAT)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host.netloc}\r\n"
        "Authorization: Bearer client-a\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        sock.sendall(head + body)
        got = b""
        while b"chat.completion.chunk" not in got:  # the first event is out: leave
            got += sock.recv(4096)
        assert b"x-truckllm-cache: miss" in got.lower()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    wait_until(lambda: records, 10, "the left request's record")
    assert records[0].status == 499
    assert gw.app.cache.stats.stored == 0
    with openai_sdk(gw).chat.completions.with_streaming_response.create(**CHAT) as resp:
        assert resp.headers["x-truckllm-cache"] == "miss"
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert len(text.split()) == 20
    gw.settled()
    assert gw.app.cache.stats.stored == 1
