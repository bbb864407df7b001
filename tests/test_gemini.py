"""The Gemini provider: translation tables (pure functions) in both directions, then the adapter
over real loopback HTTP against the fake Gemini service, then the official ``openai`` SDK pointed
at the gateway."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from helpers import Gateway, request, sse_events

from truckllm.config.schema import KeyConfig, ProviderConfig, Timeouts
from truckllm.config.secret import Secret
from truckllm.http.client import HTTPClient
from truckllm.providers.base import Call, ProviderContext, Reply
from truckllm.providers.gemini import GeminiProvider
from truckllm.providers.gemini.embeddings import embed_request, embed_response
from truckllm.providers.gemini.errors import Unsupported, parse_duration, translate_error
from truckllm.providers.gemini.request import SKIP_SIGNATURE, chat_request
from truckllm.providers.gemini.response import chat_completion
from truckllm.providers.gemini.schema import to_gemini_schema
from truckllm.providers.gemini.stream import StreamFailed, StreamTranslator
from truckllm.routing import OutcomeKind
from truckllm.testing.fake_gemini import FakeGemini, gemini_error, rate_limited
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import Scripted

MODEL = "gemini-2.5-flash"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
WEATHER_DECL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}},
        "required": ["city"],
    },
}
USER_HI = {"role": "user", "content": "Hi"}
CONTENT_HI = {"role": "user", "parts": [{"text": "Hi"}]}


def native(body: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    return chat_request({"messages": [USER_HI], **body}, model)


# == request translation ========================================================================

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain text", {}, {"contents": [CONTENT_HI]}),
    (
        "system and developer messages become the system instruction",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                USER_HI,
            ]
        },
        {
            "contents": [CONTENT_HI],
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        },
    ),
    (
        "sampling, length, stop, n, penalties and seed",
        {
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 50,
            "stop": "END",
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.3,
            "user": "u-1",
            "parallel_tool_calls": False,
        },
        {
            "contents": [CONTENT_HI],
            "generationConfig": {
                "temperature": 0.2,
                "topP": 0.9,
                "candidateCount": 2,
                "presencePenalty": 0.1,
                "frequencyPenalty": 0.3,
                "seed": 7,
                "maxOutputTokens": 50,
                "stopSequences": ["END"],
            },
        },
    ),
    (
        "max_completion_tokens wins over max_tokens; stop lists pass",
        {"max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"]},
        {
            "contents": [CONTENT_HI],
            "generationConfig": {"maxOutputTokens": 20, "stopSequences": ["a", "b"]},
        },
    ),
    (
        "JSON mode",
        {"response_format": {"type": "json_object"}},
        {"contents": [CONTENT_HI], "generationConfig": {"responseMimeType": "application/json"}},
    ),
    (
        "JSON schema to Gemini's schema subset",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "city",
                    "strict": True,
                    "schema": {
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "format": "hostname"},
                            "founded": {"type": ["integer", "null"], "minimum": 0},
                        },
                        "required": ["name", "founded"],
                        "additionalProperties": False,
                    },
                },
            }
        },
        {
            "contents": [CONTENT_HI],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {
                    "type": "OBJECT",
                    "properties": {
                        "name": {"type": "STRING"},
                        "founded": {"type": "INTEGER", "minimum": 0, "nullable": True},
                    },
                    "required": ["name", "founded"],
                },
            },
        },
    ),
    (
        "inline images, image URLs, audio and files",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/cat.webp?s=1"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/photo"}},
                        {"type": "input_audio", "input_audio": {"data": "UklG", "format": "mp3"}},
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBE"},
                        },
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Compare"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                        {
                            "fileData": {
                                "mimeType": "image/webp",
                                "fileUri": "https://x.test/cat.webp?s=1",
                            }
                        },
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.test/photo"}},
                        {"inlineData": {"mimeType": "audio/mp3", "data": "UklG"}},
                        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
                    ],
                }
            ]
        },
    ),
    (
        "consecutive turns of one role are merged; empty assistant turns dropped",
        {
            "messages": [
                {"role": "user", "content": "One"},
                {"role": "user", "content": "Two"},
                {"role": "assistant", "content": None},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": [{"type": "text", "text": "Three"}]},
                {"role": "assistant", "content": "Four"},
            ]
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "One"}, {"text": "Two"}]},
                {"role": "model", "parts": [{"text": "Three"}, {"text": "Four"}]},
            ]
        },
    ),
    (
        "tools with tool_choice auto",
        {"tools": [WEATHER_TOOL], "tool_choice": "auto"},
        {
            "contents": [CONTENT_HI],
            "tools": [{"functionDeclarations": [WEATHER_DECL]}],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        },
    ),
    (
        "tool_choice none",
        {"tools": [WEATHER_TOOL], "tool_choice": "none"},
        {
            "contents": [CONTENT_HI],
            "tools": [{"functionDeclarations": [WEATHER_DECL]}],
            "toolConfig": {"functionCallingConfig": {"mode": "NONE"}},
        },
    ),
    (
        "tool_choice required",
        {"tools": [WEATHER_TOOL], "tool_choice": "required"},
        {
            "contents": [CONTENT_HI],
            "tools": [{"functionDeclarations": [WEATHER_DECL]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        },
    ),
    (
        "a named tool_choice; a parameterless tool has no parameters",
        {
            "tools": [
                WEATHER_TOOL,
                {
                    "type": "function",
                    "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
                },
            ],
            "tool_choice": {"type": "function", "function": {"name": "now"}},
        },
        {
            "contents": [CONTENT_HI],
            "tools": [{"functionDeclarations": [WEATHER_DECL, {"name": "now"}]}],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}
            },
        },
    ),
    (
        "assistant tool calls and tool results; names found by call id; results wrapped",
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            "extra_content": {"google": {"thought_signature": "c2ln"}},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 21}'},
                {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
            ]
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]},
                {
                    "role": "model",
                    "parts": [
                        {"text": "Checking."},
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2ln",
                        },
                        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "get_weather",
                                "response": {"temp_c": 21},
                            }
                        },
                        {
                            "functionResponse": {
                                "name": "get_weather",
                                "response": {"result": "sunny"},
                            }
                        },
                    ],
                },
            ]
        },
    ),
    (
        "reasoning effort is a thinking budget on Gemini 2.5",
        {"reasoning_effort": "low"},
        {
            "contents": [CONTENT_HI],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}},
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "expected"), REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES]
)
def test_request_translation(case: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert native(body) == expected


def test_reasoning_effort_follows_the_model_family() -> None:
    def thinking(effort: str, model: str) -> Any:
        gen = native({"reasoning_effort": effort}, model).get("generationConfig", {})
        return gen.get("thinkingConfig")

    assert thinking("none", "gemini-2.5-flash") == {"thinkingBudget": 0}
    assert thinking("none", "gemini-2.5-pro") == {"thinkingBudget": 128}
    assert thinking("medium", "gemini-3-flash-preview") == {"thinkingLevel": "MEDIUM"}
    assert thinking("medium", "gemini-3-pro-preview") == {"thinkingLevel": "HIGH"}
    assert thinking("high", "gemini-2.0-flash") is None


def test_replayed_function_calls_without_signature_get_the_documented_stand_in() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages = [
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "Now?"},
        {"role": "assistant", "tool_calls": [{**call, "id": "call_2"}, {**call, "id": "call_3"}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "{}"},
        {"role": "tool", "tool_call_id": "call_3", "content": "{}"},
    ]
    contents = chat_request({"messages": messages}, MODEL)["contents"]
    earlier, current = contents[1]["parts"], contents[5]["parts"]
    assert "thoughtSignature" not in earlier[0]  # only the current turn is checked by Gemini
    assert current[0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in current[1]  # one per step, on its first call
    bare = chat_request({"messages": messages}, MODEL, signature_fallback=None)["contents"]
    assert "thoughtSignature" not in bare[5]["parts"][0]


UNSUPPORTED_CASES: list[tuple[dict[str, Any], str]] = [
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
    ({"tool_choice": "sometimes", "tools": [WEATHER_TOOL]}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    (
        {"messages": [USER_HI, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "ftp://x"}]}
            ]
        },
        "messages[0].content[0]",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]},
        "messages[0].content[0]",
    ),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0]"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "tree",
                    "schema": {
                        "$ref": "#/$defs/Node",
                        "$defs": {
                            "Node": {
                                "type": "object",
                                "properties": {
                                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                                },
                            }
                        },
                    },
                },
            }
        },
        "response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("body", "param"), UNSUPPORTED_CASES)
def test_what_gemini_cannot_do_is_a_clear_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Unsupported) as exc:
        native(body)
    error = orjson.loads(exc.value.body())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


SCHEMA_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "pydantic-style $defs and Optional",
        {
            "$defs": {
                "Point": {
                    "type": "object",
                    "properties": {"x": {"type": "number", "format": "double"}},
                    "required": ["x", "ghost"],
                    "title": "Point",
                }
            },
            "type": "object",
            "properties": {
                "at": {"$ref": "#/$defs/Point", "description": "where"},
                "label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            },
        },
        {
            "type": "OBJECT",
            "properties": {
                "at": {
                    "type": "OBJECT",
                    "title": "Point",
                    "description": "where",
                    "properties": {"x": {"type": "NUMBER", "format": "double"}},
                    "required": ["x"],
                },
                "label": {"type": "STRING", "nullable": True},
            },
        },
    ),
    (
        "enums, const, oneOf and allOf",
        {
            "type": "object",
            "properties": {
                "unit": {"enum": ["C", "F"]},
                "kind": {"const": "weather"},
                "level": {"type": "integer", "enum": [1, 2]},
                "either": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "both": {"allOf": [{"properties": {"a": {"type": "string"}}}]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            },
        },
        {
            "type": "OBJECT",
            "properties": {
                "unit": {"type": "STRING", "enum": ["C", "F"]},
                "kind": {"type": "STRING", "enum": ["weather"]},
                "level": {"type": "INTEGER"},
                "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
                "both": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
                "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
            },
        },
    ),
]


@pytest.mark.parametrize(
    ("case", "schema", "expected"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES]
)
def test_json_schema_conversion(
    case: str, schema: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert to_gemini_schema(schema, "p") == expected


# == response translation =======================================================================


def candidate(
    parts: list[dict[str, Any]], finish: str | None = "STOP", index: int = 0
) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": index}
    if finish:
        cand["finishReason"] = finish
    return cand


RESPONSE_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = [
    (
        "text parts are joined; thoughts are left out",
        {
            "candidates": [
                candidate([{"text": "hm", "thought": True}, {"text": "Hel"}, {"text": "lo"}])
            ]
        },
        [{"index": 0, "content": "Hello", "finish_reason": "stop"}],
    ),
    (
        "several candidates",
        {"candidates": [candidate([{"text": "A"}]), candidate([{"text": "B"}], "MAX_TOKENS", 1)]},
        [
            {"index": 0, "content": "A", "finish_reason": "stop"},
            {"index": 1, "content": "B", "finish_reason": "length"},
        ],
    ),
    (
        "safety stops are content filters",
        {"candidates": [candidate([{"text": "Partial"}], "SAFETY")]},
        [{"index": 0, "content": "Partial", "finish_reason": "content_filter"}],
    ),
    (
        "recitation without content",
        {"candidates": [{"finishReason": "RECITATION", "index": 0}]},
        [{"index": 0, "content": "", "finish_reason": "content_filter"}],
    ),
    (
        "a blocked prompt is one empty content-filtered choice",
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}},
        [{"index": 0, "content": "", "finish_reason": "content_filter"}],
    ),
]


@pytest.mark.parametrize(
    ("case", "resp", "expected"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES]
)
def test_response_translation(
    case: str, resp: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    out, _ = chat_completion(resp, MODEL)
    assert out["object"] == "chat.completion" and out["model"] == MODEL
    assert out["id"].startswith("chatcmpl-")
    got = [
        {
            "index": c["index"],
            "content": c["message"]["content"],
            "finish_reason": c["finish_reason"],
        }
        for c in out["choices"]
    ]
    assert got == expected


def test_function_calls_become_tool_calls_with_ids_json_arguments_and_signatures() -> None:
    resp = {
        "candidates": [
            candidate(
                [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2ln",
                    },
                    {"functionCall": {"name": "now"}},
                ]
            )
        ],
        "responseId": "abc",
    }
    out, _ = chat_completion(resp, MODEL)
    (choice,) = out["choices"]
    assert out["id"] == "chatcmpl-abc"
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert first["id"].startswith("call_") and first["id"] != second["id"]
    assert first["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert first["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert (
        second["function"] == {"name": "now", "arguments": "{}"} and "extra_content" not in second
    )


def test_usage_keeps_cached_and_thinking_tokens() -> None:
    meta = {
        "promptTokenCount": 100,
        "candidatesTokenCount": 20,
        "thoughtsTokenCount": 30,
        "cachedContentTokenCount": 64,
        "totalTokenCount": 150,
    }
    out, usage = chat_completion(
        {"candidates": [candidate([{"text": "x"}])], "usageMetadata": meta}, MODEL
    )
    assert out["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (100, 50)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (64, 30)


def test_a_multi_turn_tool_conversation_round_trips() -> None:
    """OpenAI request -> native request -> native response -> OpenAI response, twice."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    first = chat_request({"messages": messages, "tools": [WEATHER_TOOL]}, MODEL)
    assert first["systemInstruction"] == {"parts": [{"text": "You are a weather bot."}]}
    assert first["contents"] == [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}]
    assert first["tools"] == [{"functionDeclarations": [WEATHER_DECL]}]
    answer = {
        "candidates": [
            candidate(
                [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "U0lH",
                    }
                ]
            )
        ]
    }
    reply, _ = chat_completion(answer, MODEL)
    assistant = reply["choices"][0]["message"]
    call_id = assistant["tool_calls"][0]["id"]
    messages += [assistant, {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'}]
    second = chat_request({"messages": messages, "tools": [WEATHER_TOOL]}, MODEL)
    assert second["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "U0lH",
                }
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
        },
    ]
    final, usage = chat_completion(
        {
            "candidates": [candidate([{"text": "It is 21 °C in Paris."}])],
            "usageMetadata": {"promptTokenCount": 9},
        },
        MODEL,
    )
    assert final["choices"][0]["message"]["content"] == "It is 21 °C in Paris."
    assert final["choices"][0]["finish_reason"] == "stop"
    assert usage is not None and usage.prompt_tokens == 9


