"""OpenAI chat requests as Gemini ``generateContent`` bodies. Pure functions, no I/O.

What maps (the package docstring has the full table): messages to ``contents`` with
``user``/``model`` roles (consecutive turns of one role merged), system and developer messages to
``systemInstruction``, text, image, audio and file parts, assistant ``tool_calls`` to
``functionCall`` parts and ``tool`` messages to ``functionResponse`` parts, tools and
``tool_choice`` to ``functionDeclarations`` and ``toolConfig``, and sampling, length, stop, ``n``,
penalties, seed, JSON mode / JSON schema and ``reasoning_effort`` to ``generationConfig``.

Fields that would change the answer and that Gemini cannot honour raise :class:`Unsupported`
(a 400 for the client). Fields that only concern OpenAI's service (``user``, ``store``,
``metadata``, ``service_tier``, ``parallel_tool_calls``, ``prediction``) are ignored.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlsplit

import orjson

from truckllm.providers.gemini.errors import Unsupported
from truckllm.providers.gemini.schema import to_gemini_schema

SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Gemini's documented stand-in for a missing thought signature on a replayed function call."""

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".pdf": "application/pdf",
}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


def chat_request(
    body: dict[str, Any], model: str, signature_fallback: str | None = SKIP_SIGNATURE
) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat body. ``signature_fallback`` is put on
    replayed function calls of the current turn that come without the thought signature Gemini 3
    requires (``None``: leave them bare)."""
    _reject_unsupported(body)
    system, contents = _contents(body.get("messages") or [])
    if signature_fallback:
        _fill_signatures(contents, signature_fallback)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools:
        decls = _declarations(tools)
        config, decls = _tool_config(choice, decls)
        out["tools"] = [{"functionDeclarations": decls}]
        if config:
            out["toolConfig"] = {"functionCallingConfig": config}
    gen = _generation_config(body, model)
    if gen:
        out["generationConfig"] = gen
    return out


# -- refusals ----------------------------------------------------------------------------------


def _reject_unsupported(body: dict[str, Any]) -> None:
    if body.get("logprobs") or body.get("top_logprobs"):
        _refuse("logprobs", "Log probabilities are not available through the Gemini provider.")
    if body.get("logit_bias"):
        _refuse("logit_bias", "Gemini has no equivalent of 'logit_bias'.")
    if body.get("audio") is not None:
        _refuse("audio", "Audio output is not available through the Gemini provider.")
    if any(m != "text" for m in body.get("modalities") or ()):
        _refuse("modalities", "Only text output is available through the Gemini provider.")
    if body.get("web_search_options") is not None:
        _refuse("web_search_options", "Web search is not available through the Gemini provider.")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            _refuse(legacy, f"'{legacy}' is deprecated; use 'tools' and 'tool_choice' instead.")


def _refuse(param: str, message: str) -> None:
    raise Unsupported(message, param=param)


# -- messages ----------------------------------------------------------------------------------


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call id -> function name, for the tool messages that answer
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise Unsupported(f"'{where}' must be an object.", where, "invalid_type")
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(m.get("content"), f"{where}.content", images=False))
        elif role == "user":
            _append(contents, "user", _parts(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            parts = _parts(m.get("content"), f"{where}.content", images=False)
            parts.extend(_function_calls(m.get("tool_calls"), f"{where}.tool_calls", names))
            _append(contents, "model", parts)
        elif role == "tool":
            _append(contents, "user", [_function_response(m, where, names)])
        elif role == "function":
            raise Unsupported(
                "Messages with role 'function' are deprecated; use 'tool' messages.", where
            )
        else:
            raise Unsupported(
                f"Invalid value for '{where}.role': {role!r}.", where, "invalid_value"
            )
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Gemini wants turns to alternate: a turn of the same role as the last one joins it."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _parts(content: Any, where: str, images: bool = True) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []  # Gemini refuses empty text parts; clients send "" beside tool calls
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise Unsupported(
            f"'{where}' must be a string or an array of parts.", where, "invalid_type"
        )
    out = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                out.append({"text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append({"text": part["refusal"]})
        elif images and kind == "image_url":
            out.append(_image(part.get("image_url"), at))
        elif images and kind == "input_audio":
            out.append(_audio(part.get("input_audio"), at))
        elif images and kind == "file":
            out.append(_file(part.get("file"), at))
        else:
            raise Unsupported(
                f"Content part type {kind!r} at '{at}' is not supported by the Gemini provider.",
                at,
                "invalid_value",
            )
    return out


def _image(spec: Any, where: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise Unsupported(f"'{where}.image_url.url' must be a string.", where, "invalid_type")
    if url.startswith("data:"):
        mime, data = _data_url(url, where)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"fileData": {"mimeType": _guess_type(url), "fileUri": url}}
    raise Unsupported(
        f"'{where}.image_url.url' must be an http(s) URL or a base64 data URL.",
        where,
        "invalid_value",
    )


def _audio(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
        raise Unsupported(f"'{where}.input_audio.data' must be a string.", where, "invalid_type")
    fmt = spec.get("format") or "wav"
    return {"inlineData": {"mimeType": f"audio/{fmt}", "data": spec["data"]}}


def _file(spec: Any, where: str) -> dict[str, Any]:
    data = spec.get("file_data") if isinstance(spec, dict) else None
    if not isinstance(data, str):
        raise Unsupported(
            f"'{where}.file' must carry 'file_data' (a base64 data URL); uploaded file ids are "
            "not available through the Gemini provider.",
            where,
        )
    if data.startswith("data:"):
        mime, payload = _data_url(data, where)
    else:
        name = spec.get("filename") if isinstance(spec, dict) else None
        mime = _guess_type(name or "", "application/pdf")
        payload = data
    return {"inlineData": {"mimeType": mime, "data": payload}}


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    meta = header[5:].split(";")
    if not sep or "base64" not in meta[1:]:
        raise Unsupported(f"'{where}' must be a base64 data URL.", where, "invalid_value")
    return meta[0] or "application/octet-stream", data


def _guess_type(url: str, default: str = "image/jpeg") -> str:
    path = urlsplit(url).path.lower()
    dot = path.rfind(".")
    if dot >= 0 and path[dot:] in _IMAGE_TYPES:
        return _IMAGE_TYPES[path[dot:]]
    guessed, _ = mimetypes.guess_type(path)
    return guessed or default


# -- tool turns --------------------------------------------------------------------------------


def _function_calls(calls: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    if not calls:
        return []
    if not isinstance(calls, list):
        raise Unsupported(f"'{where}' must be an array.", where, "invalid_type")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Unsupported(f"'{where}[{j}].function.name' is required.", f"{where}[{j}]")
        call_id = call.get("id")
        if isinstance(call_id, str):
            names[call_id] = fn["name"]
        part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": _args(fn)}}
        signature = _signature_of(call)
        if signature:
            part["thoughtSignature"] = signature
        out.append(part)
    return out


def _args(fn: dict[str, Any]) -> dict[str, Any]:
    """Gemini wants an object; arguments that are not a JSON object are kept under ``"value"``
    (or ``"arguments"`` when they are not JSON at all), so the turn can still be replayed."""
    raw = fn.get("arguments")
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        parsed = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": raw}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _signature_of(call: dict[str, Any]) -> str | None:
    """The thought signature a client echoes back in ``extra_content.google.thought_signature``,
    the field Google's own OpenAI-compatible endpoint uses."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _function_response(m: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise Unsupported(
            f"'{where}.tool_call_id' ({call_id!r}) does not match any tool call of an earlier "
            "assistant message; Gemini needs the function's name.",
            f"{where}.tool_call_id",
            "invalid_value",
        )
    content = m.get("content")
    if isinstance(content, list):
        content = "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    response: Any
    if isinstance(content, str):
        try:
            response = orjson.loads(content)
        except orjson.JSONDecodeError:
            response = content
    else:
        response = content
    if not isinstance(response, dict):
        response = {"result": response}
    return {"functionResponse": {"name": name, "response": response}}


