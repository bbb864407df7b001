"""``POST /v1/chat/completions``: OpenAI chat, JSON or SSE."""

from __future__ import annotations

from truckllm.api.asgi import json_type
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate, proxied, read_json
from truckllm.errors import invalid_request


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def chat(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid_request(
                "'messages' is required and must be a non-empty array."
                if messages is None or messages == []
                else f"Invalid type for 'messages': expected an array, got {json_type(messages)}.",
                param="messages",
            )
        await proxy.run(req, proxied(client, "chat", body, raw))

    return [Route("POST", "/v1/chat/completions", chat, name="chat")]
