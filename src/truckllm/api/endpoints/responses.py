"""OpenAI's Responses API: ``POST /v1/responses`` (JSON and SSE), ``GET``/``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and ``POST
/v1/responses/input_tokens``.

To an OpenAI-type provider with ``responses_api`` the request passes through as it came (only
``model`` rewritten) and the answer comes back byte for byte; to any other provider it is
translated to the internal form and the answer back (:mod:`truckllm.dialects.openai_responses`).
Built-in tools the target cannot run are left out and named in ``x-truckllm-dropped-tools``.
Responses are kept in the state store (:mod:`truckllm.api.conversations`) unless ``store: false``.
Errors are OpenAI's shape.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from truckllm.api.asgi import json_type, send_json
from truckllm.api.conversations import Conversations, ResponsesKeeper, expand, with_ids
from truckllm.api.responses_upstream import forward
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import Proxied, authenticate, read_json
from truckllm.dialects.openai_responses import (
    DIALECT,
    Echo,
    ResponsesEgress,
    TranslationError,
    functions,
    input_items,
    to_chat,
)
from truckllm.errors import APIError, invalid_request
from truckllm.gateway import Route as ModelRoute
from truckllm.gateway import Runtime, Target
from truckllm.providers.base import Inbound
from truckllm.routing import estimate

PREFIX = "/v1/responses/"


def _check(body: dict[str, Any]) -> tuple[str, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", param="model")
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise invalid_request(
            f"Invalid type for 'input': expected a string or an array, got {json_type(value)}.",
            param="input",
        )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request(
            f"Invalid type for 'stream': expected a boolean, got {json_type(stream)}.",
            param="stream",
        )
    return model, bool(stream)


def not_found(response_id: str, param: str | None = None) -> APIError:
    what = "Previous response" if param else "Response"
    return APIError(
        400 if param else 404,
        f"{what} with id '{response_id}' not found.",
        param=param,
        type_="invalid_request_error",
        code="previous_response_not_found" if param else None,
    )


def _session(req: Request) -> str | None:
    """Codex's ``session-id`` header, recorded as the request's session."""
    for name, value in req.scope["headers"]:
        if name == b"session-id" and 0 < len(value) <= 128:
            return str(value.decode("latin-1"))
    return None


def _pinned(rt: Runtime, model: str, upstream: Any) -> tuple[ModelRoute, frozenset[str]]:
    """The route to the provider and key that hold an upstream's response."""
    provider = upstream.get("provider") if isinstance(upstream, dict) else None
    key = upstream.get("key") if isinstance(upstream, dict) else None
    cfg = next((p for p in rt.config.providers if p.id == provider), None)
    if cfg is None or not isinstance(key, str):
        raise APIError(
            409,
            "The provider that holds the previous response is no longer configured.",
            type_="invalid_request_error",
            param="previous_response_id",
        )
    route = rt.resolver.resolve(model)
    target = next((t for t in route.targets if t.provider_id == provider), None) if route else None
    target = target or Target(cfg.id, model)
    others = frozenset(k.id for k in cfg.keys if k.id != key)
    return ModelRoute((target,)), others


async def _proxied(
    req: Request, conversations: Conversations, client: str, body: dict[str, Any], raw: bytes
) -> Proxied:
    """The request for the gateway: a kept previous response's conversation spelled out, or
    the route pinned to the key that holds an upstream's; the egress and what to keep."""
    model, stream = _check(body)
    echo_body, history = body, []
    route, exclude = None, frozenset[str]()
    prev = body.get("previous_response_id")
    if prev is not None:
        record = await conversations.load(str(prev), client) if isinstance(prev, str) else None
        if record is None:
            raise not_found(str(prev), "previous_response_id")
        if isinstance(record.get("items"), list):
            history = record["items"]
            body = expand(body, history)
            raw = orjson.dumps(body)
        else:
            route, exclude = _pinned(req.rt, model, record.get("upstream"))
    try:
        _, dropped = functions(body.get("tools"))
        inputs = with_ids(input_items(echo_body.get("input")))
    except TranslationError as exc:
        raise invalid_request(exc.message) from None
    namespaces = frozenset(
        t["name"]
        for t in body.get("tools") or ()
        if isinstance(t, dict) and t.get("type") == "namespace"
    )
    egress = ResponsesEgress(Echo(model, echo_body, namespaces))
    settings = req.rt.config.storage.responses
    keeper = None
    if echo_body.get("store", True) is not False:
        keeper = ResponsesKeeper(
            conversations, egress, client, inputs, history, settings.ttl, settings.max_bytes
        )
    headers = ((b"x-truckllm-dropped-tools", ",".join(dropped).encode()),) if dropped else ()
    inbound = Inbound(DIALECT, body, raw, {}, to_chat, tuple(dropped))
    return Proxied(
        client,
        "chat",
        body,
        raw,
        model,
        stream,
        False,
        inbound,
        egress,
        label="responses",
        session_id=_session(req),
        translated_headers=headers,
        keeper=keeper,
        route=route,
        exclude_keys=exclude,
    )


