"""OpenTelemetry spans of finished requests, exported over OTLP/HTTP (the ``otel`` extra).

Imported only when ``tracing.endpoint`` is set. The spans are built once the response is
finished, from the request's record and its attempts (``telemetry/tracing.py``), with the times
they really started and ended, and handed to the SDK's batch processor: encoding
(``telemetry/otlp.py``) and sending run on its thread, a full queue drops spans rather than
blocking the request. Attribute names follow
the OpenTelemetry GenAI semantic conventions (``gen_ai.*``), plus the gateway's own
(``truckllm.*``). The client's messages and the answer are exported only with
``tracing.capture_content``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from truckllm import __version__
from truckllm.config.schema import Config, TracingConfig
from truckllm.providers.base import Usage
from truckllm.telemetry.otlp import OTLPHTTPExporter
from truckllm.telemetry.record import RequestRecord
from truckllm.telemetry.tracing import Attempt, RequestTrace

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
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR, _UNSET = Status(StatusCode.ERROR), Status(StatusCode.UNSET)
_MAX_CONTENT = 64 * 1024  # characters of one captured attribute
ProviderInfo = tuple[str, str | None, int | None]  # gen_ai.provider.name, server address, port


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


class OtlpExporter:
    """The SDK's batch processor and OTLP/HTTP exporter, fed ready-made spans."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.endpoint is not None
        self.capture = config.capture_content
        self.resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        self.scope = InstrumentationScope("truckllm", __version__)
        self.exporter = exporter = OTLPHTTPExporter(
            traces_url(config.endpoint),
            {name: secret.reveal() for name, secret in config.headers.items()},
            config.timeout,
        )
        self.processor = BatchSpanProcessor(
            exporter,
            max_queue_size=config.max_queue,
            schedule_delay_millis=config.flush_interval * 1000,
            max_export_batch_size=min(512, config.max_queue),
        )
        self._config: Config | None = None
        self._providers: dict[str, ProviderInfo] = {}

    def export(self, trace: RequestTrace, rec: RequestRecord, output: bytes | None) -> None:
        end_ns = time.time_ns()
        method, path, endpoint = trace.request
        op = _OPERATIONS.get(endpoint, endpoint)
        attrs = server_attributes(rec, op, self._provider(trace.config, rec.provider))
        attrs["http.request.method"], attrs["url.path"] = method, path
        if self.capture and trace.body is not None:
            attrs.update(content(trace.body, output))
        parent = (
            SpanContext(trace.trace_id, trace.parent_id, True, _SAMPLED)
            if trace.parent_id is not None
            else None
        )
        ctx = SpanContext(trace.trace_id, trace.span_id, False, _SAMPLED)
        self._emit(
            f"{op} {rec.model}" if rec.model else op,
            ctx,
            parent,
            attrs,
            SpanKind.SERVER,
            rec.status >= 500,
            trace.start_ns,
            end_ns,
        )
        last = len(trace.attempts) - 1
        for i, a in enumerate(trace.attempts):
            if i == last and a.error is None:  # the committed attempt ends with the response
                a.end_ns = end_ns
                a.status = None if rec.status == 499 else rec.status
                a.error = rec.error_code
            info = self._provider(trace.config, a.provider_id)
            child = attempt_attributes(a, op, info, rec.usage if i == last else None)
            ctx = SpanContext(trace.trace_id, a.span_id, False, _SAMPLED)
            parent = SpanContext(trace.trace_id, trace.span_id, False, _SAMPLED)
            name = f"{op} {a.model}"
            self._emit(
                name, ctx, parent, child, SpanKind.CLIENT, bool(a.error), a.start_ns, a.end_ns
            )

    def _emit(
        self,
        name: str,
        ctx: SpanContext,
        parent: SpanContext | None,
        attrs: dict[str, Any],
        kind: SpanKind,
        error: bool,
        start_ns: int,
        end_ns: int,
    ) -> None:
        span = ReadableSpan(
            name,
            ctx,
            parent,
            self.resource,
            attrs,
            kind=kind,
            status=_ERROR if error else _UNSET,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(span)

    def _provider(self, config: Config, provider_id: str | None) -> ProviderInfo | None:
        if provider_id is None:
            return None
        if config is not self._config:  # a reload: providers may have moved
            self._config, self._providers = config, {}
        info = self._providers.get(provider_id)
        if info is None:
            p = next((p for p in config.providers if p.id == provider_id), None)
            info = provider_info(p.type, p.base_url) if p is not None else ("unknown", None, None)
            self._providers[provider_id] = info
        return info

    def close(self) -> None:
        self.exporter.retrying = False
        self.processor.shutdown()  # type: ignore[no-untyped-call]  # exports what is queued, then stops the thread


def server_attributes(rec: RequestRecord, op: str, info: ProviderInfo | None) -> dict[str, Any]:
    """The client request's span: what it asked, where it was served, what it used."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.request.stream": rec.stream,
        "http.response.status_code": rec.status,
        "truckllm.request_id": rec.request_id,
        "truckllm.endpoint": rec.endpoint,
        "truckllm.attempts": rec.attempts,
        "truckllm.upstream_s": rec.upstream_s,
        "truckllm.overhead_s": rec.overhead_s,
    }
    error = rec.error_code or (str(rec.status) if rec.status >= 400 else None)
    optional = (
        ("gen_ai.request.model", rec.model),
        ("gen_ai.response.model", rec.upstream_model),
        ("gen_ai.provider.name", info[0] if info else None),
        ("gen_ai.response.time_to_first_chunk", rec.ttft_s),
        ("error.type", error),
        ("client.address", rec.client_ip),
        ("truckllm.alias", rec.alias),
        ("truckllm.client_id", rec.client_id),
        ("truckllm.provider", rec.provider),
        ("truckllm.key_id", rec.key_id),
        ("truckllm.cost_usd", rec.cost_usd),
    )
    for name, value in optional:
        if value is not None:
            attrs[name] = value
    attrs.update(usage_attributes(rec.usage))
    return attrs


def attempt_attributes(
    a: Attempt, op: str, info: ProviderInfo | None, usage: Usage | None
) -> dict[str, Any]:
    """One upstream attempt's span: the provider, key and model it went to, and how it ended
    (``error.type`` the outcome kind, and the key's state after the router learnt from it)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": op,
        "gen_ai.request.model": a.model,
        "truckllm.provider": a.provider_id,
        "truckllm.key_id": a.key_id,
        "truckllm.attempt": a.number,
    }
    if info is not None:
        attrs["gen_ai.provider.name"] = info[0]
        if info[1] is not None:
            attrs["server.address"] = info[1]
        if info[2] is not None:
            attrs["server.port"] = info[2]
    optional = (
        ("http.response.status_code", a.status),
        ("error.type", a.error),
        ("truckllm.key.status", a.key_status),
        ("truckllm.key.cooldown_s", a.cooldown_s),
    )
    for name, value in optional:
        if value is not None:
            attrs[name] = value
    if a.error is None:
        attrs["gen_ai.response.model"] = a.model
        attrs.update(usage_attributes(usage))
    return attrs


def usage_attributes(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
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
