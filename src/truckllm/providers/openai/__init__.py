"""OpenAI and every OpenAI-compatible service (vLLM, Ollama, Groq, Together, OpenRouter, ...).

A passthrough: the client's body goes upstream with only ``model`` (and, for streams,
``stream_options``) rewritten, and the response bytes come back as they came. Usage is read from
the response without re-serialising it; a large non-streamed answer is relayed as it arrives
(:mod:`truckllm.providers.openai.relay`), and answers are asked for uncompressed. Besides chat
and embeddings: legacy completions (JSON and SSE, usage handled as chat's), moderations, image
generations, and audio (:mod:`truckllm.providers.openai.media`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import Response
from truckllm.providers.base import (
    OPENAI_MULTIPART,
    OPENAI_ONLY,
    OPENAI_RESPONSES,
    Call,
    ProviderContext,
    Reply,
    Usage,
)
from truckllm.providers.errors import (
    advised_seconds,
    normalise_upstream_error,
    parse_retry_after,
)
from truckllm.providers.http import UpstreamHTTP, bearer, header, stream_through
from truckllm.providers.openai.media import image_usage, send_form, send_speech
from truckllm.providers.openai.relay import ERROR_BODY_MAX, RELAY_ABOVE, object_end, relay_rest
from truckllm.providers.openai.responses import by_id, send_responses
from truckllm.providers.sse import SSEFramer, parse_event

_PATHS = {
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "completions": "/completions",
    "moderations": "/moderations",
    "images": "/images/generations",
    "speech": "/audio/speech",
    "transcriptions": "/audio/transcriptions",
    "translations": "/audio/translations",
}
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_PARSE_WHOLE_BELOW = 16 * 1024
# a large body's ``model``: OpenAI's answers name it among the first fields
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_WITHIN = 512
_USAGE_NULLS = (b',"usage":null', b', "usage": null')


class OpenAIProvider:
    """The ``openai`` provider type."""

    def __init__(self, ctx: ProviderContext) -> None:
        cfg = ctx.config
        self.id = cfg.id
        query = ("?" + urlencode(cfg.query_params)) if cfg.query_params else ""
        self._urls = {ep: cfg.base_url + path + query for ep, path in _PATHS.items()}
        self._responses_url = cfg.base_url + "/responses" + query
        self._response_url = (cfg.base_url + "/responses/", query)
        # Responses API clients pass through when the upstream serves that API.
        dialects = {OPENAI_MULTIPART, OPENAI_RESPONSES} if cfg.responses_api else {OPENAI_MULTIPART}
        self.dialects = frozenset(dialects)
        self.endpoints = OPENAI_ONLY  # completions, moderations, images, audio: passed through
        self._stream_usage = cfg.stream_usage
        auth = bearer if cfg.auth_header.lower() == "authorization" else header(cfg.auth_header)
        # Answers are relayed as they come: compression would only be undone here.
        self._http = UpstreamHTTP(ctx, auth, {"Accept-Encoding": "identity"})

    def _request_body(self, call: Call) -> tuple[bytes, bool]:
        """The upstream body, and whether the usage chunk must be stripped from the stream."""
        inject_usage = call.stream and self._stream_usage and not call.wants_usage
        if not inject_usage and call.body.get("model") == call.model:
            return call.raw, False
        body = dict(call.body)
        body["model"] = call.model
        if inject_usage:
            opts = body.get("stream_options")
            body["stream_options"] = (
                {**opts, "include_usage": True}
                if isinstance(opts, dict)
                else {"include_usage": True}
            )
        return orjson.dumps(body), inject_usage

    async def response_by_id(
        self,
        method: str,
        response_id: str,
        key: KeyConfig,
        tail: str = "",
        params: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """``GET`` or ``DELETE`` of a response the upstream holds (``tail`` ``input_items``: its
        input items), with the client's query ``params``: the status and JSON body."""
        base, query = self._response_url
        url = base + quote(response_id, safe="") + ("/" + quote(tail, safe="") if tail else "")
        if params:
            query += ("&" if query else "?") + urlencode(params)
        return await by_id(self._http, url + query, method, key)

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        if call.dialect == OPENAI_RESPONSES:
            return await send_responses(self._http, self._responses_url, call, key, _retry_after)
        if call.dialect == OPENAI_MULTIPART:
            return await send_form(self._http, self._urls[call.endpoint], call, key, _retry_after)
        if call.endpoint == "speech":
            return await send_speech(self._http, self._urls["speech"], call, key, _retry_after)
        data, strip_usage = self._request_body(call)
        resp = await self._http.post(self._urls[call.endpoint], data, key, call.stream)
        ctype = resp.headers.get("content-type", "application/json")
        if call.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
            reply = Reply(200, ctype, resp.headers, _release=resp.release)
            self._events(resp, reply, strip_usage)
            return reply
        if resp.status >= 400:
            body, whole = await self._http.read_start(resp, ERROR_BODY_MAX)
            if not whole:  # an error needs no more than its beginning: the rest is dropped
                resp.release()
                body = body[:ERROR_BODY_MAX]
            body, code = normalise_upstream_error(self._http.scrub(body), resp.status, self.id)
            return Reply(
                resp.status,
                "application/json",
                resp.headers,
                body=body,
                error_code=code,
                retry_after=_retry_after(resp.headers),
            )
        body, whole = await self._http.read_start(resp, RELAY_ABOVE)
        if not whole:  # large: the rest is relayed as it arrives, never held
            reply = Reply(resp.status, ctype, resp.headers, body=body, _release=resp.release)
            reply.rest = relay_rest(self._http, resp, reply, body, call.endpoint == "images")
            return reply
        usage, model = _usage_of_body(body)
        if call.endpoint == "images":
            usage = image_usage(body, usage)
        return Reply(resp.status, ctype, resp.headers, body=body, usage=usage, model=model)

    def _events(self, resp: Response, reply: Reply, strip_usage: bool) -> None:
        """Complete SSE events, batched as they arrived in one read; the usage chunk recorded and,
        when only the gateway asked for it, removed."""
        framer = SSEFramer(self.id)

        def feed(chunk: bytes) -> bytes:
            batch = framer.feed(chunk)
            if batch and b'"usage"' in batch:
                return _take_usage(batch, reply, strip_usage)
            return batch

        def close() -> bytes:
            batch = framer.close()
            if batch and b'"usage"' in batch:
                return _take_usage(batch, reply, strip_usage)
            return batch

        stream_through(reply, self._http, resp, feed, close)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """OpenAI's precise ``retry-after-ms`` when given, else the standard ``retry-after``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            seconds = advised_seconds(float(ms) / 1000.0)
        except ValueError:
            seconds = None
        if seconds is not None:
            return seconds
    return parse_retry_after(headers.get("retry-after"))


def _usage_of_body(body: bytes) -> tuple[Usage | None, str | None]:
    """Usage and the answer's model from a response body without parsing all of it: the
    ``usage`` object is small and comes last in OpenAI's format, so parse just that slice (and
    find ``model`` near the start); parse the whole body otherwise."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None, None
    if len(body) <= _PARSE_WHOLE_BELOW:  # orjson over a small body beats slicing in Python
        try:
            whole: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        if not isinstance(whole, dict):
            return None, None
        return Usage.from_openai(whole.get("usage")), _model_of(whole)
    start = body.find(b"{", at)
    if start > 0 and body[at + 7 : start].strip() == b":":
        end = object_end(body, start)
        if end > 0:
            try:
                usage = Usage.from_openai(orjson.loads(body[start : end + 1]))
            except orjson.JSONDecodeError:
                pass
            else:
                head = _MODEL_FIELD.search(body, 0, _MODEL_WITHIN)
                return usage, head.group(1).decode() if head else None
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    return Usage.from_openai(obj.get("usage")), _model_of(obj)


