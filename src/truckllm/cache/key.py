"""What a request is cached under, and whether it may be: the canonical request hashed, and the
client's per-request directives (``Cache-Control``, ``x-truckllm-cache-ttl``)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Fields that do not change the answer: how it is delivered, who asks, bookkeeping.
IGNORED = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
    }
)


# Request headers that change the answer, per endpoint: the API version and the beta features
# asked for (Claude Code's ``anthropic-beta`` values turn behaviour on; ``OpenAI-Beta`` selects
# beta versions of an API). Lists of values (comma separated) are a set: order does not count.
VARYING: dict[str, tuple[bytes, ...]] = {
    "messages": (b"anthropic-version", b"anthropic-beta"),
    "chat": (b"openai-beta",),
    "responses": (b"openai-beta",),
    "embeddings": (b"openai-beta",),
}


def varying(endpoint: str, headers: Iterable[tuple[bytes, bytes]]) -> list[list[str]]:
    """The :data:`VARYING` headers of ``endpoint`` present in ``headers`` (ASGI: lower-case
    names), as ``[name, *values]`` with values split on commas, stripped and sorted (a header
    sent more than once counts as one list)."""
    names = VARYING.get(endpoint, ())
    found: dict[bytes, set[str]] = {}
    for name, value in headers:
        if name in names:
            parts = (p.strip() for p in value.decode("latin-1").split(","))
            found.setdefault(name, set()).update(p for p in parts if p)
    return [[n.decode(), *sorted(v)] for n, v in sorted(found.items()) if v]


def cache_key(
    namespace: str,
    endpoint: str,
    targets: Sequence[tuple[str, str]],
    body: dict[str, Any],
    headers: Sequence[list[str]] = (),
) -> str:
    """``<namespace>:<sha-256>`` of the endpoint, the resolved targets (provider, upstream model),
    the body without :data:`IGNORED` fields, serialised with sorted keys at every depth, and the
    :func:`varying` headers (when there are any: keys without them are as before)."""
    canon = {k: v for k, v in body.items() if k not in IGNORED}
    parts: list[Any] = [endpoint, targets, canon]
    if headers:
        parts.append(list(headers))
    blob = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return namespace + ":" + hashlib.sha256(blob).hexdigest()


def namespace_of(client: str, shared: bool) -> str:
    """The client's own namespace (a digest of its id), or one every client shares."""
    if shared:
        return "shared"
    return hashlib.sha256(client.encode()).hexdigest()[:20]


def kept_by_gateway(endpoint: str, body: dict[str, Any]) -> bool:
    """A Responses API answer the gateway keeps (``store`` not ``false``): its id belongs to the
    client that asked, who alone may continue from it (``previous_response_id``). Such answers
    are cached in the client's own namespace even when ``namespace: shared``."""
    return endpoint == "responses" and body.get("store") is not False


def sampled(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether the answer is sampled (``temperature`` above 0): the same request may get another
    answer. An unset temperature is the providers' default (1 at OpenAI, Anthropic, Gemini)."""
    if endpoint == "embeddings":
        return False
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return True
    return temperature > 0


@dataclass(frozen=True, slots=True)
class Directives:
    """The client's say for one request: ``no-cache`` (do not answer from the cache, but keep the
    fresh answer), ``no-store`` (leave the cache alone), ``ttl`` (seconds to keep the answer)."""

    no_cache: bool = False
    no_store: bool = False
    ttl: float | None = None


NONE = Directives()
MAX_TTL = 365 * 86400.0  # seconds: the longest x-truckllm-cache-ttl taken


def directives(headers: Iterable[tuple[bytes, bytes]]) -> Directives:
    no_cache = no_store = False
    ttl: float | None = None
    seen = False
    for name, value in headers:
        if name == b"cache-control":
            tokens = {t.strip().lower() for t in value.split(b",")}
            no_cache = no_cache or b"no-cache" in tokens
            no_store = no_store or b"no-store" in tokens
            seen = True
        elif name == b"x-truckllm-cache-ttl":
            try:
                ttl = max(float(value), 0.0)
            except ValueError:
                ttl = None
            if ttl is not None and not math.isfinite(ttl):  # nan, inf: kept for ever, or a
                ttl = None  # Redis expiry that overflows: the configured ttl instead
            elif ttl is not None:  # past it, Redis refuses the expiry (an "outage" for all)
                ttl = min(ttl, MAX_TTL)
            seen = True
    return Directives(no_cache, no_store, ttl) if seen else NONE
