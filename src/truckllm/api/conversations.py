"""Responses API state in the runtime store: what ``previous_response_id``, ``GET``, ``DELETE``
and ``input_items`` need, found again by any replica.

One record per response id, under ``responses:<id>`` in the store's key-value table, kept for
``storage.responses.ttl``: the client that made it (no other client sees it), the response as the
client got it, its input items (each with an id), and either

- ``items``: the whole conversation so far (history, input, output), for a response the gateway
  made by translation: a follow-up is expanded to it and may go to any target; or
- ``upstream``: the provider and key of an upstream that serves the Responses API itself and
  holds the response: a follow-up goes back to that key, as it is.

A request with ``store: false`` keeps nothing. A record over ``storage.responses.max_bytes`` is
not kept (logged); a store that cannot answer costs the follow-up, never the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from truckllm.dialects.openai_responses import ResponsesEgress, input_items, new_id
from truckllm.gateway import Served
from truckllm.providers.base import OPENAI_RESPONSES
from truckllm.providers.sse import iter_events

log = logging.getLogger("truckllm.api")

_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
}
_FINAL = (b"response.completed", b"response.incomplete")


class KeyValue(Protocol):
    """The store's key-value table, as the coordinator offers it (bounded in time; raises
    ``StoreError`` when the store cannot answer)."""

    async def kv_get(self, key: str) -> bytes | None: ...

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def kv_delete(self, key: str) -> bool: ...


def store_key(response_id: str) -> str:
    return "responses:" + response_id


class Conversations:
    """Reads and writes the records. ``ttl`` and ``max_bytes`` come from the runtime in force."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def load(self, response_id: str, client: str) -> dict[str, Any] | None:
        """The record, or None (none, expired, another client's, or the store is away)."""
        if not response_id or len(response_id) > 200:
            return None
        try:
            raw = await self.kv.kv_get(store_key(response_id))
        except Exception as exc:
            log.warning("responses: store read failed", extra={"error": str(exc)})
            return None
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(record, dict) or record.get("client") != client:
            return None
        return record

    async def save(self, record: dict[str, Any], ttl: float, max_bytes: int) -> None:
        data = orjson.dumps(record)
        if len(data) > max_bytes and record.get("items") is not None:
            log.warning(
                "responses: conversation too large to keep",
                extra={"response_id": record["id"], "bytes": len(data)},
            )
            return
        try:
            await self.kv.kv_set(store_key(record["id"]), data, ttl)
        except Exception as exc:
            log.warning("responses: store write failed", extra={"error": str(exc)})

    async def delete(self, response_id: str, client: str) -> bool:
        if await self.load(response_id, client) is None:
            return False
        try:
            return await self.kv.kv_delete(store_key(response_id))
        except Exception as exc:
            log.warning("responses: store delete failed", extra={"error": str(exc)})
            return False


def with_ids(items: list[Any]) -> list[Any]:
    """Input items as the API lists them: each an object with an ``id``; plain messages in the
    item shape (content as parts)."""
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type") or "message"
        item = {**item, "type": kind}
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content}]
            item.setdefault("status", "completed")
        if not isinstance(item.get("id"), str):
            item["id"] = new_id(_PREFIXES.get(str(kind), "item"))
        out.append(item)
    return out


def expand(body: dict[str, Any], items: list[Any]) -> dict[str, Any]:
    """A follow-up of a response the gateway keeps, with its conversation spelled out: what any
    target (one that serves the Responses API too) can take. Items lose their ids (an upstream
    would look them up) and reasoning items (nothing to carry them to another model)."""
    history = [
        {k: v for k, v in item.items() if k != "id"}
        for item in items
        if isinstance(item, dict) and item.get("type") != "reasoning"
    ]
    out = {k: v for k, v in body.items() if k != "previous_response_id"}
    out["input"] = history + input_items(body.get("input"))
    return out


@dataclass(eq=False)
class ResponsesKeeper:
    """Keeps one request's response (see :class:`truckllm.api.steps.Keeper`)."""

    conversations: Conversations
    egress: ResponsesEgress
    client: str
    inputs: list[Any]  # this request's input items, with ids
    history: list[Any]  # the conversation before it (a kept previous response's items)
    ttl: float
    max_bytes: int
    final: dict[str, Any] | None = field(default=None, repr=False)

    def _record(self, response: dict[str, Any], served: Served) -> dict[str, Any] | None:
        response_id = response.get("id")
        if not isinstance(response_id, str):
            return None
        record: dict[str, Any] = {
            "id": response_id,
            "client": self.client,
            "response": response,
            "input": self.inputs,
        }
        if served.reply.dialect == OPENAI_RESPONSES:
            record["upstream"] = {"provider": served.target.provider_id, "key": served.pick.key.id}
        else:
            output: Any = response.get("output")
            record["items"] = (
                self.history + self.inputs + (output if isinstance(output, list) else [])
            )
        return record

    async def _save(self, response: dict[str, Any] | None, served: Served) -> None:
        record = self._record(response, served) if response is not None else None
        if record is not None:
            await self.conversations.save(record, self.ttl, self.max_bytes)

    async def whole(self, served: Served, body: bytes) -> None:
        if served.reply.dialect == OPENAI_RESPONSES:
            try:
                response = orjson.loads(body)
            except orjson.JSONDecodeError:
                return
            await self._save(response if isinstance(response, dict) else None, served)
        else:
            await self._save(self.egress.response, served)

    async def stream_started(self, served: Served) -> None:
        """A passthrough stream: its id is in ``response.created``; keep it before the client
        has it, so a follow-up finds the key that holds it."""
        if served.reply.dialect == OPENAI_RESPONSES and served.first:
            await self._save(_event_response(served.first, (b"response.created",)), served)

    def observe(self, batch: bytes) -> None:
        if any(marker in batch for marker in _FINAL):
            self.final = _event_response(batch, _FINAL) or self.final

    async def stream_ended(self, served: Served) -> None:
        if served.reply.dialect == OPENAI_RESPONSES:
            await self._save(self.final, served)
        else:
            await self._save(self.egress.finished(), served)


def _event_response(batch: bytes, kinds: tuple[bytes, ...]) -> dict[str, Any] | None:
    for ev in iter_events(batch):
        if not any(kind in ev.data[:64] for kind in kinds):
            continue
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            continue
        response = obj.get("response") if isinstance(obj, dict) else None
        if isinstance(response, dict):
            return response
    return None
