"""An internal-form stream (OpenAI chat completion chunks) as Anthropic's Messages event stream.

The sequence is the one Anthropic sends: ``message_start``, ``ping``, then for each content block
``content_block_start``, its deltas (``thinking_delta``, ``text_delta``, ``input_json_delta``) and
``content_block_stop``, then ``message_delta`` (``stop_reason`` and usage) and ``message_stop``;
every event with its ``event:`` line (Claude Code refuses a stream without them). A block opens
when the chunks switch from reasoning to text to a tool call; a tool call's argument fragments
are its ``partial_json``. Usage comes from the upstream's final usage chunk (the gateway asks for
it), and is reported in ``message_delta`` as Anthropic does at the end of a stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.dialects.anthropic_messages.response import message_id, stop_reason, usage_object
from truckllm.providers.base import Usage
from truckllm.providers.sse import iter_events


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


PING = event("ping", {"type": "ping"})


class ChatToMessagesStream:
    """One stream's translation. Feed it batches of complete SSE events (``feed``), then call
    ``finish`` when the upstream stream ends; both return the Anthropic events to send."""

    def __init__(self, model: str, stop: list[str] | None = None) -> None:
        self.model = model
        self.stop = stop or []
        self.usage: Usage | None = None
        self.done = False
        self._started = False
        self._block: str | None = None  # "thinking", "text" or "tool:<openai index>"
        self._index = -1
        self._finish: Any = None
        self._text_tail = ""  # the last characters of the text, for the stop sequence

    def feed(self, batch: bytes) -> bytes:
        out: list[bytes] = []
        for ev in iter_events(batch):
            data = ev.data.strip()
            if data == b"[DONE]":
                out.append(self.finish())
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """Close the open block and end the message (once)."""
        if self.done:
            return b""
        out: list[bytes] = []
        self._start(out)
        self._close(out)
        reason, sequence = stop_reason(self._finish, self._text_tail, self.stop)
        usage = usage_object(self.usage)
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage,
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        self.done = True
        return b"".join(out)

    def _start(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        message: dict[str, Any] = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(event("message_start", {"type": "message_start", "message": message}))
        out.append(PING)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        self._start(out)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._open(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                self._delta(out, {"type": "thinking_delta", "thinking": reasoning})
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._open(out, "text", {"type": "text", "text": ""})
                self._delta(out, {"type": "text_delta", "text": text})
                self._text_tail = (self._text_tail + text)[-256:]
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool(call, out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]

    def _tool(self, call: dict[str, Any], out: list[bytes]) -> None:
        fn = call.get("function")
        if not isinstance(fn, dict):
            fn = {}
        key = f"tool:{call.get('index', 0)}"
        if self._block != key:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + message_id()[4:]),
                "name": str(fn.get("name") or ""),
                "input": {},
            }
            self._open(out, key, block)
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._delta(out, {"type": "input_json_delta", "partial_json": arguments})

    def _open(self, out: list[bytes], kind: str, block: dict[str, Any]) -> None:
        if self._block == kind:
            return
        self._close(out)
        self._index += 1
        self._block = kind
        out.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )

    def _delta(self, out: list[bytes], delta: dict[str, Any]) -> None:
        out.append(
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": self._index, "delta": delta},
            )
        )

    def _close(self, out: list[bytes]) -> None:
        if self._block is None:
            return
        out.append(
            event("content_block_stop", {"type": "content_block_stop", "index": self._index})
        )
        self._block = None
