"""Reading the internal form's stream (OpenAI chat completion chunks), for the dialects that turn
it into their own events: one parse, the same order of hooks for every dialect."""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.providers.base import Usage
from truckllm.providers.sse import iter_events


class ChunkStream:
    """Feed it batches of complete SSE events (``feed``); it parses each chunk once and calls,
    in order, ``_on_start`` (before anything else is emitted), ``_on_reasoning``, ``_on_text``
    and ``_on_tool_call`` for the deltas, and ``_on_done`` at ``[DONE]``. ``usage`` (the
    upstream's final usage chunk) and ``finish_reason`` are kept. Subclasses append the events
    they emit to ``out``."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish_reason: Any = None

    def feed(self, batch: bytes) -> bytes:
        out: list[bytes] = []
        for ev in iter_events(batch):
            data = ev.data.strip()
            if not data:
                continue
            if data == b"[DONE]":
                self._on_done(out)
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk, out)
        return b"".join(out)

    def _chunk(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        self._on_start(out)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._on_reasoning(out, reasoning)
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._on_text(out, text)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    fn = call.get("function")
                    fn = fn if isinstance(fn, dict) else {}
                    arguments = fn.get("arguments")
                    self._on_tool_call(
                        out,
                        call.get("index", 0),
                        call.get("id"),
                        str(fn.get("name") or ""),
                        arguments if isinstance(arguments, str) else "",
                    )
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def _on_start(self, out: list[bytes]) -> None:
        """Called before every chunk's events; emit the stream's opening once."""

    def _on_reasoning(self, out: list[bytes], text: str) -> None:
        """A piece of the model's reasoning."""

    def _on_text(self, out: list[bytes], text: str) -> None:
        """A piece of the answer's text."""

    def _on_tool_call(
        self, out: list[bytes], index: Any, call_id: Any, name: str, arguments: str
    ) -> None:
        """A tool call's start (``call_id`` and ``name`` set) or a piece of its arguments."""

    def _on_done(self, out: list[bytes]) -> None:
        """The upstream's ``[DONE]``."""
