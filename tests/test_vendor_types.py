"""The fake upstreams and the translators against the vendors' own published types.

The fakes (``truckllm.testing.fake_anthropic``, ``fake_gemini``, ``mock``) were written from the
same reading of the APIs as the translators, so a misreading would pass both. Here the gateway
runs in front of each fake over real loopback HTTP, a representative set of OpenAI requests goes
through it, and three things are checked strictly (unknown keys are errors, see
``vendor_types.py``) against the types the vendors publish in their SDKs:

- what the gateway sent upstream: the ``anthropic`` package's ``MessageCreateParams*``
  ``TypedDict``s; google-genai's models for each part of a REST ``generateContent`` body (mapping
  below); the ``openai`` package's ``CompletionCreateParams*`` / ``EmbeddingCreateParams``;
- what the fake answered: ``anthropic.types.Message``, ``RawMessageStreamEvent`` per event and
  ``ErrorResponse``; ``GenerateContentResponse`` (whole, and each streamed chunk) and the embedding
  responses; ``ChatCompletion``, ``ChatCompletionChunk``, ``CreateEmbeddingResponse``;
- what the gateway answered its client: ``openai.types.chat.ChatCompletion`` /
  ``ChatCompletionChunk``, ``CreateEmbeddingResponse``, and ``{"error": ErrorObject}``.

The OpenAI request bodies the tests send are themselves checked against ``openai``'s request
types first, so the inputs are real OpenAI requests.

Gemini's REST body is not google-genai's ``GenerateContentParameters`` (the SDK folds everything
but ``model`` and ``contents`` into its ``GenerateContentConfig``): REST has them at the top level,
camelCase, and each is checked with the type the SDK converts it to and from:

====================== =====================================
REST ``generateContent`` google-genai type
====================== =====================================
``contents``           ``list[Content]``
``systemInstruction``  ``Content``
``tools``              ``list[Tool]``
``toolConfig``         ``ToolConfig``
``safetySettings``     ``list[SafetySetting]``
``generationConfig``   ``GenerationConfig``
``cachedContent``      ``str`` (a ``cachedContents/...`` name)
====================== =====================================

and ``embedContent`` takes ``content`` (``Content``) with ``taskType``, ``title`` and
``outputDimensionality`` (``EmbedContentConfig``'s fields); ``batchEmbedContents`` takes
``requests``, each of those plus its ``model`` (``models/{name}``). The answers: ``embedContent``
is ``SingleEmbedContentResponse`` (``{"embedding": ContentEmbedding}``), ``batchEmbedContents``
``EmbedContentResponse`` (``{"embeddings": [...]}``). Google publishes no SDK type for its error
body (``google.rpc.Status``); it is checked here against the documented shape and against what
``google.genai.errors.APIError`` reads from it.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import anthropic.types as at
import google.genai.errors as genai_errors
import openai.types as ot
import openai.types.chat as oc
import orjson
import pytest
import test_anthropic as ta
import test_gemini as tg
import typing_extensions
from anthropic.types import message_create_params as anthropic_params
from google.genai import types as gt
from helpers import Gateway, Response, request
from openai.types.chat import completion_create_params as openai_params
from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict
from vendor_types import model_problems, sse, typed_dict_problems

from truckllm.testing.behaviour import Conditions, KeyBehaviour
from truckllm.testing.fake_anthropic import FakeAnthropic, message_start, scripted_error, text_block
from truckllm.testing.fake_gemini import FakeGemini, gemini_error, rate_limited
from truckllm.testing.mock import MockUpstream, Scripted
from truckllm.testing.wire import Received

# The gateways and fakes of the provider tests, reused as they are.
fake_factory = ta.fake_factory
fake = ta.fake
anthropic_gw = ta.gw
gemini_factory = tg.gemini_factory
gemini = tg.gemini
gemini_gw = tg.gw

# The one field the gateway adds to OpenAI's types, on purpose: a Gemini function call's thought
# signature rides in ``extra_content.google.thought_signature`` on the tool call, where Google's
# own OpenAI-compatible endpoint puts it, so that clients replaying the turn send it back.
_EXTENSION = re.compile(r"\.tool_calls\[\d+\]\.extra_content: not a field of \w+$")


class _OpenAIError(BaseModel):
    """OpenAI's error envelope: ``{"error": ErrorObject}``."""

    model_config = ConfigDict(extra="forbid")
    error: ot.shared.ErrorObject


