"""JSON views of the gateway's state for operators. Never a secret: keys are named by id, the
configuration is shown with every secret replaced."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from truckllm.config import ClientKey, Config, Secret
from truckllm.routing import KeyState

if TYPE_CHECKING:
    from truckllm.gateway import Runtime

REDACTED = "********"


def _unix(monotonic_at: float | None, now_mono: float, now_wall: float) -> float | None:
    if monotonic_at is None or math.isinf(monotonic_at):
        return None
    return round(now_wall + (monotonic_at - now_mono), 3)


def key_view(s: KeyState, now: float, wall: float, usage: dict[str, Any] | None) -> dict[str, Any]:
    status, reason, until = s.status(now)
    limits = dataclasses.asdict(s.key.limits)
    used = {
        name: round(w.used(now), 1)
        for name, w in (("rpm", s.rpm), ("tpm", s.tpm), ("rpd", s.rpd), ("tpd", s.tpd))
        if w is not None
    }
    q = s.quota
    return {
        "id": s.key.id,
        "provider": s.provider_id,
        "status": status.value,
        "reason": reason,
        "until": _unix(until, now, wall),
        "weight": s.key.weight,
        "limits": {k: v for k, v in limits.items() if v is not None},
        "used": used,
        "provider_reported": None
        if q.empty
        else {
            "remaining_requests": q.remaining_requests,
            "remaining_tokens": q.remaining_tokens,
            "limit_requests": q.limit_requests,
            "limit_tokens": q.limit_tokens,
            "seen": _unix(s.quota_seen_at, now, wall),
        },
        "in_flight": s.in_flight,
        "requests": s.requests,
        "latency_ms": None if s.latency_s is None else round(s.latency_s * 1000, 2),
        "success_rate": round(s.success_rate, 4),
        "error_rate": round(1 - s.success_rate, 4),
        "breaker": s.breaker.state,
        "outcomes": {k.value: v for k, v in s.outcomes.items()},
        "usage": usage or {},
    }


def providers_view(rt: Runtime) -> list[dict[str, Any]]:
    now = rt.router.clock()
    wall = time.time()
    out = []
    for p in rt.config.providers:
        ps = rt.router.providers[p.id]
        out.append(
            {
                "id": p.id,
                "type": p.type,
                "base_url": p.base_url,
                "models": list(p.models),
                "strategy": rt.router.strategy_of(p.id),
                "keys": [k.id for k in p.keys],
                "active_keys": sum(1 for s in ps.keys if s.ready_at(now, 0) <= now),
                "breaker": ps.breaker.state,
                "outlier": ps.outlier.state(now),
                "ejected_until": _unix(ps.outlier.ejected_until or None, now, wall),
                "ejection_reason": ps.outlier.reason or None,
            }
        )
    return out


def redact(value: Any) -> Any:
    """A JSON-able copy of a configuration value with every secret replaced."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, ClientKey):
        return {
            "id": value.id,
            "key": REDACTED if value.key is not None else None,
            "key_sha256": REDACTED if value.key_sha256 is not None else None,
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _proxy_shown(v) if f.name == "proxy" and isinstance(v, str) else redact(v)
            for f in dataclasses.fields(value)
            if not f.metadata.get("internal")
            for v in (getattr(value, f.name),)
        }
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_name(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _proxy_shown(url: str) -> str:
    """A ``proxy`` option without the credentials it may carry (``http://user:pass@host``)."""
    scheme, sep, rest = url.rpartition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}{REDACTED}@{rest.rpartition('@')[2]}"


def _secret_name(name: str) -> bool:
    """Free-form maps (provider ``headers``, ``options``) may hold credentials too."""
    lowered = name.lower()
    return any(
        word in lowered for word in ("key", "secret", "token", "auth", "password", "signature")
    )


def config_view(config: Config) -> dict[str, Any]:
    return {"source": config.source, "config": redact(config)}
