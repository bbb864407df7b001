"""Per-request CPU cost of provider translation, next to the OpenAI passthrough's own work.

Everything runs in-process on fixed inputs (no network): a realistic chat request (system
prompt, a finished tool turn, two tools, sampling parameters), its answer (text and a tool call,
usage with cache reads), and a 200-delta text stream delivered one event per read.

* ``openai``: what the passthrough adapter does per request: rewrite ``model`` and re-serialise
  the body (an alias whose upstream name differs), read usage from the response body, and per
  stream batch its usage check; the real adapter code runs.
* ``anthropic``: request translation + ``orjson.dumps``; ``orjson.loads`` of the native answer +
  response translation + ``orjson.dumps``; stream translation per event, pure and through the
  adapter's real event generator.
* ``messages-in``: an Anthropic Messages client (Claude Code) served by a non-Anthropic provider:
  its request to the internal form and the internal answer and stream back to Anthropic's; and,
  for an Anthropic provider, what passthrough costs per event (usage read on the side).
* ``responses-in``: an OpenAI Responses client (Codex, ``client.responses``) served by a provider
  without the Responses API: the endpoint's own work (input items with ids, tools checked),
  its request to the internal form, the internal answer and stream back to a Response and its
  events; and, for a ``responses_api`` provider, the passthrough's work (``model`` rewritten,
  usage read from the body, per event the adapter's real generator and the keeper's look for
  the final event). The stream is the same 200 text deltas, one event per read, as Responses
  events (built by the translation itself).

Parsing the client's body (``orjson.loads``) happens in the API layer for every provider and is
reported once as a reference. Each provider has one ``bench_<provider>()`` function returning
rows; add one for another provider and list it in ``PROVIDERS``.

Usage::

    .venv/bin/python bench/translation.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import timeit
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson

from truckllm.api.conversations import ResponsesKeeper, with_ids
from truckllm.config.schema import ProviderConfig, Timeouts
from truckllm.dialects.anthropic_messages import (
    ChatToMessagesStream,
    MessagesEgress,
    from_chat,
    to_chat,
)
from truckllm.dialects.openai_responses import (
    ChatToResponsesStream,
    Echo,
    ResponsesEgress,
    functions,
    input_items,
)
from truckllm.dialects.openai_responses import to_chat as responses_to_chat
from truckllm.providers.anthropic import AnthropicProvider
from truckllm.providers.anthropic.passthrough import Passthrough
from truckllm.providers.anthropic.request import translate_request
from truckllm.providers.anthropic.response import translate_response
from truckllm.providers.anthropic.stream import StreamTranslator
from truckllm.providers.base import Call, ProviderContext, Reply
from truckllm.providers.http import relay_events
from truckllm.providers.openai import OpenAIProvider, _usage_of_body
from truckllm.providers.openai.responses import _FINAL, _read_usage
from truckllm.testing.fake_anthropic import message_end, message_start, sse, text_block

Row = tuple[str, str, float]  # provider, operation, microseconds per operation
STREAM_DELTAS = 200

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
LOOKUP = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
REQUEST: dict[str, Any] = {
    "model": "smart",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly. " * 8},
        {"role": "user", "content": "What's the weather like in Paris today, and should I pack?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [TOOL, LOOKUP],
    "tool_choice": "auto",
    "temperature": 0.3,
    "max_tokens": 512,
    "user": "user-1234",
}
RAW = orjson.dumps(REQUEST)
USAGE = {"input_tokens": 412, "cache_read_input_tokens": 1024, "output_tokens": 57}
ANTHROPIC_ANSWER = orjson.dumps(
    {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "Tomorrow looks similar; let me check to be sure. " * 3},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"city": "Paris", "unit": "celsius"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": USAGE,
    }
)
OPENAI_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Tomorrow looks similar; let me check to be sure. " * 3,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"city":"Paris","unit":"celsius"}',
                            },
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 1436,
            "completion_tokens": 57,
            "total_tokens": 1493,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_fc9f1d7035",
    }
)


def _anthropic_stream_reads() -> list[bytes]:
    pieces = [" word" for _ in range(STREAM_DELTAS)]
    events = [
        message_start("msg_bench", "claude-sonnet-4-5-20250929", 412),
        *text_block(0, pieces)[:1],
        {"type": "ping"},
        *text_block(0, pieces)[1:],
        *message_end("end_turn", STREAM_DELTAS),
    ]
    return [sse(e) for e in events]


def _openai_stream_reads() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "usage": None, "choices": [choice]}) + b"\n\n"

    usage = {"prompt_tokens": 412, "completion_tokens": STREAM_DELTAS, "total_tokens": 612}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": " word"}) for _ in range(STREAM_DELTAS)),
        chunk({}, "stop"),
        b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


class _Content:
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads

    async def iter_any(self) -> AsyncIterator[bytes]:
        for data in self._reads:
            yield data


class _Response:
    """Just enough of an upstream response (``truckllm.http.client.Response``) for the adapters'
    stream generators: iterating it yields the reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self.content = _Content(reads)
        self._reads = iter(reads)

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._reads)
        except StopIteration:
            raise StopAsyncIteration from None

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def _ctx(provider_id: str, ptype: str) -> ProviderContext:
    cfg = ProviderConfig(id=provider_id, base_url="http://127.0.0.1:1", type=ptype)
    return ProviderContext(cfg, cast(Any, None), Timeouts())  # no I/O: no session needed


