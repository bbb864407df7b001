"""The Anthropic provider: pure translation tables, then the gateway over real loopback HTTP
against a fake Anthropic upstream, then the official ``openai`` SDK against that gateway."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any, cast

import openai
import orjson
import pytest
from helpers import Gateway, assert_no_attempt_in_flight, sse_events

from truckllm.config.schema import ProviderConfig, Timeouts
from truckllm.providers.anthropic import AnthropicProvider
from truckllm.providers.anthropic.errors import translate_error
from truckllm.providers.anthropic.request import (
    JSON_OBJECT_INSTRUCTION,
    TranslationError,
    translate_request,
)
from truckllm.providers.anthropic.response import translate_response
from truckllm.providers.anthropic.stream import StreamTranslator
from truckllm.providers.base import ProviderContext, Usage
from truckllm.routing import OutcomeKind
from truckllm.testing.fake_anthropic import (
    FakeAnthropic,
    error_body,
    message_end,
    message_start,
    scripted_error,
    sse,
    text_block,
    tool_block,
)
from truckllm.testing.mock import Scripted

MODEL = "claude-sonnet-4-5-20250929"
WEATHER: Any = {
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
NATIVE_WEATHER = {
    "name": "get_weather",
    "input_schema": WEATHER["function"]["parameters"],
    "description": "Weather for a city",
}
CONFIG = """
providers:
  - id: claude
    base_url: {url}
    models: [claude-haiku-4-5]
    headers: {{anthropic-beta: test-beta-2025}}
    options: {{max_tokens: 1000}}
    keys: [{{id: a1, secret: sk-ant-secret-1}}, {{id: a2, secret: sk-ant-secret-2}}]
model_aliases:
  smart: claude:{model}