# == stream translation =========================================================================


def chunks_of(data: bytes) -> list[Any]:
    return [orjson.loads(e) if e != b"[DONE]" else "[DONE]" for e in sse_events(data)]


def test_stream_translation_text() -> None:
    tr = StreamTranslator(MODEL, wants_usage=True)
    out = tr.feed(
        {
            "candidates": [candidate([{"text": "Hel"}], None)],
            "usageMetadata": {"promptTokenCount": 5},
        }
    )
    out += tr.feed(
        {"candidates": [candidate([{"text": "lo"}], None)]}
    )  # no usage: the last one stays
    out += tr.feed(
        {
            "candidates": [candidate([{"text": "!"}], "STOP")],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3},
        }
    )
    out += tr.finish()
    events = chunks_of(out)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]
    assert deltas == [
        {"role": "assistant", "content": "Hel"},
        {"content": "lo"},
        {"content": "!"},
        {},
    ]
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert (
        len({e["id"] for e in events[:-1]}) == 1 and events[0]["object"] == "chat.completion.chunk"
    )
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    assert tr.usage is not None and tr.usage.prompt_tokens == 5


def test_stream_translation_function_calls_and_repeated_stop() -> None:
    tr = StreamTranslator(MODEL, wants_usage=False)
    out = tr.feed(
        {"candidates": [candidate([{"text": "Let me check."}], "STOP")]}
    )  # old models repeat STOP
    out += tr.feed(
        {
            "candidates": [
                candidate(
                    [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    ],
                    "STOP",
                )
            ]
        }
    )
    out += tr.finish()
    events = chunks_of(out)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])  # no usage chunk
    calls = events[1]["choices"][0]["delta"]["tool_calls"]
    assert [c["index"] for c in calls] == [0, 1]
    assert [c["function"]["arguments"] for c in calls] == ['{"city":"Paris"}', '{"city":"Oslo"}']
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None, None, "tool_calls"]


