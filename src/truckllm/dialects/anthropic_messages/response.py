"""An internal-form answer (an OpenAI chat completion) as an Anthropic ``Message``.

``reasoning_content`` becomes a ``thinking`` block (with an empty ``signature``: the upstream gave
none, and a client sends it back only to Anthropic, which this answer did not come from), the
text a ``text`` block, each tool call a ``tool_use`` block whose ``input`` is the parsed
arguments. ``finish_reason`` maps to ``stop_reason`` (``stop`` -> ``end_turn``, or
``stop_sequence`` when the request's stop sequence ends the text; ``length`` -> ``max_tokens``;
``tool_calls`` -> ``tool_use``; ``content_filter`` -> ``refusal``). Usage: ``input_tokens`` is the
prompt less its cached part, which is ``cache_read_input_tokens``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from truckllm.providers.base import Usage

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def usage_object(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as an object; what is not a JSON object is kept under ``_raw``."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def stop_reason(finish: Any, text: str, stop: list[str]) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``."""
    if finish == "stop":
        for seq in stop:  # OpenAI strips the sequence; Anthropic names it. Best effort:
            if seq and text.endswith(seq):
                return "stop_sequence", seq
    return STOP_REASONS.get(str(finish), "end_turn"), None


def from_chat(
    completion: dict[str, Any], model: str, usage: Usage | None, stop: list[str] | None = None
) -> dict[str, Any]:
    """The Anthropic message for an OpenAI chat completion. ``model`` is the name the client
    asked for; ``usage`` the usage the provider read."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    text = text if isinstance(text, str) else ""
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or "toolu_" + os.urandom(12).hex()),
                "name": str(fn.get("name") or ""),
                "input": parse_arguments(fn.get("arguments")),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), text, stop or [])
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_object(usage),
    }
