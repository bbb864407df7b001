"""Anthropic's Messages API inbound: the official ``anthropic`` SDK against the gateway, over an
Anthropic upstream (passthrough, byte for byte), an OpenAI-compatible one and a Gemini one
(translation through the internal form). Answers are parsed by the SDK's own types."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.types import Message, MessageTokensCount
from helpers import Gateway, request

from truckllm.telemetry.record import RequestRecord
from truckllm.testing.fake_anthropic import FakeAnthropic, scripted_error
from truckllm.testing.fake_gemini import FakeGemini
from truckllm.testing.mock import MockUpstream
from truckllm.testing.wire import Scripted

CONFIG = """
providers:
  - id: claude
    type: anthropic
    base_url: {anthropic}
    keys: [{{id: a1, secret: sk-ant-1, pricing: {{input_token_cost: 0.003, output_token_cost: 0.015, cached_input_token_cost: 0.0003, cache_creation_input_token_cost: 0.00375}}}}]
  - id: openai
    base_url: {openai}
    keys: [{{id: o1, secret: sk-oai-1, pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}}}]
  - id: gemini
    type: gemini
    base_url: {gemini}
    keys: [{{id: g1, secret: g-key-1, pricing: {{input_token_cost: 0.001, output_token_cost: 0.002}}}}]
model_aliases:
  claude-direct: claude:claude-sonnet-4-5
  claude-on-openai: openai:gpt-4o-mini
  claude-on-gemini: gemini:gemini-2.5-flash
server:
  api_keys: [client-key]
  admin_api_key: admin-key
retry: {{max_attempts: 1}}
"""
MODELS = ["claude-direct", "claude-on-openai", "claude-on-gemini"]
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class Stack:
    def __init__(self, gw: Gateway, claude: FakeAnthropic, openai: MockUpstream) -> None:
        self.gw, self.claude, self.openai = gw, claude, openai
        self.records: list[RequestRecord] = []
        gw.app.records.subscribe(self.records.append)

    def last(self) -> RequestRecord:
        """The newest request's record, once the gateway has published it."""
        self.gw.settled()
        return self.records[-1]

    def sdk(self, key: str = "client-key") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url, api_key=key, max_retries=0)


@pytest.fixture
def stack(serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]) -> Stack:
    claude = serve_fake(FakeAnthropic)
    openai = serve_fake(MockUpstream)
    gemini = serve_fake(FakeGemini)
    gw = gateway_factory(CONFIG.format(anthropic=claude.url, openai=openai.url, gemini=gemini.url))
    return Stack(gw, claude, openai)


@pytest.fixture
def client(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with stack.sdk() as c:
        yield c


@pytest.mark.parametrize("model", MODELS)
def test_messages_create_over_every_provider_type(
    stack: Stack, client: anthropic.Anthropic, model: str
) -> None:
    msg = client.messages.create(model=model, max_tokens=64, messages=HI)
    assert isinstance(msg, Message)
    assert msg.role == "assistant" and msg.type == "message"
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    rec = stack.last()
    assert rec.endpoint == "messages" and rec.status == 200 and rec.usage is not None
    assert rec.cost_usd and rec.cost_usd > 0


@pytest.mark.parametrize("model", MODELS)
def test_messages_stream_text_over_every_provider_type(
    stack: Stack, client: anthropic.Anthropic, model: str
) -> None:
    with client.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    rec = stack.last()
    assert rec.endpoint == "messages" and rec.stream and rec.status == 200
    assert rec.usage is not None and not rec.usage.estimated


@pytest.mark.parametrize("model", MODELS)
def test_streamed_and_whole_usage_and_cost_agree(stack: Stack, model: str) -> None:
    with stack.sdk() as client:
        client.messages.create(model=model, max_tokens=64, messages=HI)
        whole = stack.last()
        with client.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
            stream.get_final_message()
        streamed = stack.last()
    assert whole.usage is not None and streamed.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (
        streamed.usage.prompt_tokens,
        streamed.usage.completion_tokens,
    )
    assert whole.cost_usd == streamed.cost_usd


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_round_trip(stack: Stack, client: anthropic.Anthropic, model: str) -> None:
    first = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input, dict)
    second = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"


def test_a_streamed_tool_call_is_input_json_deltas(stack: Stack, client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="claude-on-openai",
        max_tokens=256,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    use = final.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and isinstance(use.input, dict)
    assert final.stop_reason == "tool_use"
    sent = stack.openai.received[-1].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]


