"""A cached answer and its bytes, and the seam every cache backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from truckllm.providers.base import Usage


@dataclass(slots=True)
class Entry:
    """One answer. ``body`` is the whole answer as a client of the endpoint got it (``None``
    when it was streamed); ``internal`` the answer in the internal form (a ``chat.completion``),
    from which a stream is replayed in any dialect (``None`` when the gateway never had it, such
    as embeddings or a Responses API passthrough). ``cost_nanos`` is what the upstream call cost:
    what every hit saves."""

    content_type: str
    body: bytes | None
    internal: dict[str, Any] | None
    usage: Usage | None
    cost_nanos: int
    stored_at: float  # unix seconds
    provider: str
    model: str


def encode(e: Entry) -> bytes:
    u = e.usage
    meta = {
        "ct": e.content_type,
        "in": e.internal,
        "u": None
        if u is None
        else [u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens],
        "c": e.cost_nanos,
        "t": e.stored_at,
        "p": e.provider,
        "m": e.model,
        "b": e.body is not None,
    }
    return orjson.dumps(meta) + b"\n" + (e.body or b"")


def decode(data: bytes) -> Entry | None:
    """The entry, or ``None`` for bytes that are not one (another version's, or damaged)."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        return None
    try:
        meta = orjson.loads(head)
        u = meta["u"]
        usage = Usage(int(u[0]), int(u[1]), int(u[2]), int(u[3])) if u else None
        return Entry(
            str(meta["ct"]),
            body if meta["b"] else None,
            meta["in"] if isinstance(meta["in"], dict) else None,
            usage,
            int(meta["c"]),
            float(meta["t"]),
            str(meta["p"]),
            str(meta["m"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


class Backend(Protocol):
    """Where entries live. Never raises for an outage: a read that cannot be made is a miss
    (``None``), a write that cannot be made is dropped."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...