# -- checks ------------------------------------------------------------------------------------


def openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """``body``, after checking that it is a real OpenAI chat request."""
    params = (
        openai_params.CompletionCreateParamsStreaming
        if body.get("stream")
        else openai_params.CompletionCreateParamsNonStreaming
    )
    assert _allowed(typed_dict_problems(body, params, "client request")) == []
    return body


def gateway_answer(resp: Response, stream: bool) -> list[str]:
    """Where the gateway's answer to its client departs from OpenAI's types."""
    if resp.status != 200:
        return model_problems(resp.body, _OpenAIError, "gateway error")
    if not stream:
        return _allowed(model_problems(resp.body, oc.ChatCompletion, "gateway"))
    events = sse(resp.body)
    problems = [] if events and events[-1][1] == b"[DONE]" else ["gateway: no [DONE] at the end"]
    for i, (_, data) in enumerate(events):
        if data == b"[DONE]":
            if i != len(events) - 1:
                problems.append(f"gateway chunk {i}: [DONE] before the end")
            continue
        kind = _OpenAIError if data.startswith(b'{"error"') else oc.ChatCompletionChunk
        problems += _allowed(model_problems(data, kind, f"gateway chunk {i}"))
    return problems


def embeddings_problems(raw: bytes, where: str) -> list[str]:
    """Where an embeddings answer departs from ``CreateEmbeddingResponse``. ``Embedding`` types
    the vector as floats: with ``encoding_format: "base64"`` the wire carries base64 of
    little-endian float32 instead, which the SDK decodes before it builds the model; so does
    this check (a vector that is not whole float32s is a problem)."""
    body = orjson.loads(raw)
    problems = []
    for i, item in enumerate(body.get("data") or ()):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, str):
            packed = base64.b64decode(vector, validate=True)
            if len(packed) % 4:
                problems.append(f"{where}.data.{i}.embedding: not whole float32s")
            item["embedding"] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    return problems + model_problems(orjson.dumps(body), ot.CreateEmbeddingResponse, where)


def _allowed(problems: list[str]) -> list[str]:
    return [p for p in problems if not _EXTENSION.search(p)]


def _content_type(rec: Received) -> str:
    for name, value in rec.answer_headers.items():
        if name.lower() == "content-type":
            return value
    return ""


# -- Anthropic ---------------------------------------------------------------------------------


def anthropic_exchange(rec: Received) -> list[str]:
    """Where one request to the fake Anthropic, and its answer, depart from the ``anthropic``
    package's types."""
    body = rec.body
    params = (
        anthropic_params.MessageCreateParamsStreaming
        if isinstance(body, dict) and body.get("stream")
        else anthropic_params.MessageCreateParamsNonStreaming
    )
    problems = typed_dict_problems(body, params, "sent")
    if "anthropic-version" not in {k.lower() for k in rec.headers}:
        problems.append("sent: no anthropic-version header")
    if rec.status != 200:
        return problems + model_problems(rec.answer, at.ErrorResponse, "answered error")
    if not _content_type(rec).startswith("text/event-stream"):
        return problems + model_problems(rec.answer, at.Message, "answered")
    for i, (name, data) in enumerate(sse(rec.answer)):
        where = f"answered event {i}"
        kind = orjson.loads(data).get("type")
        if name != kind:  # the SDK dispatches on the SSE event name, not on the data
            problems.append(f"{where}: event name {name!r} but data type {kind!r}")
        if kind == "ping":  # the SDK skips pings; they carry nothing but their type
            problems += [] if orjson.loads(data) == {"type": "ping"} else [f"{where}: {data!r}"]
        elif kind == "error":  # the SDK raises an APIStatusError with this body
            problems += model_problems(data, at.ErrorResponse, where)
        else:
            problems += model_problems(data, at.RawMessageStreamEvent, where)
    return problems


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


