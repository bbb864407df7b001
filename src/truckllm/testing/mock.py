"""A mock OpenAI-compatible upstream that speaks the real wire format over real HTTP.

By default it answers like a fast, healthy OpenAI: chat completions (JSON and SSE, with usage when
asked), tool calls when tools are offered, the Responses API (:mod:`truckllm.testing.mock_responses`),
embeddings (float or base64), the model list, and legacy completions, moderations, images and
audio (:mod:`truckllm.testing.mock_media`).
Tests script it: push :class:`Scripted` answers (status, headers, body, SSE events with timing,
disconnects) and read back every request it received. Per key (or for every key) it simulates
latency, time to first token, token pace, reply length, usage, rate limits with real 429s and
OpenAI's ``x-ratelimit-*``/``retry-after(-ms)`` headers, and injected faults: see
:class:`~truckllm.testing.behaviour.KeyBehaviour`. Safe to script from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from truckllm.testing.behaviour import (
    PASS,
    Conditions,
    Decision,
    KeyBehaviour,
    Quota,
    Throttle,
    reported_usage,
)
from truckllm.testing.mock_media import MediaAPI, parse_form
from truckllm.testing.mock_responses import ResponsesAPI
from truckllm.testing.prompt_cache import PromptCache
from truckllm.testing.wire import (
    Event,
    FakeServer,
    Payload,
    Received,
    Scripted,
    Stamped,
    answer,
    fault_point,
    gate,
    play,
)
from truckllm.testing.wire import stream as send_stream

__all__ = ["KeyBehaviour", "MockUpstream", "OpenAIDialect", "Received", "Scripted"]


class OpenAIDialect:
    """How OpenAI says it: ``rate_limit_exceeded`` 429s with ``x-ratelimit-*``, ``retry-after``
    and ``retry-after-ms``; ``server_error`` bodies for 5xx."""

    def throttled(self, t: Throttle) -> web.Response:
        unit = "requests per min (RPM)" if t.kind == "requests" else "tokens per min (TPM)"
        body = {
            "error": {
                "message": f"Rate limit reached for {unit}: Limit {t.limit}, Used {t.used}, "
                f"Requested {t.requested}. Please try again in {t.retry_after:.3f}s.",
                "type": t.kind,
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        headers = {
            **self.quota_headers(t.quota),
            "retry-after": str(math.ceil(t.retry_after)),
            "retry-after-ms": str(math.ceil(t.retry_after * 1000)),
        }
        return web.Response(
            status=429, body=orjson.dumps(body), content_type="application/json", headers=headers
        )

    def failure(self, status: int) -> web.Response:
        if status == 500:
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if status == 503:
            return _error(
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            )
        return _error(status, "The server is overloaded.", "server_error", "overloaded")

    def quota_headers(self, q: Quota) -> dict[str, str]:
        out = {}
        if q.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(q.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(q.remaining_requests)
            out["x-ratelimit-reset-requests"] = f"{q.reset_requests:.3f}s"
        if q.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(q.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(q.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = f"{q.reset_tokens:.3f}s"
        return out


OPENAI = OpenAIDialect()


class MockUpstream(FakeServer):
    """The OpenAI mock. ``url`` (after :meth:`start`) is a provider ``base_url`` (ending in
    ``/v1``). ``latency`` and ``keys`` are the old spelling of ``conditions``: the default
    latency and per-key behaviours; pass ``conditions`` to share them with other fakes."""

    url_suffix = "/v1"
    backlog = 1024

    def __init__(
        self,
        *,
        valid_keys: set[str] | None = None,
        latency: float = 0.0,
        reply_words: int = 8,
        event_delay: float = 0.0,
        keys: dict[str, KeyBehaviour] | None = None,
        seed: int = 0,
        conditions: Conditions | None = None,
        stamp: bool = False,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.valid_keys = valid_keys
        self.prompt_cache = prompt_cache  # cached_tokens when a prompt prefix repeats on a key
        self.stamp = stamp  # stream chunks carry "mock_sent": time.monotonic() when sent
        self.reply_words = reply_words
        self.event_delay = event_delay  # added between stream events, whatever the key
        self.responses = ResponsesAPI(self)  # POST/GET/DELETE /v1/responses
        self.media = MediaAPI(self)  # completions, moderations, images, audio
        super().__init__(
            conditions or Conditions(KeyBehaviour(latency=latency or None), keys, seed=seed)
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/v1/models", self._models),
            *self.responses.routes(),
            *self.media.routes(),
        ]

    @property
    def keys(self) -> dict[str, KeyBehaviour]:
        return self.conditions.keys

    @property
    def arrivals(self) -> list[tuple[str, float]]:
        """(key, monotonic time) of every request, throttled ones included."""
        return self.conditions.arrivals

    @property
    def throttled(self) -> list[tuple[str, float, float]]:
        """(key, monotonic time, retry-after seconds) of every 429 the limits gave."""
        return self.conditions.throttled

    # -- handlers -----------------------------------------------------------------------------

    async def _begin(
        self, request: web.Request, form: bool = False
    ) -> tuple[Any, Decision, web.StreamResponse | None]:
        """The request's body (a ``multipart/form-data`` one parsed when ``form``), the
        behaviour's decision, and the answer when it is refused or scripted."""
        body, raw = await self.take(request, request.path)
        if form:
            body = parse_form(request.headers.get("Content-Type", ""), raw)
        if self.script:
            return body, PASS, await play(request, self.script.popleft(), _sse)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        d, refusal = await gate(request, self.conditions, OPENAI, key, len(raw) // 4)
        if refusal is not None:
            return body, d, refusal
        if self.valid_keys is not None and key not in self.valid_keys:
            return (
                body,
                d,
                _error(
                    401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                ),
            )
        if not isinstance(body, dict):
            return (
                body,
                d,
                _error(
                    400,
                    "We could not parse the JSON body of your request.",
                    "invalid_request_error",
                    None,
                ),
            )
        return body, d, None

    def quota_headers_for(self, request: web.Request) -> dict[str, str]:
        """The rate-limit headers the request's key would get now (empty without limits)."""
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        quota = self.conditions.quota(key)
        return OPENAI.quota_headers(quota) if quota is not None else {}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._chat_inner(request)
        except asyncio.CancelledError:
            self.cancelled += 1  # the gateway went away mid-answer
            raise
        except ConnectionError:
            self.cancelled += 1
            return web.Response(status=499)

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self._begin(request)
        if resp is not None:
            return resp
        n = d.reply_tokens if d.reply_tokens is not None else self.reply_words
        words = _reply_words(body, n)
        prompt_tokens = max(1, len(orjson.dumps(body.get("messages", []))) // 4)
        cached = 0
        if self.prompt_cache is not None:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            cached = self.prompt_cache.cached_tokens(key, body.get("messages") or ())
        usage = _usage(
            *reported_usage(d.usage, prompt_tokens, len(words), min(cached, prompt_tokens))
        )
        base = {
            "id": f"chatcmpl-mock{next(self._ids):08d}",
            "created": int(time.time()),
            "model": str(body.get("model", "mock-model")),
            "system_fingerprint": "fp_mock",
        }
        tool = _tool_to_call(body)
        headers = OPENAI.quota_headers(d.quota) if d.quota is not None else {}
        if body.get("stream"):
            return await self._chat_stream(request, body, d, words, usage, base, tool, headers)
        if tool is not None:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": f"call_mock{next(self._ids):06d}",
                        "type": "function",
                        "function": {"name": tool, "arguments": "{}"},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            finish = "stop"
        out = {
            "id": base["id"],
            "object": "chat.completion",
            "created": base["created"],
            "model": base["model"],
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
            "system_fingerprint": "fp_mock",
        }
        return await answer(
            request,
            orjson.dumps(out),
            {"Content-Type": "application/json", **headers},
            d.fault,
            d.generation_time(len(words)),
        )

    async def _chat_stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        d: Decision,
        words: list[str],
        usage: dict[str, Any],
        ids: dict[str, Any],
        tool: str | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": ids["id"],
            "object": "chat.completion.chunk",
            "created": ids["created"],
            "model": ids["model"],
            "system_fingerprint": "fp_mock",
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        events: list[Event | Stamped] = [
            chunk({"role": "assistant", "content": "", "refusal": None})
        ]
        if tool is not None:
            call = {
                "index": 0,
                "id": f"call_mock{next(self._ids):06d}",
                "type": "function",
                "function": {"name": tool, "arguments": ""},
            }
            events.append(chunk({"tool_calls": [call]}))
            events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
            finish = "tool_calls"
        else:
            events.extend(_content_events(chunk, d.pieces(words), self.stamp))
            finish = "stop"
        tokens = len(events) - 1
        events.append(chunk({}, finish))
        if include_usage:
            events.append({**base, "choices": [], "usage": usage})
        events.append("[DONE]")
        # The role chunk comes with the first token (after ttft), then one token per interval.
        delays = [0.0] * len(events)
        delays[0] = d.ttft
        for i in range(1, tokens + 1):
            delays[i] = (d.event_interval if i > 1 else 0.0) + self.event_delay
        cut_after, stall_after = fault_point(d, tokens + 1)
        return await send_stream(
            request,
            events,
            _sse_stamped if self.stamp else _sse,
            headers={"Content-Type": "text/event-stream; charset=utf-8", **headers},
            delays=delays,
            cut_after=cut_after,
            stall_after=stall_after,
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self._begin(request)
        if resp is not None:
            return resp
        inputs = body.get("input")
        items = (
            inputs
            if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int)
            else [inputs]
        )
        dims = int(body.get("dimensions") or 8)
        data = []
        tokens = 0
        for i, item in enumerate(items):
            text = orjson.dumps(item)
            tokens += max(1, len(text) // 4)
            vec = _vector(text, dims)
            emb: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
                if body.get("encoding_format") == "base64"
                else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        out = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        headers = OPENAI.quota_headers(d.quota) if d.quota is not None else {}
        return await answer(
            request, orjson.dumps(out), {"Content-Type": "application/json", **headers}, d.fault
        )

    async def _models(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.valid_keys is not None and key not in self.valid_keys:
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        out = {
            "object": "list",
            "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")


def _sse(ev: Event) -> bytes:
    if isinstance(ev, bytes):
        return ev
    if isinstance(ev, str):
        return f"data: {ev}\n\n".encode()
    return b"data: " + orjson.dumps(ev) + b"\n\n"


def _sse_stamped(ev: Event) -> Payload:
    """A chunk that gets ``"mock_sent"``: the (system-wide monotonic) time it is sent, as its
    last member, for benchmarks that measure how long each chunk takes to reach the client."""
    if isinstance(ev, dict) and ev.get("choices"):
        return (b"data: " + orjson.dumps(ev)[:-1] + b',"mock_sent":', b"}\n\n")
    return _sse(ev)


_MARK = "\x00mock-piece\x00"  # stands for a piece of text in a chunk encoded once per stream
_MARK_JSON = orjson.dumps(_MARK)


def _content_events(
    chunk: Callable[[dict[str, Any]], dict[str, Any]], pieces: list[str], stamp: bool
) -> list[Event | Stamped]:
    """The stream events carrying ``pieces``: what ``_sse`` (or ``_sse_stamped``) makes of
    ``chunk({"content": piece})``, from one encoding of the chunk rather than one per piece."""
    encode = _sse_stamped if stamp else _sse
    whole = orjson.dumps(chunk({"content": _MARK}))
    if whole.count(_MARK_JSON) != 1:  # the mark is in the request's model name: no shortcut
        return [encode(chunk({"content": piece})) for piece in pieces]
    head, _, tail = whole.partition(_MARK_JSON)
    head = b"data: " + head
    if stamp:
        tail = tail[:-1] + b',"mock_sent":'
        return [(head + orjson.dumps(p) + tail, b"}\n\n") for p in pieces]
    tail += b"\n\n"
    return [head + orjson.dumps(p) + tail for p in pieces]


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _reply_words(body: dict[str, Any], n: int) -> list[str]:
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0:
        n = min(n, max_tokens)
    base = ["Hello", "from", "the", "TruckLLM", "mock", "upstream", "model", "speaking"]
    return [base[i % len(base)] for i in range(n)]


def _tool_to_call(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    messages = body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return name
    fn = tools[0].get("function") if isinstance(tools[0], dict) else None
    return str(fn.get("name")) if isinstance(fn, dict) else None


def _vector(text: bytes, dims: int) -> list[float]:
    out: list[float] = []
    seed = hashlib.sha256(text).digest()
    while len(out) < dims:
        seed = hashlib.sha256(seed).digest()
        out.extend((b - 128) / 128.0 for b in seed)
    return out[:dims]