def test_passthrough_is_byte_faithful_both_ways(stack: Stack) -> None:
    body = {
        "model": "claude-direct",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "metadata": {"user_id": '{"device_id":"d1","session_id":"s1"}'},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
    }
    answer = (
        b'{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5",'
        b'"content":[{"type":"text","text":"Hello!"}],"stop_reason":"end_turn",'
        b'"stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":2,'
        b'"cache_read_input_tokens":3,"cache_creation_input_tokens":0}}'
    )
    stack.claude.script.append(Scripted(body=answer))
    headers = {
        "x-api-key": "client-key",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
        "X-Claude-Code-Session-Id": "sess-42",
    }
    resp = request("POST", stack.gw.url + "/v1/messages?beta=true", body, headers)
    assert resp.status == 200 and resp.body == answer
    sent = stack.claude.received[-1]
    assert orjson.loads(sent.raw) == {**body, "model": "claude-sonnet-4-5"}
    assert sent.headers["anthropic-beta"] == headers["anthropic-beta"]
    assert sent.headers["x-api-key"] == "sk-ant-1"
    rec = stack.last()
    assert rec.session_id == "sess-42" and rec.usage is not None
    assert (rec.usage.prompt_tokens, rec.usage.cached_tokens, rec.usage.completion_tokens) == (
        10,
        3,
        2,
    )


def test_passthrough_stream_is_byte_faithful(stack: Stack) -> None:
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":'
        b'"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":'
        b'null,"stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":1,'
        b'"cache_creation_input_tokens":4,"cache_read_input_tokens":0}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n',
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"Hmm."}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"signature_delta","signature":"c2ln"}}\n\n',
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
        b'"content_block":{"type":"text","text":""}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"text_delta","text":"Hello"}}\n\n',
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"output_tokens":5}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    stack.claude.script.append(Scripted(events=list(events)))
    body = {"model": "claude-direct", "max_tokens": 50, "stream": True, "messages": HI}
    resp = request("POST", stack.gw.url + "/v1/messages", body, {"x-api-key": "client-key"})
    assert resp.status == 200 and resp.body == b"".join(events)
    rec = stack.last()
    assert rec.usage is not None
    assert (rec.usage.prompt_tokens, rec.usage.cache_creation_tokens) == (13, 4)
    assert rec.usage.completion_tokens == 5


def test_upstream_errors_pass_through_unmodified(stack: Stack, client: anthropic.Anthropic) -> None:
    stack.claude.script.append(
        scripted_error("invalid_request_error", "messages.0.content: Input should be a string")
    )
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-direct", max_tokens=10, messages=HI)
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.content: Input should be a string",
        },
        "request_id": "req_fake",
    }


@pytest.mark.parametrize(
    ("kwargs", "key", "error"),
    [
        ({"model": "claude-direct", "max_tokens": 10, "messages": HI}, "wrong", "AuthenticationError"),
        ({"model": "no-such-model", "max_tokens": 10, "messages": HI}, None, "NotFoundError"),
        ({"model": "claude-direct", "max_tokens": 0, "messages": HI}, None, "BadRequestError"),
        ({"model": "claude-direct", "max_tokens": 10, "messages": []}, None, "BadRequestError"),
    ],
)
def test_gateway_errors_are_the_sdks_own_exceptions(
    stack: Stack, kwargs: dict[str, Any], key: str | None, error: str
) -> None:
    with stack.sdk(key or "client-key") as client, pytest.raises(getattr(anthropic, error)) as info:
        client.messages.create(**kwargs)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] in (
        "authentication_error",
        "not_found_error",
        "invalid_request_error",
    )


def test_an_untranslatable_request_is_anthropics_invalid_request(
    stack: Stack, client: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="claude-on-openai",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "search_result", "x": 1}]}],  # type: ignore[list-item]
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_translation_carries_system_thinking_stop_and_mid_conversation_system(
    stack: Stack,
) -> None:
    body = {
        "model": "claude-on-openai",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Agents: none"},
        ],
        "stop_sequences": ["END"],
        "thinking": {"type": "enabled", "budget_tokens": 20000},
        "metadata": {"user_id": "u"},
    }
    resp = request("POST", stack.gw.url + "/v1/messages", body, {"x-api-key": "client-key"})
    assert resp.status == 200, resp.body
    sent = stack.openai.received[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Agents: none"},
    ]
    assert sent["stop"] == ["END"] and sent["reasoning_effort"] == "high"
    assert sent["max_tokens"] == 100 and sent["model"] == "gpt-4o-mini"
    assert "metadata" not in sent


