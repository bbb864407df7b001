"""Validation of a decoded configuration and the values derived from it (key ids, provider types
and base URLs). Problems are reported through the decoder, each with its key path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import ssl
from collections.abc import Callable, Iterable

from truckllm.config.decode import Decoder
from truckllm.config.schema import (
    AliasConfig,
    ClientKey,
    Config,
    FileSinkConfig,
    KeyConfig,
    PluginSinkConfig,
    ProviderConfig,
    Timeouts,
    WebhookSinkConfig,
)
from truckllm.config.secret import Secret
from truckllm.config.validate_cache import validate_cache
from truckllm.http.forwarded import parse_networks
from truckllm.http.proxy import Proxy
from truckllm.http.tls import TLSSettings, build_context

# ---------------------------------------------------------------------------------------------
# Validation and derived values

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

# Well-known OpenAI-compatible services: the base_url may be left out for these provider ids.
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "together": "https://api.together.xyz/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "ollama": "http://localhost:11434/v1",
    "vllm": "http://localhost:8000/v1",
    "anthropic": "https://api.anthropic.com",
    "claude": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "google": "https://generativelanguage.googleapis.com",
}

_TYPE_BY_ID = {
    "anthropic": "anthropic",
    "claude": "anthropic",
    "gemini": "gemini",
    "google": "gemini",
}


def infer_provider_type(provider_id: str) -> str:
    return _TYPE_BY_ID.get(provider_id.lower(), "openai")


def derive_key_id(provider_id: str, secret: Secret | None, index: int) -> str:
    """A stable, non-secret id: a short digest of the secret, so it survives reordering."""
    if secret is None or not secret.reveal():
        return f"{provider_id}-{index}"
    digest = hashlib.sha256(secret.reveal().encode()).hexdigest()[:8]
    return f"{provider_id}-{digest}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``":8080"``, ``"8080"``, ``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host, port)."""
    text = listen.strip()
    if text.isdigit():
        host, port_s = "", text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"cannot parse listen address {listen!r}")
        host, port_s = text[1:end], text[end + 2 :]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"cannot parse listen address {listen!r}; use host:port or :port")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"invalid port in listen address {listen!r}")
    return host or "0.0.0.0", int(port_s)


def provider_timeouts(provider: ProviderConfig, default: Timeouts) -> Timeouts:
    if provider.timeout is None:
        return default
    if isinstance(provider.timeout, Timeouts):
        return provider.timeout
    seconds = float(provider.timeout)
    return Timeouts(connect=min(default.connect, seconds), read=seconds, total=seconds)


