"""OpenAI Responses API clients to an upstream that serves it (``responses_api`` on the
provider): no translation. The body goes to ``<base_url>/responses`` as it came, ``model``
rewritten only when the route names another; the answer, its events and the upstream's errors
come back byte for byte. Usage is read on the side from the body's ``usage`` and from the
``response.completed`` (or ``.incomplete``/``.failed``) event, the only events parsed."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.providers.base import Call, Reply, Usage
from truckllm.providers.errors import normalise_upstream_error
from truckllm.providers.http import UpstreamHTTP, relay_events
from truckllm.providers.sse import iter_events

_FINAL = (b"response.completed", b"response.incomplete", b"response.failed")


async def send_responses(
    http: UpstreamHTTP, url: str, call: Call, key: KeyConfig, retry_after: Any
) -> Reply:
    data = call.raw
    if call.body.get("model") != call.model:
        data = orjson.dumps({**call.body, "model": call.model})
    resp = await http.post(url, data, key, call.stream)
    ctype = resp.headers.get("content-type", "application/json")
    if call.stream and resp.status == 200 and ctype.startswith("text/event-stream"):
        reply = Reply(200, ctype, resp.headers, _release=resp.release, dialect=call.dialect)
        relay_events(reply, http, resp, _FINAL, lambda batch: _read_usage(batch, reply))
        return reply
    body = await http.read(resp)
    if resp.status >= 400:
        body, code = normalise_upstream_error(http.scrub(body), resp.status, http.id)
        return Reply(
            resp.status,
            "application/json",
            resp.headers,
            body=body,
            error_code=code,
            retry_after=retry_after(resp.headers),
            dialect=call.dialect,
        )
    reply = Reply(resp.status, ctype, resp.headers, body=body, dialect=call.dialect)
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(body)
        if isinstance(obj, dict):
            reply.usage = Usage.from_openai(obj.get("usage"))
            model = obj.get("model")
            reply.model = model if isinstance(model, str) and model else None
    return reply


async def by_id(http: UpstreamHTTP, url: str, method: str, key: KeyConfig) -> tuple[int, bytes]:
    """``GET`` or ``DELETE /responses/{id}`` upstream: the status and the body (an error body in
    OpenAI's shape, scrubbed of the provider's secrets)."""
    resp = await http.post(url, b"", key, False, method=method.encode())
    body = await http.read(resp)
    if resp.status >= 400:
        body, _ = normalise_upstream_error(http.scrub(body), resp.status, http.id)
    return resp.status, body


def _read_usage(batch: bytes, reply: Reply) -> None:
    for ev in iter_events(batch):
        if not any(marker in ev.data[:64] for marker in _FINAL):
            continue
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            continue
        response = obj.get("response") if isinstance(obj, dict) else None
        if isinstance(response, dict):
            usage = Usage.from_openai(response.get("usage"))
            if usage is not None:
                reply.usage = usage
                model = response.get("model")
                reply.model = model if isinstance(model, str) and model else reply.model