WEATHER = ta.WEATHER
CITY_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "city",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    },
}
IMAGES = {
    "role": "user",
    "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
    ],
}
TOOL_TURNS: list[dict[str, Any]] = [
    _user("Weather in Paris and Rome?"),
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "18 C"}]},
]

# (name, OpenAI body without model): each goes through the gateway as it is.
CHAT_CASES: list[tuple[str, dict[str, Any]]] = [
    ("plain text", {"messages": [_user("Hi")]}),
    (
        "system and developer prompts",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                _user("Hi"),
            ]
        },
    ),
    (
        "multi-turn",
        {
            "messages": [
                _user("Hi"),
                {"role": "assistant", "content": "Hello! How can I help?"},
                _user("Tell me more."),
            ]
        },
    ),
    ("tools, tool_choice auto", {"messages": [_user("Weather?")], "tools": [WEATHER]}),
    (
        "tools, tool_choice required, no parallel calls",
        {
            "messages": [_user("Weather?")],
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    ),
    (
        "tools, a named tool_choice",
        {
            "messages": [_user("Weather?")],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    ),
    (
        "tools, tool_choice none",
        {"messages": [_user("Weather?")], "tools": [WEATHER], "tool_choice": "none"},
    ),
    ("tool results", {"messages": TOOL_TURNS, "tools": [WEATHER]}),
    ("images and a PDF", {"messages": [IMAGES]}),
    (
        "JSON mode",
        {"messages": [_user("A city as JSON")], "response_format": {"type": "json_object"}},
    ),
    ("JSON schema", {"messages": [_user("A city?")], "response_format": CITY_SCHEMA}),
    (
        "stop sequences and sampling",
        {
            "messages": [_user("Hi")],
            "stop": ["the"],
            "temperature": 0.5,
            "top_p": 0.9,
            "max_completion_tokens": 50,
            "user": "user-1",
        },
    ),
    ("a length stop", {"messages": [_user("Hi")], "max_tokens": 3}),
]
STREAM_CASES: list[tuple[str, dict[str, Any]]] = [
    ("streamed text with usage", {"messages": [_user("Hi")]}),
    ("streamed tool call with usage", {"messages": [_user("Weather?")], "tools": [WEATHER]}),
    ("streamed JSON schema", {"messages": [_user("A city?")], "response_format": CITY_SCHEMA}),
    ("streamed stop sequence", {"messages": [_user("Hi")], "stop": "TruckLLM"}),
]


def _stream(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


def _through_anthropic(
    gw: Gateway, fake: FakeAnthropic, body: dict[str, Any]
) -> tuple[Response, list[str]]:
    before = len(fake.received)
    resp = gw.post("/v1/chat/completions", openai_request({"model": "smart", **body}))
    problems = gateway_answer(resp, bool(body.get("stream")))
    for rec in fake.received[before:]:
        problems += anthropic_exchange(rec)
    return resp, problems


@pytest.mark.parametrize(
    "body",
    [b for _, b in CHAT_CASES] + [_stream(b) for _, b in STREAM_CASES],
    ids=[n for n, _ in CHAT_CASES + STREAM_CASES],
)
def test_anthropic_requests_and_answers_fit_the_anthropic_and_openai_types(
    anthropic_gw: Gateway, fake: FakeAnthropic, body: dict[str, Any]
) -> None:
    fake.cache_read_tokens, fake.cache_creation_tokens = 7, 2  # every usage field
    resp, problems = _through_anthropic(anthropic_gw, fake, body)
    assert resp.status == 200, resp.body
    assert fake.received, "nothing reached the fake"
    assert problems == []


ANTHROPIC_ERRORS = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]


@pytest.mark.parametrize("error_type", ANTHROPIC_ERRORS)
def test_anthropic_errors_fit_the_anthropic_and_openai_types(
    anthropic_gw: Gateway, fake: FakeAnthropic, error_type: str
) -> None:
    fake.script.extend([scripted_error(error_type, "It went wrong.")] * 2)
    resp, problems = _through_anthropic(anthropic_gw, fake, {"messages": [_user("Hi")]})
    assert fake.received[0].status == scripted_error(error_type).status and resp.status >= 400
    assert problems == []


def test_the_fake_anthropics_own_refusals_fit_the_types(
    fake_factory: Callable[..., FakeAnthropic], gateway_factory: Callable[..., Gateway]
) -> None:
    """Errors the fake makes itself: a rejected key, and a body it refuses (as the API refuses
    an empty text block)."""
    fake = fake_factory(valid_keys={"sk-ant-secret-2"})
    gw = gateway_factory(ta.CONFIG.format(url=fake.url, model=ta.MODEL))
    resp, problems = _through_anthropic(gw, fake, {"messages": [_user("Hi")]})
    assert resp.status == 200 and [r.status for r in fake.received] == [401, 200]
    empty = {"role": "user", "content": [{"type": "text", "text": ""}]}
    resp, more = _through_anthropic(gw, fake, {"messages": [empty]})
    assert resp.status == 400 and fake.received[-1].status == 400
    assert problems + more == []


def test_anthropic_stream_errors_fit_the_types(anthropic_gw: Gateway, fake: FakeAnthropic) -> None:
    events: list[dict[str, Any] | bytes | str] = [
        message_start(),
        *text_block(0, ["Par", "is"])[:3],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    # Paced, so that the content is forwarded before the error arrives (else the gateway fails
    # over, and the client sees no error).
    fake.script.append(Scripted(events=events, event_delay=0.05))
    resp, problems = _through_anthropic(anthropic_gw, fake, _stream({"messages": [_user("Hi")]}))
    assert b'"error"' in resp.body
    assert [p for p in problems if p != "gateway: no [DONE] at the end"] == []


# -- Gemini ------------------------------------------------------------------------------------

_GEMINI_PARTS: dict[str, Any] = {
    "contents": list[gt.Content],
    "systemInstruction": gt.Content,
    "tools": list[gt.Tool],
    "toolConfig": gt.ToolConfig,
    "safetySettings": list[gt.SafetySetting],
    "generationConfig": gt.GenerationConfig,
}
_EMBED_CONFIG = {"taskType", "title", "outputDimensionality"}


class _RpcStatusFields(TypedDict):
    code: int
    message: str
    status: str


class _RpcStatus(_RpcStatusFields, total=False):
    """``google.rpc.Status``, Google's error body: https://cloud.google.com/apis/design/errors"""

    details: list[dict[str, Any]]


class _GoogleError(TypedDict):
    error: _RpcStatus


def _gemini_request(path: str, body: Any) -> list[str]:
    method = path.partition(":")[2].partition("?")[0]
    if not isinstance(body, dict):
        return [f"sent: not a JSON object: {body!r}"]
    if method in ("generateContent", "streamGenerateContent"):
        problems = []
        for key, value in body.items():
            where = f"sent.{key}"
            if key == "cachedContent":
                problems += [] if isinstance(value, str) else [f"{where}: not a string"]
            elif key in _GEMINI_PARTS:
                problems += model_problems(
                    orjson.dumps(value), _GEMINI_PARTS[key], where, round_trip=True
                )
            else:
                problems.append(f"{where}: not a field of the generateContent body")
        return problems + ([] if "contents" in body else ["sent: no contents"])
    if method == "embedContent":
        return _embed_request(body, "sent")
    if method == "batchEmbedContents":
        if set(body) != {"requests"} or not isinstance(body["requests"], list):
            return [f"sent: expected only 'requests', got {sorted(body)}"]
        problems = []
        for i, r in enumerate(body["requests"]):
            where = f"sent.requests[{i}]"
            if not (isinstance(r, dict) and re.fullmatch(r"models/[\w.-]+", str(r.get("model")))):
                problems.append(f"{where}.model: not a models/... name")
            problems += _embed_request({k: v for k, v in r.items() if k != "model"}, where)
        return problems
    return [f"sent: unknown method {method!r}"]


def _embed_request(body: dict[str, Any], where: str) -> list[str]:
    content = orjson.dumps(body.get("content"))
    problems = model_problems(content, gt.Content, f"{where}.content", round_trip=True)
    config = {k: v for k, v in body.items() if k != "content"}
    problems += [f"{where}.{k}: not a field" for k in config if k not in _EMBED_CONFIG]
    return problems + model_problems(
        orjson.dumps(config), gt.EmbedContentConfig, where, round_trip=True
    )


def gemini_exchange(rec: Received) -> list[str]:
    """Where one request to the fake Gemini, and its answer, depart from google-genai's types."""
    problems = _gemini_request(rec.path, rec.body)
    method = rec.path.partition(":")[2].partition("?")[0]
    if rec.status != 200:
        return problems + _google_error(rec.answer, rec.status, "answered error")
    if _content_type(rec).startswith("text/event-stream"):
        for i, (_, data) in enumerate(sse(rec.answer)):
            problems += model_problems(
                data, gt.GenerateContentResponse, f"answered chunk {i}", round_trip=True
            )
        return problems
    answer_type: Any = {
        "generateContent": gt.GenerateContentResponse,
        "streamGenerateContent": list[gt.GenerateContentResponse],  # without alt=sse: an array
        "embedContent": gt.SingleEmbedContentResponse,
        "batchEmbedContents": gt.EmbedContentResponse,
    }[method]
    return problems + model_problems(rec.answer, answer_type, "answered", round_trip=True)


def _google_error(raw: bytes, status: int | None, where: str) -> list[str]:
    body = orjson.loads(raw)
    problems = typed_dict_problems(body, _GoogleError, where)
    parsed = genai_errors.APIError(status or 0, body)
    if not (parsed.status and parsed.message and parsed.code == status):
        problems.append(
            f"{where}: google-genai reads {parsed.code} {parsed.status} {parsed.message}"
        )
    return problems


def _through_gemini(
    gw: Gateway, fake: FakeGemini, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[Response, list[str]]:
    before = len(fake.received)
    if path.endswith("completions"):
        body = openai_request({"model": "smart", **body})
        resp = tg.post(gw, body)
        problems = gateway_answer(resp, bool(body.get("stream")))
    else:
        assert typed_dict_problems(body, ot.EmbeddingCreateParams, "client request") == []
        resp = tg.post(gw, body, path)
        if resp.status == 200:
            problems = embeddings_problems(resp.body, "gateway")
        else:
            problems = model_problems(resp.body, _OpenAIError, "gateway error")
    for rec in fake.received[before:]:
        problems += gemini_exchange(rec)
    return resp, problems


GEMINI_CHAT_CASES: list[tuple[str, dict[str, Any]]] = [
    *((name, body) for name, body in CHAT_CASES if name != "tool results"),
    (
        "audio and a named PDF",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": "UklGRg==", "format": "wav"},
                        },
                        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
                    ],
                }
            ]
        },
    ),
    (
        "candidates, seed, penalties and reasoning",
        {
            "messages": [_user("Hi")],
            "n": 2,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.2,
            "reasoning_effort": "low",
        },
    ),
    (
        "a JSON schema with $defs, $ref, anyOf and formats",
        {
            "messages": [_user("A point?")],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "point", "schema": tg.SCHEMA_CASES[0][1]},
            },
        },
    ),
    (
        "tool parameters with $defs, $ref, anyOf and formats",
        {
            "messages": [_user("Plot it")],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "plot", "parameters": tg.SCHEMA_CASES[0][1]},
                }
            ],
        },
    ),
    (
        "allowed tools",
        {
            "messages": [_user("Weather?")],
            "tools": [WEATHER],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        },
    ),
]


