"""Anthropic's native Messages API (``type: anthropic``), answering in OpenAI's format.

``POST {base_url}/v1/messages`` with ``x-api-key`` and ``anthropic-version``; the provider's
``headers`` are merged in (e.g. ``anthropic-beta``), and ``options.max_tokens`` sets the output
limit used when the client gives none (Anthropic requires one; 4096 otherwise). Chat only:
Anthropic has no embeddings API, so an embeddings call gets an OpenAI-shaped 400.

Translation is in :mod:`.request`, :mod:`.response` and :mod:`.stream` (pure), errors in
:mod:`.errors`; this module does the HTTP and hands the routing layer the upstream's headers
(``retry-after``, ``anthropic-ratelimit-*``) and status unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import Response
from truckllm.providers.anthropic.errors import AnthropicStreamError, translate_error
from truckllm.providers.anthropic.passthrough import Passthrough
from truckllm.providers.anthropic.request import (
    DEFAULT_MAX_TOKENS,
    TranslationError,
    translate_request,
)
from truckllm.providers.anthropic.response import translate_response
from truckllm.providers.anthropic.stream import StreamTranslator
from truckllm.providers.base import (
    ANTHROPIC_MESSAGES,
    Call,
    ProviderContext,
    Reply,
    RequestRejected,
    UpstreamProtocolError,
)
from truckllm.providers.errors import error_body, parse_retry_after
from truckllm.providers.http import UpstreamHTTP, header

ANTHROPIC_VERSION = "2023-06-01"

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "AnthropicStreamError"]


class AnthropicProvider:
    """The ``anthropic`` provider type. Safe to share between concurrent requests. Anthropic
    Messages clients pass through untranslated (:mod:`.passthrough`)."""

    dialects = frozenset({ANTHROPIC_MESSAGES})

    def __init__(self, ctx: ProviderContext) -> None:
        cfg = ctx.config
        self.id = cfg.id
        query = ("?" + urlencode(cfg.query_params)) if cfg.query_params else ""
        self._url = cfg.base_url + "/v1/messages" + query
        max_tokens = cfg.options.get("max_tokens", DEFAULT_MAX_TOKENS)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(
                f"provider {cfg.id!r}: options.max_tokens must be a positive integer, "
                f"got {max_tokens!r}"
            )
        self._max_tokens = max_tokens
        self._http = UpstreamHTTP(
            ctx, header("x-api-key"), fixed={"anthropic-version": ANTHROPIC_VERSION}
        )
        self._passthrough = Passthrough(ctx, self._url)

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        if call.dialect == ANTHROPIC_MESSAGES:
            return await self._passthrough.send(call, key)
        if call.endpoint != "chat":
            raise _bad_request(
                f"provider {self.id!r} serves Anthropic models, which have no embeddings API; "
                "route embedding models to another provider.",
                "unsupported_endpoint",
                "model",
            )
        try:
            native = translate_request(call.body, call.model, self._max_tokens)
        except TranslationError as exc:
            raise _bad_request(exc.message, exc.code, exc.param) from None
        resp = await self._http.post(self._url, orjson.dumps(native.body), key, call.stream)
        ctype = resp.headers.get("content-type", "")
        if call.stream and resp.status < 300 and ctype.startswith("text/event-stream"):
            reply = Reply(200, "text/event-stream", resp.headers, _release=resp.release)
            translator = StreamTranslator(
                call.model, int(time.time()), call.wants_usage, self.id, native.json_tool
            )
            reply.events = self._events(resp, reply, translator)
            return reply
        body = await self._http.read(resp)
        if resp.status >= 400:
            return self._error(resp, body, key)
        if call.stream:
            raise UpstreamProtocolError(
                f"provider {self.id!r} answered a stream request with {ctype or 'no content type'}"
            )
        message: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(body)
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise UpstreamProtocolError(f"provider {self.id!r} answered without a message")
        out, usage = translate_response(message, call.model, int(time.time()), native.json_tool)
        return Reply(
            resp.status, "application/json", resp.headers, body=orjson.dumps(out), usage=usage
        )

    def _error(self, resp: Response, body: bytes, key: KeyConfig) -> Reply:
        out, code = translate_error(self._http.scrub(body), resp.status, self.id)
        return Reply(
            resp.status,
            "application/json",
            resp.headers,
            body=out,
            error_code=code,
            retry_after=parse_retry_after(resp.headers.get("retry-after")),
        )

    async def _events(
        self, resp: Response, reply: Reply, translator: StreamTranslator
    ) -> AsyncIterator[bytes]:
        """The translated stream, one batch per upstream read that completes an event. An
        ``error`` event raises :class:`AnthropicStreamError` after what preceded it has been
        yielded; if nothing has been yielded yet, at once (so the gateway may fail over)."""
        sent = False
        try:
            with self._http.mid_stream():
                while True:
                    try:
                        data = await anext(resp)
                    except StopAsyncIteration:
                        data = b""
                    if translator.done:  # read on to the end, so the connection can be reused
                        if not data:
                            break
                        continue
                    # An empty read is the end, which completes a last unterminated event.
                    out = translator.feed(data) if data else translator.close()
                    reply.usage = translator.usage
                    if translator.error is not None:
                        if out and sent:
                            yield out
                        raise translator.error
                    if out:
                        sent = True
                        yield out
                    if not data:
                        if not translator.done:
                            raise UpstreamProtocolError(
                                f"provider {self.id!r} ended the stream before message_stop"
                            )
                        break
        finally:
            resp.release()  # read to the end: back to the pool; abandoned: closed


def _bad_request(message: str, code: str | None, param: str | None) -> RequestRejected:
    return RequestRejected(
        400, error_body(message, 400, code, param, "invalid_request_error"), code
    )
