"""Sending a served reply to the client: a whole body with its cost, or a stream event batch by
event batch, ended by an error event (never a fake ``[DONE]``) when the upstream breaks."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from truckllm.accounting import Accounting, format_usd
from truckllm.api.asgi import SSE_HEADERS, Send
from truckllm.api.relayed import send_relayed
from truckllm.api.steps import Egress, Keeper, StreamOut
from truckllm.errors import APIError
from truckllm.gateway import Served, StreamBroken, relay, whole_body
from truckllm.providers.direct import Push
from truckllm.telemetry.record import RequestRecord

log = logging.getLogger("truckllm.api")

Headers = list[tuple[bytes, bytes]]


def served_headers(request_id: str, served: Served) -> Headers:
    return [
        (b"x-request-id", request_id.encode()),
        (b"x-truckllm-provider", served.target.provider_id.encode()),
        (b"x-truckllm-key-id", served.pick.key.id.encode()),
        (b"x-truckllm-attempts", str(served.attempts).encode()),
    ]


async def send_whole(
    send: Send,
    served: Served,
    rec: RequestRecord,
    headers: Headers,
    accounting: Accounting,
    egress: Egress | None,
    keeper: Keeper | None = None,
) -> None:
    """The whole answer; through ``egress`` when it came in the internal form to a client of
    another dialect."""
    reply = served.reply
    if reply.rest is not None:  # a large body, still arriving
        if egress is None and keeper is None:
            await send_relayed(send, served, rec, headers)
            return
        try:
            await whole_body(served)  # translated or stored: needed whole
        except StreamBroken as broken:
            raise broken.error from broken
    assert reply.body is not None
    body, content_type = reply.body, reply.content_type
    if egress is not None:
        body, content_type = egress.whole(reply.status, body, reply.usage), "application/json"
    if keeper is not None and reply.status == 200:
        await keeper.whole(served, body)
    if reply.status == 429 and reply.retry_after is not None and math.isfinite(reply.retry_after):
        # Whatever the provider's form (header, RetryInfo), clients get seconds.
        headers.append((b"retry-after", str(max(math.ceil(reply.retry_after), 1)).encode()))
    if reply.usage is not None:
        nanos = accounting.cost_nanos(served.pick.key.pricing, reply.usage)
        rec.usage, rec.cost_usd = reply.usage, nanos / 1e9
        headers.append((b"x-truckllm-cost-usd", format_usd(nanos).encode()))
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    served.settle()


class Streams:
    """The streams being sent, so that a shutdown whose drain deadline comes before they end can
    close them properly: with an error event the SDKs raise, as after an upstream failure, rather
    than a cut connection. Used on the event loop only; O(1) per stream, nothing per event."""

    __slots__ = ("cutting", "tasks")

    def __init__(self) -> None:
        self.cutting = False
        self.tasks: set[asyncio.Task[object]] = set()

    def cut(self) -> int:
        """End every stream now with an error event; the number of streams cut."""
        self.cutting = True
        for task in self.tasks:
            task.cancel()
        return len(self.tasks)


def shutting_down() -> APIError:
    return APIError(
        503,
        "The gateway is shutting down and its drain deadline has passed: the stream was cut.",
        code="server_shutting_down",
        type_="api_error",
    )


class _Step:
    """What a stream's batch goes through on its way out: the client's dialect (``out``), the
    keeper's look, the first byte's time. Used by ``send_stream``'s loop and, as a plain writer
    (:meth:`pushing`), by the relay from the upstream's read callback."""

    __slots__ = ("keeper", "out", "rec", "t0")

    def __init__(
        self, rec: RequestRecord, t0: float, out: StreamOut | None, keeper: Keeper | None
    ) -> None:
        self.rec, self.t0, self.out, self.keeper = rec, t0, out, keeper

    def __call__(self, batch: bytes) -> bytes:
        """The bytes to send for ``batch`` (``b""``: none yet)."""
        if self.out is not None:
            batch = self.out.feed(batch)
            if not batch:
                return batch
        elif self.keeper is not None:
            self.keeper.observe(batch)
        rec = self.rec
        if rec.ttft_s is None:
            rec.ttft_s = time.perf_counter() - self.t0
        return batch

    def pushing(self, push: Push) -> Push:
        """``push`` behind this step; ``push`` itself when the step only times the first byte,
        which the stream's first batch (sent by ``send``, never pushed) has done."""
        if self.out is None and self.keeper is None:
            return push

        def through(batch: bytes) -> bool:
            out = self(batch)
            return push(out) if out else True

        return through


async def send_stream(
    send: Send,
    served: Served,
    rec: RequestRecord,
    headers: Headers,
    t0: float,
    egress: Egress | None,
    translate: bool,
    keeper: Keeper | None = None,
    streams: Streams | None = None,
    push: Push | None = None,
) -> None:
    """The stream, event batch by event batch as they arrive; through ``egress`` (the client's
    dialect, None for the internal form) when ``translate``. A break after the first byte, or
    the cut at the drain deadline (``streams``), ends the stream with an error event in the
    client's dialect, which the SDKs raise. With ``push`` (the server's plain writer), the
    batches after the first go through the same steps from the upstream's read callback and are
    written by it (see ``relay``)."""
    if keeper is not None:
        try:
            await keeper.stream_started(served)
        except BaseException:  # the relay that reports the attempt has not begun
            await served.abandon()
            raise
    ctype = served.reply.content_type
    binary = not ctype.startswith("text/event-stream")  # audio: relayed chunk by chunk
    head = [(b"content-type", ctype.encode()), *headers] if binary else SSE_HEADERS + headers
    await send({"type": "http.response.start", "status": 200, "headers": head})
    out = egress.stream() if egress is not None and translate else None
    step = _Step(rec, t0, out, keeper)
    events = relay(served, None if push is None else step.pushing(push))
    task = asyncio.current_task() if streams is not None else None
    if streams is not None and task is not None:
        streams.tasks.add(task)
    error: APIError | None = None
    try:
        async for batch in events:
            batch = step(batch)
            if batch:
                await send({"type": "http.response.body", "body": batch, "more_body": True})
        tail = out.finish() if out is not None else b""
        if keeper is not None:
            await keeper.stream_ended(served)
        if tail:
            await send({"type": "http.response.body", "body": tail, "more_body": True})
    except StreamBroken as broken:
        rec.error_code = broken.error.code or "stream_broken"
        log.warning(
            "stream broken after first byte",
            extra={"request_id": rec.request_id, "error": broken.error.message},
        )
        error = broken.error
    except asyncio.CancelledError:
        if streams is None or not streams.cutting or task is None:
            raise
        task.uncancel()
        error = shutting_down()
        rec.error_code = error.code
        log.warning("stream cut at the drain deadline", extra={"request_id": rec.request_id})
    finally:
        if streams is not None and task is not None:
            streams.tasks.discard(task)
        await events.aclose()
    if error is not None and binary:
        return  # no error event in audio: the connection is cut, the body left incomplete
    if error is not None:
        body = (
            egress.error_event(error) if egress is not None else b"data: " + error.body() + b"\n\n"
        )
        await send({"type": "http.response.body", "body": body, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
