"""A stream the gateway passes through untranslated (an Anthropic upstream to a Messages client,
a Responses API upstream to a Responses client), kept as the events it was: :class:`EventKeeper`
reads it on its way out and says when it ended well (Anthropic's ``message_stop``, the Responses
API's ``response.completed``, no ``error`` event before), and :func:`whole_of` makes the whole
answer a non-streaming client of the same dialect gets from those events."""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.providers.base import ANTHROPIC_MESSAGES, OPENAI_RESPONSES
from truckllm.providers.sse import iter_events

PASSTHROUGH_DIALECTS = (ANTHROPIC_MESSAGES, OPENAI_RESPONSES)
_END = {ANTHROPIC_MESSAGES: "message_stop", OPENAI_RESPONSES: "response.completed"}
_BAD = ("error", "response.failed", "response.incomplete")


class EventKeeper:
    """Feed it the stream's batches; ``done`` once the well-formed end went by; ``events`` every
    byte read (``None`` once past ``limit`` bytes, or after an error event: not kept)."""

    def __init__(self, dialect: str, limit: int) -> None:
        self.dialect = dialect
        self.limit = limit
        self.parts: list[bytes] | None = []
        self.size = 0
        self.done = False
        self.broken = False

    def feed(self, batch: bytes) -> None:
        if self.parts is None or self.done:
            return
        self.parts.append(batch)
        self.size += len(batch)
        if self.size > self.limit:
            self.parts, self.broken = None, True
            return
        end = _END[self.dialect]
        for ev in iter_events(batch):
            kind = ev.event if ev.event != "message" else _type_of(ev.data)
            if kind in _BAD:
                self.parts, self.broken = None, True
                return
            if kind == end:
                self.done = True

    @property
    def events(self) -> bytes | None:
        return b"".join(self.parts) if self.parts is not None and self.done else None


def _type_of(data: bytes) -> str:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ""
    return str(obj.get("type", "")) if isinstance(obj, dict) else ""


def whole_of(dialect: str, events: bytes) -> bytes | None:
    """The answer a non-streaming client of ``dialect`` gets, from the stream's ``events``;
    ``None`` when they do not spell one out."""
    objs: list[tuple[str, dict[str, Any]]] = []
    for ev in iter_events(events):
        try:
            obj = orjson.loads(ev.data)
        except orjson.JSONDecodeError:
            return None
        if isinstance(obj, dict):
            objs.append((str(obj.get("type", ev.event)), obj))
    if dialect == OPENAI_RESPONSES:
        for kind, obj in objs:
            if kind == "response.completed" and isinstance(obj.get("response"), dict):
                return orjson.dumps(obj["response"])
        return None
    message = _message(objs)
    return orjson.dumps(message) if message is not None else None


def _message(objs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Anthropic's ``message`` from its stream events."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    for kind, obj in objs:
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            message = dict(obj["message"])
        elif kind == "content_block_start" and isinstance(obj.get("content_block"), dict):
            blocks[int(obj.get("index", 0))] = dict(obj["content_block"])
        elif kind == "content_block_delta" and isinstance(obj.get("delta"), dict):
            i = int(obj.get("index", 0))
            _delta(blocks.setdefault(i, {}), partial, i, obj["delta"])
        elif kind == "message_delta" and message is not None:
            delta = obj.get("delta") if isinstance(obj.get("delta"), dict) else {}
            assert isinstance(delta, dict)
            message.update(
                {k: v for k, v in delta.items() if k in ("stop_reason", "stop_sequence")}
            )
            if isinstance(obj.get("usage"), dict):
                message["usage"] = {**(message.get("usage") or {}), **obj["usage"]}
    if message is None:
        return None
    for i, text in partial.items():
        try:
            blocks[i]["input"] = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            return None
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _delta(block: dict[str, Any], partial: dict[int, str], i: int, d: dict[str, Any]) -> None:
    kind = d.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + str(d.get("text", ""))
    elif kind == "input_json_delta":
        partial[i] = partial.get(i, "") + str(d.get("partial_json", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + str(d.get("thinking", ""))
    elif kind == "signature_delta":
        block["signature"] = str(d.get("signature", ""))
    elif kind == "citations_delta" and isinstance(d.get("citation"), dict):
        block.setdefault("citations", []).append(d["citation"])
