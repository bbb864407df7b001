"""A committed whole answer whose body is relayed as it arrives (a large passthrough body, see
:attr:`Reply.rest`): its attempt is reported when the body has all come, with the usage read
from its end, or as broken if the upstream fails on the way."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

from truckllm.gateway.failures import client_error
from truckllm.gateway.served import Served, StreamBroken
from truckllm.providers.base import UpstreamError
from truckllm.routing import Outcome, OutcomeKind, parse_quota


def pending(served: Served) -> Served:
    """``served`` with the outcome reported should its body never be relayed (the client gone
    first): cancelled. :func:`relay_body` replaces it with what came of the body."""
    served.outcome = Outcome(OutcomeKind.CANCELLED, served.reply.status)
    return served


async def relay_body(served: Served) -> AsyncGenerator[bytes, None]:
    """The body: its beginning, then the rest as it arrives. Reports the attempt exactly once,
    when the body ends, breaks (:class:`StreamBroken`), or the consumer goes away."""
    reply = served.reply
    assert reply.body is not None and reply.rest is not None
    kind = OutcomeKind.CANCELLED
    try:
        yield reply.body
        async for chunk in reply.rest:
            yield chunk
        kind = OutcomeKind.SUCCESS
    except UpstreamError as exc:
        kind = OutcomeKind.STREAM_BROKEN
        raise StreamBroken(client_error(exc)) from exc
    finally:
        quota = parse_quota(reply.headers) if kind is OutcomeKind.SUCCESS else None
        latency = time.perf_counter() - served.started
        served.outcome = Outcome(kind, reply.status, latency, None, reply.usage, quota)
        served.settle()
        await reply.aclose()


async def whole_body(served: Served) -> None:
    """Read a relayed body whole into ``reply.body``, for a consumer that needs all of it (a
    translation to the client's dialect, a stored response). Raises :class:`StreamBroken`
    before anything was sent, so the client gets the error as an answer."""
    parts: list[bytes] = []
    body = relay_body(served)
    try:
        async for chunk in body:
            parts.append(chunk)
    finally:
        await body.aclose()
    served.reply.body, served.reply.rest = b"".join(parts), None