routing: {{strategy: round_robin}}
retry: {{max_attempts: 2}}
"""


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def native(openai_body: dict[str, Any], default_max_tokens: int = 4096) -> dict[str, Any]:
    return translate_request({"model": "smart", **openai_body}, MODEL, default_max_tokens).body


# -- request translation -----------------------------------------------------------------------

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "system and developer messages become the top-level system",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user("Hi"),
            ]
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "system": "Be brief.\n\nUse French.",
            "messages": [user("Hi")],
        },
    ),
    (
        "consecutive messages of one role merge so roles alternate",
        {"messages": [user("one"), user("two"), {"role": "assistant", "content": "ok"}]},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                },
                {"role": "assistant", "content": "ok"},
            ]
        },
    ),
    (
        "images: data URLs become base64 sources, http URLs url sources",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                    ],
                }
            ]
        },
    ),
    (
        "a PDF file part becomes a document block",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBE"},
                        }
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBE",
                            },
                        }
                    ],
                }
            ]
        },
    ),
    (
        "tools, and tool_choice auto",
        {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "auto"},
        {"tools": [NATIVE_WEATHER], "tool_choice": {"type": "auto"}},
    ),
    (
        "tool_choice required is any",
        {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "required"},
        {"tool_choice": {"type": "any"}},
    ),
    (
        "tool_choice none",
        {"messages": [user("x")], "tools": [WEATHER], "tool_choice": "none"},
        {"tool_choice": {"type": "none"}},
    ),
    (
        "a named function is a tool choice by name",
        {
            "messages": [user("x")],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {"tool_choice": {"type": "tool", "name": "get_weather"}},
    ),
    (
        "parallel_tool_calls false disables parallel tool use",
        {"messages": [user("x")], "tools": [WEATHER], "parallel_tool_calls": False},
        {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
    ),
    (
        "a tool without parameters gets an empty object schema",
        {"messages": [user("x")], "tools": [{"type": "function", "function": {"name": "now"}}]},
        {"tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]},
    ),
    (
        "tool calls become tool_use blocks, tool messages one user message of tool_results",
        {
            "messages": [
                user("Weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": [{"type": "text", "text": "25C"}],
                },
            ]
        },
        {
            "messages": [
                user("Weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": [{"type": "text", "text": "25C"}],
                        },
                    ],
                },
            ]
        },
    ),
    (
        "stop, sampling and user",
        {
            "messages": [user("x")],
            "stop": "END",
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u-42",
            "seed": 7,
            "presence_penalty": 0.5,
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [user("x")],
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-42"},
            "temperature": None,  # the Messages API has no sampling parameters: dropped
            "top_p": None,
        },
    ),
    ("a stop list", {"messages": [user("x")], "stop": ["a", "b"]}, {"stop_sequences": ["a", "b"]}),
    ("max_tokens", {"messages": [user("x")], "max_tokens": 50}, {"max_tokens": 50}),
    (
        "max_completion_tokens wins over max_tokens",
        {"messages": [user("x")], "max_tokens": 50, "max_completion_tokens": 70},
        {"max_tokens": 70},
    ),
    ("stream", {"messages": [user("x")], "stream": True}, {"stream": True}),
    (
        "json_object is an instruction in the system prompt",
        {
            "messages": [{"role": "system", "content": "Be brief."}, user("x")],
            "response_format": {"type": "json_object"},
        },
        {"system": "Be brief.\n\n" + JSON_OBJECT_INSTRUCTION},
    ),
    (
        "json_schema is a forced tool",
        {
            "messages": [user("x")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "city info", "schema": {"type": "object"}},
            },
        },
        {
            "tools": [
                {
                    "name": "city_info",
                    "description": "Give your final answer as this tool's input.",
                    "input_schema": {"type": "object"},
                }
            ],
            "tool_choice": {"type": "tool", "name": "city_info"},
        },
    ),
    (
        "cache_control marks on parts are kept",
        {
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "Long.", "cache_control": {"type": "ephemeral"}}
                    ],
                },
                user("x"),
            ]
        },
        {"system": [{"type": "text", "text": "Long.", "cache_control": {"type": "ephemeral"}}]},
    ),
]


@pytest.mark.parametrize(
    ("openai_body", "expected"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_translation(openai_body: dict[str, Any], expected: dict[str, Any]) -> None:
    frozen = orjson.dumps(openai_body)
    out = native(openai_body)
    assert {k: out.get(k) for k in expected} == expected
    assert orjson.dumps(openai_body) == frozen  # the client's body is never mutated


def test_max_tokens_default_comes_from_the_provider() -> None:
    assert native({"messages": [user("x")]}, default_max_tokens=123)["max_tokens"] == 123
    assert "tool_choice" not in native({"messages": [user("x")], "tool_choice": "auto"})


REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": 5}, "stop"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    (
        {"tools": [WEATHER], "response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}},
        "response_format.json_schema.schema",
    ),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "messages[0].content[0]",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                }
            ]
        },
        "messages[0].content[0]",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
            ]
        },
        "messages[0].content[0]",
    ),
    (
        {
            "messages": [
                user("x"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1"},
                        }
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSALS, ids=[p for _, p in REFUSALS])
def test_what_does_not_translate_is_refused_naming_the_parameter(
    extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(TranslationError) as err:
        native({"messages": [user("x")], **extra})
    assert err.value.param == param and err.value.message


# -- response translation ----------------------------------------------------------------------


def anthropic_message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


RESPONSES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "text blocks join into the content",
        anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]),
        {"role": "assistant", "content": "Hello there", "refusal": None},
        "stop",
    ),
    (
        "tool_use blocks become tool calls with JSON arguments",
        anthropic_message(
            [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ],
            "tool_use",
        ),
        {
            "role": "assistant",
            "content": "Let me check.",
            "refusal": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                },
            ],
        },
        "tool_calls",
    ),
    (
        "thinking blocks are left out",
        anthropic_message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "4"},
            ]
        ),
        {"role": "assistant", "content": "4", "refusal": None},
        "stop",
    ),
    (
        "only tool calls: content is null",
        anthropic_message(
            [{"type": "tool_use", "id": "t", "name": "now", "input": {}}], "tool_use"
        ),
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "now", "arguments": "{}"}}
            ],
        },
        "tool_calls",
    ),
]


@pytest.mark.parametrize(
    ("message", "expected", "finish"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_response_translation(
    message: dict[str, Any], expected: dict[str, Any], finish: str
) -> None:
    out, usage = translate_response(message, MODEL, 1700000000)
    assert out["object"] == "chat.completion" and out["id"] == "msg_01"
    assert out["model"] == MODEL and out["created"] == 1700000000
    assert out["choices"] == [
        {"index": 0, "message": expected, "logprobs": None, "finish_reason": finish}
    ]
    assert usage == Usage(10, 5)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    out, _ = translate_response(
        anthropic_message([{"type": "text", "text": "x"}], stop_reason), MODEL, 0
    )
    assert out["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    message = anthropic_message(
        [{"type": "text", "text": "x"}],
        input_tokens=10,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=200,
        output_tokens=7,
    )
    out, usage = translate_response(message, MODEL, 0)
    assert usage == Usage(prompt_tokens=1210, completion_tokens=7, cached_tokens=1000)
    assert out["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 7,
        "total_tokens": 1217,
        "prompt_tokens_details": {"cached_tokens": 1000},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_a_json_schema_answer_is_the_content_and_a_plain_stop() -> None:
    message = anthropic_message(
        [{"type": "tool_use", "id": "t", "name": "city_info", "input": {"name": "Paris"}}],
        "tool_use",
    )
    out, _ = translate_response(message, MODEL, 0, json_tool="city_info")
    choice = out["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": '{"name":"Paris"}',
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"


def test_a_multi_turn_tool_conversation_round_trips() -> None:
    """OpenAI request -> native request -> native response -> OpenAI response -> next request."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        user("Weather in Paris?"),
    ]
    first = translate_request({"messages": messages, "tools": [WEATHER]}, MODEL).body
    assert first["system"] == "Be brief." and first["tools"] == [NATIVE_WEATHER]
    reply, _ = translate_response(
        anthropic_message(
            [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
            "tool_use",
        ),
        MODEL,
        0,
    )
    assistant = reply["choices"][0]["message"]
    messages += [assistant, {"role": "tool", "tool_call_id": "toolu_9", "content": "21C"}]
    second = translate_request({"messages": messages, "tools": [WEATHER]}, MODEL).body
    assert second["messages"] == [
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "21C"}],
        },
    ]
    final, _ = translate_response(
        anthropic_message([{"type": "text", "text": "21C in Paris."}]), MODEL, 0
    )
    assert final["choices"][0]["message"]["content"] == "21C in Paris."


