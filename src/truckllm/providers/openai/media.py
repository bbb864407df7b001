"""OpenAI's endpoints whose bodies are not JSON: ``/audio/speech`` answers with audio bytes,
relayed as they arrive (never held whole), and ``/audio/transcriptions`` and
``/audio/translations`` take a ``multipart/form-data`` upload, sent on as the client built it
with only the ``model`` part's value replaced when the route names another model.

The upload is never held whole: it is written upstream as it arrives from the client, from a
spool on a retry (:class:`truckllm.api.upload.Upload`, :mod:`~truckllm.providers.openai.multipart`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import BodySource, Response
from truckllm.providers.base import Call, Reply, Usage
from truckllm.providers.errors import normalise_upstream_error
from truckllm.providers.http import UpstreamHTTP, relay_events
from truckllm.providers.openai.multipart import Form
from truckllm.providers.sse import iter_events

RetryAfter = Callable[[Mapping[str, str]], float | None]


async def send_form(
    http: UpstreamHTTP, url: str, call: Call, key: KeyConfig, retry_after: RetryAfter
) -> Reply:
    """A transcription or translation: the form on as the client sends it (read from the
    client while it is written upstream, again from its start on a retry), the answer (JSON or
    text) back whole, or an SSE answer (``stream=true``) event by event."""
    content_type = (call.headers or {}).get("content-type", "")
    form = call.source
    data: BodySource | bytes = form.with_model(call.model) if isinstance(form, Form) else call.raw
    resp = await http.post(url, data, key, False, content_type=content_type)
    ctype = resp.headers.get("content-type", "application/json")
    if resp.status == 200 and ctype.startswith("text/event-stream"):
        # The form asked for a stream (its ``stream`` field, wherever it lies in the form: the
        # gateway does not read that far): relayed event by event, as the upstream sends it.
        reply = Reply(200, ctype, resp.headers, _release=resp.release, dialect=call.dialect)
        relay_events(
            reply, http, resp, (b"transcript.text.done",), lambda b: _read_transcript_usage(b, reply)
        )
        return reply
    body = await http.read(resp)
    if resp.status >= 400:
        return _error(http, resp, body, retry_after, call.dialect)
    usage = _usage(body) if ctype.startswith("application/json") else None
    return Reply(resp.status, ctype, resp.headers, body=body, usage=usage, dialect=call.dialect)


async def send_speech(
    http: UpstreamHTTP, url: str, call: Call, key: KeyConfig, retry_after: RetryAfter
) -> Reply:
    """Speech: the audio relayed chunk by chunk as the upstream sends it."""
    data = call.raw
    if call.body.get("model") != call.model:
        data = orjson.dumps({**call.body, "model": call.model})
    resp = await http.post(url, data, key, True)
    ctype = resp.headers.get("content-type", "application/octet-stream")
    if resp.status == 200:
        reply = Reply(200, ctype, resp.headers, _release=resp.release)
        reply.events = _chunks(http, resp)
        text = call.body.get("input")
        reply.usage = Usage(characters=len(text) if isinstance(text, str) else 0)
        return reply
    body = await http.read(resp)
    return _error(http, resp, body, retry_after, call.dialect)


def _read_transcript_usage(batch: bytes, reply: Reply) -> None:
    """The usage of a streamed transcription, from its ``transcript.text.done`` event."""
    for ev in iter_events(batch):
        reply.usage = _usage(ev.data) or reply.usage


async def _chunks(http: UpstreamHTTP, resp: Response) -> AsyncIterator[bytes]:
    try:
        with http.mid_stream():
            async for chunk in resp:
                if chunk:
                    yield chunk
    finally:
        resp.release()


def _error(
    http: UpstreamHTTP, resp: Response, body: bytes, retry_after: RetryAfter, dialect: str
) -> Reply:
    body, code = normalise_upstream_error(http.scrub(body), resp.status, http.id)
    return Reply(
        resp.status,
        "application/json",
        resp.headers,
        body=body,
        error_code=code,
        retry_after=retry_after(resp.headers),
        dialect=dialect,
    )


def _usage(body: bytes) -> Usage | None:
    """A transcription's ``usage``: tokens (``gpt-4o-transcribe``) or seconds
    (``whisper-1``)."""
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if isinstance(usage, dict) and usage.get("type") == "tokens":
        return Usage.from_openai(usage)
    if isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, int | float) and 0 <= seconds < 1e9:
            return Usage(seconds=float(seconds))
    return None


def image_usage(body: bytes, usage: Usage | None) -> Usage | None:
    """An image generation's usage: its tokens when reported (``gpt-image-1``), and the number
    of images it returned."""
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not data:
        return usage
    usage = usage or Usage()
    usage.images = len(data)
    return usage
