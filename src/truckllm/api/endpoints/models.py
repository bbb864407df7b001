"""``GET /v1/models`` and ``GET /v1/models/{id}``: aliases and the models providers list, in
OpenAI's shape, or in Anthropic's when the request carries ``anthropic-version`` (as Anthropic's
SDKs and Claude Code's model discovery send it)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from truckllm.api.asgi import send_json
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.api.steps import authenticate
from truckllm.errors import model_not_found

PREFIX = "/v1/models/"


def _model_obj(name: str, owner: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner}


def _anthropic_obj(name: str, created: int) -> dict[str, Any]:
    when = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": name, "display_name": name, "created_at": when}


def _anthropic(req: Request) -> bool:
    return any(name == b"anthropic-version" for name, _ in req.scope["headers"])


async def list_models(req: Request) -> None:
    authenticate(req)
    resolver, created = req.rt.resolver, req.rt.created
    owners = dict.fromkeys(resolver.aliases, "truckllm")
    for name, targets in resolver.models.items():
        owners.setdefault(name, targets[0].provider_id)
    if _anthropic(req):
        data = [_anthropic_obj(name, created) for name in owners]
        page = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        await send_json(req.send, 200, orjson.dumps(page), req.id)
        return
    data = [_model_obj(name, owner, created) for name, owner in owners.items()]
    await send_json(req.send, 200, orjson.dumps({"object": "list", "data": data}), req.id)


async def retrieve_model(req: Request) -> None:
    authenticate(req)
    name = req.scope["path"][len(PREFIX) :]
    resolver = req.rt.resolver
    route = resolver.resolve(name)
    if route is None:
        raise model_not_found(name)
    owner = "truckllm" if name in resolver.aliases else route.targets[0].provider_id
    obj = (
        _anthropic_obj(name, req.rt.created)
        if _anthropic(req)
        else _model_obj(name, owner, req.rt.created)
    )
    body = orjson.dumps(obj)
    await send_json(req.send, 200, body, req.id)


def routes(services: Services) -> list[Route]:
    return [
        Route("GET", "/v1/models", list_models, name="models"),
        Route("GET", PREFIX, retrieve_model, prefix=True),
    ]