def _per_op(fn: Callable[[], object], repeat: int, ops: int = 1) -> float:
    """Best-of-``repeat`` microseconds per call of ``fn``, divided by the ``ops`` it performs."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number / ops * 1e6


def _stream_per_event(
    loop: asyncio.AbstractEventLoop,
    make_events: Callable[[_Response, Reply], AsyncIterator[bytes]],
    reads: list[bytes],
    repeat: int,
) -> float:
    async def drain() -> None:
        reply = Reply(200, "text/event-stream", {})
        async for _ in make_events(_Response(reads), reply):
            pass

    return _per_op(lambda: loop.run_until_complete(drain()), repeat, len(reads))


def bench_openai(repeat: int, loop: asyncio.AbstractEventLoop) -> list[Row]:
    provider = OpenAIProvider(_ctx("openai", "openai"))
    body = orjson.loads(RAW)
    call = Call("chat", body, RAW, "gpt-4o-2024-08-06", False, False, "r1")

    def events(resp: _Response, reply: Reply) -> AsyncIterator[bytes]:
        provider._events(cast(Any, resp), reply, True)  # sets reply.events
        assert reply.events is not None
        return reply.events

    request = _per_op(lambda: provider._request_body(call), repeat)
    response = _per_op(lambda: _usage_of_body(OPENAI_ANSWER), repeat)
    reads = _openai_stream_reads()
    return [
        ("openai", "request: rewrite model, orjson.dumps", request),
        ("openai", "response: usage read from the body", response),
        ("openai", "request + response", request + response),
        (
            "openai",
            "stream, per event, adapter generator",
            _stream_per_event(loop, events, reads, repeat),
        ),
    ]


def bench_anthropic(repeat: int, loop: asyncio.AbstractEventLoop) -> list[Row]:
    provider = AnthropicProvider(_ctx("claude", "anthropic"))
    body = orjson.loads(RAW)
    model = "claude-sonnet-4-5-20250929"

    def request() -> bytes:
        return orjson.dumps(translate_request(body, model).body)

    def response() -> bytes:
        out, _ = translate_response(orjson.loads(ANTHROPIC_ANSWER), model, 1741570283)
        return orjson.dumps(out)

    reads = _anthropic_stream_reads()

    def pure_stream() -> None:
        tr = StreamTranslator(model, 1741570283, True, "claude")
        for data in reads:
            tr.feed(data)

    def events(resp: _Response, reply: Reply) -> AsyncIterator[bytes]:
        tr = StreamTranslator(model, 1741570283, False, "claude")
        return provider._events(cast(Any, resp), reply, tr)

    req = _per_op(request, repeat)
    resp = _per_op(response, repeat)
    return [
        ("anthropic", "request: translate, orjson.dumps", req),
        ("anthropic", "response: orjson.loads, translate, orjson.dumps", resp),
        ("anthropic", "request + response", req + resp),
        (
            "anthropic",
            "stream, per event, translator alone",
            _per_op(pure_stream, repeat, len(reads)),
        ),
        (
            "anthropic",
            "stream, per event, adapter generator",
            _stream_per_event(loop, events, reads, repeat),
        ),
    ]


def bench_messages_inbound(repeat: int, loop: asyncio.AbstractEventLoop) -> list[Row]:
    """Anthropic Messages clients: to the internal form and back (any non-Anthropic target),
    and the passthrough's usage reading (Anthropic targets)."""
    model = "claude-sonnet-4-5-20250929"
    inbound = translate_request(orjson.loads(RAW), model).body  # an Anthropic request
    inbound_raw = orjson.dumps(inbound)
    completion = orjson.loads(OPENAI_ANSWER)

    def request() -> bytes:
        return orjson.dumps(to_chat(orjson.loads(inbound_raw)))

    def response() -> bytes:
        return MessagesEgress(model).whole(200, OPENAI_ANSWER, None)

    openai_reads = _openai_stream_reads()

    def stream() -> None:
        out = ChatToMessagesStream(model)
        for data in openai_reads:
            out.feed(data)
        out.finish()

    anthropic_reads = _anthropic_stream_reads()

    def usage_on_the_side() -> None:
        reply = Reply(200, "text/event-stream", {})
        for data in anthropic_reads:
            if b"event: message_" in data:
                Passthrough._read_usage(data, reply)

    assert from_chat(completion, model, None)["content"]
    req = _per_op(request, repeat)
    resp = _per_op(response, repeat)
    return [
        ("messages-in", "request: orjson.loads, to internal, orjson.dumps", req),
        ("messages-in", "response: internal answer to a Message", resp),
        ("messages-in", "request + response", req + resp),
        ("messages-in", "stream, per event, internal to Anthropic events", _per_op(stream, repeat, len(openai_reads))),
        (
            "messages-in",
            "passthrough stream, per event, usage read on the side",
            _per_op(usage_on_the_side, repeat, len(anthropic_reads)),
        ),
    ]


