"""OpenAI's endpoints whose bodies are not JSON: ``/audio/speech`` answers with audio bytes,
relayed as they arrive (never held whole), and ``/audio/transcriptions`` and
``/audio/translations`` take a ``multipart/form-data`` upload, sent on as the client built it
with only the ``model`` part's value replaced when the route names another model.

The upload is held once, as the gateway read it (bounded by ``server.max_body_bytes``); finding
the ``model`` part is a scan for the boundary, never a parse of the file parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from truckllm.config.schema import KeyConfig
from truckllm.http.client import Response
from truckllm.providers.base import Call, Reply, Usage
from truckllm.providers.errors import normalise_upstream_error
from truckllm.providers.http import UpstreamHTTP

RetryAfter = Callable[[Mapping[str, str]], float | None]
_MAX_PART_HEAD = 1024  # a form part's headers: a Content-Disposition line and a Content-Type


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            return value.encode("latin-1") if 0 < len(value) <= 70 else None
    return None


def form_field(raw: bytes | bytearray, boundary: bytes, name: str) -> tuple[int, int] | None:
    """Where the value of the form's text field ``name`` lies in ``raw`` (start, end), or None.
    Only the boundaries and each part's short header block are looked at."""
    delimiter = b"\r\n--" + boundary
    wanted = f'name="{name}"'.encode()
    if raw.startswith(b"--" + boundary):
        at = 0
    else:  # a preamble before the first boundary
        at = raw.find(delimiter)
        at = at + 2 if at >= 0 else -1
    while at >= 0:
        head_start = at + 2 + len(boundary)
        if raw.startswith(b"--", head_start):
            return None  # the closing delimiter
        head_end = raw.find(b"\r\n\r\n", head_start, head_start + _MAX_PART_HEAD)
        if head_end < 0:
            return None
        value_start = head_end + 4
        nxt = raw.find(delimiter, value_start)
        if nxt < 0:
            return None
        head = raw[head_start:head_end].lower()
        if wanted in head and b"filename=" not in head:
            return value_start, nxt
        at = nxt + 2
    return None


Buffer = bytes | bytearray | memoryview


def with_model(raw: bytes | bytearray, boundary: bytes, model: str) -> list[Buffer]:
    """The form with its ``model`` field's value replaced, as pieces that share the upload's
    memory (views of it around the new value): nothing of the upload is copied."""
    span = form_field(raw, boundary, "model")
    if span is None or raw[span[0] : span[1]] == model.encode():
        return [raw]
    view = memoryview(raw)
    return [view[: span[0]], model.encode(), view[span[1] :]]


async def send_form(
    http: UpstreamHTTP, url: str, call: Call, key: KeyConfig, retry_after: RetryAfter
) -> Reply:
    """A transcription or translation: the form on, the answer (JSON or text) back whole."""
    content_type = (call.headers or {}).get("content-type", "")
    boundary = boundary_of(content_type)
    pieces: list[Buffer] = [call.raw]
    if boundary is not None and call.body.get("model") != call.model:
        pieces = with_model(call.raw, boundary, call.model)
    resp = await http.post(url, pieces, key, False, content_type=content_type)
    body = await http.read(resp)
    ctype = resp.headers.get("content-type", "application/json")
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
