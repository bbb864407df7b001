"""A whole answer as a stream and a stream as a whole answer, in the internal form.

:func:`chunks` turns a cached ``chat.completion`` into the ``chat.completion.chunk`` events a
streaming OpenAI client expects (the same shape OpenAI sends: a role delta, the content, the tool
calls, the finish reason, the usage chunk when asked for, ``[DONE]``); clients of another dialect
get those events through their dialect's egress, as for any stream in the internal form.
:class:`Assembler` does the reverse for a streamed miss, so it can be stored once complete."""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.providers.base import Usage
from truckllm.providers.sse import iter_events

DONE = b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage_json(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def chunks(completion: dict[str, Any], usage: Usage | None, with_usage: bool) -> bytes:
    """The stream of ``completion``: every event, ``[DONE]`` included."""
    base: dict[str, Any] = {
        "id": completion.get("id") or "chatcmpl-cache",
        "object": "chat.completion.chunk",
        "created": completion.get("created") or 0,
        "model": completion.get("model") or "",
    }
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    out: list[bytes] = []
    for choice in completion.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        i = choice.get("index", 0)
        msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        assert isinstance(msg, dict)

        def chunk(delta: dict[str, Any], finish: Any = None, i: Any = i) -> bytes:
            c = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event({**base, "choices": [c]})

        out.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for field in ("reasoning_content", "content", "refusal"):
            if isinstance(msg.get(field), str) and msg[field]:
                out.append(chunk({field: msg[field]}))
        calls = msg.get("tool_calls")
        for n, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                out.append(chunk({"tool_calls": [{"index": n, **call}]}))
        out.append(chunk({}, choice.get("finish_reason") or "stop"))
    if with_usage and usage is not None:
        out.append(_event({**base, "choices": [], "usage": usage_json(usage)}))
    out.append(DONE)
    return b"".join(out)


class Assembler:
    """Feed it a stream's batches of ``chat.completion.chunk`` events; ``completion()`` is the
    whole answer once ``done`` (``[DONE]`` seen)."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: Usage | None = None
        self.done = False
        self.broken = False  # an event that could not be read: not stored

    def feed(self, batch: bytes) -> None:
        for ev in iter_events(batch):
            data = ev.data.strip()
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.broken = True
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if not self.base:
            self.base = {
                k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk
            }
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for c in chunk.get("choices") or ():
            if not isinstance(c, dict) or not isinstance(c.get("delta"), dict):
                continue
            i = c.get("index", 0)
            acc = self.choices.setdefault(i if isinstance(i, int) else 0, {"calls": {}})
            delta = c["delta"]
            for field in ("reasoning_content", "content", "refusal"):
                if isinstance(delta.get(field), str):
                    acc[field] = acc.get(field, "") + delta[field]
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._call(acc["calls"], call)
            if c.get("finish_reason") is not None:
                acc["finish"] = c["finish_reason"]

    @staticmethod
    def _call(calls: dict[Any, dict[str, Any]], call: dict[str, Any]) -> None:
        got = calls.setdefault(
            call.get("index", 0), {"id": "", "type": "function", "function": {"name": ""}}
        )
        if call.get("id"):
            got["id"] = call["id"]
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(fn, dict)
        if fn.get("name"):
            got["function"]["name"] = fn["name"]
        got["function"]["arguments"] = got["function"].get("arguments", "") + str(
            fn.get("arguments") or ""
        )

    def completion(self, usage: Usage | None) -> dict[str, Any]:
        """The ``chat.completion`` the stream spelled out; ``usage`` when the stream had none."""
        choices = []
        for i in sorted(self.choices):
            acc = self.choices[i]
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": acc.get("content"),
                "refusal": acc.get("refusal"),
            }
            if acc.get("reasoning_content"):
                msg["reasoning_content"] = acc["reasoning_content"]
            if acc["calls"]:
                msg["tool_calls"] = [acc["calls"][k] for k in sorted(acc["calls"])]
            choices.append(
                {
                    "index": i,
                    "message": msg,
                    "logprobs": None,
                    "finish_reason": acc.get("finish", "stop"),
                }
            )
        out: dict[str, Any] = {"object": "chat.completion", **self.base, "choices": choices}
        u = self.usage or usage
        if u is not None:
            out["usage"] = usage_json(u)
        return out
