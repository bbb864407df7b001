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
from truckllm.dialects.chunks import ChunkStream


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


PING = event("ping", {"type": "ping"})


class ChatToMessagesStream(ChunkStream):
    """One stream's translation. Feed it batches of complete SSE events (``feed``), then call
    ``finish`` when the upstream stream ends; both return the Anthropic events to send."""

    def __init__(self, model: str, stop: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.stop = stop or []
        self.done = False
        self._started = False
        self._block: str | None = None  # "thinking", "text" or "tool:<openai index>"
        self._index = -1
        self._text_tail = ""  # the last characters of the text, for the stop sequence

    def finish(self) -> bytes:
        """Close the open block and end the message (once)."""
        if self.done:
            return b""
        out: list[bytes] = []
        self._on_start(out)
        self._close(out)
        reason, sequence = stop_reason(self.finish_reason, self._text_tail, self.stop)
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

    def _on_start(self, out: list[bytes]) -> None:
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

    def _on_done(self, out: list[bytes]) -> None:
        out.append(self.finish())

    def _on_reasoning(self, out: list[bytes], text: str) -> None:
        self._open(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self._delta(out, {"type": "thinking_delta", "thinking": text})

    def _on_text(self, out: list[bytes], text: str) -> None:
        self._open(out, "text", {"type": "text", "text": ""})
        self._delta(out, {"type": "text_delta", "text": text})
        self._text_tail = (self._text_tail + text)[-256:]

    def _on_tool_call(
        self, out: list[bytes], index: Any, call_id: Any, name: str, arguments: str
    ) -> None:
        key = f"tool:{index}"
        if self._block != key:
            block = {
                "type": "tool_use",
                "id": str(call_id or "toolu_" + message_id()[4:]),
                "name": name,
                "input": {},
            }
            self._open(out, key, block)
        if arguments:
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
