"""A large non-streamed answer relayed as it arrives, never held whole.

A passthrough body goes to the client unchanged, so past :data:`RELAY_ABOVE` bytes the adapter
stops reading it into memory: the client gets the beginning read so far, then the rest as the
upstream sends it and the client takes it (the server's back-pressure pauses the upstream
socket). The price of that, and why only large bodies pay it: once the first bytes are out no
other key can take over, and the usage is read from the end of the body, not from a parse of it.

Usage: OpenAI's format puts the ``usage`` object last, so the relay keeps the last
:data:`TAIL_BYTES` of the body and reads the last ``"usage": {...}`` found there. A body whose
usage is not in its last 64 KiB (a server that writes it first, or pads the end with more than
that) is relayed with no usage, which the ledger records as it records a body without one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson

from truckllm.http.client import Response
from truckllm.providers.base import Reply, Usage

if TYPE_CHECKING:
    from truckllm.providers.http import UpstreamHTTP

RELAY_ABOVE = 1024 * 1024  # a whole body longer than this is relayed as it arrives
TAIL_BYTES = 64 * 1024  # kept of a relayed body's end, where its usage is
ERROR_BODY_MAX = 256 * 1024  # of an error answer; the rest is dropped with its connection
_IMAGE_KEYS = (b'"b64_json"', b'"url"')  # one of them per generated image


def usage_in(body: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in ``body`` (a whole body or just its end), read
    without parsing anything else; None when there is none or it is not a usage object."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    start = body.find(b"{", at)
    if start < 0 or body[at + 7 : start].strip() != b":":
        return None
    end = object_end(body, start)
    if end < 0:
        return None
    try:
        return Usage.from_openai(orjson.loads(body[start : end + 1]))
    except orjson.JSONDecodeError:
        return None


def object_end(body: bytes, start: int) -> int:
    """Index of the brace that closes the object opening at ``start``, or -1. Braces inside
    strings are not expected in a usage object; if there are any, the parse of the slice fails."""
    depth = 0
    i = start
    while True:
        close = body.find(b"}", i)
        if close < 0:
            return -1
        opening = body.find(b"{", i, close)
        if opening >= 0:
            depth += 1
            i = opening + 1
            continue
        depth -= 1
        i = close + 1
        if depth == 0:
            return close


class _ImageCount:
    """Generated images in a body seen chunk by chunk: its ``b64_json`` and ``url`` keys, counted
    across chunk boundaries (the last bytes of a chunk, too few to hold a whole key, are carried)."""

    __slots__ = ("carry", "count")

    def __init__(self) -> None:
        self.carry = b""
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        carry = self.carry
        for key in _IMAGE_KEYS:
            cut = len(key) - 1  # a key in carry[-cut:] + chunk[:cut] straddles the boundary
            if carry:
                self.count += (carry[-cut:] + chunk[:cut]).count(key)
            self.count += chunk.count(key)
        self.carry = (carry + chunk)[-16:] if len(chunk) < 16 else chunk[-16:]

    def usage(self, usage: Usage | None) -> Usage | None:
        if not self.count:
            return usage
        usage = usage or Usage()
        usage.images = self.count
        return usage


async def relay_rest(
    http: UpstreamHTTP, resp: Response, reply: Reply, start: bytes, images: bool
) -> AsyncIterator[bytes]:
    """The body after ``start`` as it arrives; ``reply.usage`` set once it has all come.
    Transport failures and a body over ``server.max_response_bytes`` raise UpstreamError."""
    tail = start[-TAIL_BYTES:]
    count = _ImageCount() if images else None
    if count is not None:
        count.feed(start)
    try:
        with http.reading():
            async for chunk in resp:
                tail = (
                    (tail + chunk)[-TAIL_BYTES:] if len(chunk) < TAIL_BYTES else chunk[-TAIL_BYTES:]
                )
                if count is not None:
                    count.feed(chunk)
                yield chunk
    finally:
        resp.release()
    usage = usage_in(tail)
    reply.usage = count.usage(usage) if count is not None else usage
