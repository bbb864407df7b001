"""``POST /v1/embeddings``: OpenAI embeddings."""

from __future__ import annotations

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def embeddings(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        inp = body.get("input")
        if not isinstance(inp, str | list) or (isinstance(inp, list) and not inp):
            raise invalid_request(
                "'input' is required and must be a string or a non-empty array.", param="input"
            )
        await proxy.run(req, proxied(client, "embeddings", body, raw))

    return [Route("POST", "/v1/embeddings", embeddings, name="embeddings")]
