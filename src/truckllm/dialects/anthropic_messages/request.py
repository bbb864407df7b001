"""An Anthropic Messages request as the internal form (an OpenAI chat completion request).

Carried: ``system`` (a string or text blocks) and ``role: "system"`` messages in the middle of
``messages`` (Claude Code sends one) as system messages in place; text, images (base64 and URL)
and PDF documents (base64, as an OpenAI ``file`` part); ``tool_use`` blocks as ``tool_calls`` and
``tool_result`` blocks as ``role: "tool"`` messages (text and images; ``is_error`` noted in the
text); ``thinking`` blocks of earlier turns as ``reasoning_content``; ``tools`` (custom tools) and
``tool_choice`` (``auto``, ``any`` -> ``required``, ``tool`` -> that function, ``none``;
``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``); ``max_tokens``,
``stop_sequences`` -> ``stop``, ``temperature``, ``top_p``; ``stream`` (with usage asked for);
``thinking`` -> ``reasoning_effort``: ``enabled`` by its ``budget_tokens`` (under 4,096: low,
under 16,384: medium, else high), ``adaptive`` by ``output_config.effort`` when given (``max``
-> high), else left to the model.

Dropped on purpose, since the answer stays a valid answer without them: ``cache_control`` (the
OpenAI-format upstreams cache prefixes by themselves), ``metadata`` (Claude Code's ``user_id`` is
a JSON string longer than some upstreams accept), ``top_k``, ``context_management``,
``output_config`` other than ``effort``, ``service_tier``, ``container``, ``mcp_servers``, server
tools (``web_search``, ``bash``... types with a version suffix: the upstream cannot run them),
``redacted_thinking`` blocks, and citations. Anything malformed is a :class:`TranslationError`
(Anthropic's ``invalid_request_error``, 400).
"""

from __future__ import annotations

from typing import Any

import orjson

EFFORT_BY_NAME = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


class TranslationError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat request for an Anthropic Messages request (``body`` is not mutated)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TranslationError("max_tokens: Field required (a positive integer)")
    messages = _system(body.get("system"))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise TranslationError("messages: Field required (a non-empty array)")
    for i, m in enumerate(raw_messages):
        messages.extend(_message(m, f"messages.{i}"))
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    _sampling(body, out)
    _tools(body, out)
    effort = _effort(body.get("thinking"), body.get("output_config"))
    if effort is not None:
        out["reasoning_effort"] = effort
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _text_of(blocks: Any, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise TranslationError(f"{where}: Input should be a string or a list of text blocks")
    parts = []
    for j, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise TranslationError(f"{where}.{j}: expected a text block")
        parts.append(b["text"])
    return "\n\n".join(parts)


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    return [{"role": "system", "content": _text_of(system, "system")}]


def _message(m: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(m, dict):
        raise TranslationError(f"{where}: Input should be an object")
    role, content = m.get("role"), m.get("content")
    if role == "system":  # the mid-conversation-system beta: an instruction in place
        return [{"role": "system", "content": _text_of(content, f"{where}.content")}]
    if role not in ("user", "assistant"):
        raise TranslationError(f"{where}.role: Input should be 'user' or 'assistant'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content: Input should be a string or a list of blocks")
    if role == "assistant":
        return [_assistant(content, where)]
    return _user(content, where)


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text":
            texts.append(str(b.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(b.get("thinking", "")))
        elif kind == "tool_use":
            calls.append(_tool_call(b, f"{where}.content.{j}"))
        elif kind != "redacted_thinking":
            raise TranslationError(
                f"{where}.content.{j}: an assistant turn takes text, thinking and tool_use blocks"
            )
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thinking:
        out["reasoning_content"] = "".join(thinking)
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_call(b: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name = b.get("id"), b.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise TranslationError(f"{where}: tool_use needs an id and a name")
    arguments = orjson.dumps(b.get("input") if b.get("input") is not None else {}).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results first (each its own ``tool`` message, as OpenAI wants them right after the
    assistant's calls), then the rest of the turn as one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        here = f"{where}.content.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "tool_result":
            tools.append(_tool_result(b, here))
        elif kind in ("text", "image", "document"):
            parts.append(_part(b, here))
        else:
            raise TranslationError(f"{here}: unsupported content block type {kind!r}")
    out = list(tools)
    if parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def _tool_result(b: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = b.get("tool_use_id")
    if not isinstance(call_id, str):
        raise TranslationError(f"{where}.tool_use_id: Field required")
    content = b.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, c in enumerate(content):
            if isinstance(c, dict) and c.get("type") == "text":
                texts.append(str(c.get("text", "")))
            elif isinstance(c, dict) and c.get("type") == "image":
                texts.append("[image]")  # a tool message carries text only
            else:
                raise TranslationError(f"{where}.content.{k}: expected a text or image block")
        text = "\n".join(texts)
    else:
        raise TranslationError(f"{where}.content: Input should be a string or a list of blocks")
    if b.get("is_error") is True:
        text = f"[tool error] {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _part(b: dict[str, Any], where: str) -> dict[str, Any]:
    kind = b["type"]
    if kind == "text":
        if not isinstance(b.get("text"), str):
            raise TranslationError(f"{where}.text: Field required")
        return {"type": "text", "text": b["text"]}
    source = b.get("source")
    if not isinstance(source, dict):
        raise TranslationError(f"{where}.source: Field required")
    stype = source.get("type")
    if stype == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise TranslationError(f"{where}.source: base64 needs media_type and data")
        url = f"data:{media};base64,{data}"
    elif stype == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif kind == "document" and stype == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    else:
        raise TranslationError(f"{where}.source: unsupported source type {stype!r}")
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": url}}
    if stype != "base64":
        raise TranslationError(f"{where}.source: documents are passed on as base64 data only")
    name = b.get("title") if isinstance(b.get("title"), str) else "document.pdf"
    return {"type": "file", "file": {"filename": name, "file_data": url}}


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise TranslationError("stop_sequences: Input should be a list of strings")
        if stop:
            out["stop"] = stop
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TranslationError(f"{name}: Input should be a number")
            out[name] = value


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise TranslationError("tools: Input should be a list")
        functions = [_function(t, f"tools.{i}") for i, t in enumerate(tools)]
        functions = [f for f in functions if f is not None]
        if functions:
            out["tools"] = functions
    choice = body.get("tool_choice")
    if choice is None or "tools" not in out:
        return
    if not isinstance(choice, dict):
        raise TranslationError("tool_choice: Input should be an object")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise TranslationError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _function(t: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(t, dict):
        raise TranslationError(f"{where}: Input should be an object")
    kind = t.get("type")
    if kind not in (None, "custom"):
        return None  # a server tool (web_search_20250305, bash_20250124...): not ours to run
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise TranslationError(f"{where}.name: Field required")
    schema = t.get("input_schema")
    if not isinstance(schema, dict):
        raise TranslationError(f"{where}.input_schema: Field required")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(t.get("description"), str):
        function["description"] = t["description"]
    return {"type": "function", "function": function}


def _effort(thinking: Any, output_config: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise TranslationError("thinking.budget_tokens: Field required")
        return "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if kind == "adaptive" and isinstance(output_config, dict):
        return EFFORT_BY_NAME.get(str(output_config.get("effort")))
    return None
