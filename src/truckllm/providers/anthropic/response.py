"""Anthropic Messages response -> OpenAI ``chat.completion``. Pure functions: no I/O.

Text blocks become the message content (joined), ``tool_use`` blocks become ``tool_calls`` with
their ids, names and JSON-encoded inputs; ``thinking`` and server-tool blocks have no OpenAI
counterpart and are left out.
"""

from __future__ import annotations

from typing import Any

import orjson

from truckllm.providers.base import Usage

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: Any, json_tool: str | None = None) -> str:
    """The OpenAI finish reason of an Anthropic ``stop_reason``. A forced ``json_schema`` tool's
    stop is a plain ``stop``: for the client its input is the answer, not a call to make."""
    if stop_reason == "tool_use" and json_tool is not None:
        return "stop"
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_of(native: Any) -> Usage:
    """Anthropic usage as OpenAI counts it: the prompt includes cache reads and cache writes
    (Anthropic's ``input_tokens`` excludes both); ``cached_tokens`` are the cache reads."""
    if not isinstance(native, dict):
        return Usage()
    cache_read = _int(native.get("cache_read_input_tokens"))
    prompt = (
        _int(native.get("input_tokens"))
        + cache_read
        + _int(native.get("cache_creation_input_tokens"))
    )
    return Usage(prompt, _int(native.get("output_tokens")), cache_read)


def usage_json(usage: Usage) -> dict[str, Any]:
    """An OpenAI ``usage`` object."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def translate_response(
    message: dict[str, Any], model: str, created: int, json_tool: str | None = None
) -> tuple[dict[str, Any], Usage]:
    """The ``chat.completion`` for an Anthropic ``message``, and its usage. ``model`` is the
    upstream model name the request was sent for; ``created`` Unix seconds."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    answered = False  # the json_schema answer arrived: other text is commentary, left out
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if json_tool is not None and block.get("name") == json_tool:
                texts, answered = [arguments], True
                continue
            calls.append(
                {
                    "id": block.get("id") or "",
                    "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": arguments},
                }
            )
        elif kind == "text" and not answered:
            texts.append(block.get("text") or "")
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    usage = usage_of(message.get("usage"))
    out = {
        "id": message.get("id") or "",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason"), json_tool),
            }
        ],
        "usage": usage_json(usage),
    }
    return out, usage


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
