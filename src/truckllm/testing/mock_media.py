"""The OpenAI mock's other model endpoints, answered as OpenAI does: legacy ``/v1/completions``
(JSON, or SSE with the usage chunk when ``stream_options.include_usage``), ``/v1/moderations``,
``/v1/images/generations`` (a tiny PNG, base64), ``/v1/audio/speech`` (audio bytes sent in
chunks as they are "spoken", ``chunk_delay`` apart) and the ``multipart/form-data`` uploads
``/v1/audio/transcriptions`` and ``/v1/audio/translations`` (the form parsed with the standard
library's email parser, so the gateway's own form handling is not what reads it back). Same
behaviours as its chat: limits, faults, scripts."""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from truckllm.testing.behaviour import reported_usage
from truckllm.testing.wire import Event, answer
from truckllm.testing.wire import stream as send_stream

if TYPE_CHECKING:
    from truckllm.testing.mock import MockUpstream

# 1x1 transparent PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
AUDIO_CHUNK = 4096


def parse_form(content_type: str, raw: bytes) -> dict[str, Any]:
    """A ``multipart/form-data`` body: text fields as str, files as (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    out: dict[str, Any] = {}
    if not msg.is_multipart():
        return out
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data: Any = part.get_payload(decode=True)
        filename = part.get_filename()
        if filename is not None:
            out[str(name)] = (filename, data)
        else:
            out[str(name)] = (data or b"").decode()
    return out


class MediaAPI:
    """The handlers, over one :class:`MockUpstream`'s behaviours."""

    def __init__(self, mock: MockUpstream) -> None:
        self.mock = mock
        self.chunk_delay = 0.0  # seconds between speech chunks
        self.speech_bytes = 64 * 1024  # audio length of every speech answer
        # set from the test's thread: the rest of the audio goes out
        self.speech_gate: threading.Event | None = None
        self.forms: list[dict[str, Any]] = []  # every upload, parsed

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/completions", self.completions),
            web.post("/v1/moderations", self.moderations),
            web.post("/v1/images/generations", self.images),
            web.post("/v1/audio/speech", self.speech),
            web.post("/v1/audio/transcriptions", self.transcribe),
            web.post("/v1/audio/translations", self.transcribe),
        ]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self.mock._begin(request)
        if resp is not None:
            return resp
        n = d.reply_tokens if d.reply_tokens is not None else self.mock.reply_words
        words = [f"word{i}" for i in range(n)]
        prompt_tokens = max(1, len(orjson.dumps(body.get("prompt", ""))) // 4)
        p, c, _ = reported_usage(d.usage, prompt_tokens, len(words))
        usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        base = {
            "id": f"cmpl-mock{next(self.mock._ids):08d}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model")),
            "system_fingerprint": "fp_mock",
        }
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            extra = {"usage": None} if include else {}

            def choice(text: str, finish: str | None) -> dict[str, Any]:
                c = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                return {**base, "choices": [c], **extra}

            events: list[Event] = [choice(" " + w, None) for w in words]
            events.append(choice("", "stop"))
            if include:
                events.append({**base, "choices": [], "usage": usage})
            events.append("[DONE]")
            return await send_stream(
                request,
                events,
                _sse,
                headers={"Content-Type": "text/event-stream; charset=utf-8"},
            )
        text = " " + " ".join(words)
        whole = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        out = {**base, "choices": [whole], "usage": usage}
        return await answer(request, orjson.dumps(out), _JSON, d.fault)

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self.mock._begin(request)
        if resp is not None:
            return resp
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        results = []
        for item in items:
            flagged = "kill" in str(item).lower()
            results.append(
                {
                    "flagged": flagged,
                    "categories": {"violence": flagged, "hate": False},
                    "category_scores": {"violence": 0.9 if flagged else 0.01, "hate": 0.001},
                    "category_applied_input_types": {"violence": ["text"], "hate": ["text"]},
                }
            )
        out = {
            "id": f"modr-mock{next(self.mock._ids):08d}",
            "model": str(body.get("model")),
            "results": results,
        }
        return await answer(request, orjson.dumps(out), _JSON, d.fault)

    async def images(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self.mock._begin(request)
        if resp is not None:
            return resp
        n = int(body.get("n") or 1)
        data = [{"b64_json": base64.b64encode(PNG).decode()} for _ in range(n)]
        out: dict[str, Any] = {"created": int(time.time()), "data": data}
        if str(body.get("model", "")).startswith("gpt-image"):
            prompt = max(1, len(str(body.get("prompt"))) // 4)
            out["usage"] = {
                "input_tokens": prompt,
                "output_tokens": 272 * n,
                "total_tokens": prompt + 272 * n,
                "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
            }
        return await answer(request, orjson.dumps(out), _JSON, d.fault)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        body, d, resp = await self.mock._begin(request)
        if resp is not None:
            return resp
        fmt = str(body.get("response_format") or "mp3")
        ctype = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm"}.get(fmt, "audio/mpeg")
        out = web.StreamResponse(status=200, headers={"Content-Type": ctype})
        await out.prepare(request)
        audio = _audio(str(body.get("input")), self.speech_bytes)
        for i in range(0, len(audio), AUDIO_CHUNK):
            if i and self.speech_gate is not None:
                gate = self.speech_gate
                if not await asyncio.get_running_loop().run_in_executor(None, gate.wait, 10.0):
                    assert request.transport is not None
                    request.transport.abort()  # the client never got the first chunk
                    return out
            if d.fault == "cut" and i >= len(audio) // 2:
                assert request.transport is not None
                request.transport.abort()
                return out
            await out.write(audio[i : i + AUDIO_CHUNK])
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await out.write_eof()
        return out

    async def transcribe(self, request: web.Request) -> web.StreamResponse:
        form, d, resp = await self.mock._begin(request, form=True)
        if resp is not None:
            return resp
        self.forms.append(form)
        file = form.get("file")
        size = len(file[1]) if isinstance(file, tuple) else 0
        text = f"mock transcript of {size} bytes"
        fmt = form.get("response_format") or "json"
        if form.get("stream") == "true":  # OpenAI's transcript events, the usage in the last
            usage = {"type": "tokens", "input_tokens": 14, "output_tokens": 6, "total_tokens": 20}
            done: Event = {
                "type": "transcript.text.done",
                "text": text,
                "logprobs": [],
                "usage": usage,
            }
            deltas: list[Event] = [
                {"type": "transcript.text.delta", "delta": w, "logprobs": []}
                for w in _pieces(text)
            ]
            return await send_stream(
                request,
                [*deltas, done],
                _sse,
                headers={"Content-Type": "text/event-stream; charset=utf-8"},
            )
        if fmt == "text":
            return await answer(request, text.encode(), {"Content-Type": "text/plain"}, d.fault)
        out: dict[str, Any] = {"text": text}
        if str(form.get("model", "")).startswith("gpt-4o"):
            out["usage"] = {
                "type": "tokens",
                "input_tokens": 14,
                "output_tokens": 6,
                "total_tokens": 20,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
            }
        else:
            out["usage"] = {"type": "duration", "seconds": 3}
        return await answer(request, orjson.dumps(out), _JSON, d.fault)


_JSON = {"Content-Type": "application/json"}


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(ev: Event) -> bytes:
    if isinstance(ev, str):
        return b"data: " + ev.encode() + b"\n\n"
    return b"data: " + orjson.dumps(ev) + b"\n\n"


def _audio(text: str, size: int) -> bytes:
    """Audio-like bytes: an MP3 frame header, then a pattern from the text."""
    seed = (text.encode() or b"x") * (size // max(len(text), 1) + 1)
    return (b"\xff\xfb\x90\x64" + seed)[:size]
