"""Load a configuration in steps: YAML -> ${ENV} expansion -> strict typed decode -> validation.

Every problem is collected (not just the first) and names the file and the key path, e.g.
``config.yaml: providers[0].keys[1].secret: expected a string, got a list``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

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

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration could not be loaded. ``problems`` lists every error found, each a line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Expanded(str):
    """A string produced by ${VAR} expansion: may be coerced to a number or a boolean."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# ---------------------------------------------------------------------------------------------
# ${ENV} expansion

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):
        if "$" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set and has no default")
            return ""

        return _Expanded(_VAR.sub(sub, value))
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


# ---------------------------------------------------------------------------------------------
# Strict typed decode


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _type_name(tp: Any) -> str:
    if tp is str or tp is Secret:
        return "a string"
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin in (tuple, list):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return str(tp)


class _Decoder:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self._hints: dict[type, dict[str, Any]] = {}

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '<top level>'}: {message}")

    def wrong(self, path: str, tp: Any, value: Any) -> None:
        self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")

    def decode(self, value: Any, tp: Any, path: str) -> Any:
        origin = get_origin(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            return self._union(value, get_args(tp), path, tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self._dataclass(value, tp, path)
        if origin is Literal:
            if value not in get_args(tp):
                self.wrong(path, tp, value) if not isinstance(value, str) else self.fail(
                    path, f"expected {_type_name(tp)}, got {value!r}"
                )
            return value
        if origin is tuple or origin is list:
            if not isinstance(value, list):
                self.wrong(path, tp, value)
                return ()
            (item_tp, *_) = get_args(tp)
            items = [self.decode(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, dict):
                self.wrong(path, tp, value)
                return {}
            _, val_tp = get_args(tp)
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(_join(path, k), "keys must be strings")
                    continue
                out[k] = self.decode(v, val_tp, _join(path, k))
            return out
        return self._scalar(value, tp, path)

    def _scalar(self, value: Any, tp: Any, path: str) -> Any:
        expanded = isinstance(value, _Expanded)
        if tp is str:
            if isinstance(value, str):
                return str(value)
        elif tp is Secret:
            if isinstance(value, str):
                return Secret(str(value))
        elif tp is bool:
            if isinstance(value, bool):
                return value
            if expanded and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if expanded:
                try:
                    return int(value)
                except ValueError:
                    pass
        elif tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if expanded:
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp is type(None):
            if value is None:
                return None
        else:  # pragma: no cover - a schema bug, not a user error
            raise TypeError(f"unsupported config type {tp!r}")
        self.wrong(path, tp, value)
        return None

    def _union(self, value: Any, members: tuple[Any, ...], path: str, tp: Any) -> Any:
        if value is None:
            if type(None) in members:
                return None
            self.wrong(path, tp, value)
            return None
        if isinstance(value, dict):
            tagged, builtin = self._tagged_member(value, members)
            if tagged is not None:
                before = len(self.problems)
                result = self.decode(value, tagged, path)
                if len(self.problems) > before and builtin and "type" in value:
                    self.fail(
                        _join(path, "type"),
                        f"{value['type']!r} is not one of {', '.join(builtin)}; "
                        "other (plugin) types take their settings under 'options'",
                    )
                return result
        # Choose the member by the value's shape, then decode strictly with it.
        for member in members:
            origin = get_origin(member)
            if isinstance(value, dict) and (dataclasses.is_dataclass(member) or origin is dict):
                return self.decode(value, member, path)
            if isinstance(value, list) and origin in (tuple, list):
                return self.decode(value, member, path)
        for member in members:
            if member is type(None) or get_origin(member) in (tuple, list, dict):
                continue
            if dataclasses.is_dataclass(member):
                continue
            trial = _Decoder()
            result = trial.decode(value, member, path)
            if not trial.problems:
                return result
        self.wrong(path, tp, value)
        return None

    def _tagged_member(
        self, value: dict[Any, Any], members: tuple[Any, ...]
    ) -> tuple[Any, tuple[str, ...]]:
        """For a union of dataclasses told apart by a ``type: Literal[...]`` field (sinks): the
        member whose literal names ``value["type"]``, else the member whose ``type`` is any
        ``str`` (plugins), with the literal names when it is that fallback. ``None`` when the
        union is not tagged."""
        fallback: Any = None
        builtin: list[str] = []
        for member in members:
            if not (dataclasses.is_dataclass(member) and isinstance(member, type)):
                continue
            hints = self._hints.get(member)
            if hints is None:
                hints = self._hints[member] = get_type_hints(member)
            tag = hints.get("type")
            if get_origin(tag) is Literal:
                if value.get("type") in get_args(tag):
                    return member, ()
                builtin.extend(get_args(tag))
            elif tag is str:
                fallback = member
        return (fallback, tuple(builtin)) if builtin else (None, ())

    def _dataclass(self, value: Any, cls: type[T], path: str) -> T | None:
        if not isinstance(value, dict):
            self.wrong(path, cls, value)
            return None
        hints = self._hints.get(cls)
        if hints is None:
            hints = self._hints[cls] = get_type_hints(cls)
        fields = {
            f.name: f
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if not f.metadata.get("internal")
        }
        kwargs: dict[str, Any] = {}
        for key, raw in value.items():
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.fail(_join(path, key), f"unknown key (allowed here: {known})")
                continue
            before = len(self.problems)
            decoded = self.decode(raw, hints[key], _join(path, key))
            if len(self.problems) == before or isinstance(decoded, tuple | list | dict):
                kwargs[key] = (
                    decoded  # a field that failed keeps its default; its error is recorded
                )
            elif (
                fields[key].default is dataclasses.MISSING
                and fields[key].default_factory is dataclasses.MISSING
            ):
                return None
        for name, f in fields.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                self.fail(_join(path, name), "is required")
                return None
        try:
            return cls(**kwargs)
        except TypeError:  # a field failed to decode into None where a value is needed
            return None


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
    decoder: _Decoder,
    provider_types: Iterable[str] | None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    fail = decoder.fail
    known_types = set(provider_types) if provider_types is not None else None
    providers: list[ProviderConfig] = []
    provider_ids: set[str] = set()
    key_ids: dict[str, str] = {}
    if not cfg.providers:
        fail("providers", "at least one provider is required")
    for pi, p in enumerate(cfg.providers):
        if p is None:
            continue
        ppath = f"providers[{pi}]"
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
        keys: list[KeyConfig] = []
        for ki, k in enumerate(p.keys):
            if k is None:
                continue
            kpath = f"{ppath}.keys[{ki}]"
            kid = k.id or derive_key_id(p.id, k.secret, ki)
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
            for name in ("input_token_cost", "output_token_cost", "cached_input_token_cost"):
                v = getattr(k.pricing, name)
                if v is not None and v < 0:
                    fail(f"{kpath}.pricing.{name}", "must not be negative")
            keys.append(dataclasses.replace(k, id=kid))
        if not keys:
            keys.append(KeyConfig(id=f"{p.id}-anonymous"))  # keyless upstream (local vLLM, Ollama)
        for mi, m in enumerate(p.models):
            if not m:
                fail(f"{ppath}.models[{mi}]", "must not be empty")
        providers.append(dataclasses.replace(p, type=ptype, base_url=base_url, keys=tuple(keys)))

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
    for name in ("connect", "read", "total"):
        value = getattr(server.timeouts, name)
        if value is not None and value <= 0:
            fail(f"server.timeouts.{name}", "must be positive")
    if not 1 <= server.workers <= 256:
        fail("server.workers", "must be between 1 and 256")
    _validate_telemetry(cfg, fail, sink_types)
    _validate_storage(cfg, fail)
    return dataclasses.replace(cfg, providers=tuple(providers), model_aliases=aliases)


_BUILTIN_SINKS = ("file", "webhook", "stdout")


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
        schemes = ("redis://", "rediss://", "unix://") if rs.type == "redis" else ("http://", "https://")
        if not url:
            fail(f"{path}.url", f"is required for the {rs.type} store")
        elif not url.startswith(schemes):
            fail(f"{path}.url", f"must start with {' or '.join(schemes)}")
    for name in ("flush_interval", "timeout", "lease_ttl"):
        if getattr(rs, name) <= 0:
            fail(f"{path}.{name}", "must be positive")
    if rs.lease_slack < 0:
        fail(f"{path}.lease_slack", "must not be negative")
    if not rs.prefix or any(c in rs.prefix for c in "{} "):
        fail(f"{path}.prefix", "must be non-empty, without braces or spaces")


# ---------------------------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str,
    source: str = "<memory>",
    env: Mapping[str, str] | None = None,
    provider_types: Iterable[str] | None = None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    """Parse and validate YAML text. Raises :class:`ConfigError` listing every problem.

    ``provider_types``/``sink_types`` are the registered type names; sink types default to the
    built-ins and those declared by installed plugins."""
    env = os.environ if env is None else env
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}".replace("\n", " ")]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping, got {_describe(raw)}"])
    expand_problems: list[str] = []
    expanded = _expand(raw, "", env, expand_problems)
    decoder = _Decoder()
    decoder.problems.extend(expand_problems)
    cfg = decoder.decode(expanded, Config, "")
    if cfg is not None:
        cfg = _validate(cfg, decoder, provider_types, sink_types)
    if decoder.problems or cfg is None:
        raise ConfigError([f"{source}: {p}" for p in dict.fromkeys(decoder.problems)])
    return typing.cast(Config, dataclasses.replace(cfg, source=source))


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    provider_types: Iterable[str] | None = None,
    sink_types: Iterable[str] | None = None,
) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_config(text, str(p), env, provider_types, sink_types)


def client_key_digests(cfg: Config) -> dict[bytes, str]:
    """SHA-256 digest of every client key -> the client's id (derived when not configured)."""
    out: dict[bytes, str] = {}
    for i, entry in enumerate(cfg.server.api_keys):
        if isinstance(entry, Secret):
            digest = hashlib.sha256(entry.reveal().encode()).digest()
            out[digest] = f"client-{digest.hex()[:8]}"
        elif entry.key is not None:
            digest = hashlib.sha256(entry.key.reveal().encode()).digest()
            out[digest] = entry.id or f"client-{digest.hex()[:8]}"
        elif entry.key_sha256 is not None:
            digest = bytes.fromhex(entry.key_sha256)
            out[digest] = entry.id or f"client-{i}"
    return out


__all__: list[str] = [
    "ConfigError",
    "derive_key_id",
    "infer_provider_type",
    "load_config",
    "parse_config",
    "parse_listen",
    "provider_timeouts",
]