def test_stream_translation_blocked_prompt_errors_and_truncation() -> None:
    tr = StreamTranslator(MODEL, wants_usage=False)
    assert tr.feed({"promptFeedback": {"blockReason": "SAFETY"}}) == b""
    events = chunks_of(tr.finish())
    assert events[0]["choices"][0]["finish_reason"] == "content_filter" and events[1] == "[DONE]"
    with pytest.raises(StreamFailed, match="RESOURCE_EXHAUSTED"):
        StreamTranslator(MODEL, False).feed(gemini_error(429, "RESOURCE_EXHAUSTED", "slow down"))
    cut = StreamTranslator(MODEL, False)
    cut.feed({"candidates": [candidate([{"text": "Hel"}], None)]})
    with pytest.raises(StreamFailed):
        cut.finish()


# == errors =====================================================================================

ERROR_CASES: list[tuple[str, int, Any, int, str | None, str, float | None]] = [
    (
        "429 with RetryInfo",
        429,
        rate_limited("37s").body,
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
        37.0,
    ),
    (
        "a daily quota is exhausted for the day",
        429,
        rate_limited("1.5s", quota_id="PerDay").body,
        429,
        "insufficient_quota",
        "insufficient_quota",
        1.5,
    ),
    (
        "an invalid key is the key's fault, not the client's",
        400,
        [
            gemini_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    }
                ],
            )
        ],
        401,
        "invalid_api_key",
        "authentication_error",
        None,
    ),
    (
        "invalid argument",
        400,
        gemini_error(400, "INVALID_ARGUMENT", "Bad field"),
        400,
        "invalid_argument",
        "invalid_request_error",
        None,
    ),
    (
        "a prompt too long for the model",
        400,
        gemini_error(
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed.",
        ),
        400,
        "context_length_exceeded",
        "invalid_request_error",
        None,
    ),
    (
        "permission",
        403,
        gemini_error(403, "PERMISSION_DENIED", "No"),
        403,
        "permission_denied",
        "permission_error",
        None,
    ),
    (
        "not found",
        404,
        gemini_error(404, "NOT_FOUND", "No model"),
        404,
        "not_found",
        "not_found_error",
        None,
    ),
    ("internal", 500, gemini_error(500, "INTERNAL", "Oops"), 500, "internal", "server_error", None),
    (
        "unavailable",
        503,
        gemini_error(503, "UNAVAILABLE", "Overloaded"),
        503,
        "unavailable",
        "server_error",
        None,
    ),
    (
        "deadline",
        504,
        gemini_error(504, "DEADLINE_EXCEEDED", "Slow"),
        504,
        "deadline_exceeded",
        "server_error",
        None,
    ),
    ("not Gemini's shape", 502, b"<html>Bad Gateway</html>", 502, None, "server_error", None),
]


