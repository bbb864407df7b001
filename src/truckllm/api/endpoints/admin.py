"""``/admin/v1/...``: the admin API (:mod:`truckllm.admin`), behind the admin key."""

from __future__ import annotations

from truckllm.api.asgi import read_body, send_json
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services

_MAX_ADMIN_BODY = 1024 * 1024


def routes(services: Services) -> list[Route]:
    admin = services.admin

    async def handle(req: Request) -> None:
        call = admin.prepare(req.rt, req.scope)  # authorised before a byte of the body is read
        body = b""
        if req.scope["method"] == "POST":
            limit = min(req.rt.config.server.max_body_bytes, _MAX_ADMIN_BODY)
            body = await read_body(req.scope, req.receive, limit)
        status, payload = await call.run(body)
        await send_json(req.send, status, payload, req.id)

    return [Route("*", "/admin/", handle, prefix=True)]  # the admin API answers 405 itself
