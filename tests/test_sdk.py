"""The official ``openai`` SDK, unchanged, against the gateway: results parse, errors map to the
SDK's own exception classes."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from helpers import Gateway

from truckllm.testing.mock import MockUpstream, Scripted

CONFIG = """
providers:
  - id: openai
    base_url: {url}
    models: [gpt-4o-mini, text-embedding-3-small]
    keys: [{{id: k1, secret: sk-up-1}}, {{id: k2, secret: sk-up-2}}]
model_aliases:
  gpt-4: openai:gpt-4-turbo
server:
  api_keys: [client-key]
routing: {{strategy: round_robin}}
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def gw(upstream: MockUpstream, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG.format(url=upstream.url))


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0, timeout=10)


def test_chat_plain(client: openai.OpenAI, upstream: MockUpstream) -> None:
    reply = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Hello"}]
    )
    assert reply.object == "chat.completion"
    assert (
        reply.choices[0].message.content == "Hello from the TruckLLM mock upstream model speaking"
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    assert upstream.received[-1].body["model"] == "gpt-4-turbo"
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-truckllm-provider"] == "openai"


def test_chat_streamed_with_and_without_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "Hello from"
    )
    assert all(c.usage is None for c in chunks)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == 8
    )


def test_tool_calls_plain_and_streamed(client: openai.OpenAI, upstream: MockUpstream) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model="gpt-4", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type,list-item]
    (call,) = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.arguments == "{}"
    assert upstream.received[-1].body["tools"] == [WEATHER_TOOL]
    # The tool result goes back through the gateway untouched, and the model answers.
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    final = client.chat.completions.create(model="gpt-4", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[arg-type]
    assert final.choices[0].message.content
    assert upstream.received[-1].body["messages"][2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": '{"temp_c": 21}',
    }
    stream = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )  # type: ignore[list-item]
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert "".join((d.function.arguments or "") for d in deltas if d.function) == "{}"


def test_json_mode_and_images_pass_through(client: openai.OpenAI, upstream: MockUpstream) -> None:
    content = [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
        response_format={"type": "json_object"},
    )
    sent = upstream.received[-1].body
    assert (
        sent["response_format"] == {"type": "json_object"}
        and sent["messages"][0]["content"] == content
    )


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8 and isinstance(result.data[0].embedding[0], float)
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="one", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding)
    assert result.usage.prompt_tokens > 0


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"gpt-4", "gpt-4o-mini", "text-embedding-3-small"}
    assert client.models.retrieve("gpt-4").owned_by == "truckllm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_surface_as_the_sdks_own_exceptions(
    client: openai.OpenAI, gw: Gateway, upstream: MockUpstream
) -> None:
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=msgs)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).models.list()
    bad = {
        "error": {
            "message": "Invalid 'temperature'",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    upstream.script.append(Scripted(status=400, body=bad))
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(model="gpt-4", messages=msgs, temperature=9)  # type: ignore[arg-type]
    assert br.value.param == "temperature"
    upstream.script.extend([Scripted(status=500, body=b"oops")] * 3)  # every attempt fails
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4", messages=[])
    # Last, since it leaves both keys cooling: every key throttled for longer than routing.max_wait.
    rate = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    upstream.script.extend([Scripted(status=429, body=rate, headers={"retry-after": "30"})] * 2)
    with pytest.raises(openai.RateLimitError) as rl:
        client.chat.completions.create(model="gpt-4", messages=msgs)  # type: ignore[arg-type]
    assert rl.value.code == "rate_limit_exceeded"
    assert rl.value.response.headers["retry-after"] == "30"


def test_a_stream_broken_midway_raises_in_the_sdk(
    client: openai.OpenAI, upstream: MockUpstream
) -> None:
    first = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "par"}, "finish_reason": None}
        ],
    }
    upstream.script.append(Scripted(events=[first, first, first], cut_after=1))
    stream = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        for c in stream:
            received.append(c)
    assert len(received) == 1