# -- error translation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "openai_type", "code"),
    [
        (400, "invalid_request_error", "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error", "invalid_api_key"),
        (402, "billing_error", "invalid_request_error", "insufficient_quota"),
        (403, "permission_error", "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error", "not_found_error"),
        (413, "request_too_large", "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", "server_error", "api_error"),
        (529, "overloaded_error", "server_error", "overloaded"),
    ],
)
def test_error_translation(status: int, kind: str, openai_type: str, code: str) -> None:
    body, got = translate_error(orjson.dumps(error_body(kind, "Something.")), status, "claude")
    assert got == code
    assert orjson.loads(body) == {
        "error": {"message": "Something.", "type": openai_type, "param": None, "code": code}
    }


def test_quota_errors_are_marked_so_the_key_leaves_service() -> None:
    spend = error_body("rate_limit_error", "Spend limit reached.")
    spend["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
    assert translate_error(orjson.dumps(spend), 429, "claude")[1] == "insufficient_quota"
    credit = error_body(
        "invalid_request_error", "Your credit balance is too low to access the API."
    )
    assert translate_error(orjson.dumps(credit), 400, "claude")[1] == "insufficient_quota"


def test_a_prompt_over_the_context_window_is_context_length_exceeded() -> None:
    too_long = error_body("invalid_request_error", "prompt is too long: 208310 tokens > 200000")
    assert translate_error(orjson.dumps(too_long), 400, "claude")[1] == "context_length_exceeded"


def test_a_non_anthropic_error_body_is_wrapped() -> None:
    body, code = translate_error(b"<html>413 Request Entity Too Large</html>", 413, "claude")
    err = orjson.loads(body)["error"]
    assert code is None and "413 Request Entity Too Large" in err["message"]


# -- stream translation (pure) -----------------------------------------------------------------


def stream_bytes(*events: dict[str, Any]) -> bytes:
    return b"".join(sse(e) for e in events)


TOOL_STREAM = stream_bytes(
    message_start(input_tokens=20, cache_read_input_tokens=5),
    *text_block(0, ["Let me", " check."]),
    {"type": "ping"},
    *tool_block(1, "toolu_a", "get_weather", ['{"city":', '"Paris"}']),
    *tool_block(2, "toolu_b", "get_weather", ['{"city":"Rome"}']),
    *message_end("tool_use", 30),
)


def chunks_of(out: bytes) -> list[Any]:
    return [p if p == b"[DONE]" else orjson.loads(p) for p in sse_events(out)]


def test_stream_translation_of_text_and_parallel_tool_calls() -> None:
    tr = StreamTranslator(MODEL, 1700000000, True, "claude")
    chunks = chunks_of(tr.feed(TOOL_STREAM))
    assert tr.done and chunks[-1] == b"[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2]]
    assert deltas[0] == {"role": "assistant", "content": "Let me"}  # the role rides on content
    assert deltas[1] == {"content": " check."}
    assert deltas[2]["tool_calls"] == [
        {
            "index": 0,
            "id": "toolu_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    args: dict[int, str] = {}
    for d in deltas[2:]:
        for call in d.get("tool_calls", []):
            args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert args == {0: '{"city":"Paris"}', 1: '{"city":"Rome"}'}  # indexed among tool calls
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["prompt_tokens"] == 25
    assert chunks[-2]["usage"]["completion_tokens"] == 30
    assert all(c["id"] == "msg_fake" and c["model"] == MODEL for c in chunks[:-1])
    assert tr.usage == Usage(25, 30, 5)


def test_stream_translation_does_not_depend_on_how_reads_split_the_bytes() -> None:
    whole = StreamTranslator(MODEL, 1, False, "claude").feed(TOOL_STREAM)
    for size in (1, 7, 64):
        tr = StreamTranslator(MODEL, 1, False, "claude")
        data = TOOL_STREAM.replace(b"\n", b"\r\n") if size == 7 else TOOL_STREAM
        out = b"".join(tr.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert out == whole, size
    assert b'"usage"' not in whole  # no usage chunk unless the client asked


def test_a_stream_error_event_stops_translation() -> None:
    tr = StreamTranslator(MODEL, 1, False, "claude")
    out = tr.feed(
        stream_bytes(
            message_start(),
            *text_block(0, ["par"])[:2],
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            *text_block(0, ["never"])[1:2],
        )
    )
    assert [c["choices"][0]["delta"].get("content") for c in chunks_of(out)] == ["par"]
    assert tr.error is not None and tr.error.code == "overloaded" and not tr.done
    assert "overloaded_error" in str(tr.error)


def test_a_json_schema_stream_is_content() -> None:
    tr = StreamTranslator(MODEL, 1, False, "claude", json_tool="answer")
    out = tr.feed(
        stream_bytes(
            message_start(),
            *tool_block(0, "t", "answer", ['{"a":', "1}"]),
            *message_end("tool_use", 3),
        )
    )
    chunks = chunks_of(out)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == '{"a":1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


# -- the gateway over loopback HTTP ------------------------------------------------------------


@pytest.fixture
def fake_factory(serve_fake: Callable[..., Any]) -> Callable[..., FakeAnthropic]:
    return lambda **kwargs: serve_fake(FakeAnthropic, **kwargs)


@pytest.fixture
def fake(fake_factory: Callable[..., FakeAnthropic]) -> FakeAnthropic:
    return fake_factory()


@pytest.fixture
def gw(fake: FakeAnthropic, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG.format(url=fake.url, model=MODEL))


CHAT = {"model": "smart", "messages": [user("Hi")]}


def test_chat_goes_to_the_messages_api_with_the_keys_headers(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200, resp.body
    assert resp.headers["x-truckllm-provider"] == "claude"
    got = resp.json()
    assert got["model"] == MODEL and got["choices"][0]["message"]["content"].startswith(
        "Hello from"
    )
    sent = fake.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-secret-1"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "test-beta-2025"
    assert sent.body == {"model": MODEL, "max_tokens": 1000, "messages": [user("Hi")]}


def test_a_provider_listed_model_is_served_under_its_own_name(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    resp = gw.post("/v1/chat/completions", {**CHAT, "model": "claude-haiku-4-5"})
    assert resp.status == 200 and resp.json()["model"] == "claude-haiku-4-5"
    assert fake.received[-1].body["model"] == "claude-haiku-4-5"


def test_untranslatable_requests_get_400_and_never_reach_the_upstream(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    resp = gw.post("/v1/chat/completions", {**CHAT, "n": 3})
    assert resp.status == 400
    assert (
        resp.json()["error"]["param"] == "n"
        and resp.json()["error"]["type"] == "invalid_request_error"
    )
    resp = gw.post("/v1/embeddings", {"model": "smart", "input": "x"})
    assert resp.status == 400 and resp.json()["error"]["code"] == "unsupported_endpoint"
    assert fake.received == []
    assert_no_attempt_in_flight(gw)


def test_upstream_validation_errors_pass_through_as_openai_errors(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    fake.script.append(scripted_error("invalid_request_error", "messages.0.content: bad"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 400 and resp.headers["x-truckllm-attempts"] == "1"
    assert resp.json()["error"]["message"] == "messages.0.content: bad"


def test_429_with_retry_after_fails_over_to_the_next_key(gw: Gateway, fake: FakeAnthropic) -> None:
    fake.script.append(scripted_error("rate_limit_error", headers={"retry-after": "17"}))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200, resp.body
    assert fake.keys_used() == ["sk-ant-secret-1", "sk-ant-secret-2"]
    assert gw.states()["a1"].outcomes == {OutcomeKind.RATE_LIMITED: 1}
    assert gw.states()["a2"].outcomes == {OutcomeKind.SUCCESS: 1}


def test_when_every_key_is_throttled_the_client_gets_an_openai_429(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    fake.script.extend([scripted_error("rate_limit_error", "Slow down.", {"retry-after": "9"})] * 2)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 429 and resp.headers["retry-after"] == "9"
    assert resp.json() == {
        "error": {
            "message": "Slow down.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_529_overloaded_is_retried(gw: Gateway, fake: FakeAnthropic) -> None:
    fake.script.append(scripted_error("overloaded_error", "Overloaded"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200 and resp.headers["x-truckllm-attempts"] == "2"
    assert gw.states()["a1"].outcomes == {OutcomeKind.SERVER_ERROR: 1}
    fake.script.extend([scripted_error("overloaded_error", "Overloaded")] * 2)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 529 and resp.json()["error"]["code"] == "overloaded"


def test_a_rejected_key_never_leaks(gw: Gateway, fake: FakeAnthropic) -> None:
    echo = error_body("authentication_error", "invalid x-api-key: sk-ant-secret-1")
    fake.script.extend([Scripted(status=401, body=echo), Scripted(status=401, body=echo)])
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 502 and b"sk-ant-secret" not in resp.body
    assert gw.states()["a1"].outcomes == {OutcomeKind.AUTH_ERROR: 1}


def open_stream(
    gw: Gateway, body: dict[str, Any]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(gw.server.host, gw.server.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    return conn, conn.getresponse()


def stream_chunks(body: bytes) -> list[Any]:
    payloads = sse_events(body)
    return [p if p == b"[DONE]" else orjson.loads(p) for p in payloads]


def test_a_text_stream_arrives_event_by_event(gw: Gateway, fake: FakeAnthropic) -> None:
    # The upstream sends up to its first text delta and then nothing: that delta reaches the
    # client all the same.
    events: list[dict[str, Any] | bytes | str] = [
        message_start(model=MODEL),
        *text_block(0, ["Hello", " never"]),
        *message_end("end_turn", 2),
    ]
    fake.script.append(Scripted(events=events, stall_after=3))
    conn, resp = open_stream(gw, {**CHAT, "stream": True})
    first = resp.readline()
    conn.close()
    assert b'"role":"assistant"' in first and b'"content":"Hello"' in first
    # And a whole stream arrives whole.
    conn, resp = open_stream(gw, {**CHAT, "stream": True})
    chunks = stream_chunks(resp.read())
    conn.close()
    assert chunks[-1] == b"[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "Hello from the TruckLLM fake Anthropic upstream model"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks[:-1])
    assert fake.received[-1].body["stream"] is True


def test_a_streamed_tool_call_with_usage(gw: Gateway) -> None:
    body = {**CHAT, "stream": True, "tools": [WEATHER], "stream_options": {"include_usage": True}}
    resp = gw.post("/v1/chat/completions", body)
    chunks = stream_chunks(resp.body)
    assert chunks[-1] == b"[DONE]"
    calls = [tc for c in chunks[:-2] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["index"] == 0
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"Paris"}'
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["usage"]["completion_tokens"] == 12


def test_an_error_event_mid_stream_ends_the_stream_with_an_error_not_done(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    events: list[dict[str, Any] | bytes | str] = [
        message_start(model=MODEL),
        *text_block(0, ["partial", " more"])[:3],
        {"type": "ping"},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    fake.script.append(Scripted(events=events, event_delay=0.05))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200
    payloads = sse_events(resp.body)
    assert b"[DONE]" not in payloads
    assert b'"partial"' in payloads[0]
    last = orjson.loads(payloads[-1])
    assert last["error"]["code"] == "overloaded" and "Overloaded" in last["error"]["message"]
    assert len(fake.received) == 1  # never retried after the first byte
    assert gw.states()["a1"].outcomes == {OutcomeKind.STREAM_BROKEN: 1}
    assert_no_attempt_in_flight(gw)


def test_an_error_event_before_any_content_fails_over(gw: Gateway, fake: FakeAnthropic) -> None:
    events: list[dict[str, Any] | bytes | str] = [
        message_start(),
        {"type": "ping"},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    fake.script.append(Scripted(events=events, event_delay=0.05))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.headers["x-truckllm-attempts"] == "2"
    assert stream_chunks(resp.body)[-1] == b"[DONE]"
    assert fake.keys_used() == ["sk-ant-secret-1", "sk-ant-secret-2"]


def test_a_stream_that_ends_without_message_stop_is_broken(
    gw: Gateway, fake: FakeAnthropic
) -> None:
    events: list[dict[str, Any] | bytes | str] = [message_start(), *text_block(0, ["cut"])]
    fake.script.append(Scripted(events=events))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    payloads = sse_events(resp.body)
    assert b"[DONE]" not in payloads
    assert orjson.loads(payloads[-1])["error"]["code"] == "upstream_protocol_error"


def test_a_stream_cut_mid_way_is_broken(gw: Gateway, fake: FakeAnthropic) -> None:
    events: list[dict[str, Any] | bytes | str] = [
        message_start(),
        *text_block(0, ["cut", " here", " never"]),
        *message_end("end_turn", 3),
    ]
    fake.script.append(Scripted(events=events, cut_after=4, event_delay=0.05))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    payloads = sse_events(resp.body)
    assert b'"cut"' in payloads[0] and b"[DONE]" not in payloads
    assert orjson.loads(payloads[-1])["error"]["code"] == "upstream_unavailable"
    assert_no_attempt_in_flight(gw)


def test_a_bad_max_tokens_option_is_refused_when_the_provider_is_built() -> None:
    cfg = ProviderConfig(id="claude", base_url="http://127.0.0.1:1", options={"max_tokens": "lots"})
    with pytest.raises(ValueError, match=r"options\.max_tokens"):
        AnthropicProvider(ProviderContext(cfg, cast(Any, None), Timeouts()))


def test_a_429_on_a_stream_fails_over(gw: Gateway, fake: FakeAnthropic) -> None:
    fake.script.append(scripted_error("rate_limit_error", headers={"retry-after": "3"}))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.headers["x-truckllm-key-id"] == "a2"
    assert stream_chunks(resp.body)[-1] == b"[DONE]"


# -- the official SDK --------------------------------------------------------------------------


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0, timeout=10)


def test_sdk_plain_text_and_usage(client: openai.OpenAI, fake: FakeAnthropic) -> None:
    fake.cache_read_tokens = 100
    reply = client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "Hi"}]
    )
    assert (
        reply.choices[0].message.content == "Hello from the TruckLLM fake Anthropic upstream model"
    )
    assert reply.choices[0].finish_reason == "stop" and reply.model == MODEL
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 100
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8


def test_sdk_streamed_text_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the TruckLLM fake Anthropic upstream model"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_sdk_tool_calls_plain_and_streamed_over_two_turns(
    client: openai.OpenAI, fake: FakeAnthropic
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER])
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"Paris"}'
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    final = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content and final.choices[0].finish_reason == "stop"
    sent = fake.received[-1].body["messages"]
    assert sent[1]["content"][-1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": '{"temp_c": 21}'}],
    }
    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
        stream=True,
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert deltas[0].id and deltas[0].index == 0
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == '{"city":"Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_sdk_json_schema_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "A city?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "city",
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            },
        },
    )
    assert orjson.loads(reply.choices[0].message.content or "") == {"name": "Paris"}
    assert reply.choices[0].finish_reason == "stop"


def test_sdk_errors_are_its_own_exception_classes(
    client: openai.OpenAI, fake: FakeAnthropic
) -> None:
    msgs: list[Any] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smart", messages=msgs, n=2)
    assert bad.value.param == "n"
    fake.script.extend([scripted_error("rate_limit_error", "Slow down.", {"retry-after": "1"})] * 2)
    with pytest.raises(openai.RateLimitError) as rate:
        client.chat.completions.create(model="smart", messages=msgs)
    assert rate.value.code == "rate_limit_exceeded"
    fake.script.append(
        Scripted(
            events=[
                message_start(),
                *text_block(0, ["par"])[:2],
                {"type": "error", "error": {"type": "api_error", "message": "Internal"}},
            ],
            event_delay=0.05,
        )
    )
    stream = client.chat.completions.create(model="smart", messages=msgs, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for c in stream:
            received.append(c)
    assert [c.choices[0].delta.content for c in received] == ["par"]


# -- what the routing layer learns from this provider ------------------------------------------


def test_a_request_anthropic_cannot_express_moves_to_another_target_untouched(
    fake: FakeAnthropic,
    upstream_factory: Callable[..., Any],
    gateway_factory: Callable[..., Gateway],
) -> None:
    openai_upstream = upstream_factory()
    gw = gateway_factory(f"""
        providers:
          - {{id: claude, base_url: "{fake.url}", keys: [{{id: a1, secret: sk-ant-1, limits: {{rpm: 5}}}}]}}
          - {{id: oai, base_url: "{openai_upstream.url}", keys: [{{id: o1, secret: sk-o}}]}}
        model_aliases:
          smart: ["claude:{MODEL}", "oai:gpt-4o"]
        """)
    resp = gw.post("/v1/chat/completions", {**CHAT, "n": 2})  # Anthropic has no n > 1
    assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "oai"
    assert resp.headers["x-truckllm-attempts"] == "1"
    assert fake.received == []
    a1 = gw.states()["a1"]
    assert a1.outcomes == {OutcomeKind.NOT_SENT: 1} and a1.requests == 0
    assert (
        a1.rpm is not None and a1.rpm.used(gw.app.runtime.router.clock()) == 0
    )  # reservation given back
    only_claude = gateway_factory(f"""
        providers: [{{id: claude, base_url: "{fake.url}", keys: [{{id: a2, secret: sk-ant-1}}]}}]
        model_aliases: {{smart: "claude:{MODEL}"}}
        """)
    refused = only_claude.post("/v1/chat/completions", {**CHAT, "n": 2})
    assert refused.status == 400 and refused.json()["error"]["param"] == "n"


def test_a_rate_limit_event_before_any_content_cools_the_key_and_fails_over(
    fake: FakeAnthropic, gw: Gateway
) -> None:
    events: list[dict[str, Any] | bytes | str] = [
        message_start(),
        {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "Number of requests has exceeded your rate limit",
            },
        },
    ]
    fake.script.append(Scripted(events=events))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200 and resp.headers["x-truckllm-attempts"] == "2"
    throttled = [s for s in gw.states().values() if OutcomeKind.RATE_LIMITED in s.outcomes]
    assert len(throttled) == 1
    assert throttled[0].cooling_until > gw.app.runtime.router.clock()
