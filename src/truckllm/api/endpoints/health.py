"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it serves: 200 ``ready``, or
``degraded`` with reasons while a dependency such as a shared store is down but the gateway
serves on local state; 503 while draining)."""

from __future__ import annotations

import orjson

from truckllm import __version__
from truckllm.api.asgi import send_json
from truckllm.api.routes import Request, Route
from truckllm.api.services import Services

_HEALTHY = orjson.dumps({"status": "ok", "version": __version__})


async def healthz(req: Request) -> None:
    await send_json(req.send, 200, _HEALTHY, req.id)


def routes(services: Services) -> list[Route]:
    readiness = services.readiness

    async def readyz(req: Request) -> None:
        if readiness.draining:
            await send_json(req.send, 503, b'{"status":"draining"}', req.id)
            return
        problems = readiness.problems()
        body = {
            "status": "degraded" if problems else "ready",
            "problems": problems,
            "config": req.rt.config.source,
        }
        await send_json(req.send, 200, orjson.dumps(body), req.id)

    return [Route("GET", "/healthz", healthz), Route("GET", "/readyz", readyz)]