def test_count_tokens_is_anthropics_count_where_an_anthropic_target_serves(
    stack: Stack, client: anthropic.Anthropic
) -> None:
    count = client.messages.count_tokens(model="claude-direct", messages=HI, tools=[WEATHER])
    assert isinstance(count, MessageTokensCount) and count.input_tokens > 0
    sent = stack.claude.received[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.body["model"] == "claude-sonnet-4-5"
    assert sent.headers["x-api-key"] == "sk-ant-1"
    assert count.input_tokens == orjson.loads(sent.answer)["input_tokens"]


def test_count_tokens_is_an_estimate_elsewhere(stack: Stack, client: anthropic.Anthropic) -> None:
    before = len(stack.openai.received)
    count = client.messages.count_tokens(model="claude-on-openai", messages=HI)
    assert isinstance(count, MessageTokensCount) and count.input_tokens > 0
    assert len(stack.openai.received) == before  # nothing sent upstream


def test_a_stream_error_before_the_first_byte_fails_over(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]
) -> None:
    claude = serve_fake(FakeAnthropic)
    openai = serve_fake(MockUpstream)
    gw = gateway_factory(
        f"""
providers:
  - {{id: claude, type: anthropic, base_url: "{claude.url}", keys: [{{secret: sk-1}}]}}
  - {{id: openai, base_url: "{openai.url}", keys: [{{secret: sk-2}}]}}
model_aliases:
  sonnet: [claude:claude-sonnet-4-5, openai:gpt-4o-mini]
"""
    )
    claude.script.append(
        Scripted(
            events=[
                b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                b'"message":"Overloaded"}}\n\n'
            ]
        )
    )
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with client, client.messages.stream(model="sonnet", max_tokens=20, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert len(claude.received) == 1 and len(openai.received) == 1


def test_anthropic_clients_list_models_in_anthropics_shape(stack: Stack) -> None:
    with stack.sdk() as client:
        page = client.models.list()
        ids = [m.id for m in page.data]
        one = client.models.retrieve("claude-direct")
    assert set(MODELS) <= set(ids)
    assert one.id == "claude-direct" and one.type == "model"


@pytest.mark.parametrize("model", ["claude-direct", "claude-on-openai"])
def test_a_stream_broken_after_the_first_byte_ends_with_an_error_event(
    stack: Stack, model: str
) -> None:
    if model == "claude-direct":
        events: list[Any] = [
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
            b'"type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,'
            b'"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":{"type":"text","text":""}}\n\n',
            b"event: ping\ndata: {}\n\n",
        ]
        stack.claude.script.append(Scripted(events=events, cut_after=2))
    else:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
            "[DONE]",
        ]
        stack.openai.script.append(Scripted(events=events, cut_after=1))
    client = stack.sdk()
    with (
        client,
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(model=model, max_tokens=20, messages=HI) as stream,
    ):
        for _ in stream:
            pass
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    assert stack.last().error_code is not None


def test_thinking_blocks_and_mid_conversation_system_pass_through(
    stack: Stack, client: anthropic.Anthropic
) -> None:
    """What Claude Code sends with its default model: adaptive thinking, a system message in the
    middle of the conversation and beta fields, under the betas that allow them."""
    with client.messages.stream(
        model="claude-direct",
        max_tokens=200,
        thinking={"type": "adaptive"},
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Available agent types: none"},
        ],
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}},
        extra_headers={"anthropic-beta": "mid-conversation-system-2026-04-07"},
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    sent = stack.claude.received[-1]
    assert sent.body["messages"][1]["role"] == "system"
    assert sent.headers["anthropic-beta"] == "mid-conversation-system-2026-04-07"


def test_usage_groups_by_claude_codes_session(stack: Stack) -> None:
    headers = {"x-api-key": "client-key", "X-Claude-Code-Session-Id": "sess-7"}
    body = {"model": "claude-on-openai", "max_tokens": 20, "messages": HI}
    for _ in range(2):
        assert request("POST", stack.gw.url + "/v1/messages", body, headers).status == 200
    assert request("POST", stack.gw.url + "/v1/messages", body, {"x-api-key": "client-key"}).status == 200
    stack.last()
    usage = request(
        "GET",
        stack.gw.url + "/admin/v1/usage?group_by=session",
        None,
        {"Authorization": "Bearer admin-key"},
    ).json()
    assert {row["session"]: row["requests"] for row in usage["data"]} == {"sess-7": 2, "": 1}
