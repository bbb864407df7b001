"""A fake Anthropic Messages API over real HTTP, speaking the documented wire format.

By default it answers like a fast, healthy Anthropic: ``POST /v1/messages`` checks ``x-api-key``
(when ``valid_keys`` is set) and ``anthropic-version``, validates the body the way the real API
does where a translation bug would show (required ``max_tokens``, roles, temperature range,
every ``tool_use`` answered by a ``tool_result`` in the next message and vice versa), and answers
with text, or with a ``tool_use`` when tools are offered and not yet answered. Streams follow the
documented event order: ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
``message_delta`` (stop reason, cumulative usage), ``message_stop``. Every answer carries
``request-id`` and ``anthropic-ratelimit-*`` headers.

Tests script it with :class:`~truckllm.testing.mock.Scripted` answers (dict events are sent as
``event: <type>`` + ``data: <json>``) and read back every request in ``received``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from truckllm.testing.mock import Received, Scripted

ANTHROPIC_VERSION = "2023-06-01"
WORDS = ["Hello", "from", "the", "TruckLLM", "fake", "Anthropic", "upstream", "model"]
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


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


class FakeAnthropic:
    """The fake upstream. ``url`` (set by :meth:`start`) is a provider ``base_url``. Safe to
    script from another thread."""

    def __init__(
        self,
        *,
        valid_keys: set[str] | None = None,
        reply_words: int = 8,
        event_delay: float = 0.0,
        cache_read_tokens: int = 0,
        cache_creation_tokens: int = 0,
    ) -> None:
        self.valid_keys = valid_keys
        self.reply_words = reply_words
        self.event_delay = event_delay
        self.cache_read_tokens = cache_read_tokens
        self.cache_creation_tokens = cache_creation_tokens
        self.script: deque[Scripted] = deque()
        self.received: list[Received] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/messages", self._messages)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        self.url = f"http://{host}:{server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def keys_used(self) -> list[str]:
        """The ``x-api-key`` of every request received, in order."""
        return [r.headers.get("x-api-key", "") for r in self.received]

    # -- handler -------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.received.append(
            Received(request.method, request.path, dict(request.headers), body, raw)
        )
        rid = f"req_fake{next(self._ids):06d}"
        if self.script:
            return await self._play(request, self.script.popleft(), rid)
        if self.valid_keys is not None and request.headers.get("x-api-key") not in self.valid_keys:
            return _error(401, "authentication_error", "invalid x-api-key", rid)
        if request.headers.get("anthropic-version") is None:
            return _error(
                400, "invalid_request_error", "anthropic-version: header is required", rid
            )
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "Request body is not valid JSON", rid)
        problem = validate(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem, rid)
        content, stop_reason, stop_sequence, output_tokens = self._answer(body)
        msg_id = f"msg_fake{next(self._ids):06d}"
        usage = {
            "input_tokens": max(1, len(orjson.dumps(body.get("messages"))) // 4),
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
        }
        headers = {"request-id": rid, **_ratelimit_headers()}
        if not body.get("stream"):
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
            return web.Response(
                body=orjson.dumps(out), content_type="application/json", headers=headers
            )
        events: list[dict[str, Any]] = [message_start(msg_id, body["model"], **usage)]
        for i, block in enumerate(content):
            if block["type"] == "text":
                words = block["text"].split(" ")
                pieces = [w if j == 0 else " " + w for j, w in enumerate(words)]
                block_events = text_block(i, pieces)
            else:
                args = orjson.dumps(block["input"]).decode()
                third = max(1, len(args) // 3)
                pieces = [args[:third], args[third : 2 * third], args[2 * third :]]
                block_events = tool_block(i, block["id"], block["name"], [p for p in pieces if p])
            events.extend(block_events)
            if i == 0:
                events.insert(2, {"type": "ping"})
        events.extend(message_end(stop_reason, output_tokens, stop_sequence))
        return await self._play(
            request,
            Scripted(events=list(events), headers=headers, event_delay=self.event_delay),
            rid,
        )

    def _answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str | None, int]:
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
        words = [WORDS[i % len(WORDS)] for i in range(self.reply_words)]
        stop_reason, stop_sequence = "end_turn", None
        for i, word in enumerate(words):
            if word in (body.get("stop_sequences") or ()):
                words, stop_reason, stop_sequence = words[:i], "stop_sequence", word
                break
        if len(words) > body["max_tokens"]:
            words, stop_reason, stop_sequence = words[: body["max_tokens"]], "max_tokens", None
        return [{"type": "text", "text": " ".join(words)}], stop_reason, stop_sequence, len(words)

    async def _play(self, request: web.Request, s: Scripted, rid: str) -> web.StreamResponse:
        if s.delay:
            await asyncio.sleep(s.delay)
        if s.reset:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        headers = {"request-id": rid, **s.headers}
        if s.events is None:
            body = s.body if isinstance(s.body, bytes) else orjson.dumps(s.body or {})
            headers.setdefault("Content-Type", "application/json")
            return web.Response(status=s.status, body=body, headers=headers)
        resp = web.StreamResponse(
            status=s.status,
            headers={"Content-Type": "text/event-stream; charset=utf-8", **headers},
        )
        await resp.prepare(request)
        for i, ev in enumerate(s.events):
            if s.cut_after is not None and i >= s.cut_after:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if s.stall_after is not None and i >= s.stall_after:
                await asyncio.sleep(3600)
            if i and s.event_delay:
                await asyncio.sleep(s.event_delay)
            await resp.write(sse(ev))
        await resp.write_eof()
        return resp


def validate(body: dict[str, Any]) -> str | None:
    """The real API's complaint about ``body``, for the rules a translation could break."""
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: range: 0..1"
    if "tool_choice" in body and not body.get("tools"):
        return "tool_choice: may only be specified while providing tools"
    previous_uses: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant"):
            return f'messages.{i}.role: Input should be "user" or "assistant"'
        content = msg.get("content")
        blocks = content if isinstance(content, list) else []
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Input should be a valid string or list"
        for j, block in enumerate(blocks):
            problem = _block_problem(block, role)
            if problem:
                return f"messages.{i}.content.{j}: {problem}"
        results = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        if results - previous_uses:
            return (
                f"messages.{i}.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(sorted(results - previous_uses))}. Each `tool_result` block must "
                "have a corresponding `tool_use` block in the previous message."
            )
        if previous_uses - results:
            return (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(previous_uses - results))}. Each "
                "`tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )
        previous_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    if previous_uses:
        return "messages: the final `tool_use` blocks have no `tool_result` blocks after them"
    return None


def _block_problem(block: Any, role: str) -> str | None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return None if block.get("text") else "text content blocks must be non-empty"
    if kind == "image" and role == "user":
        source = block.get("source") or {}
        if source.get("type") == "base64" and source.get("media_type") in (
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
        ):
            return None
        if source.get("type") == "url" and str(source.get("url", "")).startswith("http"):
            return None
        return "image.source: invalid image source"
    if kind == "document" and role == "user":
        return None
    if kind == "tool_use" and role == "assistant":
        ok = isinstance(block.get("id"), str) and isinstance(block.get("input"), dict)
        return None if ok else "tool_use: id and input are required"
    if kind == "tool_result" and role == "user":
        return None if isinstance(block.get("tool_use_id"), str) else "tool_use_id: required"
    return f"Input tag '{kind}' found using 'type' does not match the expected tags"


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


def _error(status: int, error_type: str, message: str, rid: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(error_type, message, rid)),
        content_type="application/json",
        headers={"request-id": rid},
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
