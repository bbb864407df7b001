"""Gemini ``GenerateContentResponse`` bodies as OpenAI ``chat.completion`` objects. Pure functions.

- Each candidate becomes a choice (its ``index``); text parts are concatenated; thought parts
  (``"thought": true``, only present when thoughts were asked for) are left out.
- ``functionCall`` parts become ``tool_calls`` with generated ids (``call_`` and 24 random hex
  digits: Gemini has no ids of its own in ``generateContent``) and JSON-string arguments. A part's
  ``thoughtSignature`` rides along in ``extra_content.google.thought_signature``, where Google's
  OpenAI-compatible endpoint puts it, so that clients replaying the turn send it back.
- ``finishReason``: ``STOP`` is ``stop`` (``tool_calls`` when the candidate called functions),
  ``MAX_TOKENS`` is ``length``, the safety family is ``content_filter``, the rest ``stop``. A prompt
  blocked outright (``promptFeedback.blockReason``, no candidates) is one empty ``content_filter``
  choice.
- ``usageMetadata``: ``prompt_tokens`` is ``promptTokenCount`` (+ ``toolUsePromptTokenCount``),
  ``completion_tokens`` is ``candidatesTokenCount`` + ``thoughtsTokenCount``; cached and thinking
  tokens are kept in the ``*_tokens_details``.
- ``model`` is the upstream model name the gateway asked for (stable, and what pricing and logs
  know), not ``modelVersion``; ``id`` is ``chatcmpl-`` and Gemini's ``responseId`` when present.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from truckllm.providers.base import Usage

_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def finish_reason(native: Any, called_tools: bool) -> str:
    if native in _FILTERED:
        return "content_filter"
    if native == "MAX_TOKENS":
        return "length"
    return "tool_calls" if called_tools else "stop"


def completion_id(response: dict[str, Any]) -> str:
    rid = response.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else "chatcmpl-" + os.urandom(12).hex()


def tool_call(part: dict[str, Any]) -> dict[str, Any] | None:
    """The OpenAI tool call for a part, or ``None`` when the part is no function call."""
    fn = part.get("functionCall")
    if not isinstance(fn, dict):
        return None
    call: dict[str, Any] = {
        "id": "call_" + os.urandom(12).hex(),
        "type": "function",
        "function": {
            "name": fn.get("name") or "",
            "arguments": orjson.dumps(fn.get("args") or {}).decode(),
        },
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def usage_of(meta: Any) -> tuple[dict[str, Any], Usage] | None:
    """OpenAI's ``usage`` object and the gateway's :class:`Usage` for a ``usageMetadata``."""
    if not isinstance(meta, dict):
        return None
    try:
        prompt = int(meta.get("promptTokenCount") or 0) + int(
            meta.get("toolUsePromptTokenCount") or 0
        )
        thoughts = int(meta.get("thoughtsTokenCount") or 0)
        completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
        cached = int(meta.get("cachedContentTokenCount") or 0)
    except (TypeError, ValueError):
        return None
    openai_usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }
    return openai_usage, Usage(prompt, completion, cached, thoughts)


def chat_completion(response: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """The ``chat.completion`` for a ``generateContent`` response, and its usage."""
    choices = []
    candidates = response.get("candidates")
    for i, cand in enumerate(candidates if isinstance(candidates, list) else ()):
        if not isinstance(cand, dict):
            continue
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        content = cand.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict) or part.get("thought") is True:
                continue
            if isinstance(part.get("text"), str):
                text.append(part["text"])
            else:
                call = tool_call(part)
                if call is not None:
                    calls.append(call)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text) if text or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        index = cand.get("index")
        choices.append(
            {
                "index": index if isinstance(index, int) else i,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(cand.get("finishReason"), bool(calls)),
            }
        )
    if not choices:
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter" if _blocked(response) else "stop",
            }
        )
    out: dict[str, Any] = {
        "id": completion_id(response),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    usage = usage_of(response.get("usageMetadata"))
    if usage is None:
        return out, None
    out["usage"] = usage[0]
    return out, usage[1]


def _blocked(response: dict[str, Any]) -> bool:
    feedback = response.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))
