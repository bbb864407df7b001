"""A fake Anthropic Messages API over real HTTP, speaking the documented wire format.

By default it answers like a fast, healthy Anthropic: ``POST /v1/messages`` checks ``x-api-key``
(when ``valid_keys`` is set) and ``anthropic-version``, validates the body the way the real API
does where a translation bug would show (fields the API does not define, required
``max_tokens``, roles, every ``tool_use`` answered by a ``tool_result`` in the next message and
vice versa), and answers
with text, or with a ``tool_use`` when tools are offered and not yet answered. Streams follow the
documented event order: ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop reason, cumulative usage), ``message_stop``. Every answer carries
``request-id`` and ``anthropic-ratelimit-*`` headers.

Latency, pacing, reply length, usage, per-key limits (429 ``rate_limit_error`` with real
``anthropic-ratelimit-*`` and ``retry-after`` headers) and faults (500, 503, 529 ``overloaded_error``,
resets, cut and stalled streams) come from :class:`~truckllm.testing.behaviour.Conditions`.

Tests script it with :class:`~truckllm.testing.mock.Scripted` answers (dict events are sent as
``event: <type>`` + ``data: <json>``) and read back every request in ``received``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
from aiohttp import web

from truckllm.testing.anthropic_rules import REQUEST_FIELDS, validate
from truckllm.testing.behaviour import Conditions, Decision, Quota, Throttle, reported_usage
from truckllm.testing.prompt_cache import PromptCache
from truckllm.testing.wire import (
    FakeServer,
    Scripted,
    answer,
    fault_point,
    gate,
    play,
)
from truckllm.testing.wire import stream as send_stream

__all__ = ["REQUEST_FIELDS", "FakeAnthropic", "scripted_error", "validate"]

ANTHROPIC_VERSION = "2023-06-01"
WORDS = ["Hello", "from", "the", "TruckLLM", "fake", "Anthropic", "upstream", "model"]
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The error types of the ``anthropic`` SDK's ``ErrorResponse`` and their statuses."""
def error_body(error_type: str, message: str, request_id: str = "req_fake") -> dict[str, Any]:
    """An Anthropic error body."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def scripted_error(
    error_type: str, message: str = "", headers: dict[str, str] | None = None
) -> Scripted:
    """A scripted Anthropic error answer with the status the API uses for ``error_type``."""
    return Scripted(
        status=_ERROR_STATUS.get(error_type, 400),
        body=error_body(error_type, message or error_type.replace("_", " ").capitalize()),
        headers=headers or {},
    )


def sse(event: dict[str, Any] | bytes | str) -> bytes:
    """One event as Anthropic sends it: ``event: <type>`` then ``data: <json>``."""
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return f"data: {event}\n\n".encode()
    return (
        b"event: " + str(event.get("type")).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    )


def message_start(
    msg_id: str = "msg_fake", model: str = "claude-fake", input_tokens: int = 10, **usage: int
) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": usage.get("cache_creation_input_tokens", 0),
                "cache_read_input_tokens": usage.get("cache_read_input_tokens", 0),
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    }


def text_block(index: int, pieces: list[str]) -> list[dict[str, Any]]:
    """A streamed text block: start, one ``text_delta`` per piece, stop."""
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": p},
            }
            for p in pieces
        ),
        {"type": "content_block_stop", "index": index},
    ]


def tool_block(index: int, tool_id: str, name: str, pieces: list[str]) -> list[dict[str, Any]]:
    """A streamed ``tool_use`` block: start with empty input, ``input_json_delta`` fragments
    (the first one empty, as the API sends it), stop."""
    start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": p},
            }
            for p in ["", *pieces]
        ),
        {"type": "content_block_stop", "index": index},
    ]


THINKING_BLOCK = {
    "type": "thinking",
    "thinking": "The user greets me; a short answer will do.",
    "signature": "ZmFrZS1zaWduYXR1cmU=",
}


def thinking_block(index: int, thinking: str, signature: str) -> list[dict[str, Any]]:
    """A streamed ``thinking`` block: ``thinking_delta`` pieces, then its ``signature_delta``."""
    start = {"type": "thinking", "thinking": "", "signature": ""}
    words = thinking.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "thinking_delta", "thinking": p},
            }
            for p in pieces
        ),
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "signature_delta", "signature": signature},
        },
        {"type": "content_block_stop", "index": index},
    ]


def _thinks(body: dict[str, Any]) -> bool:
    """Extended thinking is on: ``enabled`` with a budget, or ``adaptive``."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def message_end(
    stop_reason: str, output_tokens: int, stop_sequence: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]


