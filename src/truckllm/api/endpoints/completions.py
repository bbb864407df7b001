"""``POST /v1/completions``: OpenAI's legacy text completions, JSON or SSE. Passed through to
OpenAI-type providers only; usage from the body or the stream's usage chunk, as chat's."""

from __future__ import annotations

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def completions(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str | list):
            raise invalid_request(
                "'prompt' must be a string, an array of strings, or an array of tokens.",
                param="prompt",
            )
        await proxy.run(req, proxied(client, "completions", body, raw))

    return [Route("POST", "/v1/completions", completions, name="completions")]
