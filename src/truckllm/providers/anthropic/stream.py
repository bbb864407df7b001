"""Anthropic stream events -> OpenAI ``chat.completion.chunk`` events, one upstream read at a time.

The translator is a pure state machine over bytes: :meth:`StreamTranslator.feed` takes whatever
one read delivered and returns the OpenAI SSE events that read completes (possibly none), so the
caller can forward them at once; :meth:`StreamTranslator.close` takes the stream's end. Framing is
:class:`~truckllm.providers.sse.SSEFramer`'s. Nothing is held back except an incomplete trailing
event and the assistant ``role``, which rides on the first chunk with content: an
``overloaded_error`` right after ``message_start`` then finds nothing sent yet, and the gateway
can still fail over.

Event mapping: ``message_start`` records id and usage; a ``text`` block's ``text_delta`` becomes
``content``; a ``tool_use`` block becomes a ``tool_calls`` entry (id, name, then its
``input_json_delta`` fragments as ``arguments``) indexed among tool calls, not among Anthropic
blocks; ``message_delta`` gives the finish reason and final usage; ``message_stop`` ends the
stream with the usage chunk (when the client asked for it) and ``[DONE]``. ``ping``, thinking
blocks and unknown events produce nothing; an ``error`` event stops translation and is left in
:attr:`StreamTranslator.error` for the caller to raise after forwarding what came before it.
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.providers.anthropic.errors import AnthropicStreamError, stream_error
from truckllm.providers.anthropic.response import finish_reason, usage_json, usage_of
from truckllm.providers.base import Usage
from truckllm.providers.sse import SSEFramer, iter_data

_DONE = b"data: [DONE]\n\n"
_OPEN_SUFFIX = b',"logprobs":null,"finish_reason":null}]}\n\n'
_TEXT, _TOOL, _JSON, _SKIP = 0, 1, 2, 3


class StreamTranslator:
    """One stream's translation state. Not thread-safe: one instance per upstream stream.

    ``usage`` is current after every :meth:`feed` (input counts from ``message_start``, final
    counts from ``message_delta``); ``done`` is set by ``message_stop``; ``error`` by an
    ``error`` event, after which input is ignored.
    """

    __slots__ = (
        "_blocks",
        "_created",
        "_framer",
        "_id",
        "_json_tool",
        "_model",
        "_native_usage",
        "_prefix",
        "_provider_id",
        "_role_pending",
        "_tools",
        "_wants_usage",
        "done",
        "error",
        "usage",
    )

    def __init__(
        self,
        model: str,
        created: int,
        wants_usage: bool,
        provider_id: str,
        json_tool: str | None = None,
    ) -> None:
        self._model = model
        self._created = created
        self._wants_usage = wants_usage
        self._provider_id = provider_id
        self._json_tool = json_tool
        self._framer = SSEFramer(provider_id)
        self._id = "msg"
        self._prefix = b""
        self._role_pending = True
        self._blocks: dict[int, int] = {}  # Anthropic block index -> _TEXT/_TOOL/_JSON/_SKIP
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._native_usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.done = False
        self.error: AnthropicStreamError | None = None

    def feed(self, data: bytes) -> bytes:
        """The OpenAI SSE events completed by ``data`` (raw bytes of one upstream read)."""
        if self.done or self.error is not None:
            return b""
        return self._translate(self._framer.feed(data))

    def close(self) -> bytes:
        """The OpenAI SSE events of an event the upstream left unterminated at the stream's end."""
        if self.done or self.error is not None:
            return b""
        return self._translate(self._framer.close())

    def _translate(self, block: bytes) -> bytes:
        if not block:
            return b""
        out: list[bytes] = []
        for data in iter_data(block):  # the JSON's own "type" says what it is
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._event(obj, out)
                if self.done or self.error is not None:
                    break
        return b"".join(out)

    # -- events ----------------------------------------------------------------------------

    def _event(self, ev: dict[str, Any], out: list[bytes]) -> None:
        kind = ev.get("type")
        if kind == "content_block_delta":
            self._block_delta(ev, out)
        elif kind == "content_block_start":
            self._block_start(ev, out)
        elif kind == "message_start":
            msg = ev.get("message")
            if isinstance(msg, dict):
                if isinstance(msg.get("id"), str):
                    self._id = msg["id"]
                self._add_usage(msg.get("usage"))
        elif kind == "message_delta":
            self._add_usage(ev.get("usage"))
            delta = ev.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason is not None:
                out.append(self._chunk({}, finish_reason(reason, self._json_tool)))
        elif kind == "message_stop":
            if self._wants_usage:
                out.append(self._usage_chunk())
            out.append(_DONE)
            self.done = True
        elif kind == "error":
            self.error = stream_error(ev, self._provider_id)
        # ping, content_block_stop and event types added later carry nothing to translate

    def _block_start(self, ev: dict[str, Any], out: list[bytes]) -> None:
        index = ev.get("index")
        block = ev.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _TEXT if self._json_tool is None else _SKIP
            if block.get("text") and self._json_tool is None:
                out.append(self._chunk({"content": block["text"]}))
        elif kind == "tool_use":
            if self._json_tool is not None and block.get("name") == self._json_tool:
                self._blocks[index] = _JSON
                return
            self._blocks[index] = _TOOL
            n = self._tools[index] = len(self._tools)
            call = {
                "index": n,
                "id": block.get("id") or "",
                "type": "function",
                "function": {"name": block.get("name") or "", "arguments": ""},
            }
            out.append(self._chunk({"content": None, "tool_calls": [call]}))
        else:
            self._blocks[index] = _SKIP  # thinking, redacted_thinking, server tools

    def _block_delta(self, ev: dict[str, Any], out: list[bytes]) -> None:
        index: Any = ev.get("index")
        kind = self._blocks.get(index)
        delta = ev.get("delta")
        if kind is None or kind == _SKIP or not isinstance(delta, dict):
            return
        if kind == _TEXT:
            text = delta.get("text")
            if text:
                out.append(self._chunk({"content": text}))
            return
        fragment = delta.get("partial_json")
        if not fragment:
            return
        if kind == _JSON:
            out.append(self._chunk({"content": fragment}))
        else:
            n = self._tools[index]
            out.append(
                self._chunk({"tool_calls": [{"index": n, "function": {"arguments": fragment}}]})
            )

    # -- output ----------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if self._role_pending:
            self._role_pending = False
            delta = {"role": "assistant", **delta}
            self._prefix = (
                b'data: {"id":'
                + orjson.dumps(self._id)
                + b',"object":"chat.completion.chunk","created":'
                + str(self._created).encode()
                + b',"model":'
                + orjson.dumps(self._model)
                + b',"choices":[{"index":0,"delta":'
            )
        suffix = (
            _OPEN_SUFFIX
            if finish is None
            else b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]}\n\n'
        )
        return self._prefix + orjson.dumps(delta) + suffix

    def _usage_chunk(self) -> bytes:
        usage = self.usage if self.usage is not None else Usage()
        obj = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [],
            "usage": usage_json(usage),
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._native_usage.update((k, v) for k, v in usage.items() if v is not None)
            self.usage = usage_of(self._native_usage)
