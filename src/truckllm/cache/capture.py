"""What a served miss leaves in the cache: its answer in the internal form, and whether it may
be kept at all (a whole success, without tool calls unless the configuration allows them)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from truckllm.cache.replay import Assembler
from truckllm.gateway import Served
from truckllm.providers.anthropic.response import translate_response
from truckllm.providers.base import ANTHROPIC_MESSAGES, INTERNAL

_TOOL_MARKERS = (b'"tool_use"', b'"function_call"', b'"tool_calls"')


def internal_of(served: Served) -> dict[str, Any] | None:
    """A whole answer in the internal form (a ``chat.completion``): as it came, or translated
    from Anthropic's passthrough; ``None`` for anything else (embeddings, Responses API)."""
    reply = served.reply
    if reply.body is None:
        return None
    try:
        obj = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if reply.dialect == INTERNAL:
        return obj if obj.get("object") == "chat.completion" else None
    if reply.dialect == ANTHROPIC_MESSAGES and obj.get("type") == "message":
        return translate_response(obj, served.target.model, int(time.time()))[0]
    return None


def calls_tools(internal: dict[str, Any] | None, body: bytes | None) -> bool:
    """Whether the answer asks for a tool call (its arguments are for this turn only)."""
    if internal is not None:
        for choice in internal.get("choices") or ():
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict) and msg.get("tool_calls"):
                return True
        return False
    return body is not None and any(m in body for m in _TOOL_MARKERS)


async def tapped(
    events: AsyncIterator[bytes],
    assembler: Assembler,
    on_complete: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The stream's events, unchanged, read into ``assembler`` on the way; ``on_complete`` runs
    (it must be idempotent) once the stream is whole (``[DONE]`` read), before the batch that ends it goes on. Closing
    this closes ``events``."""
    try:
        async for batch in events:
            assembler.feed(batch)
            if assembler.done:
                await on_complete()
            yield batch
        if assembler.done:
            await on_complete()
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
