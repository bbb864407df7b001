"""Gemini ``streamGenerateContent?alt=sse`` events as OpenAI ``chat.completion.chunk`` events.

Each Gemini event is a whole ``GenerateContentResponse`` holding the next piece of each
candidate. Text and function calls are translated as they arrive: a candidate's first chunk
carries ``role: assistant``; a function call arrives whole in one event and becomes one tool-call
delta with its ``index``, id, name and complete arguments. ``usageMetadata`` is cumulative, so the
last one seen is the stream's usage.

Finish reasons are held back until the upstream stream ends (some models repeat ``STOP`` on
every event), then sent in one final chunk, followed by the usage chunk when the client asked for
it, and ``[DONE]``. A stream that ends without any finish reason, or that carries an ``error``
object, is a broken stream: :class:`StreamFailed`, never a fake success.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from truckllm.providers.base import Usage
from truckllm.providers.gemini.errors import error_message
from truckllm.providers.gemini.response import completion_id, finish_reason, tool_call, usage_of

DONE = b"data: [DONE]\n\n"


class StreamFailed(Exception):
    """The upstream stream broke off or reported an error after it started."""


@dataclass(slots=True)
class _Candidate:
    started: bool = False
    tools: int = 0
    finish: str | None = None


@dataclass(slots=True)
class StreamTranslator:
    """Per-stream state. Not thread-safe; one per upstream stream."""

    model: str
    wants_usage: bool
    usage: Usage | None = None
    _id: str = ""
    _created: int = 0
    _openai_usage: dict[str, Any] | None = None
    _candidates: dict[int, _Candidate] = field(default_factory=dict)
    _blocked: bool = False

    def feed(self, event: dict[str, Any]) -> bytes:
        """The OpenAI events (possibly none: ``b""``) for one Gemini event."""
        if "error" in event:
            raise StreamFailed(error_message(event) or "error event")
        if not self._id:
            self._id = completion_id(event)
            self._created = int(time.time())
        meta = event.get("usageMetadata")
        if meta is not None:
            usage = usage_of(meta)
            if usage is not None:
                self._openai_usage, self.usage = usage
        feedback = event.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self._blocked = True
        choices = []
        candidates = event.get("candidates")
        for i, cand in enumerate(candidates if isinstance(candidates, list) else ()):
            if not isinstance(cand, dict):
                continue
            index = cand.get("index")
            index = index if isinstance(index, int) else i
            state = self._candidates.get(index)
            if state is None:
                state = self._candidates[index] = _Candidate()
            if cand.get("finishReason"):
                state.finish = cand["finishReason"]
            delta = self._delta(cand, state)
            if delta:
                choices.append(
                    {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                )
        return self._chunk(choices) if choices else b""

    def finish(self) -> bytes:
        """The closing events once the upstream stream has ended cleanly."""
        choices = []
        for index, state in sorted(self._candidates.items()):
            if state.finish is None:
                continue
            delta: dict[str, Any] = {} if state.started else {"role": "assistant", "content": ""}
            choices.append(
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason(state.finish, state.tools > 0),
                }
            )
        if not choices:
            if not self._blocked:
                raise StreamFailed("the stream ended before the answer was finished")
            choices.append(
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": "content_filter",
                }
            )
        out = self._chunk(choices)
        if self.wants_usage and self._openai_usage is not None:
            out += self._event(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self.model,
                    "choices": [],
                    "usage": self._openai_usage,
                }
            )
        return out + DONE

    def _delta(self, cand: dict[str, Any], state: _Candidate) -> dict[str, Any]:
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return {}
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in parts:
            if not isinstance(part, dict) or part.get("thought") is True:
                continue
            if isinstance(part.get("text"), str):
                text.append(part["text"])
                continue
            call = tool_call(part)
            if call is not None:
                call["index"] = state.tools
                state.tools += 1
                calls.append(call)
        if not text and not calls:
            return {}
        delta: dict[str, Any] = {}
        if not state.started:
            delta["role"] = "assistant"
            state.started = True
        if text:
            delta["content"] = "".join(text)
        if calls:
            delta["tool_calls"] = calls
        return delta

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        return self._event(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "choices": choices,
            }
        )

    @staticmethod
    def _event(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
