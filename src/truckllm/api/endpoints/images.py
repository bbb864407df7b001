"""``POST /v1/images/generations``: image generation, JSON, passed through to OpenAI-type
providers only. Usage where the upstream reports tokens (``gpt-image-1``), else none."""

from __future__ import annotations

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def generations(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise invalid_request("'prompt' is required and must be a string.", param="prompt")
        if body.get("stream"):
            raise invalid_request(
                "Streamed image generation is not supported by the gateway.", param="stream"
            )
        await proxy.run(req, proxied(client, "images", body, raw))

    return [Route("POST", "/v1/images/generations", generations, name="images")]