class AnthropicDialect:
    """How Anthropic says it: ``rate_limit_error`` 429s with ``anthropic-ratelimit-*`` (RFC 3339
    resets) and ``retry-after``; ``api_error`` 500/503 and ``overloaded_error`` 529."""

    def throttled(self, t: Throttle) -> web.Response:
        unit = "requests" if t.kind == "requests" else "input tokens"
        per = "minute" if t.window_s == 60 else f"{t.window_s:g} seconds"
        message = (
            f"This request would exceed the rate limit for your organization of {t.limit:,} "
            f"{unit} per {per}. For details, refer to: "
            "https://docs.claude.com/en/api/rate-limits."
        )
        headers = {**self.quota_headers(t.quota), "retry-after": str(math.ceil(t.retry_after))}
        return _error(429, "rate_limit_error", message, "req_fake", headers)

    def failure(self, status: int) -> web.Response:
        if status == 529:
            return _error(529, "overloaded_error", "Overloaded", "req_fake")
        return _error(status, "api_error", "Internal server error", "req_fake")

    def quota_headers(self, q: Quota) -> dict[str, str]:
        now = dt.datetime.now(dt.UTC)
        out = {}
        families: list[tuple[str, int | None, int, float]] = [
            ("requests", q.limit_requests, q.remaining_requests, q.reset_requests),
            ("tokens", q.limit_tokens, q.remaining_tokens, q.reset_tokens),
            ("input-tokens", q.limit_tokens, q.remaining_tokens, q.reset_tokens),
        ]
        for family, limit, remaining, reset in families:
            if limit is None:
                continue
            at = now + dt.timedelta(seconds=math.ceil(reset))
            out[f"anthropic-ratelimit-{family}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{family}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{family}-reset"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out


ANTHROPIC = AnthropicDialect()


class FakeAnthropic(FakeServer):
    """The fake upstream. ``url`` (set by :meth:`start`) is a provider ``base_url``. Safe to
    script from another thread. Pass ``conditions`` to share behaviours with other fakes."""

    def __init__(
        self,
        *,
        valid_keys: set[str] | None = None,
        reply_words: int = 8,
        event_delay: float = 0.0,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
        conditions: Conditions | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.valid_keys = valid_keys
        self.reply_words = reply_words
        self.event_delay = event_delay
        self.cache_read_tokens = cache_read_tokens
        self.prompt_cache = prompt_cache  # cache reads when a prompt prefix repeats on a key
        self.cache_creation_tokens = cache_creation_tokens
        super().__init__(conditions or Conditions())

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self._messages),
            web.post("/v1/messages/count_tokens", self._count_tokens),
            web.get("/v1/models", self._models),
        ]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: the model list (one page), after the key and version checks."""
        await self.take(request, request.path)
        rid = f"req_fake{next(self._ids):06d}"
        key = request.headers.get("x-api-key", "")
        if self.valid_keys is not None and key not in self.valid_keys:
            return _error(401, "authentication_error", "invalid x-api-key", rid)
        if request.headers.get("anthropic-version") is None:
            return _error(
                400, "invalid_request_error", "anthropic-version: header is required", rid
            )
        model = {
            "type": "model",
            "id": "claude-sonnet-4-5",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        }
        page = {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]}
        return web.json_response(page, headers={"request-id": rid})

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """``{"input_tokens": N}``: about four bytes of messages, system and tools a token."""
        body, _ = await self.take(request, request.path)
        rid = f"req_fake{next(self._ids):06d}"
        if request.headers.get("anthropic-version") is None:
            return _error(400, "invalid_request_error", "anthropic-version: header is required", rid)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "messages: Field required", rid)
        counted = {k: body.get(k) for k in ("system", "messages", "tools")}
        tokens = max(1, len(orjson.dumps(counted)) // 4)
        return web.json_response({"input_tokens": tokens})

    def keys_used(self) -> list[str]:
        """The ``x-api-key`` of every request received, in order."""
        return [r.headers.get("x-api-key", "") for r in self.received]

    # -- handler -------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, raw = await self.take(request, request.path)
        rid = f"req_fake{next(self._ids):06d}"
        if self.script:
            return await play(
                request,
                self.script.popleft(),
                sse,
                sse_type="text/event-stream; charset=utf-8",
                headers={"request-id": rid},
            )
        key = request.headers.get("x-api-key", "")
        if self.valid_keys is not None and key not in self.valid_keys:
            return _error(401, "authentication_error", "invalid x-api-key", rid)
        d, refusal = await gate(request, self.conditions, ANTHROPIC, key, len(raw) // 4)
        if refusal is not None:
            refusal.headers["request-id"] = rid
            return refusal
        if request.headers.get("anthropic-version") is None:
            return _error(
                400, "invalid_request_error", "anthropic-version: header is required", rid
            )
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "Request body is not valid JSON", rid)
        beta = bool(request.headers.get("anthropic-beta")) or request.query.get("beta") == "true"
        problem = validate(body, beta)
        if problem is not None:
            return _error(400, "invalid_request_error", problem, rid)
        words = d.reply_tokens if d.reply_tokens is not None else self.reply_words
        content, stop_reason, stop_sequence, output_tokens = self._answer(body, words)
        msg_id = f"msg_fake{next(self._ids):06d}"
        prompt, cache_read = max(1, len(orjson.dumps(body.get("messages"))) // 4), 0
        if self.prompt_cache is not None:  # input_tokens: only what was not read from the cache
            parts = [body.get("system"), *body["messages"]]
            prompt = max(1, len(orjson.dumps(parts)) // 4)
            cache_read = min(self.prompt_cache.cached_tokens(key, parts), prompt)
            prompt -= cache_read
        input_tokens, output_tokens, cache_read = reported_usage(
            d.usage, prompt, output_tokens, cache_read or self.cache_read_tokens
        )
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": cache_read,
        }
        quota = ANTHROPIC.quota_headers(d.quota) if d.quota is not None else _ratelimit_headers()
        headers = {"request-id": rid, **quota}
        if _thinks(body):
            content.insert(0, THINKING_BLOCK)
        if body.get("stream"):
            stop = (stop_reason, stop_sequence)
            usage = {**usage, "output_tokens": output_tokens}
            return await self._stream(request, body, d, msg_id, content, stop, usage, headers)
        out = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {**usage, "output_tokens": output_tokens, "service_tier": "standard"},
        }
        return await answer(
            request,
            orjson.dumps(out),
            {"Content-Type": "application/json", **headers},
            d.fault,
            d.generation_time(output_tokens),
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        d: Decision,
        msg_id: str,
        content: list[dict[str, Any]],
        stop: tuple[str, str | None],
        usage: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """The documented event order; a thinking block streams its thinking and signature.
        ``usage`` holds the final ``output_tokens``, reported in ``message_delta``."""
        output_tokens = usage.pop("output_tokens")
        events: list[dict[str, Any]] = [message_start(msg_id, body["model"], **usage)]
        for i, block in enumerate(content):
            if block["type"] == "text":
                block_events = text_block(i, d.pieces(block["text"].split(" ")))
            elif block["type"] == "thinking":
                block_events = thinking_block(i, block["thinking"], block["signature"])
            else:
                args = orjson.dumps(block["input"]).decode()
                third = max(1, len(args) // 3)
                pieces = [args[:third], args[third : 2 * third], args[2 * third :]]
                block_events = tool_block(i, block["id"], block["name"], [p for p in pieces if p])
            events.extend(block_events)
            if i == 0:
                events.insert(2, {"type": "ping"})
        events.extend(message_end(stop[0], output_tokens, stop[1]))
        # message_start after the time to first token, then one delta per interval.
        delays = [self.event_delay if i else d.ttft for i in range(len(events))]
        deltas = [i for i, ev in enumerate(events) if ev["type"] == "content_block_delta"]
        for i in deltas[1:]:
            delays[i] += d.event_interval
        cut_after, stall_after = fault_point(d, len(events))
        return await send_stream(
            request,
            events,
            sse,
            headers={"Content-Type": "text/event-stream; charset=utf-8", **headers},
            delays=delays,
            cut_after=cut_after,
            stall_after=stall_after,
        )

    def _answer(
        self, body: dict[str, Any], reply_words: int
    ) -> tuple[list[dict[str, Any]], str, str | None, int]:
        """Content blocks, stop reason, stop sequence and output tokens for a valid request."""
        tool = _tool_to_call(body)
        if tool is not None:
            call = {
                "type": "tool_use",
                "id": f"toolu_fake{next(self._ids):06d}",
                "name": tool["name"],
                "input": _example_input(tool.get("input_schema")),
            }
            choice = (body.get("tool_choice") or {}).get("type", "auto")
            if choice == "auto":  # Claude usually says something before an unforced call
                return [{"type": "text", "text": "Let me check."}, call], "tool_use", None, 12
            return [call], "tool_use", None, 9
        words = [WORDS[i % len(WORDS)] for i in range(reply_words)]
        stop_reason, stop_sequence = "end_turn", None
        for i, word in enumerate(words):
            if word in (body.get("stop_sequences") or ()):
                words, stop_reason, stop_sequence = words[:i], "stop_sequence", word
                break
        if len(words) > body["max_tokens"]:
            words, stop_reason, stop_sequence = words[: body["max_tokens"]], "max_tokens", None
        return [{"type": "text", "text": " ".join(words)}], stop_reason, stop_sequence, len(words)


def _tool_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") == "tool":
        return next((t for t in tools if t.get("name") == choice.get("name")), None)
    last = body["messages"][-1]
    answered = isinstance(last.get("content"), list) and any(
        b.get("type") == "tool_result" for b in last["content"]
    )
    if answered and choice.get("type") == "auto":
        return None
    return dict(tools[0])


def _example_input(schema: Any) -> dict[str, Any]:
    examples: dict[Any, Any] = {"string": "Paris", "integer": 1, "number": 1.5, "boolean": True}
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return {}
    props = schema["properties"]
    out: dict[str, Any] = {}
    for name in schema.get("required") or ():
        kind: Any = (props.get(name) or {}).get("type")
        out[name] = examples.get(kind, {} if kind == "object" else [])
    return out


def _error(
    status: int, error_type: str, message: str, rid: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(error_type, message, rid)),
        content_type="application/json",
        headers={"request-id": rid, **(headers or {})},
    )


def _ratelimit_headers() -> dict[str, str]:
    reset = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {}
    for family, limit in (
        ("requests", 1000),
        ("tokens", 100000),
        ("input-tokens", 80000),
        ("output-tokens", 20000),
    ):
        out[f"anthropic-ratelimit-{family}-limit"] = str(limit)
        out[f"anthropic-ratelimit-{family}-remaining"] = str(limit - 1)
        out[f"anthropic-ratelimit-{family}-reset"] = reset
    return out