def _validate(
    cfg: Config,
    decoder: Decoder,
    provider_types: Iterable[str] | None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    fail = decoder.fail
    known_types = set(provider_types) if provider_types is not None else None
    if not cfg.providers:
        fail("providers", "at least one provider is required")
    providers: list[ProviderConfig] = []
    provider_ids: set[str] = set()
    key_ids: dict[str, str] = {}
    for pi, p in enumerate(cfg.providers):
        if p is not None:
            providers.append(
                _validate_provider(p, f"providers[{pi}]", fail, known_types, provider_ids, key_ids)
            )
    aliases = _validate_aliases(cfg, fail, provider_ids)
    _validate_server(cfg, fail)
    _validate_retry(cfg, fail)
    _validate_routing(cfg, fail)
    _validate_outlier(cfg, fail)
    _validate_telemetry(cfg, fail, sink_types)
    _validate_tracing(cfg, fail)
    _validate_storage(cfg, fail)
    validate_cache(cfg, fail)
    return dataclasses.replace(cfg, providers=tuple(providers), model_aliases=aliases)


def _validate_provider(
    p: ProviderConfig,
    ppath: str,
    fail: Callable[[str, str], None],
    known_types: set[str] | None,
    provider_ids: set[str],
    key_ids: dict[str, str],
) -> ProviderConfig:
    """The provider with its type, base URL and key ids filled in."""
    if not _ID.match(p.id):
        fail(f"{ppath}.id", f"{p.id!r} is not a valid id (letters, digits, '_', '.', '-')")
    elif p.id in provider_ids:
        fail(f"{ppath}.id", f"duplicate provider id {p.id!r}")
    provider_ids.add(p.id)
    ptype = p.type or infer_provider_type(p.id)
    if known_types is not None and ptype not in known_types:
        fail(
            f"{ppath}.type",
            f"unknown provider type {ptype!r} (available: {', '.join(sorted(known_types))})",
        )
    base_url = (p.base_url or DEFAULT_BASE_URLS.get(p.id.lower(), "")).rstrip("/")
    if not base_url:
        fail(f"{ppath}.base_url", "is required for this provider")
    elif not re.match(r"^https?://[^/\s]+", base_url):
        fail(f"{ppath}.base_url", f"{base_url!r} is not an http(s) URL")
    if isinstance(p.timeout, float) and p.timeout <= 0:
        fail(f"{ppath}.timeout", "must be positive")
    keys = [
        _validate_key(p.id, k, ki, f"{ppath}.keys[{ki}]", fail, key_ids)
        for ki, k in enumerate(p.keys)
        if k is not None
    ]
    if not keys:
        keys.append(KeyConfig(id=f"{p.id}-anonymous"))  # keyless upstream (local vLLM, Ollama)
    for mi, m in enumerate(p.models):
        if not m:
            fail(f"{ppath}.models[{mi}]", "must not be empty")
    _validate_upstream_route(p, ppath, fail)
    responses_api = p.responses_api
    if responses_api is None:
        responses_api = ptype == "openai" and base_url == DEFAULT_BASE_URLS["openai"]
    elif responses_api and ptype != "openai":
        fail(f"{ppath}.responses_api", "only an openai-type provider can serve the Responses API")
    return dataclasses.replace(
        p, type=ptype, base_url=base_url, keys=tuple(keys), responses_api=responses_api
    )


def _validate_proxy(proxy: str | None, path: str, fail: Callable[[str, str], None]) -> None:
    """A ``proxy`` option: absent, "none", or an http:// URL."""
    if proxy is not None and proxy.strip().lower() != "none":
        try:
            Proxy.parse(proxy)
        except ValueError as exc:
            fail(path, f"{exc} (or 'none' for a direct connection)")


def _validate_upstream_route(
    p: ProviderConfig, ppath: str, fail: Callable[[str, str], None]
) -> None:
    """``tls`` files that load, a ``proxy`` that is "none" or an http:// URL, a connection cap."""
    if p.max_connections < 0:
        fail(f"{ppath}.max_connections", "must not be negative (0: no cap)")
    if not 0 < p.pool_timeout < 1e9:
        fail(f"{ppath}.pool_timeout", "must be positive")
    _validate_proxy(p.proxy, f"{ppath}.proxy", fail)
    tls = p.tls
    if tls is None:
        return
    if tls.key_file and not tls.cert_file:
        fail(f"{ppath}.tls.key_file", "needs tls.cert_file (the certificate it goes with)")
        return
    missing = False
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path and not os.access(path, os.R_OK):
            fail(f"{ppath}.tls.{name}", f"{path!r} is not a readable file")
            missing = True
    if missing:
        return
    if tls.ca_file:
        try:
            build_context(TLSSettings(ca_file=tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            fail(f"{ppath}.tls.ca_file", f"cannot load {tls.ca_file!r} as PEM certificates: {exc}")
    if tls.cert_file:
        try:
            build_context(TLSSettings(cert_file=tls.cert_file, key_file=tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            where = "tls.key_file" if tls.key_file else "tls.cert_file"
            fail(f"{ppath}.{where}", f"cannot load the client certificate and key: {exc}")


def _validate_key(
    provider_id: str,
    k: KeyConfig,
    ki: int,
    kpath: str,
    fail: Callable[[str, str], None],
    key_ids: dict[str, str],
) -> KeyConfig:
    """The key with its id: given, or derived from the provider and the secret."""
    kid = k.id or derive_key_id(provider_id, k.secret, ki)
    if not _ID.match(kid):
        fail(f"{kpath}.id", f"{kid!r} is not a valid id (letters, digits, '_', '.', '-')")
    elif kid in key_ids:
        what = "the same secret as" if not k.id else "the same id as"
        fail(f"{kpath}.id", f"duplicate key id {kid!r} ({what} {key_ids[kid]})")
    key_ids.setdefault(kid, kpath)
    if k.weight <= 0:
        fail(f"{kpath}.weight", "must be positive")
    for name in ("rpm", "tpm", "rpd", "tpd"):
        v = getattr(k.limits, name)
        if v is not None and v < 1:
            fail(f"{kpath}.limits.{name}", "must be at least 1")
    for name in (
        "input_token_cost",
        "output_token_cost",
        "cached_input_token_cost",
        "cache_creation_input_token_cost",
        "image_cost",
        "audio_second_cost",
        "character_cost",
    ):
        v = getattr(k.pricing, name)
        if v is not None and v < 0:
            fail(f"{kpath}.pricing.{name}", "must not be negative")
    return dataclasses.replace(k, id=kid)


def _validate_aliases(
    cfg: Config, fail: Callable[[str, str], None], provider_ids: set[str]
) -> dict[str, str | tuple[str, ...] | AliasConfig]:
    aliases: dict[str, str | tuple[str, ...] | AliasConfig] = {}
    for name, target in cfg.model_aliases.items():
        apath = f"model_aliases.{name}"
        if isinstance(target, AliasConfig):
            targets, tbase = target.targets, f"{apath}.targets"
            if (
                target.context_fallback is not None
                and target.context_fallback not in cfg.model_aliases
            ):
                fail(f"{apath}.context_fallback", f"unknown alias {target.context_fallback!r}")
        else:
            targets = (target,) if isinstance(target, str) else tuple(target or ())
            tbase = apath
        if not targets:
            fail(apath, "must name at least one target")
        for ti, t in enumerate(targets):
            tpath = apath if isinstance(target, str) else f"{tbase}[{ti}]"
            pid, sep, model = t.partition(":")
            if not sep or not model:
                fail(tpath, f"{t!r} must have the form provider:model")
            elif pid not in provider_ids:
                fail(tpath, f"unknown provider {pid!r} (known: {', '.join(sorted(provider_ids))})")
        aliases[name] = target
    return aliases


def _validate_server(cfg: Config, fail: Callable[[str, str], None]) -> None:
    server = cfg.server
    try:
        parse_listen(server.listen)
    except ValueError as exc:
        fail("server.listen", str(exc))
    if server.max_body_bytes < 1:
        fail("server.max_body_bytes", "must be positive")
    if server.reload_interval < 0:
        fail("server.reload_interval", "must not be negative")
    if server.shutdown_timeout < 0:
        fail("server.shutdown_timeout", "must not be negative")
    if server.drain_delay < 0:
        fail("server.drain_delay", "must not be negative")
    client_ids: set[str] = set()
    for ci, entry in enumerate(server.api_keys):
        cpath = f"server.api_keys[{ci}]"
        if isinstance(entry, ClientKey):
            if (entry.key is None) == (entry.key_sha256 is None):
                fail(cpath, "give exactly one of key or key_sha256")
            elif entry.key_sha256 is not None and not _HEX64.match(entry.key_sha256):
                fail(f"{cpath}.key_sha256", "must be 64 hexadecimal digits (a SHA-256 digest)")
            _validate_client_policy(entry, cpath, fail)
            cid = entry.id
        else:
            cid = ""
        if cid:
            if cid in client_ids:
                fail(f"{cpath}.id", f"duplicate client key id {cid!r}")
            client_ids.add(cid)
    for name in ("connect", "read", "total", "headers", "body", "body_total", "send", "keep_alive"):
        value = getattr(server.timeouts, name)
        if value is not None and not 0 < value < 1e9:
            fail(f"server.timeouts.{name}", "must be positive")
    for name in ("max_body_bytes", "max_response_bytes", "max_header_count"):
        if getattr(server, name) < 1:
            fail(f"server.{name}", "must be at least 1")
    if server.max_connections < 0:
        fail("server.max_connections", "must not be negative (0: no cap)")
    if server.max_in_flight < 0:
        fail("server.max_in_flight", "must not be negative (0: no cap)")
    for ti, cidr in enumerate(server.trusted_proxies):
        try:
            parse_networks([cidr])
        except ValueError:
            fail(f"server.trusted_proxies[{ti}]", f"{cidr!r} is not an IP address or CIDR range")
    if not 1 <= server.workers <= 256:
        fail("server.workers", "must be between 1 and 256")


def _validate_retry(cfg: Config, fail: Callable[[str, str], None]) -> None:
    retry = cfg.retry
    if retry.max_attempts < 1:
        fail("retry.max_attempts", "must be at least 1")
    for name in ("max_same_key_retries", "budget_burst"):
        if getattr(retry, name) < 0:
            fail(f"retry.{name}", "must not be negative")
    for name in ("deadline", "backoff_max"):
        if getattr(retry, name) <= 0:
            fail(f"retry.{name}", "must be positive")
    if not 0 <= retry.budget_ratio <= 1:
        fail("retry.budget_ratio", "must be between 0 and 1")
    if retry.backoff_base < 0:
        fail("retry.backoff_base", "must not be negative")


def _validate_routing(cfg: Config, fail: Callable[[str, str], None]) -> None:
    routing = cfg.routing
    if routing.max_wait < 0:
        fail("routing.max_wait", "must not be negative")
    if routing.default_max_output_tokens < 1:
        fail("routing.default_max_output_tokens", "must be at least 1")
    if routing.breaker.failures < 1 or routing.breaker.provider_failures < 1:
        fail("routing.breaker", "failure thresholds must be at least 1")
    for name, value in (
        ("cooldown.base", routing.cooldown.base),
        ("cooldown.max", routing.cooldown.max),
        ("breaker.open_for", routing.breaker.open_for),
        ("breaker.max_open_for", routing.breaker.max_open_for),
        ("out_of_service_probe", routing.out_of_service_probe),
    ):
        if value <= 0:
            fail(f"routing.{name}", "must be positive")


_BUILTIN_SINKS = ("file", "webhook", "stdout")


def _validate_outlier(cfg: Config, fail: Callable[[str, str], None]) -> None:
    o = cfg.routing.outlier
    for name in ("window", "base_ejection", "max_ejection"):
        if getattr(o, name) <= 0:
            fail(f"routing.outlier.{name}", "must be positive")
    for name in ("min_requests", "probe_successes"):
        if getattr(o, name) < 1:
            fail(f"routing.outlier.{name}", "must be at least 1")
    for name in ("min_success_rate", "peer_margin", "max_ejected_share"):
        if not 0 <= getattr(o, name) <= 1:
            fail(f"routing.outlier.{name}", "must be between 0 and 1")
    if o.max_ejection < o.base_ejection:
        fail("routing.outlier.max_ejection", "must not be less than base_ejection")


def _installed_sink_types() -> set[str]:
    """Built-in sink types and those installed plugins declare (read, not imported)."""
    from importlib.metadata import entry_points

    return {*_BUILTIN_SINKS, *(ep.name for ep in entry_points(group="truckllm.sinks"))}


def _validate_telemetry(
    cfg: Config, fail: Callable[[str, str], None], sink_types: Iterable[str] | None
) -> None:
    metrics = cfg.metrics
    if not metrics.path.startswith("/"):
        fail("metrics.path", f"{metrics.path!r} must start with '/'")
    elif metrics.path.startswith(("/v1/", "/admin/")) or metrics.path in ("/healthz", "/readyz"):
        fail("metrics.path", f"{metrics.path!r} is taken by the API")
    known: set[str] | None = set(sink_types) if sink_types is not None else None
    paths: dict[str, str] = {}
    for i, sink in enumerate(cfg.logging.sinks):
        spath = f"logging.sinks[{i}]"
        if sink is None:
            continue
        if isinstance(sink, PluginSinkConfig):
            if known is None:
                known = _installed_sink_types()
            if sink.type not in known:
                fail(
                    f"{spath}.type",
                    f"unknown sink type {sink.type!r} (available: {', '.join(sorted(known))})",
                )
            continue
        if sink.max_queue < 1:
            fail(f"{spath}.max_queue", "must be at least 1")
        if sink.batch_size < 1:
            fail(f"{spath}.batch_size", "must be at least 1")
        if sink.flush_interval <= 0:
            fail(f"{spath}.flush_interval", "must be positive")
        if isinstance(sink, FileSinkConfig):
            if not sink.path:
                fail(f"{spath}.path", "must not be empty")
            else:
                resolved = os.path.abspath(sink.path)
                if resolved in paths:
                    fail(f"{spath}.path", f"{sink.path!r} is already written by {paths[resolved]}")
                paths[resolved] = spath
            if sink.max_bytes is not None and sink.max_bytes < 1:
                fail(f"{spath}.max_bytes", "must be at least 1")
            if sink.rotate_every is not None and sink.rotate_every <= 0:
                fail(f"{spath}.rotate_every", "must be positive")
            if sink.keep < 0:
                fail(f"{spath}.keep", "must not be negative")
        elif isinstance(sink, WebhookSinkConfig):
            if not re.match(r"^https?://[^/\s]+", sink.url):
                fail(f"{spath}.url", f"{sink.url!r} is not an http(s) URL")
            if sink.timeout <= 0:
                fail(f"{spath}.timeout", "must be positive")
            _validate_proxy(sink.proxy, f"{spath}.proxy", fail)
            if sink.max_retries is not None and sink.max_retries < 0:
                fail(f"{spath}.max_retries", "must not be negative")
            if sink.backoff_base < 0:
                fail(f"{spath}.backoff_base", "must not be negative")
            if sink.backoff_max <= 0:
                fail(f"{spath}.backoff_max", "must be positive")
            for name in sink.headers:
                if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", name):
                    fail(f"{spath}.headers.{name}", "is not a valid header name")


def _validate_client_policy(entry: ClientKey, cpath: str, fail: Callable[[str, str], None]) -> None:
    for name in ("rpm", "tpm"):
        v = getattr(entry, name)
        if v is not None and v < 1:
            fail(f"{cpath}.{name}", "must be at least 1")
    if entry.allowed_models is not None:
        for mi, m in enumerate(entry.allowed_models):
            if not m:
                fail(f"{cpath}.allowed_models[{mi}]", "must not be empty")
    if entry.budget is not None:
        for name in ("daily", "monthly", "total"):
            v = getattr(entry.budget, name)
            if v is not None and v < 0:
                fail(f"{cpath}.budget.{name}", "must not be negative")


def _validate_tracing(cfg: Config, fail: Callable[[str, str], None]) -> None:
    t = cfg.tracing
    if t.endpoint is None:
        return
    if not re.match(r"^https?://[^/\s]+", t.endpoint):
        fail("tracing.endpoint", f"{t.endpoint!r} is not an http(s) URL")
    if not 0.0 <= t.sample_ratio <= 1.0:
        fail("tracing.sample_ratio", "must be between 0 and 1")
    if not t.service_name:
        fail("tracing.service_name", "must not be empty")
    for name, value in (("timeout", t.timeout), ("flush_interval", t.flush_interval)):
        if value <= 0:
            fail(f"tracing.{name}", "must be positive")
    if t.max_queue < 1:
        fail("tracing.max_queue", "must be at least 1")
    for name in t.headers:
        if not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", name):
            fail(f"tracing.headers.{name}", "is not a valid header name")


_STORE_TYPES = ("memory", "file", "redis", "http")


def _validate_storage(cfg: Config, fail: Callable[[str, str], None]) -> None:
    rs = cfg.storage.runtime
    path = "storage.runtime"
    if rs.type not in _STORE_TYPES:
        from importlib.metadata import entry_points

        plugins = {ep.name for ep in entry_points(group="truckllm.stores")}
        if rs.type not in plugins:
            known = ", ".join(sorted({*_STORE_TYPES, *plugins}))
            fail(f"{path}.type", f"unknown store type {rs.type!r} (available: {known})")
    if rs.type == "file" and not rs.path:
        fail(f"{path}.path", "is required for the file store")
    if rs.type == "file" and cfg.server.workers > 1:
        fail(f"{path}.type", "the file store serves one process: with server.workers, use redis")
    if rs.type in ("redis", "http"):
        url = rs.url.reveal() if rs.url is not None else ""
        schemes = (
            ("redis://", "rediss://", "unix://") if rs.type == "redis" else ("http://", "https://")
        )
        if not url:
            fail(f"{path}.url", f"is required for the {rs.type} store")
        elif not url.startswith(schemes):
            fail(f"{path}.url", f"must start with {' or '.join(schemes)}")
    _validate_proxy(rs.proxy, f"{path}.proxy", fail)
    for name in ("flush_interval", "timeout", "lease_ttl"):
        if getattr(rs, name) <= 0:
            fail(f"{path}.{name}", "must be positive")
    if rs.lease_slack < 0:
        fail(f"{path}.lease_slack", "must not be negative")
    if not rs.prefix or any(c in rs.prefix for c in "{} "):
        fail(f"{path}.prefix", "must be non-empty, without braces or spaces")
    if rs.kv_max_bytes < 1024:
        fail(f"{path}.kv_max_bytes", "must be at least 1024")
    rr = cfg.storage.responses
    if rr.ttl <= 0:
        fail("storage.responses.ttl", "must be positive")
    if rr.max_bytes < 1024:
        fail("storage.responses.max_bytes", "must be at least 1024")
