"""Anthropic Messages clients to an Anthropic upstream: no translation (``/v1/messages`` and
``/v1/messages/count_tokens``).

The client's body goes upstream as it came, with ``model`` rewritten only when the route names
another; the client's ``anthropic-version`` (``2023-06-01`` when it sent none) and
``anthropic-beta`` go with it, the betas filtered by the provider's ``options.anthropic_betas``
allowlist when one is set. The answer, its events and the upstream's errors come back as they
are. Usage is read on the side from ``message_start`` and ``message_delta`` (the only events
parsed), so accounting sees input, output, cache read and cache creation tokens. A whole answer
over 1 MiB is relayed as it arrives, its usage read from the body's end (``usage`` is the last
field of Anthropic's Message), as :mod:`truckllm.providers.openai.relay` does for OpenAI's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import Response, encode_headers
from truckllm.providers.anthropic.errors import stream_error, translate_error
from truckllm.providers.base import Call, ProviderContext, Reply, Usage
from truckllm.providers.errors import parse_retry_after
from truckllm.providers.http import UpstreamHTTP, header, stream_through
from truckllm.providers.openai.relay import ERROR_BODY_MAX, RELAY_ABOVE, relay_rest
from truckllm.providers.sse import SSEFramer, iter_events

DEFAULT_VERSION = "2023-06-01"
_USAGE_EVENTS = (b"event: message_start", b"event: message_delta")


def usage_of(obj: Any, into: Usage | None = None) -> Usage | None:
    """Anthropic's ``usage`` object as the gateway's, updated ``into`` a usage read before
    (``message_delta`` repeats only what changed). Anthropic counts fresh input, cache reads and
    cache writes apart; the gateway's ``prompt_tokens`` is their sum."""
    if not isinstance(obj, dict):
        return into
    u = into if into is not None else Usage()
    try:
        fresh = u.prompt_tokens - u.cached_tokens - u.cache_creation_tokens
        if obj.get("input_tokens") is not None:
            fresh = int(obj["input_tokens"])
        if obj.get("cache_read_input_tokens") is not None:
            u.cached_tokens = int(obj["cache_read_input_tokens"])
        if obj.get("cache_creation_input_tokens") is not None:
            u.cache_creation_tokens = int(obj["cache_creation_input_tokens"])
        u.prompt_tokens = fresh + u.cached_tokens + u.cache_creation_tokens
        if obj.get("output_tokens") is not None:
            u.completion_tokens = int(obj["output_tokens"])
    except (TypeError, ValueError):
        return into
    return u


class Passthrough:
    """The passthrough half of the ``anthropic`` provider type."""

    def __init__(self, ctx: ProviderContext, url: str) -> None:
        self.id = ctx.config.id
        self._url = url
        path, _, query = url.partition("?")
        self._count_url = path + "/count_tokens" + (f"?{query}" if query else "")
        # Answers are relayed as they come: compression would only be undone here.
        self._http = UpstreamHTTP(ctx, header("x-api-key"), {"Accept-Encoding": "identity"})
        allowed = ctx.config.options.get("anthropic_betas")
        self._betas = frozenset(allowed) if isinstance(allowed, list) else None

    def _headers(self, client: Mapping[str, str] | None) -> bytes:
        client = client or {}
        out = {"anthropic-version": client.get("anthropic-version") or DEFAULT_VERSION}
        betas = [b.strip() for b in client.get("anthropic-beta", "").split(",") if b.strip()]
        if self._betas is not None:
            betas = [b for b in betas if b in self._betas]
        if betas:
            out["anthropic-beta"] = ",".join(betas)
        return encode_headers(out)

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        data = call.raw
        if call.body.get("model") != call.model:
            data = orjson.dumps({**call.body, "model": call.model})
        url = self._count_url if call.endpoint == "count_tokens" else self._url
        resp = await self._http.post(url, data, key, call.stream, extra=self._headers(call.headers))
        ctype = resp.headers.get("content-type", "application/json")
        if call.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
            reply = Reply(200, ctype, resp.headers, _release=resp.release, dialect=call.dialect)
            self._events(resp, reply)
            return reply
        if resp.status >= 400:
            body, whole = await self._http.read_start(resp, ERROR_BODY_MAX)
            if not whole:  # an error needs no more than its beginning: the rest is dropped
                resp.release()
                body = body[:ERROR_BODY_MAX]
        else:
            body, whole = await self._http.read_start(resp, RELAY_ABOVE)
        reply = Reply(resp.status, ctype, resp.headers, body=body, dialect=call.dialect)
        if not whole and resp.status < 400:  # large: the rest relayed as it arrives, never held
            reply._release = resp.release
            reply.rest = relay_rest(self._http, resp, reply, body, False, usage_of)
            return reply
        if resp.status >= 400:
            reply.body = self._http.scrub(body)
            reply.error_code = _error_code(body, resp.status, self.id)
            reply.retry_after = parse_retry_after(resp.headers.get("retry-after"))
            return reply
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(body)
            if isinstance(message, dict):
                reply.usage = usage_of(message.get("usage"))
                reply.model = _model(message)
        return reply

    def _events(self, resp: Response, reply: Reply) -> None:
        """The upstream's events as they arrive, each batch complete events; usage read from the
        two events that carry it. An ``error`` event before anything was sent raises (so the
        gateway can fail over); after that it reaches the client as the upstream sent it."""
        framer = SSEFramer(self.id)
        sent = False

        def feed(chunk: bytes) -> bytes:
            nonlocal sent
            batch = framer.feed(chunk)
            if batch:
                if b"event: message_" in batch:
                    self._read_usage(batch, reply)
                if not sent and b"event: error" in batch:
                    self._raise_error(batch)
                sent = True
            return batch

        stream_through(reply, self._http, resp, feed, framer.close)

    def _raise_error(self, batch: bytes) -> None:
        for ev in iter_events(batch):
            if ev.event == "error":
                payload: Any = None
                with contextlib.suppress(orjson.JSONDecodeError):
                    payload = orjson.loads(ev.data)
                raise stream_error(payload, self.id)

    @staticmethod
    def _read_usage(batch: bytes, reply: Reply) -> None:
        if not any(marker in batch for marker in _USAGE_EVENTS):
            return
        for ev in iter_events(batch):
            if ev.event in ("message_start", "message_delta"):
                try:
                    obj = orjson.loads(ev.data)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                source = obj.get("message") if ev.event == "message_start" else obj
                usage = source.get("usage") if isinstance(source, dict) else None
                reply.usage = usage_of(usage, reply.usage)
                if ev.event == "message_start" and isinstance(source, dict):
                    reply.model = _model(source)


def _model(message: dict[str, Any]) -> str | None:
    model = message.get("model")
    return model if isinstance(model, str) and model else None


def _error_code(body: bytes, status: int, provider_id: str) -> str | None:
    """The code the routing layer learns from (``insufficient_quota``, ...); the body the client
    gets stays the upstream's."""
    return translate_error(body, status, provider_id)[1]
