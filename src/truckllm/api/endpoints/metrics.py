"""``GET <metrics.path>``: the Prometheus scrape target (no authentication), when metrics are on."""

from __future__ import annotations

from truckllm.api.routes import Request, Route
from truckllm.api.services import Services
from truckllm.telemetry.hub import METRICS_CONTENT_TYPE


def routes(services: Services) -> list[Route]:
    telemetry = services.telemetry
    if telemetry.metrics_path is None:
        return []

    async def metrics(req: Request) -> None:
        body = telemetry.render_metrics(req.rt.router)
        await req.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", METRICS_CONTENT_TYPE),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await req.send({"type": "http.response.body", "body": body})

    return [Route("GET", telemetry.metrics_path, metrics)]