@pytest.mark.parametrize(
    "body",
    [b for _, b in GEMINI_CHAT_CASES] + [_stream(b) for _, b in STREAM_CASES],
    ids=[n for n, _ in GEMINI_CHAT_CASES + STREAM_CASES],
)
def test_gemini_requests_and_answers_fit_the_genai_and_openai_types(
    gemini_gw: Gateway, gemini: FakeGemini, body: dict[str, Any]
) -> None:
    gemini.thoughts_tokens, gemini.cached_tokens = 5, 3  # every usageMetadata field
    resp, problems = _through_gemini(gemini_gw, gemini, body)
    assert resp.status == 200, resp.body
    assert gemini.received, "nothing reached the fake"
    assert problems == []


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
def test_gemini_3_thinking_levels_fit_the_genai_types(
    gemini: FakeGemini, gateway_factory: Callable[..., Gateway], effort: str
) -> None:
    """Gemini 3 takes a thinking level where 2.5 takes a budget."""
    gw = gateway_factory(tg.CONFIG.format(url=gemini.url).replace(tg.MODEL, "gemini-3-flash"))
    body = {"messages": [_user("Hi")], "reasoning_effort": effort}
    resp, problems = _through_gemini(gw, gemini, body)
    assert resp.status == 200, resp.body
    assert "thinkingLevel" in gemini.received[-1].body["generationConfig"]["thinkingConfig"]
    assert problems == []


