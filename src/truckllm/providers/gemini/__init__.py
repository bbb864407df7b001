"""Google Gemini through its native API (``type: gemini``; provider ids ``gemini``/``google``).

Chat goes to ``POST {base_url}/v1beta/models/{model}:generateContent`` (streams:
``:streamGenerateContent?alt=sse``), embeddings to ``:embedContent`` (one string) or
``:batchEmbedContents`` (a list). The key travels in the ``x-goog-api-key`` header (or in the
configured ``auth_header`` when it is not the default ``Authorization``), never in the URL; the
provider's ``headers`` and ``query_params`` are added to every request.

Translation, both ways, lives in pure modules: :mod:`.request` (OpenAI chat body -> Gemini),
:mod:`.schema` (JSON Schema -> Gemini ``Schema``), :mod:`.response` (Gemini -> ``chat.completion``),
:mod:`.stream` (Gemini SSE -> ``chat.completion.chunk`` events), :mod:`.embeddings` and
:mod:`.errors` (Gemini errors -> OpenAI-shaped errors, ``RetryInfo`` -> ``retry_after``). Each
module's docstring says what maps and what does not.

Options (``providers[].options``): ``thought_signature_fallback`` (default
``"skip_thought_signature_validator"``; ``null`` or ``""`` turns it off) is the signature put on
replayed function calls that come back without one, which Gemini 3 would otherwise refuse.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import Response
from truckllm.providers.base import (
    Call,
    ProviderContext,
    Reply,
    RequestRejected,
    UpstreamUnavailable,
)
from truckllm.providers.errors import error_body, parse_retry_after
from truckllm.providers.gemini.embeddings import embed_request, embed_response
from truckllm.providers.gemini.errors import Unsupported, translate_error
from truckllm.providers.gemini.request import SKIP_SIGNATURE, chat_request
from truckllm.providers.gemini.response import chat_completion
from truckllm.providers.gemini.stream import StreamFailed, StreamTranslator
from truckllm.providers.http import UpstreamHTTP, header
from truckllm.providers.sse import SSEFramer, iter_data, parse_event

_URL_CACHE_LIMIT = 512  # model names come from clients when a provider lists "*"


class GeminiProvider:
    """The ``gemini`` provider type."""

    def __init__(self, ctx: ProviderContext) -> None:
        cfg = ctx.config
        self.id = cfg.id
        base = cfg.base_url.rstrip("/")
        if not base.endswith(("/v1beta", "/v1", "/v1alpha")):
            base += "/v1beta"
        self._base = base
        self._query = urlencode(cfg.query_params) if cfg.query_params else ""
        self._urls: dict[tuple[str, str], str] = {}
        auth = cfg.auth_header
        self._http = UpstreamHTTP(
            ctx, header(auth if auth.lower() != "authorization" else "x-goog-api-key")
        )
        fallback = cfg.options.get("thought_signature_fallback", SKIP_SIGNATURE)
        self._signature_fallback = fallback if isinstance(fallback, str) and fallback else None

    async def send(self, call: Call, key: KeyConfig) -> Reply:
        model_path = call.model if "/" in call.model else "models/" + call.model
        if any(part in ("", ".", "..") for part in model_path.split("/")):
            # The model name comes from the client: no segment of it may move up or sideways in
            # the upstream's URL (``gemini:../../admin/x``). The rest is percent-encoded.
            message = f"Invalid model name {call.model!r} for a Gemini provider."
            body = error_body(message, 400, "invalid_model", "model", "invalid_request_error")
            raise RequestRejected(400, body, "invalid_model")
        texts: list[str] = []
        try:
            if call.endpoint == "embeddings":
                method, native, texts = embed_request(call.body, model_path)
            else:
                method = "streamGenerateContent" if call.stream else "generateContent"
                native = chat_request(call.body, call.model, self._signature_fallback)
        except Unsupported as exc:
            raise RequestRejected(400, exc.body(), exc.code) from None
        stream = call.stream and call.endpoint == "chat"
        resp = await self._http.post(
            self._url(model_path, method, stream), orjson.dumps(native), key, stream
        )
        ctype = resp.headers.get("content-type", "")
        if stream and resp.status == 200 and ctype.startswith("text/event-stream"):
            reply = Reply(200, "text/event-stream", resp.headers, _release=resp.release)
            translator = StreamTranslator(call.model, call.wants_usage)
            reply.events = self._events(resp, reply, translator, key)
            return reply
        data = await self._http.read(resp)
        if resp.status >= 400:
            return self._error_reply(self._http.scrub(data), resp.status, resp.headers)
        obj: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(data)
        if isinstance(obj, dict):
            if call.endpoint == "embeddings":
                done = embed_response(obj, call.body, call.model, texts)
                if done is not None:
                    return Reply(
                        resp.status,
                        "application/json",
                        resp.headers,
                        body=orjson.dumps(done[0]),
                        usage=done[1],
                    )
            elif not stream:
                out, usage = chat_completion(obj, call.model)
                return Reply(
                    resp.status,
                    "application/json",
                    resp.headers,
                    body=orjson.dumps(out),
                    usage=usage,
                )
        message = f"provider {self.id!r} sent an answer that is not a Gemini {method} response"
        return Reply(
            502,
            "application/json",
            resp.headers,
            body=error_body(message, 502, "upstream_protocol_error", None, "api_error"),
            error_code="upstream_protocol_error",
        )

    # -- HTTP ---------------------------------------------------------------------------------

    def _url(self, model_path: str, method: str, sse: bool) -> str:
        url = self._urls.get((model_path, method))
        if url is None:
            url = f"{self._base}/{quote(model_path, safe='/-._~')}:{method}"
            query = "&".join(q for q in ("alt=sse" if sse else "", self._query) if q)
            if query:
                url += "?" + query
            if len(self._urls) >= _URL_CACHE_LIMIT:
                self._urls.clear()
            self._urls[(model_path, method)] = url
        return url

    def _error_reply(self, data: bytes, status: int, headers: Mapping[str, str]) -> Reply:
        failure = translate_error(data, status, self.id)
        retry_after = failure.retry_after
        if retry_after is None:
            retry_after = parse_retry_after(headers.get("retry-after"))
        elif "retry-after" not in headers:
            # Clients (and the gateway's 429 answer) read Retry-After, not Gemini's RetryInfo.
            copied = dict(headers)  # lower-case names, as the client gives them
            copied["retry-after"] = str(math.ceil(retry_after))
            headers = copied
        return Reply(
            failure.status,
            "application/json",
            headers,
            body=failure.body,
            error_code=failure.code,
            retry_after=retry_after,
        )

    async def _events(
        self,
        resp: Response,
        reply: Reply,
        translator: StreamTranslator,
        key: KeyConfig,
    ) -> AsyncIterator[bytes]:
        """OpenAI events, batched as the upstream's arrived in one read; ``reply.usage`` follows
        the latest ``usageMetadata``."""
        framer = SSEFramer(self.id)
        try:
            with self._http.mid_stream():
                async for chunk in resp:
                    batch = framer.feed(chunk)
                    if not batch:
                        continue
                    out, failed = _translate_all(batch, translator)
                    reply.usage = translator.usage
                    if out:
                        yield out
                    if failed is not None:
                        raise failed
            out, failed = _translate_all(framer.close(), translator)
            if failed is not None:
                if out:
                    yield out
                raise failed
            out += translator.finish()
            reply.usage = translator.usage
            yield out
        except StreamFailed as exc:
            detail = self._http.scrub(str(exc).encode()).decode("utf-8", "replace")
            raise UpstreamUnavailable(
                f"provider {self.id!r} broke off the stream: {detail}"
            ) from exc
        finally:
            resp.release()


def _translate_all(batch: bytes, translator: StreamTranslator) -> tuple[bytes, StreamFailed | None]:
    """The events translated from ``batch`` (complete events, as the framer gives them) up to a
    failure, and the failure: what arrived before an error still goes out first."""
    out = []
    for data in iter_data(batch):
        try:
            out.append(_translate_data(data, translator))
        except StreamFailed as exc:
            return b"".join(out), exc
    return b"".join(out), None


def _translate(event: bytes, translator: StreamTranslator) -> bytes:
    """The OpenAI events for one SSE event's bytes (its lines, without the blank line)."""
    parsed = parse_event(event)
    return b"" if parsed is None else _translate_data(parsed.data, translator)


def _translate_data(data: bytes, translator: StreamTranslator) -> bytes:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        if not data.strip():  # an empty data line carries nothing
            return b""
        raise StreamFailed("an event that is not JSON") from None
    if not isinstance(obj, dict):
        raise StreamFailed("an event that is not a JSON object")
    return translator.feed(obj)


__all__ = ["GeminiProvider"]
