"""A fake Google Gemini API (``generativelanguage`` v1beta) that speaks the real wire format over
real HTTP.

By default it answers like a healthy Gemini: ``generateContent``, ``streamGenerateContent``
(server-sent events with ``alt=sse``, a JSON array without it), function calls (with thought
signatures) when tools are offered, ``usageMetadata``, ``embedContent`` and
``batchEmbedContents``. Like the real service it refuses what it does not know: unknown fields,
roles other than ``user``/``model``, JSON Schema keywords outside Gemini's subset, a bad or missing
``x-goog-api-key`` (when ``valid_keys`` is set), so translation mistakes surface as 400s.

Tests script it by pushing :class:`~truckllm.testing.mock.Scripted` answers (``events`` become
``data: {json}`` SSE events with CRLF line ends, as Google sends them) and read back every
request in ``received`` (``path`` includes the query string). :func:`gemini_error` builds
Google's error bodies. Safe to script from another thread.

Latency, pacing, reply length, usage, per-key limits (429 ``RESOURCE_EXHAUSTED`` with
``QuotaFailure`` and ``RetryInfo``, as Gemini sends them: no rate-limit headers) and faults (500
``INTERNAL``, 503 ``UNAVAILABLE``, 529, resets, cut and stalled streams) come from
:class:`~truckllm.testing.behaviour.Conditions`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
from typing import Any

import orjson
from aiohttp import web

from truckllm.testing.behaviour import Conditions, Decision, Quota, Throttle, reported_usage
from truckllm.testing.prompt_cache import PromptCache
from truckllm.testing.wire import (
    FakeServer,
    Received,
    Scripted,
    answer,
    fault_point,
    gate,
    play,
)
from truckllm.testing.wire import stream as send_stream

_TOP = frozenset(
    {
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
    }
)
_GENERATION = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "thinkingConfig",
        "mediaResolution",
        "speechConfig",
    }
)
_PART = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
        "thought",
        "thoughtSignature",
        "videoMetadata",
    }
)
_SCHEMA = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
_TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
_WORDS = ["Hello", "from", "the", "fake", "Gemini", "model", "answering", "you"]


def gemini_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A Google API error body."""
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def rate_limited(
    retry_delay: str = "37s", quota_id: str = "PerMinute", metric: str = "requests", limit: int = 10
) -> Scripted:
    """A 429 as Gemini sends it when a quota runs out, with ``QuotaFailure`` and ``RetryInfo``."""
    family = "Requests" if metric == "requests" else "ContentInputTokens"
    body = gemini_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_"
                        + ("requests" if metric == "requests" else "input_token_count"),
                        "quotaId": f"Generate{family}{quota_id}PerProjectPerModel-FreeTier",
                        "quotaValue": str(limit),
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ],
    )
    return Scripted(status=429, body=body)


class GeminiDialect:
    """How Gemini says it: ``RESOURCE_EXHAUSTED`` 429s whose ``RetryInfo.retryDelay`` tells when
    to retry (no rate-limit headers); ``INTERNAL`` 500s and ``UNAVAILABLE`` 503s."""

    def throttled(self, t: Throttle) -> web.Response:
        s = rate_limited(_duration(t.retry_after), "PerMinute", t.kind, t.limit)
        return _json(s.body, s.status)

    def failure(self, status: int) -> web.Response:
        if status == 500:
            return _error(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            )
        return _error(status, "UNAVAILABLE", "The model is overloaded. Please try again later.")

    def quota_headers(self, quota: Quota) -> dict[str, str]:
        return {}


GEMINI = GeminiDialect()


