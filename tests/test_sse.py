"""The one SSE framer every provider reads streams with (``truckllm.providers.sse``).

Real event streams (OpenAI chat completions, Anthropic messages, Gemini ``alt=sse``), in LF, CRLF
and CR line ends, are fed split at every byte offset: the events must be those of the unsplit
stream, and each must come out with the read that completes its blank line, never later (a
CRLF cut between ``\\r`` and ``\\n`` used to hold an event back until the next read arrived).
"""

from __future__ import annotations

import asyncio
import http.client
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from helpers import Gateway
from hypothesis import given, settings
from hypothesis import strategies as st

from truckllm.config.schema import ProviderConfig, Timeouts
from truckllm.providers.anthropic import AnthropicProvider
from truckllm.providers.anthropic.stream import StreamTranslator as AnthropicTranslator
from truckllm.providers.base import ProviderContext, Reply, UpstreamProtocolError
from truckllm.providers.gemini import GeminiProvider
from truckllm.providers.gemini.stream import StreamTranslator as GeminiTranslator
from truckllm.providers.openai import OpenAIProvider
from truckllm.providers.sse import Event, SSEFramer, iter_data, iter_events, parse_event
from truckllm.testing.behaviour import Conditions
from truckllm.testing.loop import LoopThread
from truckllm.testing.wire import FakeServer

# -- real streams ------------------------------------------------------------------------------
# Each is a list of raw events as the vendor sends them (LF line ends, without the blank line).

_CHUNK = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return "data: " + orjson.dumps({**_CHUNK, "choices": [choice], "usage": None}).decode()


OPENAI = [
    ": OPENROUTER PROCESSING",  # a comment, as OpenRouter sends while it waits
    _openai_chunk({"role": "assistant", "content": "", "refusal": None}),
    _openai_chunk({"content": "Hello"}),
    _openai_chunk({"content": " there, how can I help"}),
    _openai_chunk({"content": "?"}),
    _openai_chunk({}, "stop"),
    "data: "
    + orjson.dumps(
        {
            **_CHUNK,
            "choices": [],
            "usage": {
                "prompt_tokens": 19,
                "completion_tokens": 10,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
    ).decode(),
    "data: [DONE]",
]


def _anthropic(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: " + orjson.dumps(event).decode()


ANTHROPIC = [
    _anthropic(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        }
    ),
    _anthropic(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    ),
    _anthropic({"type": "ping"}),
    _anthropic(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        }
    ),
    _anthropic(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}
    ),
    _anthropic({"type": "content_block_stop", "index": 0}),
    _anthropic(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        }
    ),
    _anthropic({"type": "message_stop"}),
]


def _gemini(text: str, finish: str | None = None, total: int = 0) -> str:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    usage = {"promptTokenCount": 8, "candidatesTokenCount": total, "totalTokenCount": 8 + total}
    body = {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mFnNaKGeLpWW7dcPqtTU4AQ",
    }
    return "data: " + orjson.dumps(body).decode()


GEMINI = [
    _gemini("Hello", total=1),
    _gemini(" from Gemini,", total=4),
    _gemini(" streaming.", "STOP", total=6),
]

STREAMS = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}
ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


@dataclass
class Stream:
    raw: bytes  # as sent, in the variant's line ends
    lf: bytes  # the same stream with LF line ends: what the framer hands out
    events: list[Event]  # what a parser must read from it
    due: list[int]  # per event: the bytes of ``raw`` that must have arrived for it to come out
    ends: list[int]  # per event: the offset in ``lf`` just after its blank line


def build(events: list[str], ending: str) -> Stream:
    raw = b""
    lf = b""
    expected: list[Event] = []
    due: list[int] = []
    ends: list[int] = []
    for text in events:
        raw += (text + "\n\n").replace("\n", ending).encode()
        lf += (text + "\n\n").encode()
        due.append(len(raw) - (len(ending) - 1))  # a CRLF's CR already ends the blank line
        ends.append(len(lf))
        data = [ln.removeprefix("data: ") for ln in text.split("\n") if ln.startswith("data: ")]
        if data:
            kind = text.split("\n")[0].removeprefix("event: ") if text.startswith("event:") else ""
            expected.append(Event(kind or "message", "\n".join(data).encode()))
    return Stream(raw, lf, expected, due, ends)


