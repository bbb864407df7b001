"""``POST /v1/moderations``: OpenAI's moderation models, passed through to OpenAI-type
providers only. The upstream reports no usage: the cost is 0."""

from __future__ import annotations

import orjson

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request

DEFAULT_MODEL = "omni-moderation-latest"


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def moderations(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        inp = body.get("input")
        if not isinstance(inp, str | list) or (isinstance(inp, list) and not inp):
            raise invalid_request(
                "'input' is required and must be a string or a non-empty array.", param="input"
            )
        if body.get("model") is None:  # OpenAI's default, routed by that name
            body = {**body, "model": DEFAULT_MODEL}
            raw = orjson.dumps(body)
        await proxy.run(req, proxied(client, "moderations", body, raw))

    return [Route("POST", "/v1/moderations", moderations, name="moderations")]