@pytest.mark.parametrize(
    "answer",
    [
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}},
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "Part"}]},
                    "finishReason": "SAFETY",
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}
                    ],
                }
            ],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1},
            "modelVersion": tg.MODEL,
            "responseId": "r1",
        },
    ],
    ids=["blocked prompt", "safety stop"],
)
def test_gemini_filtered_answers_fit_the_types(
    gemini_gw: Gateway, gemini: FakeGemini, answer: dict[str, Any]
) -> None:
    """Answers the fake does not make by itself, written here as the genai types say, and the
    gateway's ``content_filter`` translation of them."""
    gemini.script.extend([Scripted(body=answer), Scripted(events=[answer])])
    resp, problems = _through_gemini(gemini_gw, gemini, {"messages": [_user("Hi")]})
    assert resp.json()["choices"][0]["finish_reason"] == "content_filter"
    streamed, more = _through_gemini(gemini_gw, gemini, _stream({"messages": [_user("Hi")]}))
    assert streamed.status == 200 and b"content_filter" in streamed.body
    assert problems + more == []


def test_a_gemini_tool_round_trip_fits_the_types(gemini_gw: Gateway, gemini: FakeGemini) -> None:
    """Tool results need the call ids and thought signatures of the gateway's own answer."""
    gemini.require_signatures = True
    messages: list[Any] = [_user("Weather in Paris?")]
    resp, problems = _through_gemini(gemini_gw, gemini, {"messages": messages, "tools": [WEATHER]})
    message = resp.json()["choices"][0]["message"]
    (call,) = message["tool_calls"]
    messages += [
        {k: v for k, v in message.items() if v is not None},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'},
    ]
    resp, more = _through_gemini(gemini_gw, gemini, {"messages": messages, "tools": [WEATHER]})
    assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"]
    assert problems + more == []


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gemini-embedding-001", "input": "one", "encoding_format": "float"},
        {"model": "gemini-embedding-001", "input": ["one", "two"], "dimensions": 4},
        {"model": "gemini-embedding-001", "input": ["one"], "encoding_format": "base64"},
    ],
    ids=["single", "batch", "base64"],
)
def test_gemini_embeddings_fit_the_genai_and_openai_types(
    gemini_gw: Gateway, gemini: FakeGemini, body: dict[str, Any]
) -> None:
    resp, problems = _through_gemini(gemini_gw, gemini, body, "/v1/embeddings")
    assert resp.status == 200, resp.body
    assert problems == []