CASES = [
    pytest.param(build(events, ending), id=f"{name}-{variant}")
    for name, events in STREAMS.items()
    for variant, ending in ENDINGS.items()
]


def complete_by(s: Stream, received: int) -> int:
    """How many raw events have all that they need among the first ``received`` bytes."""
    return sum(1 for d in s.due if d <= received)


def parsed(block: bytes) -> list[Event]:
    events = list(iter_events(block))
    assert list(iter_data(block)) == [e.data for e in events]  # the fast path reads the same
    return events


# -- the framer, at every split point ----------------------------------------------------------


@pytest.mark.parametrize("s", CASES)
def test_every_split_into_two_reads_gives_the_same_events_and_none_late(s: Stream) -> None:
    whole = SSEFramer("p")
    assert whole.feed(s.raw) == s.lf and whole.close() == b""
    assert parsed(s.lf) == s.events
    for k in range(len(s.raw) + 1):
        f = SSEFramer("p")
        first = f.feed(s.raw[:k])
        n = complete_by(s, k)
        # Exactly the events whose blank line has ended come out with the first read.
        assert first == s.lf[: s.ends[n - 1] if n else 0], k
        second = f.feed(s.raw[k:])
        assert first + second + f.close() == s.lf, k
        assert parsed(first) + parsed(second) == s.events, k


@pytest.mark.parametrize("s", CASES)
def test_byte_by_byte_each_event_comes_out_with_the_byte_that_ends_it(s: Stream) -> None:
    f = SSEFramer("p")
    out = b""
    for i in range(len(s.raw)):
        out += f.feed(s.raw[i : i + 1])
        n = complete_by(s, i + 1)
        assert out == s.lf[: s.ends[n - 1] if n else 0], i
    assert f.close() == b"" and parsed(out) == s.events


def test_lf_streams_pass_through_as_the_same_bytes_object() -> None:
    event = OPENAI[1].encode() + b"\n\n"
    assert SSEFramer("p").feed(event) is event  # the usual read: whole events, no copy


# -- the field rules ---------------------------------------------------------------------------


def test_data_lines_join_with_newlines_and_lose_one_leading_space() -> None:
    block = SSEFramer("p").feed(
        b"data:  two spaces\ndata:none\ndata\ndata: last\n\n"
        b"event: custom\nid: 7\nretry: 100\ndata: {}\n\n"
    )
    assert parsed(block) == [
        Event("message", b" two spaces\nnone\n\nlast"),
        Event("custom", b"{}"),
    ]


def test_comments_and_events_without_data_are_not_dispatched() -> None:
    block = SSEFramer("p").feed(b": keep-alive\n\nevent: ping\n\nid: 1\n\n\n\ndata:\n\n")
    assert parsed(block) == [Event("message", b"")]  # only the (empty) data line counts
    assert parse_event(b": comment") is None
    assert parse_event(b"event: x\ndata: 1") == Event("x", b"1")
    assert parse_event(b"event:\ndata: 1") == Event("message", b"1")
    odd = b"event: a\ndata: 1\nid: 2\n\nevent: b\ndata:2\n\ndata: 3\nevent: c\n\nid: 4\ndata: 4\n\n"
    assert parsed(odd) == [
        Event("a", b"1"),
        Event("b", b"2"),
        Event("c", b"3"),
        Event("message", b"4"),
    ]


def test_a_bom_opening_the_stream_is_dropped_even_split_over_reads() -> None:
    stream = b"\xef\xbb\xbfdata: 1\n\n"
    for k in range(len(stream) + 1):
        f = SSEFramer("p")
        assert f.feed(stream[:k]) + f.feed(stream[k:]) == b"data: 1\n\n", k
    f = SSEFramer("p")
    assert f.feed(b"data: 1\n\n\xef\xbb\xbfdata: 2\n\n") == b"data: 1\n\n\xef\xbb\xbfdata: 2\n\n"


def test_a_cr_then_crlf_is_two_line_ends_across_reads() -> None:
    f = SSEFramer("p")
    assert f.feed(b"data: 1\r") == b""
    assert f.feed(b"\r") == b"data: 1\n\n"  # CR, CR: a blank line
    assert f.feed(b"\n") == b""  # the LF of that second CR's CRLF
    assert f.feed(b"data: 2\r\n\r\n") == b"data: 2\n\n"


