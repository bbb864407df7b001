"""A hit answered from the cache: the whole answer as it was, or a stream replayed from it in
the client's dialect (``chat.completion.chunk`` events, through the dialect's egress for the
other inbound APIs)."""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from truckllm.accounting.money import format_usd
from truckllm.cache.hook import ASGISend, Lookup
from truckllm.cache.replay import chunks
from truckllm.providers.base import Usage

SSE = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class StreamOut(Protocol):
    def feed(self, batch: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Egress(Protocol):
    def whole(self, status: int, body: bytes, usage: Usage | None) -> bytes: ...

    def stream(self) -> StreamOut: ...


async def replay(
    send: ASGISend,
    request_id: str,
    look: Lookup,
    egress: Egress | None,
    wants_usage: bool,
    rec: Any,
) -> None:
    """Send the hit; fill the record: no upstream, no cost, ``saved_usd`` what the call cost."""
    entry = look.entry
    assert entry is not None
    t0 = time.perf_counter()
    age = max(int(time.time() - entry.stored_at), 0)
    headers = [
        (b"x-request-id", request_id.encode()),
        (b"x-truckllm-cache", b"hit"),
        (b"age", str(age).encode()),
        (b"x-truckllm-cost-usd", b"0"),
        (b"x-truckllm-cache-saved-usd", format_usd(entry.cost_nanos).encode()),
    ]
    if look.stream:
        assert entry.internal is not None
        events = chunks(entry.internal, entry.usage, wants_usage or egress is not None)
        if egress is not None:
            out = egress.stream()
            events = out.feed(events) + out.finish()
        await send({"type": "http.response.start", "status": 200, "headers": SSE + headers})
        rec.ttft_s = time.perf_counter() - t0
        await send({"type": "http.response.body", "body": events, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        size = len(events)
    else:
        body, ctype = entry.body, entry.content_type
        if body is None:
            assert entry.internal is not None
            body, ctype = orjson.dumps(entry.internal), "application/json"
            if egress is not None:
                body = egress.whole(200, body, entry.usage)
        head = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": head + headers})
        await send({"type": "http.response.body", "body": body})
        size = len(body)
    stats = look.cache.stats
    stats.bytes_served += size
    stats.saved_nanos += entry.cost_nanos
    rec.status, rec.provider, rec.key_id = 200, "cache", ""
    rec.upstream_model, rec.cost_usd = entry.model, 0.0
    rec.saved_usd = entry.cost_nanos / 1e9