@pytest.mark.parametrize(
    "answer",
    [
        rate_limited("2s"),
        Scripted(status=400, body=gemini_error(400, "INVALID_ARGUMENT", "Bad request.")),
        Scripted(status=500, body=gemini_error(500, "INTERNAL", "Internal error.")),
    ],
    ids=["429", "400", "500"],
)
def test_gemini_errors_fit_the_types(
    gemini_gw: Gateway, gemini: FakeGemini, answer: Scripted
) -> None:
    gemini.script.extend([answer, answer])
    resp, problems = _through_gemini(gemini_gw, gemini, {"messages": [_user("Hi")]})
    assert resp.status >= 400
    assert problems == []


def test_the_fake_geminis_own_refusals_fit_the_types(
    gemini_factory: Callable[..., FakeGemini], gateway_factory: Callable[..., Gateway]
) -> None:
    fake = gemini_factory(valid_keys={"g-key-2"})
    gw = gateway_factory(tg.CONFIG.format(url=fake.url))
    resp, problems = _through_gemini(gw, fake, {"messages": [_user("Hi")]})
    assert resp.status == 200 and [r.status for r in fake.received] == [400, 200]
    assert problems == []


# -- OpenAI ------------------------------------------------------------------------------------

OPENAI_CONFIG = """
providers:
  - id: oai
    base_url: {url}
    models: [text-embedding-3-small]
    keys: [{{id: o1, secret: sk-o1}}]
model_aliases:
  smart: oai:gpt-4o
"""


