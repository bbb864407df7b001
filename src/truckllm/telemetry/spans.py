"""The attributes of a request's spans, from its record and its attempts: the OpenTelemetry
GenAI semantic conventions' (``gen_ai.*``), HTTP's, and the gateway's own (``truckllm.*``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from truckllm.providers.base import Usage
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.tracing import Attempt

_OPERATIONS = {"completions": "text_completion"}  # else the endpoint's name: chat, embeddings...
_TYPES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
_HOSTS = {  # OpenAI-compatible services with a name of their own in the conventions
    "openai.azure.com": "azure.ai.openai",
    "aiplatform.googleapis.com": "gcp.vertex_ai",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
}
_MAX_CONTENT = 64 * 1024  # characters of one captured attribute
ProviderInfo = tuple[str, str | None, int | None]  # gen_ai.provider.name, server address, port


def operation(endpoint: str) -> str:
    """``gen_ai.operation.name`` of an endpoint (``chat`` for Messages and Responses too)."""
    return _OPERATIONS.get(endpoint, endpoint)


def traces_url(endpoint: str) -> str:
    """The collector's base URL gets the standard ``/v1/traces`` path; a full URL is kept."""
    parts = urlsplit(endpoint)
    return endpoint.rstrip("/") + "/v1/traces" if parts.path in ("", "/") else endpoint


def provider_info(ptype: str, base_url: str) -> ProviderInfo:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    name = _TYPES.get(ptype, ptype or "unknown")
    for suffix, known in _HOSTS.items():
        if host == suffix or host.endswith("." + suffix):
            name = known
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    return name, host or None, port


Stable = tuple[tuple[str, Any], ...]
"""Attributes that repeat from one request to the next (model, provider, key, status...), as
(name, value) pairs, a value of None meaning absent: the encoder caches each such set whole."""


def server_attributes(
    rec: RequestRecord, op: str, info: ProviderInfo | None, method: str, path: str
) -> tuple[Stable, dict[str, Any]]:
    """The client request's span: what it asked, where it was served, what it used."""
    error = rec.error_code or (str(rec.status) if rec.status >= 400 else None)
    stable = (
        ("gen_ai.operation.name", op),
        ("gen_ai.request.model", rec.model),
        ("gen_ai.response.model", rec.upstream_model),
        ("gen_ai.provider.name", info[0] if info else None),
        ("gen_ai.request.stream", rec.stream),
        ("http.request.method", method),
        ("url.path", path),
        ("http.response.status_code", rec.status),
        ("error.type", error),
        ("truckllm.alias", rec.alias),
        ("truckllm.client_id", rec.client_id),
        ("truckllm.provider", rec.provider),
        ("truckllm.key_id", rec.key_id),
        ("truckllm.attempts", rec.attempts),
        ("truckllm.cache", rec.cache),
    )
    varying: dict[str, Any] = {
        "truckllm.request_id": rec.request_id,
        "truckllm.overhead_s": rec.overhead_s,
    }
    optional = (
        ("gen_ai.response.time_to_first_chunk", rec.ttft_s),
        ("client.address", rec.client_ip),
        ("truckllm.cost_usd", rec.cost_usd),
        ("truckllm.cache.saved_usd", rec.saved_usd),
    )
    for name, value in optional:
        if value is not None:
            varying[name] = value
    if rec.usage is not None:
        varying.update(usage_attributes(rec.usage))
    return stable, varying


def attempt_attributes(
    a: Attempt, op: str, info: ProviderInfo | None, usage: Usage | None
) -> tuple[Stable, dict[str, Any]]:
    """One upstream attempt's span: the provider, key and model it went to, and how it ended
    (``error.type`` the outcome kind, and the key's state after the router learnt from it)."""
    name, address, port = info if info is not None else (None, None, None)
    served = a.error is None
    stable = (
        ("gen_ai.operation.name", op),
        ("gen_ai.provider.name", name),
        ("gen_ai.request.model", a.model),
        ("gen_ai.response.model", a.model if served else None),
        ("server.address", address),
        ("server.port", port),
        ("http.response.status_code", a.status),
        ("error.type", a.error),
        ("truckllm.provider", a.provider_id),
        ("truckllm.key_id", a.key_id),
        ("truckllm.attempt", a.number),
        ("truckllm.key.status", a.key_status),
    )
    varying: dict[str, Any] = {}
    if a.cooldown_s is not None:
        varying["truckllm.key.cooldown_s"] = a.cooldown_s
    if served and usage is not None:
        varying.update(usage_attributes(usage))
    return stable, varying


def usage_attributes(usage: Usage) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
    }
    if usage.cached_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
    if usage.cache_creation_tokens:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation_tokens
    if usage.reasoning_tokens:
        attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    if usage.estimated:
        attrs["truckllm.usage.estimated"] = True
    return attrs


def content(body: dict[str, Any], output: bytes | None) -> dict[str, Any]:
    """The client's messages and the whole answer's, as JSON in their own API's shape, each cut
    at 64 KiB characters (``capture_content`` only; a stream's answer is not captured)."""
    attrs: dict[str, Any] = {}
    for field in ("messages", "input", "prompt", "contents"):
        if field in body:
            attrs["gen_ai.input.messages"] = _clip(orjson.dumps(body[field]))
            break
    for field in ("system", "instructions"):
        if isinstance(body.get(field), str | list):
            attrs["gen_ai.system_instructions"] = _clip(orjson.dumps(body[field]))
    if output:
        try:
            answer = orjson.loads(output)
        except orjson.JSONDecodeError:
            return attrs
        if isinstance(answer, dict):
            for field in ("choices", "content", "output", "candidates"):
                if field in answer:
                    attrs["gen_ai.output.messages"] = _clip(orjson.dumps(answer[field]))
                    break
    return attrs


def _clip(data: bytes) -> str:
    text = data.decode()
    return text if len(text) <= _MAX_CONTENT else text[:_MAX_CONTENT] + "…"