RESPONSES_REQUEST: dict[str, Any] = {
    "model": "smart",
    "instructions": "You are a helpful assistant. Answer briefly. " * 8,
    "input": [
        {"role": "user", "content": "What's the weather like in Paris today, and should I pack?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
        {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
    ],
    "tools": [
        {"type": "function", **cast(dict[str, Any], TOOL["function"])},
        {"type": "function", **cast(dict[str, Any], LOOKUP["function"])},
        {"type": "web_search"},
    ],
    "tool_choice": "auto",
    "temperature": 0.3,
    "max_output_tokens": 512,
    "store": True,
}
RESPONSES_RAW = orjson.dumps(RESPONSES_REQUEST)


def _responses_stream_reads() -> list[bytes]:
    """Responses API events for the same 200-delta answer, one event per read."""
    out = ChatToResponsesStream(Echo("gpt-4.1-mini", RESPONSES_REQUEST))
    data = b"".join(out.feed(read) for read in _openai_stream_reads()) + out.finish()
    return [event + b"\n\n" for event in data.split(b"\n\n") if event]


def bench_responses_inbound(repeat: int, loop: asyncio.AbstractEventLoop) -> list[Row]:
    """Responses clients: to the internal form and back (a target without the Responses API),
    and the passthrough's own work (a ``responses_api`` target)."""
    body = orjson.loads(RESPONSES_RAW)
    echo = Echo("smart", body)

    def endpoint() -> object:
        functions(body.get("tools"))
        return with_ids(input_items(body.get("input")))

    def request() -> bytes:
        return orjson.dumps(responses_to_chat(orjson.loads(RESPONSES_RAW)))

    def response() -> bytes:
        return ResponsesEgress(echo).whole(200, OPENAI_ANSWER, None)

    openai_reads = _openai_stream_reads()

    def stream() -> None:
        out = ChatToResponsesStream(echo)
        for data in openai_reads:
            out.feed(data)
        out.finish()

    def passthrough_request() -> bytes:
        return orjson.dumps({**body, "model": "gpt-4.1-mini"})

    answer = ResponsesEgress(echo).whole(200, OPENAI_ANSWER, None)

    def passthrough_response() -> object:
        return orjson.loads(answer).get("usage")

    provider = OpenAIProvider(_ctx("openai", "openai"))
    reads = _responses_stream_reads()

    def events(resp: _Response, reply: Reply) -> AsyncIterator[bytes]:
        read = lambda batch: _read_usage(batch, reply)  # noqa: E731
        relay_events(reply, provider._http, cast(Any, resp), _FINAL, read)  # sets reply.events
        assert reply.events is not None
        return reply.events

    keeper = ResponsesKeeper(cast(Any, None), ResponsesEgress(echo), "c", [], [], 60.0, 1 << 22)

    def keeper_observes() -> None:
        for data in reads:
            keeper.observe(data)

    prep = _per_op(endpoint, repeat)
    req = _per_op(request, repeat)
    resp = _per_op(response, repeat)
    p_req = _per_op(passthrough_request, repeat)
    p_resp = _per_op(passthrough_response, repeat)
    return [
        ("responses-in", "endpoint: input items with ids, tools checked (any target)", prep),
        ("responses-in", "request: orjson.loads, to internal, orjson.dumps", req),
        ("responses-in", "response: internal answer to a Response", resp),
        ("responses-in", "request + response", req + resp),
        (
            "responses-in",
            "stream, per event, internal to Responses events",
            _per_op(stream, repeat, len(openai_reads)),
        ),
        ("responses-in", "passthrough request: rewrite model, orjson.dumps", p_req),
        ("responses-in", "passthrough response: usage read from the body", p_resp),
        ("responses-in", "passthrough request + response", p_req + p_resp),
        (
            "responses-in",
            "passthrough stream, per event, adapter generator",
            _stream_per_event(loop, events, reads, repeat),
        ),
        (
            "responses-in",
            "passthrough stream, per event, keeper's look for the final event",
            _per_op(keeper_observes, repeat, len(reads)),
        ),
    ]


PROVIDERS: dict[str, Callable[[int, asyncio.AbstractEventLoop], list[Row]]] = {
    "openai": bench_openai,
    "anthropic": bench_anthropic,
    "messages-in": bench_messages_inbound,
    "responses-in": bench_responses_inbound,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timing rounds; the best counts")
    parser.add_argument("--only", choices=sorted(PROVIDERS), action="append")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    try:
        rows: list[Row] = [
            (
                "(api layer)",
                "client body orjson.loads, any provider",
                _per_op(lambda: orjson.loads(RAW), args.repeat),
            )
        ]
        for name in args.only or PROVIDERS:
            rows.extend(PROVIDERS[name](args.repeat, loop))
    finally:
        loop.close()
    print(f"request body {len(RAW)} B; stream of {STREAM_DELTAS} text deltas, one event per read\n")
    print("| provider | operation | µs |")
    print("|---|---|---:|")
    for provider, operation, us in rows:
        print(f"| {provider} | {operation} | {us:.2f} |")


if __name__ == "__main__":
    main()
