"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: ``multipart/form-data``
uploads, routed by the form's ``model`` field and passed through to OpenAI-type providers only.

The upload is read once into one buffer, bounded by ``server.max_body_bytes``, and held as it
came; only the boundaries and the parts' header blocks are scanned to find ``model``
(:func:`truckllm.providers.openai.media.form_field`). The provider sends views of that buffer,
with the ``model`` value replaced when the route names another model, written as the upstream's
socket takes them: the gateway never holds a second copy. Whole answers only (``stream`` in the
form is refused)."""

from __future__ import annotations

from typing import Any, cast

from truckllm.api.asgi import read_upload
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import Proxied, authenticate
from truckllm.errors import invalid_request
from truckllm.providers.base import OPENAI_MULTIPART, Endpoint, Inbound
from truckllm.providers.openai.media import boundary_of, form_field


def _untranslatable(body: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("audio uploads go to OpenAI-type providers only")


async def _proxied(req: Request, client: str, endpoint: Endpoint, label: str) -> Proxied:
    ctype = ""
    for name, value in req.scope["headers"]:
        if name == b"content-type":
            ctype = value.decode("latin-1")
    boundary = boundary_of(ctype)
    if boundary is None:
        raise invalid_request("The request body must be multipart/form-data with a boundary.")
    upload = await read_upload(req.scope, req.receive, req.rt.config.server.max_body_bytes)
    # Held as it grew, never copied into bytes: only measured and scanned on the way, and
    # written upstream from views of it (the ``openai`` provider's form send).
    raw = cast(bytes, upload)
    span = form_field(raw, boundary, "model")
    if span is None:
        raise invalid_request("you must provide a model parameter", param="model")
    model = raw[span[0] : span[1]].decode("utf-8", "replace").strip()
    if not model:
        raise invalid_request("you must provide a model parameter", param="model")
    stream = form_field(raw, boundary, "stream")
    if stream is not None and raw[stream[0] : stream[1]].strip().lower() == b"true":
        raise invalid_request("Streamed transcription is not supported by the gateway.")
    body: dict[str, Any] = {"model": model}
    inbound = Inbound(OPENAI_MULTIPART, body, raw, {"content-type": ctype}, _untranslatable)
    return Proxied(client, endpoint, body, raw, model, False, False, inbound, label=label)


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def transcriptions(req: Request) -> None:
        client = authenticate(req)
        p = await _proxied(req, client, "transcriptions", "audio.transcriptions")
        await proxy.run(req, p)

    async def translations(req: Request) -> None:
        client = authenticate(req)
        p = await _proxied(req, client, "translations", "audio.translations")
        await proxy.run(req, p)

    return [
        Route("POST", "/v1/audio/transcriptions", transcriptions, name="audio.transcriptions"),
        Route("POST", "/v1/audio/translations", translations, name="audio.translations"),
    ]