def _model_of(obj: dict[str, Any]) -> str | None:
    model = obj.get("model")
    return model if isinstance(model, str) and model else None


def _take_usage(batch: bytes, reply: Reply, strip: bool) -> bytes:
    if strip:
        for null in _USAGE_NULLS:
            if null in batch:  # a search costs less than a replace that finds nothing
                batch = batch.replace(null, b"")
                if b'"usage"' not in batch:  # the usual chunk once its null usage is gone
                    return batch
    if not _USAGE_OBJECT.search(batch):
        return batch
    kept: list[bytes] = []
    for event in batch.split(b"\n\n"):
        if not event:
            continue
        if _USAGE_OBJECT.search(event):
            obj = _event_json(event)
            if obj is not None:
                usage = Usage.from_openai(obj.get("usage"))
                if usage is not None:
                    reply.usage = usage
                    reply.model = _model_of(obj) or reply.model
                if strip and obj.get("choices") == []:
                    continue
                if strip:
                    obj.pop("usage", None)
                    kept.append(b"data: " + orjson.dumps(obj))
                    continue
        kept.append(event)
    return b"".join(e + b"\n\n" for e in kept)


def _event_json(event: bytes) -> dict[str, Any] | None:
    parsed = parse_event(event)
    if parsed is None:
        return None
    try:
        obj = orjson.loads(parsed.data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
