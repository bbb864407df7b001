"""The admin endpoints. Each takes ``(context, runtime, path parameters, query, body)`` and
returns ``(status, JSON-able body)``; none ever returns a secret."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from truckllm.admin.usage import usage_view
from truckllm.admin.views import config_view, key_view, providers_view
from truckllm.config import ConfigError, parse_config
from truckllm.errors import APIError
from truckllm.routing import KeyState

if TYPE_CHECKING:
    from truckllm.admin.api import AdminContext
    from truckllm.gateway import Runtime

Handler = Callable[
    ["AdminContext", "Runtime", list[str], dict[str, str], bytes], Awaitable[tuple[int, Any]]
]

_MAX_CONFIG_BYTES = 1024 * 1024


async def keys(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    now, wall = rt.router.clock(), time.time()
    by_key = ctx.stats.by_key
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


def _key_state(rt: Runtime, key_id: str) -> KeyState:
    state = rt.router.states().get(key_id)
    if state is None:
        raise APIError(
            404, f"No key with id {key_id!r}.", code="key_not_found", type_="invalid_request_error"
        )
    return state


async def disable(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    state = _key_state(rt, params[0])
    state.disabled_by_operator = True  # kept across reloads with the rest of the key's state
    return 200, key_view(state, rt.router.clock(), time.time(), None)


async def enable(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    state = _key_state(rt, params[0])
    state.disabled_by_operator = False
    state.out_of_service = None  # an operator vouches for the key again
    return 200, key_view(state, rt.router.clock(), time.time(), None)


async def providers(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    return 200, {"object": "list", "data": providers_view(rt)}


async def usage(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    if ctx.usage is None:
        raise APIError(503, "The usage ledger has not started.", code="store_unavailable")
    return await usage_view(ctx.usage, query)


async def stats(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    counts, reloader = ctx.stats, ctx.reloader
    in_flight = sum(s.in_flight for s in rt.router.states().values())
    return 200, {
        "uptime_s": round(time.time() - counts.started, 3),
        "requests": counts.requests,
        "by_status": counts.by_status,
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


async def config(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    return 200, config_view(rt.config)


async def validate(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
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
            body.decode("utf-8", "replace"), "<request>", provider_types=ctx.provider_types()
        )
    except ConfigError as exc:
        return 200, {"valid": False, "errors": exc.problems}
    return 200, {"valid": True, "errors": []}


async def reload(
    ctx: AdminContext, rt: Runtime, params: list[str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    if ctx.reloader is None:
        raise APIError(
            409,
            "The gateway was not started from a configuration file.",
            code="no_config_file",
            type_="invalid_request_error",
        )
    result = await ctx.reloader.reload("admin")
    status = 200 if result.ok else 422
    return status, {
        "reloaded": result.ok,
        "errors": result.problems,
        "restart_needed": result.restart_needed,
    }


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "keys", keys),
    ("POST", "keys/*/disable", disable),
    ("POST", "keys/*/enable", enable),
    ("GET", "providers", providers),
    ("GET", "stats", stats),
    ("GET", "config", config),
    ("POST", "config/validate", validate),
    ("POST", "reload", reload),
    ("GET", "usage", usage),
)