def test_the_end_of_the_stream_completes_an_unterminated_event() -> None:
    for tail in (b"data: [DONE]", b"data: [DONE]\n", b"data: [DONE]\r", b"data: [DONE]\r\n"):
        f = SSEFramer("p")
        assert f.feed(b"data: 1\n\n" + tail) == b"data: 1\n\n"
        assert f.close() == b"data: [DONE]\n\n", tail
    f = SSEFramer("p")
    f.feed(b"data: 1\n\n\n")
    assert f.close() == b""  # nothing but line ends left


def test_an_endless_line_is_an_upstream_protocol_error() -> None:
    f = SSEFramer("prov", limit=1000)
    f.feed(b"data: 1\n\n" + b"x" * 900)  # complete events go out even with a big tail
    with pytest.raises(UpstreamProtocolError, match=r"'prov'.*over 1000 bytes"):
        f.feed(b"x" * 200)
    ok = SSEFramer("prov", limit=1000)
    for _ in range(10):
        assert ok.feed(b"data: " + b"x" * 500 + b"\n\n").endswith(b"\n\n")


# -- the providers, at every split point -------------------------------------------------------


class _Reads:
    """An upstream response that yields scripted reads and notes, when asked for each next one,
    what its consumer had received: an event must be forwarded before the upstream sends more."""

    def __init__(self, reads: list[bytes], out: list[bytes]) -> None:
        self._reads = reads
        self._out = out
        self.seen: list[bytes] = []  # the consumer's output so far, as each read was asked for

    def __aiter__(self) -> _Reads:
        return self

    async def __anext__(self) -> bytes:
        i = len(self.seen)
        self.seen.append(b"".join(self._out))
        if i >= len(self._reads):
            raise StopAsyncIteration
        return self._reads[i]

    def release(self) -> None:
        pass


def _ctx(pid: str, ptype: str) -> ProviderContext:
    cfg = ProviderConfig(id=pid, base_url="http://127.0.0.1:1", type=ptype)
    return ProviderContext(cfg, cast(Any, None), Timeouts())  # no I/O: no client needed


def _events_of(name: str) -> Callable[[_Reads, Reply], AsyncIterator[bytes]]:
    if name == "openai":
        openai = OpenAIProvider(_ctx("oai", "openai"))

        def openai_events(resp: _Reads, reply: Reply) -> AsyncIterator[bytes]:
            openai._events(cast(Any, resp), reply, False)  # sets reply.events (and .direct)
            assert reply.events is not None
            return reply.events

        return openai_events
    if name == "anthropic":
        anthropic = AnthropicProvider(_ctx("claude", "anthropic"))
        return lambda resp, reply: anthropic._events(
            cast(Any, resp), reply, AnthropicTranslator("m", 1, False, "claude")
        )
    gemini = GeminiProvider(_ctx("gemini", "gemini"))
    return lambda resp, reply: gemini._events(
        cast(Any, resp), reply, GeminiTranslator("m", False), cast(Any, None)
    )


_CREATED = re.compile(rb'"created":\d+')


def _drain(
    events: Callable[[_Reads, Reply], AsyncIterator[bytes]], reads: list[bytes]
) -> tuple[list[bytes], bytes]:
    """What the consumer had when each read was asked for, and all it got."""
    out: list[bytes] = []
    resp = _Reads(reads, out)

    async def go() -> None:
        async for batch in events(resp, Reply(200, "text/event-stream", {})):
            out.append(batch)

    asyncio.run(go())
    # Gemini's chunks are stamped with the time they were made; compare them without it.
    return [_unstamped(b) for b in resp.seen], _unstamped(b"".join(out))


def _unstamped(data: bytes) -> bytes:
    return _CREATED.sub(b'"created":0', data)


@pytest.mark.parametrize("name", list(STREAMS))
def test_each_provider_forwards_every_event_before_the_next_read_at_every_split(
    name: str,
) -> None:
    events = _events_of(name)
    for variant, ending in ENDINGS.items():
        s = build(STREAMS[name], ending)
        # One read per event: done[n] is what must be out once n events are complete.
        per_event = [(t + "\n\n").replace("\n", ending).encode() for t in STREAMS[name]]
        done, whole = _drain(events, per_event)
        if name == "openai":
            assert whole == _unstamped(s.lf)  # the passthrough: the upstream's events, in LF
            if variant == "lf":
                assert whole == _unstamped(s.raw)  # byte for byte
        else:
            assert whole.endswith(b"data: [DONE]\n\n")
        for k in range(1, len(s.raw)):  # (a client never hands out an empty read)
            seen, out = _drain(events, [s.raw[:k], s.raw[k:]])
            assert seen[1] == done[complete_by(s, k)], (variant, k)  # no event held back
            assert out == whole, (variant, k)


