"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API.

To an ``anthropic`` provider the request passes through as it came (only ``model`` rewritten when
an alias maps it, ``anthropic-version`` and ``anthropic-beta`` forwarded) and the answer comes
back byte for byte; to any other provider it is translated to the internal form and the answer
back (:mod:`truckllm.dialects.anthropic_messages`). Errors are in Anthropic's shape. Claude Code's
``X-Claude-Code-Session-Id`` is recorded as the request's ``session_id``.
"""

from __future__ import annotations

import orjson

from truckllm.api.asgi import json_type, send_json
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import Proxied, authenticate, read_json
from truckllm.dialects.anthropic_messages import (
    DIALECT,
    MessagesEgress,
    api_error_body,
    to_chat,
)
from truckllm.errors import invalid_request
from truckllm.providers.base import Inbound
from truckllm.routing import estimate

FORWARDED = (b"anthropic-version", b"anthropic-beta")
SESSION = b"x-claude-code-session-id"


def _header_values(req: Request) -> tuple[dict[str, str], str | None]:
    forwarded: dict[str, str] = {}
    session = None
    for name, value in req.scope["headers"]:
        if name in FORWARDED:
            text = value.decode("latin-1")
            key = name.decode()
            forwarded[key] = f"{forwarded[key]},{text}" if key in forwarded else text
        elif name == SESSION and 0 < len(value) <= 128:
            session = value.decode("latin-1")
    return forwarded, session


def _check(body: dict[str, object]) -> tuple[str, bool, list[str]]:
    """The fields every target needs, checked before routing: model, stream, stop sequences."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required", param="model")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise invalid_request("messages: Field required (a non-empty array)", param="messages")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid_request("max_tokens: Field required (a positive integer)")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request(f"stream: expected a boolean, got {json_type(stream)}")
    stop = body.get("stop_sequences")
    stops = [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []
    return model, bool(stream), stops


def routes(services: Services) -> list[Route]:
    proxy = services.proxy

    async def messages(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        model, stream, stops = _check(body)
        headers, session = _header_values(req)
        inbound = Inbound(DIALECT, body, raw, headers, to_chat)
        egress = MessagesEgress(model, stops)
        await proxy.run(
            req,
            Proxied(
                client,
                "chat",
                body,
                raw,
                model,
                stream,
                False,
                inbound,
                egress,
                label="messages",
                session_id=session,
            ),
        )

    async def count_tokens(req: Request) -> None:
        """Anthropic's own count when the model's route has an Anthropic target (forwarded
        there, as the client sent it); else an estimate from the request's text, as the gateway
        counts for limits (about four characters a token, a fixed amount per image)."""
        client = authenticate(req)
        body, raw = await read_json(req)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid_request("model: Field required", param="model")
        if not isinstance(body.get("messages"), list):
            raise invalid_request("messages: Field required", param="messages")
        route = req.rt.resolver.resolve(model)
        if route is not None and any(
            DIALECT in getattr(req.rt.providers[pid], "dialects", ()) for pid in route.provider_ids
        ):
            headers, session = _header_values(req)
            inbound = Inbound(DIALECT, body, raw, headers, to_chat)
            p = Proxied(
                client, "count_tokens", body, raw, model, False, False, inbound, session_id=session
            )
            await proxy.run(req, p)
            return
        prompt = estimate("chat", body, len(raw), 1).prompt_tokens
        await send_json(req.send, 200, orjson.dumps({"input_tokens": prompt}), req.id)

    return [
        Route("POST", "/v1/messages", messages, name="messages", errors=api_error_body),
        Route(
            "POST",
            "/v1/messages/count_tokens",
            count_tokens,
            name="messages",
            errors=api_error_body,
        ),
    ]
