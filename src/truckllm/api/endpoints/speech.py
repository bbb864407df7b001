"""``POST /v1/audio/speech``: text to speech, passed through to OpenAI-type providers only.
The audio goes to the client as the upstream sends it, never held whole; until its first
chunk another key or provider may serve. A break after that cuts the connection (audio has no
error event), so the client sees an incomplete body, never a complete-looking file."""

from __future__ import annotations

from dataclasses import replace

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def speech(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        if not isinstance(body.get("input"), str):
            raise invalid_request("'input' is required and must be a string.", param="input")
        p = proxied(client, "speech", body, raw)
        await proxy.run(req, replace(p, stream=True, label="audio.speech"))

    return [Route("POST", "/v1/audio/speech", speech, name="audio.speech")]