@pytest.mark.parametrize(
    ("case", "status", "body", "want_status", "code", "type_", "retry_after"),
    ERROR_CASES,
    ids=[c[0] for c in ERROR_CASES],
)
def test_error_translation(
    case: str,
    status: int,
    body: Any,
    want_status: int,
    code: str | None,
    type_: str,
    retry_after: float | None,
) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    failure = translate_error(data, status, "gemini")
    error = orjson.loads(failure.body)["error"]
    assert (failure.status, failure.code, failure.retry_after) == (want_status, code, retry_after)
    assert (error["code"], error["type"]) == (code, type_) and error["message"]


def test_durations() -> None:
    assert [parse_duration(v) for v in ("37s", "1.5s", "0.250s", {"seconds": 2, "nanos": 5e8})] == [
        37.0,
        1.5,
        0.25,
        2.5,
    ]
    assert parse_duration("soon") is None and parse_duration(None) is None


# == embeddings (pure) ==========================================================================


def test_embedding_requests_and_responses() -> None:
    method, body, texts = embed_request({"input": "one", "dimensions": 4}, "models/m")
    assert method == "embedContent"
    assert body == {"content": {"parts": [{"text": "one"}]}, "outputDimensionality": 4}
    method, body, texts = embed_request({"input": ["a", "b"]}, "models/m")
    assert method == "batchEmbedContents" and texts == ["a", "b"]
    assert body["requests"][1] == {"model": "models/m", "content": {"parts": [{"text": "b"}]}}
    done = embed_response(
        {"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]},
        {"encoding_format": "base64"},
        "m",
        texts,
    )
    assert done is not None
    out, usage = done
    assert base64.b64decode(out["data"][1]["embedding"]) == struct.pack("<2f", 0.25, 2.0)
    assert usage.estimated and out["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    for bad in ({"input": [[1, 2, 3]]}, {"input": "x", "encoding_format": "int8"}):
        with pytest.raises(Unsupported):
            embed_request(bad, "models/m")


# == over HTTP ==================================================================================

CONFIG = """
providers:
  - id: gemini
    base_url: {url}
    models: [gemini-2.5-flash, gemini-embedding-001]
    headers: {{x-extra: "on"}}
    keys: [{{id: k1, secret: g-key-1}}, {{id: k2, secret: g-key-2}}]
model_aliases:
  smart: gemini:gemini-2.5-flash
routing: {{strategy: round_robin, max_wait: 0}}
server:
  api_keys: [client-key]
"""
AUTH = {"Authorization": "Bearer client-key"}
CHAT = {"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def gemini_factory(serve_fake: Callable[..., Any]) -> Callable[..., FakeGemini]:
    return lambda **kwargs: serve_fake(FakeGemini, **kwargs)


@pytest.fixture
def gemini(gemini_factory: Callable[..., FakeGemini]) -> FakeGemini:
    return gemini_factory(valid_keys={"g-key-1", "g-key-2"})


@pytest.fixture
def gw(gemini: FakeGemini, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(CONFIG.format(url=gemini.url))


def post(gw: Gateway, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    return gw.post(path, body, headers=AUTH)


def test_chat_through_the_gateway(gw: Gateway, gemini: FakeGemini) -> None:
    resp = post(
        gw, {**CHAT, "messages": [{"role": "system", "content": "Be kind."}, *CHAT["messages"]]}
    )
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from the fake Gemini model answering you",
        "refusal": None,
    }
    assert body["model"] == MODEL and body["usage"]["completion_tokens"] == 8
    assert resp.headers["x-truckllm-provider"] == "gemini"
    sent = gemini.received[-1]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
    assert gemini.key_of(sent) in ("g-key-1", "g-key-2") and sent.headers["x-extra"] == "on"
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
    assert b"g-key" not in resp.body


def test_stream_through_the_gateway(gw: Gateway, gemini: FakeGemini) -> None:
    resp = post(gw, {**CHAT, "stream": True})
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert gemini.received[-1].path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    events = chunks_of(resp.body)
    assert events[-1] == "[DONE]" and all(e["choices"] for e in events[:-1])
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "Hello from the fake Gemini model answering you"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    with_usage = chunks_of(
        post(gw, {**CHAT, "stream": True, "stream_options": {"include_usage": True}}).body
    )
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["completion_tokens"] == 8
    # Every stream is billed, also when the client did not ask for the usage.
    assert (
        gw.states()["k1"].outcomes[OutcomeKind.SUCCESS]
        + gw.states()["k2"].outcomes[OutcomeKind.SUCCESS]
        == 2
    )


def test_function_call_stream_through_the_gateway(gw: Gateway, gemini: FakeGemini) -> None:
    resp = post(gw, {**CHAT, "stream": True, "tools": [WEATHER_TOOL]})
    events = chunks_of(resp.body)
    (call,) = events[0]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls" and events[-1] == "[DONE]"


def test_an_error_mid_stream_ends_with_an_error_event_and_no_done(
    gw: Gateway, gemini: FakeGemini
) -> None:
    first = {"candidates": [candidate([{"text": "Par"}], None)]}
    gemini.script.append(Scripted(events=[first, gemini_error(500, "INTERNAL", "boom")]))
    events = sse_events(post(gw, {**CHAT, "stream": True}).body)
    assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == "Par"
    error = orjson.loads(events[-1])["error"]
    assert "INTERNAL: boom" in error["message"] and error["code"] == "upstream_unavailable"
    assert b"[DONE]" not in events
    gemini.script.append(Scripted(events=[first, first, first], cut_after=1))
    events = sse_events(post(gw, {**CHAT, "stream": True}).body)
    assert len(events) == 2 and b'"error"' in events[-1] and b"[DONE]" not in events


def test_an_error_before_the_first_chunk_fails_over(gw: Gateway, gemini: FakeGemini) -> None:
    gemini.script.append(Scripted(events=[gemini_error(503, "UNAVAILABLE", "busy")]))
    resp = post(gw, {**CHAT, "stream": True})
    assert resp.headers["x-truckllm-attempts"] == "2"
    assert sse_events(resp.body)[-1] == b"[DONE]"


def test_a_429_with_retry_info_cools_the_key_and_fails_over(
    gw: Gateway, gemini: FakeGemini
) -> None:
    gemini.script.append(rate_limited("37s"))
    resp = post(gw, CHAT)
    assert resp.status == 200 and resp.headers["x-truckllm-attempts"] == "2"
    assert [gemini.key_of(r) for r in gemini.received] == ["g-key-1", "g-key-2"]
    k1 = gw.states()["k1"]
    assert k1.outcomes == {OutcomeKind.RATE_LIMITED: 1}
    assert 30 < k1.cooling_until - gw.app.runtime.router.clock() <= 37  # RetryInfo, not a guess
    # k1 rests; when k2 is throttled too the client gets Gemini's 429, with a Retry-After.
    gemini.script.append(rate_limited("1.5s"))
    resp = post(gw, CHAT)
    assert resp.status == 429 and resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert [gemini.key_of(r) for r in gemini.received[2:]] == ["g-key-2"]


def test_retry_after_reaches_the_reply(gemini: FakeGemini, loop_thread: LoopThread) -> None:
    gemini.script.extend(
        [rate_limited("1.5s"), Scripted(status=429, body=b"{}", headers={"Retry-After": "9"})]
    )
    replies = loop_thread.run(send_direct(gemini.url, [CHAT, CHAT]))
    assert [(r.status, r.retry_after, r.error_code) for r in replies] == [
        (429, 1.5, "rate_limit_exceeded"),
        (429, 9.0, None),
    ]


async def send_direct(url: str, bodies: list[dict[str, Any]]) -> list[Reply]:
    key = KeyConfig(Secret("g-key-1"), "k1")
    cfg = ProviderConfig(id="gemini", base_url=url, type="gemini", keys=(key,))
    replies = []
    client = HTTPClient()
    provider = GeminiProvider(ProviderContext(cfg, client, Timeouts()))
    try:
        for body in bodies:
            call = Call("chat", body, orjson.dumps(body), MODEL, False, False, "req-1")
            reply = await provider.send(call, key)
            await reply.aclose()
            replies.append(reply)
    finally:
        await client.close()
    return replies


def test_invalid_keys_fail_over_and_never_leak(
    gemini_factory: Callable[..., FakeGemini], gateway_factory: Callable[..., Gateway]
) -> None:
    fake = gemini_factory(valid_keys={"g-key-2"})
    gw = gateway_factory(CONFIG.format(url=fake.url))
    resp = post(gw, CHAT)
    assert resp.status == 200 and resp.headers["x-truckllm-key-id"] == "k2"
    assert gw.states()["k1"].outcomes == {OutcomeKind.AUTH_ERROR: 1}
    assert gw.states()["k1"].out_of_service is not None
    none_valid = gateway_factory(CONFIG.format(url=gemini_factory(valid_keys=set()).url))
    resp = post(none_valid, CHAT)
    assert resp.status == 502 and resp.json()["error"]["code"] == "upstream_auth_failed"
    assert b"g-key" not in resp.body
    assert all("key=" not in r.path for r in fake.received)


def test_client_errors_pass_through_without_retry(gw: Gateway, gemini: FakeGemini) -> None:
    gemini.script.append(
        Scripted(status=400, body=gemini_error(400, "INVALID_ARGUMENT", "temperature too hot"))
    )
    resp = post(gw, {**CHAT, "temperature": 9})
    assert resp.status == 400 and resp.headers["x-truckllm-attempts"] == "1"
    assert resp.json()["error"] == {
        "message": "temperature too hot",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_argument",
    }
    before = len(gemini.received)
    resp = post(gw, {**CHAT, "logprobs": True})
    assert resp.status == 400 and resp.json()["error"]["param"] == "logprobs"
    assert len(gemini.received) == before  # refused before reaching the upstream


def test_the_fake_refuses_what_gemini_refuses(gw: Gateway, gemini: FakeGemini) -> None:
    """The translation must produce what the strict fake accepts: every schema keyword, role and
    field in these requests went through conversion."""
    schema = SCHEMA_CASES[0][1]
    body = {
        **CHAT,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }
    assert post(gw, body).status == 200
    raw = orjson.dumps({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})
    assert loop_post(gemini.url + f"/v1beta/models/{MODEL}:generateContent", raw) == 400


def loop_post(url: str, raw: bytes) -> int:
    return request("POST", url, raw=raw, headers={"x-goog-api-key": "g-key-1"}).status


def test_embeddings_single_and_batch_float_and_base64(gw: Gateway, gemini: FakeGemini) -> None:
    resp = post(
        gw,
        {"model": "gemini-embedding-001", "input": "one", "encoding_format": "float"},
        "/v1/embeddings",
    )
    single = resp.json()
    assert (
        resp.status == 200
        and single["object"] == "list"
        and single["model"] == "gemini-embedding-001"
    )
    assert gemini.received[-1].path == "/v1beta/models/gemini-embedding-001:embedContent"
    vec = single["data"][0]["embedding"]
    assert len(vec) == 8 and single["usage"]["prompt_tokens"] >= 1
    resp = post(
        gw,
        {
            "model": "gemini-embedding-001",
            "input": ["one", "two"],
            "encoding_format": "base64",
            "dimensions": 4,
        },
        "/v1/embeddings",
    )
    batch = resp.json()
    assert gemini.received[-1].path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert [d["index"] for d in batch["data"]] == [0, 1]
    decoded = struct.unpack("<4f", base64.b64decode(batch["data"][0]["embedding"]))
    assert list(decoded) == vec[:4]
    bad = post(gw, {"model": "gemini-embedding-001", "input": [[1, 2]]}, "/v1/embeddings")
    assert bad.status == 400 and bad.json()["error"]["param"] == "input"


# == the official SDK ===========================================================================


@pytest.fixture
def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0, timeout=10)


def test_sdk_plain_and_streamed_text_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "Hi"}]
    )
    assert reply.choices[0].message.content == "Hello from the fake Gemini model answering you"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    chunks = list(
        client.chat.completions.create(
            model="smart",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "Hello from"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_sdk_tool_calls_plain_and_streamed_round_trip_signatures(
    client: openai.OpenAI, gemini: FakeGemini
) -> None:
    gemini.require_signatures = True  # as Gemini 3 does
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    (call,) = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {
        "city": "Paris"
    }
    messages += [
        reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    final = client.chat.completions.create(model="smart", messages=messages, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert final.choices[0].message.content
    sent = gemini.received[-1].body["contents"]
    assert sent[1]["parts"][0]["thoughtSignature"] == base64.b64encode(b"sig-fake-000001").decode()
    assert sent[2]["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"temp_c": 21},
    }
    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,  # type: ignore[list-item]
    )
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert "".join((d.function.arguments or "") for d in deltas if d.function) == '{"city":"Paris"}'


def test_sdk_embeddings_default_base64_and_float(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="gemini-embedding-001", input=["one", "two"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 8
    floats = client.embeddings.create(
        model="gemini-embedding-001", input="one", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(result.data[0].embedding)
    assert result.usage.prompt_tokens > 0


def test_sdk_sees_gemini_errors_as_its_own_exceptions(
    client: openai.OpenAI, gemini: FakeGemini
) -> None:
    with pytest.raises(openai.BadRequestError) as br:
        client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "x"}], logit_bias={"1": 5}
        )
    assert br.value.param == "logit_bias"
    gemini.script.extend([rate_limited(), rate_limited()])
    with pytest.raises(openai.RateLimitError) as rl:
        client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
    assert rl.value.code == "rate_limit_exceeded"
