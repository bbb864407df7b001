"""An internal-form answer (an OpenAI chat completion) as an OpenAI Responses ``Response``.

Output items in the order the Responses API gives them: a ``reasoning`` item (the upstream's
``reasoning_content`` as its summary), a ``message`` with one ``output_text`` part, then one
``function_call`` item per tool call (flattened namespace names split back into ``namespace`` and
``name``). ``finish_reason`` ``length`` makes the response ``incomplete`` (``max_output_tokens``),
``content_filter`` too (``content_filter``). The request's settings are echoed as OpenAI does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from truckllm.dialects.openai_responses.request import NS_SEP
from truckllm.providers.base import Usage

_ECHOED = ("instructions", "max_output_tokens", "previous_response_id", "prompt_cache_key")


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(24).hex()}"


@dataclass(slots=True)
class Echo:
    """What a Response repeats of its request, and the namespaces its tool calls belong to."""

    model: str
    request: dict[str, Any]
    namespaces: frozenset[str] = frozenset()
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def shell(self, status: str) -> dict[str, Any]:
        """The Response object without output or usage (``response.created``'s)."""
        r = self.request
        text: Any = r.get("text")
        if not isinstance(text, dict):
            text = {"format": {"type": "text"}}
        reasoning: Any = r.get("reasoning")
        if not isinstance(reasoning, dict):
            reasoning = {}
        out: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "model": self.model,
            "output": [],
            "parallel_tool_calls": r.get("parallel_tool_calls", True) is not False,
            "reasoning": {
                "effort": reasoning.get("effort"),
                "summary": reasoning.get("summary"),
            },
            "store": r.get("store", True) is not False,
            "temperature": r.get("temperature", 1.0),
            "text": text,
            "tool_choice": r.get("tool_choice", "auto"),
            "tools": r.get("tools") if isinstance(r.get("tools"), list) else [],
            "top_p": r.get("top_p", 1.0),
            "truncation": r.get("truncation", "disabled"),
            "usage": None,
            "user": r.get("user"),
            "metadata": r.get("metadata") if isinstance(r.get("metadata"), dict) else {},
        }
        for name in _ECHOED:
            out[name] = r.get(name)
        return out

    def function_call(self, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": call_id,
            "name": name,
        }
        namespace, sep, inner = name.partition(NS_SEP)
        if sep and namespace in self.namespaces:
            item["namespace"], item["name"] = namespace, inner
        return item


def usage_object(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cached_tokens,
            "cache_write_tokens": u.cache_creation_tokens,
        },
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": summary}


def finished(response: dict[str, Any], finish: Any, usage: Usage | None) -> dict[str, Any]:
    """``response`` completed (or incomplete) by ``finish_reason``, with its usage."""
    if finish == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
    response["completed_at"] = int(time.time())
    response["usage"] = usage_object(usage)
    return response


def from_chat(completion: dict[str, Any], echo: Echo, usage: Usage | None) -> dict[str, Any]:
    """The Response for an OpenAI chat completion."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message: Any = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(new_id("rs"), reasoning))
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text, "completed"))
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        item = message_item(new_id("msg"), "", "completed")
        item["content"] = [{"type": "refusal", "refusal": message["refusal"]}]
        output.append(item)
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            arguments = fn.get("arguments")
            output.append(
                echo.function_call(
                    str(call.get("id") or new_id("call")),
                    str(fn.get("name") or ""),
                    arguments if isinstance(arguments, str) else "{}",
                    "completed",
                )
            )
    response = echo.shell("completed")
    response["output"] = output
    return finished(response, choice.get("finish_reason"), usage)
