"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: ``multipart/form-data``
uploads, routed by the form's ``model`` field and passed through to OpenAI-type providers only.

The upload is never held whole (:class:`truckllm.api.upload.Upload`): the endpoint reads it only
until the form's ``model`` field has gone by (:class:`~truckllm.providers.openai.multipart.FormScanner`;
clients that put it first, as the Python SDK does, are read a few KiB into their body; clients
that put the file first are read to the field, into the spool), then the upstream attempt writes
it on as the client sends the rest, with the ``model`` value replaced when the route names
another model. A retry or failover sends it again from the spool. Whole answers only: a
``stream`` field seen before the body goes upstream is refused."""

from __future__ import annotations

import contextlib
from typing import Any

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import Proxied, authenticate
from truckllm.api.upload import Upload
from truckllm.errors import invalid_request
from truckllm.http.server import DISCONNECT_EXTENSION
from truckllm.providers.base import OPENAI_MULTIPART, Endpoint, Inbound
from truckllm.providers.openai.multipart import Form, FormScanner, boundary_of


def _untranslatable(body: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("audio uploads go to OpenAI-type providers only")


async def _proxied(
    req: Request,
    client: str,
    upload: Upload,
    ctype: str,
    boundary: bytes,
    endpoint: Endpoint,
    label: str,
) -> Proxied:
    headers = req.scope["headers"]
    extensions = req.scope.get("extensions") or {}
    if DISCONNECT_EXTENSION not in extensions or all(n != b"content-length" for n, _ in headers):
        # Another ASGI server watches for the disconnect with receive(), and a chunked body's
        # length is known at its end: read it all (into the spool) before anything goes on.
        await upload.read_all()
    scanner = FormScanner(boundary, ("model", "stream"))
    async with contextlib.aclosing(upload.chunks()) as chunks:
        async for chunk in chunks:
            scanner.feed(chunk)
            if "model" in scanner.fields or scanner.done:
                break
    field = scanner.fields.get("model")
    model = field.value.decode("utf-8", "replace").strip() if field is not None else ""
    if field is None or not model:
        raise invalid_request("you must provide a model parameter", param="model")
    stream = scanner.fields.get("stream")
    if stream is not None and stream.value.strip().lower() == b"true":
        raise invalid_request("Streamed transcription is not supported by the gateway.")
    body: dict[str, Any] = {"model": model}
    form = Form(upload, field)
    inbound = Inbound(
        OPENAI_MULTIPART, body, b"", {"content-type": ctype}, _untranslatable, source=form
    )
    return Proxied(client, endpoint, body, b"", model, False, False, inbound, label=label)


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def serve(req: Request, endpoint: Endpoint, label: str) -> None:
        client = authenticate(req)
        ctype = ""
        for name, value in req.scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
        boundary = boundary_of(ctype)
        if boundary is None:
            raise invalid_request("The request body must be multipart/form-data with a boundary.")
        upload = Upload(req.scope, req.receive, req.rt.config.server.max_body_bytes)
        try:
            p = await _proxied(req, client, upload, ctype, boundary, endpoint, label)
            await proxy.run(req, p)
        finally:
            upload.close()

    async def transcriptions(req: Request) -> None:
        await serve(req, "transcriptions", "audio.transcriptions")

    async def translations(req: Request) -> None:
        await serve(req, "translations", "audio.translations")

    return [
        Route("POST", "/v1/audio/transcriptions", transcriptions, name="audio.transcriptions"),
        Route("POST", "/v1/audio/translations", translations, name="audio.translations"),
    ]
