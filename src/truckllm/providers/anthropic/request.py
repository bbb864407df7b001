"""OpenAI chat request -> Anthropic Messages request. Pure functions: no I/O, no clock.

What does not translate is refused with a :class:`TranslationError` (answered as a 400) when it
would change the answer (``n > 1``, ``logprobs``, ``top_logprobs``, ``logit_bias``, audio,
file ids), and dropped when the answer stays a valid answer to the request without it
(``temperature``, ``top_p``, ``seed``, frequency and presence penalties, ``reasoning_effort``,
``store``, ``metadata``, ``service_tier``, ``prediction``). The Messages API takes no sampling
parameters: the ``anthropic`` SDK's ``MessageCreateParams`` (2.16) has no ``temperature``,
``top_p`` or ``top_k``, and the API refuses fields it does not define. ``response_format`` becomes an
instruction (``json_object``) or a forced tool whose input is the answer (``json_schema``), see
:func:`_response_format`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_MAX_TOKENS = 4096
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose, no code fences."
)
_JSON_TOOL_DEFAULT = "json_response"
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_TOOL_CHOICES: dict[str, dict[str, Any]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}


class TranslationError(ValueError):
    """The request asks for something Anthropic cannot do as asked. ``param`` names the field."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = "unsupported_parameter"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Translated:
    """A native request body, and what the answer's translation must know about it.

    ``json_tool`` names the forced tool that carries a ``json_schema`` answer: its input becomes
    the reply's text content and its ``tool_use`` stop the finish reason ``stop``.
    """

    body: dict[str, Any]
    json_tool: str | None = None