def _fill_signatures(contents: list[dict[str, Any]], fallback: str) -> None:
    """Gemini 3 rejects a request whose current turn (everything after the last user message
    that is not a function response) replays a function call without its thought signature; each
    model step of that turn needs one on its first function call."""
    start = 0
    for i, c in enumerate(contents):
        if c["role"] == "user" and any("functionResponse" not in p for p in c["parts"]):
            start = i + 1
    for c in contents[start:]:
        if c["role"] != "model":
            continue
        calls = [p for p in c["parts"] if "functionCall" in p]
        if calls and not any("thoughtSignature" in p for p in c["parts"]):
            calls[0]["thoughtSignature"] = fallback


# -- tools -------------------------------------------------------------------------------------


def _declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Unsupported("'tools' must be an array.", "tools", "invalid_type")
    decls = []
    for j, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Unsupported(
                f"Tool type {kind!r} is not supported by the Gemini provider; only functions.",
                f"tools[{j}]",
            )
        decl: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = to_gemini_schema(fn.get("parameters"), f"tools[{j}].function.parameters")
        if params.get("properties"):  # Gemini refuses an OBJECT without properties
            decl["parameters"] = params
        decls.append(decl)
    return decls


def _tool_config(
    choice: Any, decls: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if choice is None:
        return None, decls
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}, decls
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return {"mode": "ANY", "allowedFunctionNames": [name]}, decls
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        spec = choice.get("allowed_tools") or {}
        allowed = [
            (t.get("function") or {}).get("name")
            for t in spec.get("tools") or ()
            if isinstance(t, dict)
        ]
        if spec.get("mode") == "required":
            return {"mode": "ANY", "allowedFunctionNames": allowed}, decls
        return {"mode": "AUTO"}, [d for d in decls if d["name"] in allowed]
    raise Unsupported(
        f"Invalid value for 'tool_choice': {choice!r}.", "tool_choice", "invalid_value"
    )