@pytest.fixture
def openai_gw(upstream: MockUpstream, gateway_factory: Callable[..., Gateway]) -> Iterator[Gateway]:
    yield gateway_factory(OPENAI_CONFIG.format(url=upstream.url))


def openai_exchange(rec: Received) -> list[str]:
    """Where one request to the OpenAI mock, and its answer, depart from the ``openai`` types."""
    body = rec.body
    embeddings = rec.path.endswith("/embeddings")
    params: Any = (
        ot.EmbeddingCreateParams
        if embeddings
        else openai_params.CompletionCreateParamsStreaming
        if isinstance(body, dict) and body.get("stream")
        else openai_params.CompletionCreateParamsNonStreaming
    )
    problems = typed_dict_problems(body, params, "sent")
    if rec.status != 200:
        return problems + model_problems(rec.answer, _OpenAIError, "answered error")
    if embeddings:
        return problems + embeddings_problems(rec.answer, "answered")
    if not _content_type(rec).startswith("text/event-stream"):
        return problems + model_problems(rec.answer, oc.ChatCompletion, "answered")
    for i, (_, data) in enumerate(sse(rec.answer)):
        if data != b"[DONE]":
            problems += model_problems(data, oc.ChatCompletionChunk, f"answered chunk {i}")
    return problems


@pytest.mark.parametrize(
    ("path", "body"),
    [
        *(("/v1/chat/completions", b) for _, b in CHAT_CASES),
        *(("/v1/chat/completions", _stream(b)) for _, b in STREAM_CASES),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}),
        (
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": "a", "encoding_format": "base64"},
        ),
    ],
    ids=[n for n, _ in CHAT_CASES + STREAM_CASES] + ["embeddings", "base64 embeddings"],
)
def test_openai_requests_and_answers_fit_the_openai_types(
    openai_gw: Gateway, upstream: MockUpstream, path: str, body: dict[str, Any]
) -> None:
    if path.endswith("completions"):
        body = openai_request({"model": "smart", **body})
    resp = openai_gw.post(path, body)
    assert resp.status == 200, resp.body
    if path.endswith("embeddings"):
        problems = embeddings_problems(resp.body, "gateway")
    else:
        problems = gateway_answer(resp, bool(body.get("stream")))
    for rec in upstream.received:
        problems += openai_exchange(rec)
    assert upstream.received and problems == []


# -- the fakes' own throttles and failures ---------------------------------------------------


def _conditions(fault: str) -> Conditions:
    """Every key limited to one request a minute ("429"), or every request failing with
    ``fault``: the answers each fake's dialect makes itself."""
    if fault == "429":
        return Conditions(KeyBehaviour(rpm=1, window_s=60))
    return Conditions(KeyBehaviour(faults={fault: 1.0}))


@pytest.mark.parametrize("vendor", ["anthropic", "gemini", "openai"])
@pytest.mark.parametrize("fault", ["429", "500", "503", "529"])
def test_the_fakes_throttles_and_failures_fit_the_types(
    serve_fake: Callable[..., Any],
    gateway_factory: Callable[..., Gateway],
    vendor: str,
    fault: str,
) -> None:
    conditions = _conditions(fault)
    body = {"messages": [_user("Hi")]}
    problems: list[str] = []
    cls, config, headers = _FAKES[vendor]
    fake = serve_fake(cls, conditions=conditions)
    gw = gateway_factory(config(fake.url))
    if fault == "429":  # use up each key's request outside the gateway, which would otherwise
        # see the quota headers and not send what the fake would refuse
        for key in ("1", "2"):
            request("POST", fake.url + _PATHS[vendor], {}, headers(key))
        fake.received.clear()
    for _ in range(2):
        if vendor == "anthropic":
            problems += _through_anthropic(gw, fake, body)[1]
        elif vendor == "gemini":
            problems += _through_gemini(gw, fake, body)[1]
        else:
            resp = gw.post("/v1/chat/completions", openai_request({"model": "smart", **body}))
            problems += gateway_answer(resp, False)
    if vendor == "openai":
        problems += [p for rec in fake.received for p in openai_exchange(rec)]
    assert fake.received and all(r.status != 200 for r in fake.received)
    assert problems == []