class FakeGemini(FakeServer):
    """The fake service. ``url`` (after :meth:`start`) is the base URL, without ``/v1beta``.
    Pass ``conditions`` to share behaviours with other fakes."""

    def __init__(
        self,
        *,
        valid_keys: set[str] | None = None,
        reply_words: int = 8,
        dims: int = 8,
        thought_signatures: bool = True,
        require_signatures: bool = False,
        thoughts_tokens: int = 0,
        cached_tokens: int = 0,
        event_delay: float = 0.0,
        conditions: Conditions | None = None,
        prompt_cache: PromptCache | None = None,
    ) -> None:
        self.valid_keys = valid_keys
        self.prompt_cache = prompt_cache  # cachedContentTokenCount when a prefix repeats on a key
        self.reply_words = reply_words
        self.dims = dims
        self.thought_signatures = thought_signatures
        self.require_signatures = require_signatures  # as Gemini 3 does for function calls
        self.thoughts_tokens = thoughts_tokens
        self.cached_tokens = cached_tokens
        self.event_delay = event_delay
        super().__init__(conditions or Conditions())

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1beta/models/{target}", self._handle),
            web.get("/v1beta/models", self._models),
        ]

    def key_of(self, received: Received) -> str | None:
        """The API key a recorded request carried."""
        for name, value in received.headers.items():
            if name.lower() == "x-goog-api-key":
                return value
        return None

    # -- handlers -----------------------------------------------------------------------------

    def _refuse_key(self, key: str | None) -> web.Response | None:
        """Google's answer to a missing (403) or unknown (400 ``API_KEY_INVALID``) key, when
        ``valid_keys`` is set."""
        if self.valid_keys is None:
            return None
        if not key:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
            )
        if key not in self.valid_keys:
            return _error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        return None

    async def _models(self, request: web.Request) -> web.Response:
        """``GET /v1beta/models``: the model list (one page), after the key check."""
        await self.take(request, request.path_qs)
        refused = self._refuse_key(
            request.headers.get("x-goog-api-key") or request.query.get("key")
        )
        if refused is not None:
            return refused
        model = {
            "name": "models/gemini-2.5-flash",
            "displayName": "Gemini 2.5 Flash",
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }
        return web.Response(body=orjson.dumps({"models": [model]}), content_type="application/json")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body, raw = await self.take(request, request.path_qs)
        if self.script:
            return await play(
                request, self.script.popleft(), _sse, json_type="application/json; charset=UTF-8"
            )
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        refused = self._refuse_key(key)
        if refused is not None:
            return refused
        d, refusal = await gate(request, self.conditions, GEMINI, key or "", len(raw) // 4)
        if refusal is not None:
            return refusal
        if not isinstance(body, dict):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        model, _, method = request.match_info["target"].partition(":")
        if method in ("generateContent", "streamGenerateContent"):
            problem = _check_generate(body) or self._check_signatures(body)
            if problem:
                return _error(400, "INVALID_ARGUMENT", problem)
            stream = method != "generateContent"
            chunks = self._generate(body, model, stream, d, key or "")
            if stream and request.query.get("alt") == "sse":
                return await self._stream(request, chunks, d)
            wait = d.generation_time(len(chunks) if stream else self._words(d))
            whole = orjson.dumps(chunks if stream else chunks[0])
            return await answer(request, whole, {"Content-Type": _JSON_TYPE}, d.fault, wait)
        if method == "embedContent":
            return self._embed([body], model)
        if method == "batchEmbedContents":
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                return _error(
                    400, "INVALID_ARGUMENT", "* BatchEmbedContentsRequest.requests: required"
                )
            for r in requests:
                if not isinstance(r, dict) or r.get("model") != f"models/{model}":
                    return _error(
                        400,
                        "INVALID_ARGUMENT",
                        f"Model name in every request must be models/{model}.",
                    )
            return self._embed(requests, model, batch=True)
        return _error(404, "NOT_FOUND", f"Method {method!r} is not found for models/{model}.")

    async def _stream(
        self, request: web.Request, chunks: list[dict[str, Any]], d: Decision
    ) -> web.StreamResponse:
        gap = d.event_interval + self.event_delay
        delays = [gap if i else d.ttft for i in range(len(chunks))]
        cut_after, stall_after = fault_point(d, len(chunks))
        return await send_stream(
            request,
            chunks,
            _sse,
            headers={"Content-Type": "text/event-stream"},
            delays=delays,
            cut_after=cut_after,
            stall_after=stall_after,
        )

    def _words(self, d: Decision) -> int:
        return d.reply_tokens if d.reply_tokens is not None else self.reply_words

    # -- answers ------------------------------------------------------------------------------

    def _generate(
        self, body: dict[str, Any], model: str, stream: bool, d: Decision, key: str = ""
    ) -> list[dict[str, Any]]:
        """The response (first element) or, for streams, every event of it."""
        gen = body.get("generationConfig") or {}
        n = int(gen.get("candidateCount") or 1)
        reply_words = self._words(d)
        words = _WORDS * (reply_words // len(_WORDS) + 1)
        words = words[: min(reply_words, int(gen.get("maxOutputTokens") or 1 << 30))]
        truncated = len(words) < reply_words
        call = _function_to_call(body)
        if gen.get("responseMimeType") == "application/json":
            words = [orjson.dumps({"answer": " ".join(words)}).decode()]
        prompt = max(1, len(orjson.dumps(body.get("contents"))) // 4)
        cached = self.cached_tokens
        if self.prompt_cache is not None:
            parts = [body.get("systemInstruction"), *(body.get("contents") or ())]
            prompt = max(1, len(orjson.dumps(parts)) // 4)
            cached = min(self.prompt_cache.cached_tokens(key, parts), prompt)
        prompt, completion, cached = reported_usage(
            d.usage, prompt, (1 if call else len(words)) * n, cached
        )
        rid = f"fake-{next(self._ids):06d}"
        base = {"modelVersion": model, "responseId": rid}
        finish = "MAX_TOKENS" if truncated and not call else "STOP"

        def usage(done: bool) -> dict[str, Any]:
            meta: dict[str, Any] = {"promptTokenCount": prompt}
            if done:
                meta["candidatesTokenCount"] = completion
                if self.thoughts_tokens:
                    meta["thoughtsTokenCount"] = self.thoughts_tokens
            if cached:
                meta["cachedContentTokenCount"] = cached
            meta["totalTokenCount"] = prompt + (completion + self.thoughts_tokens if done else 0)
            meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
            return meta

        if call is not None:
            part: dict[str, Any] = {"functionCall": call}
            if self.thought_signatures:
                part["thoughtSignature"] = base64.b64encode(f"sig-{rid}".encode()).decode()
            cands = [
                {"content": {"parts": [part], "role": "model"}, "finishReason": "STOP", "index": i}
                for i in range(n)
            ]
            return [{"candidates": cands, "usageMetadata": usage(True), **base}]
        if not stream:
            text = " ".join(words)
            cands = [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": finish,
                    "index": i,
                }
                for i in range(n)
            ]
            return [{"candidates": cands, "usageMetadata": usage(True), **base}]
        events = []
        pieces = d.pieces(words)
        for w, piece in enumerate(pieces):
            last = w == len(pieces) - 1
            cands = []
            for i in range(n):
                cand: dict[str, Any] = {
                    "content": {"parts": [{"text": piece}], "role": "model"},
                    "index": i,
                }
                if last:
                    cand["finishReason"] = finish
                cands.append(cand)
            events.append({"candidates": cands, "usageMetadata": usage(last), **base})
        return events

    def _embed(
        self, requests: list[dict[str, Any]], model: str, batch: bool = False
    ) -> web.Response:
        vectors = []
        for r in requests:
            parts = (r.get("content") or {}).get("parts")
            if not isinstance(parts, list) or not parts:
                return _error(400, "INVALID_ARGUMENT", "* EmbedContentRequest.content: required")
            text = "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
            dims = int(r.get("outputDimensionality") or self.dims)
            vectors.append({"values": _vector(text.encode(), dims)})
        return _json({"embeddings": vectors} if batch else {"embedding": vectors[0]})

    def _check_signatures(self, body: dict[str, Any]) -> str | None:
        if not self.require_signatures:
            return None
        contents = body.get("contents") or []
        start = 0
        for i, c in enumerate(contents):
            if c.get("role") == "user" and any("functionResponse" not in p for p in c["parts"]):
                start = i + 1
        for c in contents[start:]:
            calls = [p for p in c.get("parts", ()) if "functionCall" in p]
            if c.get("role") == "model" and calls and "thoughtSignature" not in calls[0]:
                name = calls[0]["functionCall"].get("name")
                return (
                    f"Function call is missing a thought_signature in functionCall parts. "
                    f"Additional data, function call `default_api:{name}`."
                )
        return None


# -- request validation, as strict as the real service ---------------------------------------


def _check_generate(body: dict[str, Any]) -> str | None:
    for key in body:
        if key not in _TOP:
            return _unknown(key, "")
    for key in body.get("generationConfig") or {}:
        if key not in _GENERATION:
            return _unknown(key, "generation_config")
    schema = (body.get("generationConfig") or {}).get("responseSchema")
    if schema is not None:
        problem = _check_schema(schema, "generation_config.response_schema")
        if problem:
            return problem
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate([*contents, body.get("systemInstruction") or {"parts": [{"text": ""}]}]):
        role = c.get("role") if isinstance(c, dict) else None
        if i < len(contents) and role not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = c.get("parts") if isinstance(c, dict) else None
        if not isinstance(parts, list) or not parts:
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )
        for p in parts:
            for key in p:
                if key not in _PART:
                    return _unknown(key, f"contents[{i}].parts[0]")
            fr = p.get("functionResponse")
            if fr is not None and not isinstance(fr.get("response"), dict):
                return f"* contents[{i}].function_response.response: must be an object"
            fc = p.get("functionCall")
            if fc is not None and not isinstance(fc.get("args", {}), dict):
                return f"* contents[{i}].function_call.args: must be an object"
    for tool in body.get("tools") or ():
        for j, decl in enumerate(tool.get("functionDeclarations") or ()):
            params = decl.get("parameters")
            if params is not None:
                if params.get("type", "").upper() == "OBJECT" and not params.get("properties"):
                    return (
                        f"* GenerateContentRequest.tools[0].function_declarations[{j}]"
                        ".parameters.properties: should be non-empty for OBJECT type"
                    )
                problem = _check_schema(params, f"tools[0].function_declarations[{j}].parameters")
                if problem:
                    return problem
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if config.get("mode") not in (None, "AUTO", "ANY", "NONE", "VALIDATED"):
        return f"Invalid value at 'tool_config.function_calling_config.mode' ({config['mode']})"
    if config.get("allowedFunctionNames") and config.get("mode") != "ANY":
        return "allowed_function_names can only be set when mode is ANY."
    return None


def _check_schema(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"Invalid value at '{where}': not an object"
    for key, value in schema.items():
        if key not in _SCHEMA:
            return _unknown(key, where)
        if key == "type" and str(value).upper() not in _TYPES:
            return f"Invalid value at '{where}.type' ({value})"
    for name, sub in (schema.get("properties") or {}).items():
        problem = _check_schema(sub, f"{where}.properties[{name}].value")
        if problem:
            return problem
    for sub in [schema.get("items"), *(schema.get("anyOf") or ())]:
        if sub is not None:
            problem = _check_schema(sub, where)
            if problem:
                return problem
    return None


def _unknown(key: str, where: str) -> str:
    at = f" at '{where}'" if where else ""
    return f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'


def _function_to_call(body: dict[str, Any]) -> dict[str, Any] | None:
    decls = [d for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
    config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    if not decls or config.get("mode") == "NONE":
        return None
    last = (body.get("contents") or [{}])[-1]
    if any("functionResponse" in p for p in last.get("parts", ())):
        return None
    allowed = config.get("allowedFunctionNames")
    decl = next((d for d in decls if d["name"] in allowed), decls[0]) if allowed else decls[0]
    params = decl.get("parameters") or {}
    props = params.get("properties") or {}
    args = {
        name: "Paris"
        for name in params.get("required") or ()
        if str(props.get(name, {}).get("type", "")).upper() == "STRING"
    }
    return {"name": decl["name"], "args": args}


def _vector(text: bytes, dims: int) -> list[float]:
    out: list[float] = []
    seed = hashlib.sha256(text).digest()
    while len(out) < dims:
        seed = hashlib.sha256(seed).digest()
        out.extend((b - 128) / 128.0 for b in seed)
    return out[:dims]


def _sse(ev: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(ev, bytes):
        return ev
    if isinstance(ev, str):
        return f"data: {ev}\r\n\r\n".encode()
    return b"data: " + orjson.dumps(ev) + b"\r\n\r\n"


_JSON_TYPE = "application/json; charset=UTF-8"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), headers={"Content-Type": _JSON_TYPE})


def _duration(seconds: float) -> str:
    """A protobuf ``Duration`` in JSON (``"37s"``, ``"1.5s"``), rounded up to the millisecond."""
    text = f"{math.ceil(seconds * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    return web.Response(
        status=code,
        body=orjson.dumps(gemini_error(code, status, message, details)),
        content_type="application/json",
        charset="UTF-8",
    )
