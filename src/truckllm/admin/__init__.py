"""The admin API under ``/admin/v1``: key state and usage, enabling and disabling keys,
providers, stats, the redacted configuration, validation and reload.

Authorised by ``Authorization: Bearer <server.admin_api_key>``; with no admin key configured the
API is off (404). Other packages add endpoints with :meth:`AdminAPI.add`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from truckllm.admin.views import config_view, key_view, providers_view
from truckllm.config import ConfigError, parse_config
from truckllm.errors import APIError
from truckllm.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from truckllm.api.app import App
    from truckllm.gateway import Runtime

PREFIX = "/admin/v1/"
_MAX_CONFIG_BYTES = 1024 * 1024

# (app, runtime, path parameters, query, body) -> (status, JSON-able body)
Handler = Callable[["App", "Runtime", list[str], dict[str, str], bytes], Awaitable[tuple[int, Any]]]


@dataclass
class KeyUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0  # integer micro-dollars: sums stay exact


@dataclass
class Stats:
    """Counts since start, fed by the request records (one dict update per request)."""

    started: float = field(default_factory=time.time)
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_key: dict[str, KeyUsage] = field(default_factory=dict)

    def __call__(self, rec: RequestRecord) -> None:
        self.requests += 1
        self.by_status[rec.status] = self.by_status.get(rec.status, 0) + 1
        if rec.key_id is None:
            return
        usage = self.by_key.get(rec.key_id)
        if usage is None:
            usage = self.by_key[rec.key_id] = KeyUsage()
        usage.requests += 1
        if rec.usage is not None:
            usage.prompt_tokens += rec.usage.prompt_tokens
            usage.completion_tokens += rec.usage.completion_tokens
        if rec.cost_usd:
            usage.cost_micro_usd += round(rec.cost_usd * 1_000_000)


class AdminAPI:
    def __init__(self, app: App) -> None:
        self.app = app
        self.stats = Stats()
        self._routes: dict[tuple[str, str], Handler] = {}
        self.add("GET", "keys", _keys)
        self.add("POST", "keys/*/disable", _disable)
        self.add("POST", "keys/*/enable", _enable)
        self.add("GET", "providers", _providers)
        self.add("GET", "stats", _stats)
        self.add("GET", "config", _config)
        self.add("POST", "config/validate", _validate)
        self.add("POST", "reload", _reload)
        self.add("GET", "usage", _usage)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve ``method /admin/v1/<pattern>``; ``*`` matches one path segment, passed on."""
        self._routes[(method, pattern)] = handler

    def _match(self, method: str, path: str) -> tuple[Handler, list[str]] | None:
        parts = path.split("/")
        allowed = False
        for (m, pattern), handler in self._routes.items():
            pp = pattern.split("/")
            if len(pp) != len(parts) or any(
                p != "*" and p != q for p, q in zip(pp, parts, strict=True)
            ):
                continue
            if m == method:
                return handler, [q for p, q in zip(pp, parts, strict=True) if p == "*"]
            allowed = True
        if allowed:
            raise APIError(
                405,
                f"Method {method} is not allowed here.",
                code="method_not_allowed",
                type_="invalid_request_error",
            )
        return None

    def authorise(self, rt: Runtime, headers: list[tuple[bytes, bytes]]) -> None:
        admin_key = rt.config.server.admin_api_key
        if admin_key is None:
            raise APIError(
                404,
                "The admin API is off: set server.admin_api_key.",
                code="admin_disabled",
                type_="invalid_request_error",
            )
        token = b""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        expected = hashlib.sha256(admin_key.reveal().encode()).digest()
        if not hmac.compare_digest(hashlib.sha256(token.strip()).digest(), expected):
            raise APIError(
                401,
                "A valid admin key is required.",
                code="invalid_admin_key",
                type_="invalid_request_error",
            )

    async def handle(self, rt: Runtime, scope: Any, body: bytes) -> tuple[int, bytes]:
        self.authorise(rt, scope["headers"])
        found = self._match(scope["method"], scope["path"][len(PREFIX) :].strip("/"))
        if found is None:
            raise APIError(
                404,
                f"Unknown admin URL: {scope['path']}",
                code="unknown_url",
                type_="invalid_request_error",
            )
        handler, params = found
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        status, payload = await handler(self.app, rt, params, query, body)
        return status, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


async def _keys(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    now, wall = rt.router.clock(), time.time()
    by_key = app.admin.stats.by_key
    data = []
    for state in rt.router.states().values():
        usage = by_key.get(state.key.id)
        data.append(
            key_view(
                state,
                now,
                wall,
                None
                if usage is None
                else {
                    "requests": usage.requests,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cost_usd": usage.cost_micro_usd / 1_000_000,
                },
            )
        )
    return 200, {"object": "list", "data": data}


def _key_state(rt: Runtime, key_id: str) -> Any:
    state = rt.router.states().get(key_id)
    if state is None:
        raise APIError(
            404, f"No key with id {key_id!r}.", code="key_not_found", type_="invalid_request_error"
        )
    return state


async def _disable(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    state = _key_state(rt, params[0])
    state.disabled_by_operator = True  # kept across reloads with the rest of the key's state
    return 200, key_view(state, rt.router.clock(), time.time(), None)


async def _enable(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    state = _key_state(rt, params[0])
    state.disabled_by_operator = False
    state.out_of_service = None  # an operator vouches for the key again
    return 200, key_view(state, rt.router.clock(), time.time(), None)


async def _providers(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    return 200, {"object": "list", "data": providers_view(rt)}


async def _usage(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    from truckllm.accounting import usage_view

    return await usage_view(app, query)


async def _stats(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    stats = app.admin.stats
    reloader = app.reloader
    in_flight = sum(s.in_flight for s in rt.router.states().values())
    return 200, {
        "uptime_s": round(time.time() - stats.started, 3),
        "requests": stats.requests,
        "by_status": stats.by_status,
        "in_flight_upstream": in_flight,
        "config": rt.config.source,
        "reload": None
        if reloader is None
        else {
            "last_ok": reloader.last.ok,
            "last_time": reloader.last.when,
            "last_trigger": reloader.last.trigger,
            "succeeded": reloader.succeeded,
            "failed": reloader.failed,
        },
    }


async def _config(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    return 200, config_view(rt.config)


async def _validate(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """Validate YAML sent as the body; nothing is applied."""
    if len(body) > _MAX_CONFIG_BYTES:
        raise APIError(
            413,
            "Configuration larger than 1 MiB.",
            code="request_too_large",
            type_="invalid_request_error",
        )
    try:
        parse_config(
            body.decode("utf-8", "replace"), "<request>", provider_types=app.registry.names()
        )
    except ConfigError as exc:
        return 200, {"valid": False, "errors": exc.problems}
    return 200, {"valid": True, "errors": []}


async def _reload(
    app: App, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    if app.reloader is None:
        raise APIError(
            409,
            "The gateway was not started from a configuration file.",
            code="no_config_file",
            type_="invalid_request_error",
        )
    result = await app.reloader.reload("admin")
    status = 200 if result.ok else 422
    return status, {
        "reloaded": result.ok,
        "errors": result.problems,
        "restart_needed": result.restart_needed,
    }