# -- end to end: the gateway forwards the event before the upstream sends more ----------------


class GatedUpstream(FakeServer):
    """Answers every POST with ``first``, then waits for :meth:`open` before sending ``rest``."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        super().__init__(Conditions())
        self.first = first
        self.rest = rest
        self.gate = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self.answer)]

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await self.take(request, request.path)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(self.first)
        await asyncio.wait_for(self.gate.wait(), 30)
        await resp.write(self.rest)
        await resp.write_eof()
        return resp

    def open(self, loop_thread: LoopThread) -> None:
        loop_thread.loop.call_soon_threadsafe(self.gate.set)


def _crlf(events: list[str]) -> bytes:
    return b"".join((t + "\n\n").replace("\n", "\r\n").encode() for t in events)


_GATED = {
    # provider type: (events up to and including one that gives the client an event, the rest)
    "openai": (OPENAI[:3], OPENAI[3:], "Hello"),
    "anthropic": (ANTHROPIC[:4], ANTHROPIC[4:], "Hello"),
    "gemini": (GEMINI[:1], GEMINI[1:], "Hello"),
}


@pytest.mark.parametrize("ptype", list(_GATED))
def test_an_event_whose_crlf_is_split_reaches_the_client_before_the_upstream_sends_more(
    ptype: str,
    serve_fake: Callable[..., Any],
    loop_thread: LoopThread,
    gateway_factory: Callable[..., Gateway],
) -> None:
    head, tail, text = _GATED[ptype]
    first = _crlf(head)
    assert first.endswith(b"\r\n\r\n")
    fake = serve_fake(GatedUpstream, first=first[:-1], rest=b"\n" + _crlf(tail))
    gw = gateway_factory(f"""
        providers:
          - {{id: up, type: {ptype}, base_url: "{fake.url}", models: [m], keys: [{{id: k, secret: s}}]}}
        """)
    conn = http.client.HTTPConnection(gw.server.host, gw.server.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=orjson.dumps(
                {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
            ),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        got = b""
        while text.encode() not in got:  # the upstream is held until this arrives (or times out)
            line = resp.readline()
            assert line, got
            got += line
        fake.open(loop_thread)
        got += resp.read()
    finally:
        conn.close()
    payloads = [e.data for e in parsed(got)]
    assert payloads[-1] == b"[DONE]"
    content = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(orjson.loads, payloads[:-1])
        if c["choices"]
    )
    expected = {"openai": "Hello there, how can I help?", "anthropic": "Hello!"}
    assert content == expected.get(ptype, "Hello from Gemini, streaming.")
    assert len(fake.received) == 1


# -- properties: any number of reads, any bytes ------------------------------------------------

ALL_STREAMS = [build(events, ending) for events in STREAMS.values() for ending in ENDINGS.values()]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ALL_STREAMS),
    st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
)
def test_any_reads_of_a_valid_stream_frame_the_same(s: Stream, cuts: list[int]) -> None:
    """Random splits of a real stream into many reads give the events of the whole."""
    points = sorted({c % (len(s.raw) + 1) for c in cuts})
    f = SSEFramer("p")
    out = b""
    for a, b in zip([0, *points], [*points, len(s.raw)], strict=True):
        out += f.feed(s.raw[a:b])
    out += f.close()
    assert out == s.lf and parsed(out) == s.events


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=16))
def test_any_bytes_frame_into_events_or_a_protocol_error(reads: list[bytes]) -> None:
    """Arbitrary upstream bytes never raise anything but the framer's own protocol error, and
    whatever comes out parses."""
    f = SSEFramer("p", limit=256)
    try:
        out = b"".join(f.feed(r) for r in reads) + f.close()
    except UpstreamProtocolError:
        return
    assert out == b"" or out.endswith(b"\n\n")
    parsed(out)
