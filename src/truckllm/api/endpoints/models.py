"""``GET /v1/models`` and ``GET /v1/models/{id}``: aliases and the models providers list."""

from __future__ import annotations

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


async def list_models(req: Request) -> None:
    authenticate(req)
    resolver, created = req.rt.resolver, req.rt.created
    data = [_model_obj(name, "truckllm", created) for name in resolver.aliases]
    seen = set(resolver.aliases)
    for name, targets in resolver.models.items():
        if name not in seen:
            seen.add(name)
            data.append(_model_obj(name, targets[0].provider_id, created))
    await send_json(req.send, 200, orjson.dumps({"object": "list", "data": data}), req.id)


async def retrieve_model(req: Request) -> None:
    authenticate(req)
    name = req.scope["path"][len(PREFIX) :]
    resolver = req.rt.resolver
    route = resolver.resolve(name)
    if route is None:
        raise model_not_found(name)
    owner = "truckllm" if name in resolver.aliases else route.targets[0].provider_id
    body = orjson.dumps(_model_obj(name, owner, req.rt.created))
    await send_json(req.send, 200, body, req.id)


def routes(services: Services) -> list[Route]:
    return [
        Route("GET", "/v1/models", list_models, name="models"),
        Route("GET", PREFIX, retrieve_model, prefix=True),
    ]
