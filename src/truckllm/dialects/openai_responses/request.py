"""An OpenAI Responses API request as the internal form (an OpenAI chat completion request).

Carried: ``instructions`` (a system message first); ``input`` as a string (one user message) or
items: messages (roles ``user``, ``assistant``, ``system``, and ``developer`` as ``system``, which
every provider type understands) with ``input_text``/``output_text``, ``input_image`` (URL or
data URL) and ``input_file`` (base64 ``file_data`` or a ``file_id``) parts; ``function_call``
items as the assistant's ``tool_calls``, ``function_call_output`` items as ``tool`` messages;
``reasoning`` items' summaries as the next assistant turn's ``reasoning_content``. Items may carry
their own ``id`` (Codex sends them); ``item_reference`` items and the built-in tools' call items
cannot be expressed and are a :class:`TranslationError`. Function ``tools``; Codex's
``namespace`` tools flattened to functions named ``<namespace>__<function>`` (and mapped back on
the answer); ``tool_choice``; ``text.format`` (``json_schema``, ``json_object``) as
``response_format``; ``reasoning.effort`` as ``reasoning_effort``; ``max_output_tokens``,
``parallel_tool_calls``, ``temperature``, ``top_p``; ``stream`` (usage asked for).

Dropped: built-in tools (``web_search``, ``file_search``, ``code_interpreter``, ``computer*``,
``image_generation``, ``mcp``, ``local_shell``...: the upstream cannot run them; the endpoint
names them in ``x-truckllm-dropped-tools``), ``custom`` (free-form grammar) tools, ``store``,
``include``, ``prompt_cache_key``, ``client_metadata``, ``metadata``, ``user``,
``safety_identifier``, ``service_tier``, ``truncation``, ``reasoning.summary``.
"""

from __future__ import annotations

from typing import Any

from truckllm.dialects.anthropic_messages.request import TranslationError

__all__ = ["NS_SEP", "TranslationError", "functions", "input_items", "to_chat"]

NS_SEP = "__"
EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


def to_chat(body: dict[str, Any], history: list[Any] | None = None) -> dict[str, Any]:
    """The OpenAI chat request for a Responses request; ``history`` holds the items of the
    conversation so far (a stored ``previous_response_id``), sent before ``input``."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslationError("Missing required parameter: 'model'.")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise TranslationError("Invalid type for 'instructions': expected a string.")
    items = list(history or []) + input_items(body.get("input"))
    _Messages(messages).extend(items)
    if not any(m["role"] != "system" for m in messages):
        raise TranslationError("Missing required parameter: 'input'.")
    out: dict[str, Any] = {"model": model, "messages": messages}
    _sampling(body, out)
    _tools(body, out)
    _format(body.get("text"), out)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def input_items(value: Any) -> list[Any]:
    """``input`` as a list of items: a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise TranslationError("Invalid type for 'input': expected a string or an array.")
    return value


class _Messages:
    """Chat messages built item by item: consecutive assistant text, reasoning and function
    calls make one assistant message, as chat wants them."""

    def __init__(self, out: list[dict[str, Any]]) -> None:
        self.out = out
        self.reasoning: list[str] = []

    def extend(self, items: list[Any]) -> None:
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise TranslationError(f"Invalid type for 'input[{i}]': expected an object.")
            self.item(item, f"input[{i}]")

    def _assistant(self) -> dict[str, Any]:
        last = self.out[-1] if self.out else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.out.append(last)
        if self.reasoning:
            last["reasoning_content"] = "".join(self.reasoning)
            self.reasoning = []
        return last

    def item(self, item: dict[str, Any], where: str) -> None:
        kind = item.get("type")
        if kind in (None, "message"):
            self.message(item, where)
        elif kind == "function_call":
            call = self._assistant()
            call.setdefault("tool_calls", []).append(_tool_call(item, where))
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise TranslationError(f"Missing required parameter: '{where}.call_id'.")
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, f"{where}.output")
            self.out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            for part in item.get("summary") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    self.reasoning.append(part["text"])
        else:
            raise TranslationError(
                f"Invalid value for '{where}.type': {kind!r} items cannot be sent to this model."
            )

    def message(self, item: dict[str, Any], where: str) -> None:
        role, content = item.get("role"), item.get("content")
        if role == "developer":
            role = "system"
        if role not in ("user", "assistant", "system"):
            raise TranslationError(
                f"Invalid value for '{where}.role': expected one of 'user', 'assistant', "
                "'system' or 'developer'."
            )
        if role == "assistant":
            text = content if isinstance(content, str) else _text(content, f"{where}.content")
            msg = self._assistant()
            msg["content"] = (msg["content"] or "") + text if text else msg["content"]
            return
        if role == "system":
            text = content if isinstance(content, str) else _text(content, f"{where}.content")
            self.out.append({"role": "system", "content": text})
            return
        if isinstance(content, str):
            self.out.append({"role": "user", "content": content})
            return
        if not isinstance(content, list):
            raise TranslationError(
                f"Invalid type for '{where}.content': expected a string or array."
            )
        parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        if len(parts) == 1 and parts[0]["type"] == "text":
            self.out.append({"role": "user", "content": parts[0]["text"]})
        else:
            self.out.append({"role": "user", "content": parts})


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if not isinstance(content, list):
        raise TranslationError(f"Invalid type for '{where}': expected a string or array.")
    texts = []
    for j, p in enumerate(content):
        if not isinstance(p, dict):
            raise TranslationError(f"Invalid type for '{where}[{j}]': expected an object.")
        if p.get("type") in _TEXT_PARTS and isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif p.get("type") == "refusal" and isinstance(p.get("refusal"), str):
            texts.append(p["refusal"])
        elif p.get("type") in ("input_image", "input_file"):
            texts.append(f"[{p['type'][6:]}]")  # a tool or system message carries text only
        else:
            raise TranslationError(f"Invalid value for '{where}[{j}].type': {p.get('type')!r}.")
    return "".join(texts)


