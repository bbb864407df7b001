"""A mock OpenAI-compatible upstream that speaks the real wire format over real HTTP.

By default it answers like a fast, healthy OpenAI: chat completions (JSON and SSE, with usage when
asked), tool calls when tools are offered, embeddings (float or base64), and the model list.
Tests script it: push :class:`Scripted` answers (status, headers, body, SSE events with timing,
disconnects) and read back every request it received. Safe to script from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import math
import random
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Scripted:
    """One scripted answer. ``events`` makes an SSE answer: dicts become ``data: {json}``, bytes
    are sent as they are (include the blank line), ``"[DONE]"`` the terminator."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any] | bytes | str] | None = None
    delay: float = 0.0  # before the response starts
    event_delay: float = 0.0  # between events
    reset: bool = False  # close the connection without answering
    cut_after: int | None = None  # close the connection after this many events
    stall_after: int | None = None  # stop sending (but keep the connection) after this many events


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes

    @property
    def bearer(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


@dataclass
class KeyBehaviour:
    """How the mock treats one API key: its own rate limit (requests per ``window_s``, enforced
    exactly with real 429s and OpenAI's rate-limit headers), extra latency, and a share of 500s."""

    rpm: int | None = None
    window_s: float = 60.0
    latency: float = 0.0
    error_rate: float = 0.0


class MockUpstream:
    def __init__(
        self,
        *,
        valid_keys: set[str] | None = None,
        latency: float = 0.0,
        reply_words: int = 8,
        event_delay: float = 0.0,
        keys: dict[str, KeyBehaviour] | None = None,
        seed: int = 0,
    ) -> None:
        self.valid_keys = valid_keys
        self.latency = latency
        self.reply_words = reply_words
        self.event_delay = event_delay
        self.script: deque[Scripted] = deque()
        self.received: list[Received] = []
        self.record = True
        self.cancelled = 0  # handlers cancelled because the client (the gateway) went away
        self.keys = keys or {}
        self._rng = random.Random(seed)
        self._log: dict[str, deque[float]] = {}
        self.arrivals: list[tuple[str, float]] = []  # (key, monotonic time) of every request
        self.throttled: list[tuple[str, float, float]] = []  # (key, when, retry-after) of each 429
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self.app = app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        bound = server.sockets[0].getsockname()
        self.url = f"http://{host}:{bound[1]}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers -----------------------------------------------------------------------------

    async def _begin(self, request: web.Request) -> tuple[Any, web.StreamResponse | None]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if self.record:
            self.received.append(
                Received(request.method, request.path, dict(request.headers), body, raw)
            )
        scripted = self.script.popleft() if self.script else None
        if scripted is not None:
            return body, await self._play(request, scripted)
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        behaviour = self.keys.get(key)
        if behaviour is not None:
            limited = self._limit(key, behaviour)
            if limited is not None:
                return body, limited
            if behaviour.latency:
                await asyncio.sleep(behaviour.latency)
            if behaviour.error_rate and self._rng.random() < behaviour.error_rate:
                return body, _error(
                    500,
                    "The server had an error while processing your request.",
                    "server_error",
                    None,
                )
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.valid_keys is not None:
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if key not in self.valid_keys:
                return body, _error(
                    401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                )
        if not isinstance(body, dict):
            return body, _error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
            )
        return body, None

    def _limit(self, key: str, b: KeyBehaviour) -> web.Response | None:
        """Count the request against the key's window; a real 429 when it is over the limit."""
        now = time.monotonic()
        self.arrivals.append((key, now))
        if b.rpm is None:
            return None
        log = self._log.setdefault(key, deque())
        while log and log[0] <= now - b.window_s:
            log.popleft()
        reset = (log[0] + b.window_s - now) if log else 0.0
        if len(log) >= b.rpm:
            retry_after = max(reset, 0.001)
            self.throttled.append((key, now, retry_after))
            body = {
                "error": {
                    "message": f"Rate limit reached for requests per min (RPM): Limit {b.rpm}, Used {len(log)}, "
                    f"Requested 1. Please try again in {retry_after:.3f}s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
            headers = {
                **self._quota_headers(b, 0, retry_after),
                "retry-after": str(math.ceil(retry_after)),
                "retry-after-ms": str(int(retry_after * 1000)),
            }
            return web.Response(
                status=429,
                body=orjson.dumps(body),
                content_type="application/json",
                headers=headers,
            )
        log.append(now)
        return None

    @staticmethod
    def _quota_headers(b: KeyBehaviour, remaining: int, reset: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(b.rpm),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }

    def quota_headers_for(self, request: web.Request) -> dict[str, str]:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        b = self.keys.get(key)
        if b is None or b.rpm is None:
            return {}
        log = self._log.get(key) or deque()
        now = time.monotonic()
        reset = (log[0] + b.window_s - now) if log else 0.0
        return self._quota_headers(b, max(b.rpm - len(log), 0), max(reset, 0.0))

    async def _play(self, request: web.Request, s: Scripted) -> web.StreamResponse:
        if s.delay:
            await asyncio.sleep(s.delay)
        if s.reset:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp drops the handler: the client sees a reset
        if s.events is None:
            body = (
                s.body
                if isinstance(s.body, bytes)
                else orjson.dumps(s.body if s.body is not None else {})
            )
            headers = {"Content-Type": "application/json", **s.headers}
            return web.Response(status=s.status, body=body, headers=headers)
        resp = web.StreamResponse(
            status=s.status, headers={"Content-Type": "text/event-stream", **s.headers}
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
            await resp.write(_sse(ev))
        await resp.write_eof()
        return resp

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
        body, resp = await self._begin(request)
        if resp is not None:
            return resp
        model = str(body.get("model", "mock-model"))
        words = _reply_words(body, self.reply_words)
        prompt_tokens = max(1, len(orjson.dumps(body.get("messages", []))) // 4)
        usage = _usage(prompt_tokens, len(words))
        cid = f"chatcmpl-mock{next(self._ids):08d}"
        created = int(time.time())
        tool = _tool_to_call(body)
        if not body.get("stream"):
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
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
                "system_fingerprint": "fp_mock",
            }
            return web.Response(
                body=orjson.dumps(out),
                content_type="application/json",
                headers=self.quota_headers_for(request),
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                **self.quota_headers_for(request),
            }
        )
        await resp.prepare(request)
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )

        await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        if tool is not None:
            call = {
                "index": 0,
                "id": f"call_mock{next(self._ids):06d}",
                "type": "function",
                "function": {"name": tool, "arguments": ""},
            }
            await resp.write(chunk({"tool_calls": [call]}))
            await resp.write(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
            finish = "tool_calls"
        else:
            for i, word in enumerate(words):
                if self.event_delay:
                    await asyncio.sleep(self.event_delay)
                await resp.write(chunk({"content": word if i == 0 else " " + word}))
            finish = "stop"
        await resp.write(chunk({}, finish))
        if include_usage:
            await resp.write(_sse({**base, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, resp = await self._begin(request)
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
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        out = {
            "object": "list",
            "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}],
        }
        return web.Response(body=orjson.dumps(out), content_type="application/json")


def _sse(ev: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(ev, bytes):
        return ev
    if isinstance(ev, str):
        return f"data: {ev}\n\n".encode()
    return b"data: " + orjson.dumps(ev) + b"\n\n"


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
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
