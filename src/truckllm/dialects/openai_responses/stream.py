"""An internal-form stream (OpenAI chat completion chunks) as the Responses API's event stream.

The sequence is OpenAI's, every event with its ``event:`` line and a ``sequence_number``:
``response.created``, ``response.in_progress``; per output item ``response.output_item.added``,
then for a message ``response.content_part.added``, ``response.output_text.delta``...,
``response.output_text.done``, ``response.content_part.done``; for a function call
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``; for
reasoning ``response.reasoning_summary_text.delta``... and ``.done``; then
``response.output_item.done`` (clients such as Codex take the final text from it); and at the end
``response.completed`` (``response.incomplete`` when the output was cut at its token limit), with
the whole response and its usage. Everything that ends the stream happens in :meth:`finish`, so
the gateway can keep the response before the client sees it complete.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from truckllm.dialects.chunks import ChunkStream
from truckllm.dialects.openai_responses.response import (
    Echo,
    finished,
    message_item,
    new_id,
    reasoning_item,
    text_part,
)


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ChatToResponsesStream(ChunkStream):
    """One stream's translation. ``feed`` batches of complete SSE events, then ``finish`` once
    the upstream stream has ended; both return the Responses events to send."""

    def __init__(self, echo: Echo) -> None:
        super().__init__()
        self.echo = echo
        self.seq = 0
        self.response: dict[str, Any] | None = None  # the final response, after finish()
        self.output: list[dict[str, Any]] = []
        self._started = False
        self._open: dict[str, Any] | None = None  # the output item being streamed
        self._kind = ""  # "reasoning", "message" or "call:<index>"
        self._text: list[str] = []

    def _event(self, out: list[bytes], kind: str, payload: dict[str, Any]) -> None:
        payload = {"type": kind, **payload, "sequence_number": self.seq}
        self.seq += 1
        out.append(event(kind, payload))

    def _on_start(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        shell = self.echo.shell("in_progress")
        self._event(out, "response.created", {"response": shell})
        self._event(out, "response.in_progress", {"response": shell})

    def _on_reasoning(self, out: list[bytes], text: str) -> None:
        self._item(out, "reasoning", reasoning_item(new_id("rs"), ""))
        self._delta(out, "response.reasoning_summary_text.delta", text)

    def _on_text(self, out: list[bytes], text: str) -> None:
        self._item(out, "message", message_item(new_id("msg"), "", "in_progress"))
        self._delta(out, "response.output_text.delta", text)

    def _on_tool_call(
        self, out: list[bytes], index: Any, call_id: Any, name: str, arguments: str
    ) -> None:
        kind = f"call:{index}"
        if self._kind != kind:
            item = self.echo.function_call(
                str(call_id or new_id("call")), name, "", "in_progress"
            )
            self._item(out, kind, item)
        if arguments:
            self._delta(out, "response.function_call_arguments.delta", arguments)

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.output)}

    def _item(self, out: list[bytes], kind: str, item: dict[str, Any]) -> None:
        if self._kind == kind:
            return
        self._close(out)
        self._open, self._kind, self._text = item, kind, []
        self._event(
            out, "response.output_item.added", {"output_index": len(self.output), "item": item}
        )
        if kind == "message":
            self._event(
                out,
                "response.content_part.added",
                {**self._where(), "content_index": 0, "part": text_part("")},
            )
        elif kind == "reasoning":
            self._event(
                out,
                "response.reasoning_summary_part.added",
                {**self._where(), "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
            )

    def _delta(self, out: list[bytes], kind: str, text: str) -> None:
        self._text.append(text)
        where = self._where()
        if kind == "response.output_text.delta":
            where.update(content_index=0, logprobs=[])
        elif kind == "response.reasoning_summary_text.delta":
            where["summary_index"] = 0
        self._event(out, kind, {**where, "delta": text})

    def _close(self, out: list[bytes]) -> None:
        item = self._open
        if item is None:
            return
        text, where = "".join(self._text), self._where()
        if self._kind == "message":
            self._event(
                out,
                "response.output_text.done",
                {**where, "content_index": 0, "text": text, "logprobs": []},
            )
            self._event(
                out,
                "response.content_part.done",
                {**where, "content_index": 0, "part": text_part(text)},
            )
            item = message_item(item["id"], text, "completed")
        elif self._kind == "reasoning":
            self._event(
                out,
                "response.reasoning_summary_text.done",
                {**where, "summary_index": 0, "text": text},
            )
            part = {"type": "summary_text", "text": text}
            self._event(
                out,
                "response.reasoning_summary_part.done",
                {**where, "summary_index": 0, "part": part},
            )
            item = reasoning_item(item["id"], text)
        else:
            arguments = text or "{}"
            self._event(
                out,
                "response.function_call_arguments.done",
                {**where, "name": item.get("name"), "arguments": arguments},
            )
            item = {**item, "arguments": arguments, "status": "completed"}
        self._event(
            out, "response.output_item.done", {"output_index": len(self.output), "item": item}
        )
        self.output.append(item)
        self._open, self._kind, self._text = None, "", []

    def finish(self) -> bytes:
        """Close the open item and complete the response (once)."""
        if self.response is not None:
            return b""
        out: list[bytes] = []
        self._on_start(out)
        self._close(out)
        response = self.echo.shell("completed")
        response["output"] = self.output
        self.response = finished(response, self.finish_reason, self.usage)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        self._event(out, kind, {"response": self.response})
        return b"".join(out)

    def failed(self, code: str, message: str) -> bytes:
        """The events that end a stream the upstream broke off: ``response.failed``."""
        out: list[bytes] = []
        self._on_start(out)
        response = self.echo.shell("failed")
        response["output"] = copy.copy(self.output)
        response["error"] = {"code": code, "message": message}
        self.response = None
        self._event(out, "response.failed", {"response": response})
        return b"".join(out)