def _part(p: Any, where: str) -> dict[str, Any]:
    if not isinstance(p, dict):
        raise TranslationError(f"Invalid type for '{where}': expected an object.")
    kind = p.get("type")
    if kind in _TEXT_PARTS:
        if not isinstance(p.get("text"), str):
            raise TranslationError(f"Missing required parameter: '{where}.text'.")
        return {"type": "text", "text": p["text"]}
    if kind == "input_image":
        url = p.get("image_url")
        if not isinstance(url, str) or not url:
            raise TranslationError(f"'{where}': only images given by image_url can be sent here.")
        image: dict[str, Any] = {"url": url}
        if p.get("detail") in ("low", "high", "auto"):
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file: dict[str, Any] = {}
        if isinstance(p.get("file_data"), str):
            file["file_data"] = p["file_data"]
            file["filename"] = p.get("filename") if isinstance(p.get("filename"), str) else "file"
        elif isinstance(p.get("file_id"), str):
            file["file_id"] = p["file_id"]
        else:
            raise TranslationError(f"'{where}': a file needs file_data or file_id.")
        return {"type": "file", "file": file}
    raise TranslationError(f"Invalid value for '{where}.type': {kind!r}.")


def _tool_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise TranslationError(f"'{where}': a function_call needs call_id and name.")
    namespace = item.get("namespace")
    if isinstance(namespace, str) and namespace:
        name = namespace + NS_SEP + name
    arguments = item.get("arguments")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else "{}"},
    }


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TranslationError(f"Invalid type for '{name}': expected a number.")
            out[name] = value
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TranslationError("Invalid 'max_output_tokens': expected a positive integer.")
        out["max_tokens"] = limit
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = EFFORTS.get(str(reasoning.get("effort")))
        if effort is not None:
            out["reasoning_effort"] = effort


def _function(t: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if isinstance(t.get("description"), str):
        fn["description"] = t["description"]
    params = t.get("parameters")
    fn["parameters"] = params if isinstance(params, dict) else {"type": "object", "properties": {}}
    if t.get("strict") is True:
        fn["strict"] = True
    return {"type": "function", "function": fn}


def functions(tools: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(chat function tools, names of the tools dropped). Namespaced functions are flattened."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise TranslationError("Invalid type for 'tools': expected an array.")
    out: list[dict[str, Any]] = []
    dropped: list[str] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise TranslationError(f"Invalid type for 'tools[{i}]': expected an object.")
        kind = t.get("type")
        if kind == "function":
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise TranslationError(f"Missing required parameter: 'tools[{i}].name'.")
            out.append(_function(t, t["name"], f"tools[{i}]"))
        elif kind == "namespace" and isinstance(t.get("name"), str):
            for j, inner in enumerate(t.get("tools") or ()):
                if isinstance(inner, dict) and inner.get("type") == "function":
                    name = f"{t['name']}{NS_SEP}{inner.get('name')}"
                    out.append(_function(inner, name, f"tools[{i}].tools[{j}]"))
                else:
                    dropped.append(
                        f"{t['name']}.{inner.get('name') if isinstance(inner, dict) else j}"
                    )
        else:
            dropped.append(str(kind))
    return out, dropped


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools, _ = functions(body.get("tools"))
    if tools:
        out["tools"] = tools
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    choice = body.get("tool_choice")
    if choice is None or not tools:
        return
    if choice in ("auto", "none", "required"):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise TranslationError("Missing required parameter: 'tool_choice.name'.")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        out["tool_choice"] = "required" if choice.get("mode") == "required" else "auto"
    elif not isinstance(choice, dict):
        raise TranslationError("Invalid value for 'tool_choice'.")
    # a built-in tool's choice: that tool is dropped, the model chooses


def _format(text: Any, out: dict[str, Any]) -> None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return
    fmt = text["format"]
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise TranslationError("Missing required parameter: 'text.format.schema'.")
        spec: dict[str, Any] = {"name": str(fmt.get("name") or "response"), "schema": schema}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        if isinstance(fmt.get("description"), str):
            spec["description"] = fmt["description"]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