def routes(services: Services) -> list[Route]:
    proxy = services.proxy
    conversations = Conversations(services.kv)

    async def create(req: Request) -> None:
        client = authenticate(req)
        body, raw = await read_json(req)
        await proxy.run(req, await _proxied(req, conversations, client, body, raw))

    async def input_tokens(req: Request) -> None:
        """An estimate from the request's text, as the gateway counts for limits."""
        authenticate(req)
        body, raw = await read_json(req)
        try:
            chat = to_chat({"model": "m", **body})
        except TranslationError as exc:
            raise invalid_request(exc.message) from None
        prompt = estimate("chat", chat, len(raw), 1).prompt_tokens
        answer = {"object": "response.input_tokens", "input_tokens": prompt}
        await send_json(req.send, 200, orjson.dumps(answer), req.id)

    async def by_id(req: Request) -> None:
        client = authenticate(req)
        rest = str(req.scope["path"])[len(PREFIX) :]
        response_id, _, tail = rest.partition("/")
        if tail not in ("", "input_items") or (tail and req.scope["method"] != "GET"):
            raise APIError(404, f"Unknown request URL: {req.scope['method']} {req.scope['path']}.")
        record = await conversations.load(response_id, client)
        if req.scope["method"] == "DELETE":
            await _delete(req, conversations, client, response_id, record)
            return
        if record is None or not isinstance(record.get("response"), dict):
            raise not_found(response_id)
        if tail:
            query = parse_qs(bytes(req.scope.get("query_string") or b"").decode("latin-1"))
            answer = _page(record.get("input") or [], query)
        else:
            answer = record["response"]
        await send_json(req.send, 200, orjson.dumps(answer), req.id)

    return [
        Route("POST", "/v1/responses", create, name="responses"),
        Route("POST", "/v1/responses/input_tokens", input_tokens, name="responses"),
        Route("GET", PREFIX, by_id, name="responses", prefix=True),
        Route("DELETE", PREFIX, by_id, name="responses", prefix=True),
    ]


async def _delete(
    req: Request,
    conversations: Conversations,
    client: str,
    response_id: str,
    record: dict[str, Any] | None,
) -> None:
    """Forget a response: an upstream's own is deleted there too, and its answer relayed."""
    if record is None:
        raise not_found(response_id)
    upstream = None
    if "upstream" in record:
        upstream = await forward(req.rt, "DELETE", response_id, record["upstream"])
    if upstream is not None and upstream[0] not in (200, 204, 404):
        await send_json(req.send, upstream[0], upstream[1], req.id)  # kept: it is still there
        return
    deleted = await conversations.delete(response_id, client)
    if upstream is not None:
        await send_json(req.send, upstream[0], upstream[1], req.id)
        return
    if not deleted:
        raise not_found(response_id)
    answer = {"id": response_id, "object": "response", "deleted": True}
    await send_json(req.send, 200, orjson.dumps(answer), req.id)


def _page(items: list[Any], query: dict[str, list[str]]) -> dict[str, Any]:
    """One page of a response's input items: ``order`` (``desc`` by default, as OpenAI's),
    ``after`` (an item id) and ``limit`` (1 to 100, 20 by default)."""
    order = (query.get("order") or ["desc"])[0]
    data = list(reversed(items)) if order != "asc" else list(items)
    after = (query.get("after") or [""])[0]
    if after:
        ids = [i.get("id") for i in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = min(max(int((query.get("limit") or ["20"])[0]), 1), 100)
    except ValueError:
        raise invalid_request("Invalid 'limit': expected an integer.", param="limit") from None
    page = data[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(data) > limit,
    }