# -- generation config -------------------------------------------------------------------------


def _generation_config(body: dict[str, Any], model: str) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        value = body.get(src)
        if value is not None:
            gen[dst] = value
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        gen["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        gen["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        gen["stopSequences"] = stop
    _response_format(body.get("response_format"), gen)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str):
        thinking = _thinking(effort, model)
        if thinking:
            gen["thinkingConfig"] = thinking
    return gen


def _response_format(fmt: Any, gen: dict[str, Any]) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        gen["responseMimeType"] = "application/json"
        return
    if kind == "json_schema":
        gen["responseMimeType"] = "application/json"
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            gen["responseSchema"] = to_gemini_schema(schema, "response_format.json_schema.schema")
        return
    raise Unsupported(
        f"Invalid value for 'response_format.type': {kind!r}.", "response_format", "invalid_value"
    )


def _thinking(effort: str, model: str) -> dict[str, Any] | None:
    """Gemini 2.5 takes a token budget, later models a level; older models do not think. A
    level is spelled as google-genai's ``ThinkingLevel`` enum spells it: upper case."""
    name = model.rsplit("/", 1)[-1]
    if name.startswith("gemini-2.5"):
        budget = _BUDGETS.get(effort)
        if budget == 0 and "pro" in name:
            budget = 128  # the smallest budget 2.5 Pro accepts: it cannot stop thinking
        return None if budget is None else {"thinkingBudget": budget}
    if name.startswith(("gemini-1", "gemini-2")):
        return None
    level = "minimal" if effort == "none" else effort
    if "pro" in name:  # Pro models know only "low" and "high"
        level = "low" if level in ("minimal", "low") else "high"
    if level not in ("minimal", "low", "medium", "high"):
        return None
    return {"thinkingLevel": level.upper()}