def translate_request(
    body: dict[str, Any], model: str, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> Translated:
    """The Anthropic body for the client's chat ``body`` sent to upstream ``model``.

    ``body`` is not mutated. Raises :class:`TranslationError` for what cannot be translated.
    """
    _refuse_unsupported(body)
    system, messages = _messages(body.get("messages"))
    json_tool = _response_format(body, system)
    out: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        out["system"] = (
            system
            if any("cache_control" in b for b in system)
            else "\n\n".join(b["text"] for b in system)
        )
    out["messages"] = messages
    if json_tool is not None:
        out["tools"] = [json_tool]
        out["tool_choice"] = {"type": "tool", "name": json_tool["name"]}
    else:
        _tools(body, out)
    _sampling(body, out)
    if body.get("stream"):
        out["stream"] = True
    return Translated(out, json_tool["name"] if json_tool is not None else None)


def _response_format(body: dict[str, Any], system: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The forced tool that carries a ``json_schema`` answer, if one is asked for: the model
    must call it, and its input (valid JSON, shaped by the schema) becomes the reply's content.
    A ``json_object`` request adds an instruction to ``system`` instead: Anthropic has no JSON
    mode, so that answer is JSON by instruction, not by constraint."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
        return None
    if kind == "json_schema":
        if body.get("tools"):
            raise TranslationError(
                "response_format 'json_schema' cannot be combined with 'tools' on an "
                "Anthropic model: use a tool for the structured answer instead.",
                "response_format",
            )
        return _json_schema_tool(fmt.get("json_schema"))
    raise TranslationError(
        "Invalid 'response_format': expected type 'text', 'json_object' or 'json_schema'.",
        "response_format",
        "invalid_value",
    )


# -- refusals and scalars ----------------------------------------------------------------------


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError(
            "Anthropic models return one choice per request: 'n' must be 1.", "n"
        )
    if body.get("logprobs"):
        raise TranslationError("Anthropic models do not return log probabilities.", "logprobs")
    if body.get("top_logprobs") is not None:
        raise TranslationError("Anthropic models do not return log probabilities.", "top_logprobs")
    if body.get("logit_bias"):
        raise TranslationError("Anthropic models do not support 'logit_bias'.", "logit_bias")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise TranslationError("Anthropic models do not produce audio.", "modalities")


def _max_tokens(body: dict[str, Any], default: int) -> int:
    param = "max_completion_tokens"
    value = body.get(param)
    if value is None:
        param = "max_tokens"
        value = body.get(param)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TranslationError(
            f"Invalid '{param}': expected a positive integer.", param, "invalid_value"
        )
    return value


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    """Stop sequences and the end user. ``temperature`` and ``top_p`` are dropped: the Messages
    API has no sampling parameters any more (see the module docstring)."""
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise TranslationError(
            "Invalid 'stop': expected a string or an array of strings.", "stop", "invalid_type"
        )
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}


# -- tools -------------------------------------------------------------------------------------


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if not tools:
        return
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools", "invalid_type")
    native = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise TranslationError(
                "Only tools of type 'function' translate to Anthropic tools.", f"tools[{j}]"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(
                "A function tool needs a 'name'.", f"tools[{j}].function.name", "invalid_value"
            )
        params = fn.get("parameters")
        item: dict[str, Any] = {"name": name, "input_schema": params or _EMPTY_SCHEMA}
        if fn.get("description"):
            item["description"] = fn["description"]
        if "cache_control" in tool:
            item["cache_control"] = tool["cache_control"]
        native.append(item)
    out["tools"] = native
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return _TOOL_CHOICES[choice]
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise TranslationError(
        "Invalid 'tool_choice': expected 'auto', 'required', 'none' or a named function.",
        "tool_choice",
        "invalid_value",
    )


def _json_schema_tool(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise TranslationError(
            "'response_format.json_schema' must be an object with a 'schema' object.",
            "response_format.json_schema",
            "invalid_value",
        )
    schema = spec.get("schema") or _EMPTY_SCHEMA
    if schema.get("type") != "object":
        raise TranslationError(
            "An Anthropic model answers a 'json_schema' through a tool, whose schema must have "
            '"type": "object".',
            "response_format.json_schema.schema",
            "invalid_value",
        )
    raw_name = spec.get("name")
    name = _TOOL_NAME.sub("_", raw_name)[:64] if isinstance(raw_name, str) and raw_name else ""
    name = name or _JSON_TOOL_DEFAULT
    description = spec.get("description")
    tool = {
        "name": name,
        "description": (description + "\n\n" if isinstance(description, str) else "")
        + "Give your final answer as this tool's input.",
        "input_schema": schema,
    }
    return tool


# -- messages ----------------------------------------------------------------------------------


def _messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System text blocks (from every system and developer message, in order), and the
    conversation with consecutive messages of one native role merged so that roles alternate."""
    if not isinstance(messages, list):
        raise TranslationError("'messages' must be an array.", "messages", "invalid_type")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise TranslationError(
                f"messages[{i}] must be an object.", f"messages[{i}]", "invalid_type"
            )
        role = msg.get("role")
        content: str | list[dict[str, Any]]
        if role in ("system", "developer"):
            system.extend(_text_blocks(msg.get("content"), f"messages[{i}].content"))
            continue
        if role == "user":
            native_role, content = "user", _user_content(msg.get("content"), i)
        elif role == "assistant":
            native_role, content = "assistant", _assistant_content(msg, i)
        elif role == "tool":
            native_role, content = "user", [_tool_result(msg, i)]
        else:
            raise TranslationError(
                f"Invalid role {role!r} in messages[{i}]: Anthropic models take system, "
                "developer, user, assistant and tool messages.",
                f"messages[{i}].role",
                "invalid_value",
            )
        if out and out[-1]["role"] == native_role:
            out[-1]["content"] = _as_blocks(out[-1]["content"]) + _as_blocks(content)
        else:
            out.append({"role": native_role, "content": content})
    return system, out


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(
            f"Invalid '{param}': expected a string or an array of text parts.",
            param,
            "invalid_type",
        )
    blocks = []
    for k, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise TranslationError(
                "Only text parts are allowed here.", f"{param}[{k}]", "invalid_value"
            )
        blocks.append(_text(part))
    return blocks


def _text(part: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.get("text") or ""}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _user_content(content: Any, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    param = f"messages[{i}].content"
    if not isinstance(content, list):
        raise TranslationError(
            f"Invalid '{param}': expected a string or an array of parts.", param, "invalid_type"
        )
    return [_user_part(part, f"{param}[{k}]") for k, part in enumerate(content)]


def _user_part(part: Any, param: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return _text(part)
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise TranslationError("An image part needs a URL.", param, "invalid_value")
        block: dict[str, Any] = {"type": "image", "source": _image_source(url, param)}
    elif kind == "file":
        spec = part.get("file")
        data = spec.get("file_data") if isinstance(spec, dict) else None
        if not isinstance(data, str):
            raise TranslationError(
                "Anthropic models take files as inline 'file_data' (a PDF data URL); "
                "'file_id' does not translate.",
                param,
            )
        media_type, payload = _data_url(data, param)
        if media_type != "application/pdf":
            raise TranslationError(
                f"Anthropic models take PDF documents, not {media_type!r}.", param
            )
        block = {
            "type": "document",
            "source": {"type": "base64", "media_type": media_type, "data": payload},
        }
    elif kind == "input_audio":
        raise TranslationError("Anthropic models do not take audio input.", param)
    else:
        raise TranslationError(
            f"Content part type {kind!r} does not translate to Anthropic.", param, "invalid_value"
        )
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image_source(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        media_type, data = _data_url(url, param)
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise TranslationError(
        "An image URL must be an http(s) URL or a base64 data URL.", param, "invalid_value"
    )


def _data_url(url: str, param: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise TranslationError(
            "A data URL must be base64-encoded: data:<media type>;base64,<data>.",
            param,
            "invalid_value",
        )
    return header[5:-7], data


def _assistant_content(msg: dict[str, Any], i: int) -> str | list[dict[str, Any]]:
    content = msg.get("content")
    calls = msg.get("tool_calls")
    if not calls and (content is None or isinstance(content, str)):
        return content or ""
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks.extend(_as_blocks(content))
    elif isinstance(content, list):
        for k, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "refusal":
                part = {"type": "text", "text": part.get("refusal") or ""}
            elif not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError(
                    "Assistant content parts must be text or refusal.",
                    f"messages[{i}].content[{k}]",
                    "invalid_value",
                )
            if part.get("text"):
                blocks.append(_text(part))
    elif content is not None:
        raise TranslationError(
            "Invalid assistant content.", f"messages[{i}].content", "invalid_type"
        )
    if isinstance(calls, list):
        blocks.extend(
            _tool_use(call, f"messages[{i}].tool_calls[{k}]") for k, call in enumerate(calls)
        )
    elif calls is not None:
        raise TranslationError(
            "'tool_calls' must be an array.", f"messages[{i}].tool_calls", "invalid_type"
        )
    return blocks


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(call.get("id"), str):
        raise TranslationError(
            "A tool call needs an 'id' and a 'function'.", param, "invalid_value"
        )
    arguments = fn.get("arguments") or "{}"
    try:
        args = orjson.loads(arguments) if isinstance(arguments, str | bytes) else arguments
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise TranslationError(
            "Tool call arguments must be a JSON object (as a string).",
            f"{param}.function.arguments",
            "invalid_value",
        )
    return {"type": "tool_use", "id": call["id"], "name": fn.get("name") or "", "input": args}


def _tool_result(msg: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise TranslationError(
            "A tool message needs a 'tool_call_id'.",
            f"messages[{i}].tool_call_id",
            "invalid_value",
        )
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif isinstance(content, list):
        param = f"messages[{i}].content"
        block["content"] = [_user_part(part, f"{param}[{k}]") for k, part in enumerate(content)]
    elif content is not None:
        raise TranslationError(
            "Invalid tool message content.", f"messages[{i}].content", "invalid_type"
        )
    return block
