"""A large whole answer sent as it arrives from the upstream (:attr:`Reply.rest`): the client's
back-pressure paces the upstream read, so the body is never held whole. Its status and headers
go out first; an upstream failure after them (a broken connection, a body that grows past
``server.max_response_bytes``) can no longer be an error answer, so the connection is cut and
the client sees a short body, as a proxy does."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from truckllm.api.asgi import Send
from truckllm.gateway import Served, StreamBroken, relay_body
from truckllm.telemetry.record import RequestRecord

log = logging.getLogger("truckllm.api")

Headers = list[tuple[bytes, bytes]]


def _length(headers: Mapping[str, str]) -> Headers:
    """The upstream's ``content-length`` when the body is relayed byte for byte (identity)."""
    length = headers.get("content-length", "").strip()
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if length.isdigit() and encoding == "identity":
        return [(b"content-length", length.encode())]
    return []  # the server chunks it


async def send_relayed(send: Send, served: Served, rec: RequestRecord, headers: Headers) -> None:
    """Status and headers, then the body piece by piece. The usage (read from the body's end)
    is recorded after the body: no ``x-truckllm-cost-usd`` header on such an answer."""
    reply = served.reply
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-type", reply.content_type.encode()),
                *_length(reply.headers),
                *headers,
            ],
        }
    )
    body = relay_body(served)
    try:
        async for chunk in body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except StreamBroken as broken:
        rec.error_code = broken.error.code or "upstream_error"
        log.warning(
            "upstream broke off a relayed body after its first byte: connection cut",
            extra={"request_id": rec.request_id, "error": broken.error.message},
        )
        return  # no end of the body: the server closes the connection
    finally:
        await body.aclose()
    await send({"type": "http.response.body", "body": b""})