_PATHS = {
    "anthropic": "/v1/messages",
    "gemini": f"/v1beta/models/{tg.MODEL}:generateContent",
    "openai": "/chat/completions",  # the mock's url ends in /v1
}
_FAKES: dict[str, tuple[type[Any], Callable[[str], str], Callable[[str], dict[str, str]]]] = {
    "anthropic": (
        FakeAnthropic,
        lambda url: ta.CONFIG.format(url=url, model=ta.MODEL),
        lambda n: {"x-api-key": f"sk-ant-secret-{n}"},
    ),
    "gemini": (
        FakeGemini,
        lambda url: tg.CONFIG.format(url=url),
        lambda n: {"x-goog-api-key": f"g-key-{n}"},
    ),
    "openai": (
        MockUpstream,
        lambda url: OPENAI_CONFIG.format(url=url),
        lambda n: {"Authorization": "Bearer sk-o1"},
    ),
}


# -- the checks themselves, and the fakes' own lists of what the vendors accept ----------------


def test_the_checks_catch_what_a_misreading_produces() -> None:
    """Each kind of slip a translator or fake could make is reported, not waved through by the
    SDKs' lenient types."""
    sent = {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.5,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache": 1}]}],
    }
    assert typed_dict_problems(sent, anthropic_params.MessageCreateParamsNonStreaming) == [
        "$.temperature: not a field of MessageCreateParamsNonStreaming",
        "$.messages[0].content[0].cache: not a field of TextBlockParam",
    ]
    # Required[...] under ``from __future__ import annotations`` is still required.
    assert typed_dict_problems(
        {"model": "m", "messages": [], "stream": True},
        anthropic_params.MessageCreateParamsStreaming,
    ) == ["$: MessageCreateParamsStreaming requires 'max_tokens'"]
    # Fields the SDK models would keep as extras.
    delta = b'{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    assert model_problems(
        delta + b'"usage":{"output_tokens":3,"total":4}}', at.RawMessageStreamEvent
    ) == ["$.usage.total: not a field of MessageDeltaUsage"]
    chunk = b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    chunk += b'[{"index":0,"delta":{"content":"a","reasoning":"b"},"finish_reason":null}]}'
    assert model_problems(chunk, oc.ChatCompletionChunk) == [
        "$.choices[0].delta.reasoning: not a field of ChoiceDelta"
    ]
    # What google-genai's validation quietly normalises: enum case, snake_case names.
    assert model_problems(
        b'{"thinkingLevel":"low","include_thoughts":true}', gt.ThinkingConfig, round_trip=True
    ) == [
        "$.includeThoughts: sent '<absent>', the type writes True",
        "$.include_thoughts: sent True, the type writes '<absent>'",
        "$.thinkingLevel: sent 'low', the type writes 'LOW'",
    ]


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_the_fakes_accept_only_what_the_vendor_types_define() -> None:
    """The fakes refuse what they do not know, from lists of their own; nothing on those lists
    may be missing from the vendor's types."""
    from truckllm.testing import fake_anthropic, fake_gemini

    params = anthropic_params.MessageCreateParamsStreaming
    assert fake_anthropic.REQUEST_FIELDS.issubset(typing_keys(params))
    sdk_errors = {
        typing_extensions.get_args(member.model_fields["type"].annotation)[0]
        for member in typing_extensions.get_args(at.ErrorResponse.model_fields["error"].annotation)
    }
    assert set(fake_anthropic._ERROR_STATUS) == sdk_errors
    assert fake_gemini._GENERATION.issubset(_aliases(gt.GenerationConfig))
    assert fake_gemini._PART.issubset(_aliases(gt.Part))
    assert fake_gemini._SCHEMA.issubset(_aliases(gt.Schema))
    assert fake_gemini._TYPES.issubset(t.value for t in gt.Type)
    assert set(_GEMINI_PARTS).union({"cachedContent"}) == fake_gemini._TOP


def typing_keys(tp: Any) -> list[str]:
    return list(typing_extensions.get_type_hints(tp))
