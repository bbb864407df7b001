"""What a request is cached under, and whether it may be: the canonical request hashed, and the
client's per-request directives (``Cache-Control``, ``x-truckllm-cache-ttl``)."""

from __future__ import annotations

import hashlib
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


def cache_key(
    namespace: str, endpoint: str, targets: Sequence[tuple[str, str]], body: dict[str, Any]
) -> str:
    """``<namespace>:<sha-256>`` of the endpoint, the resolved targets (provider, upstream model)
    and the body without :data:`IGNORED` fields, serialised with sorted keys at every depth."""
    canon = {k: v for k, v in body.items() if k not in IGNORED}
    blob = orjson.dumps([endpoint, targets, canon], option=orjson.OPT_SORT_KEYS)
    return namespace + ":" + hashlib.sha256(blob).hexdigest()


def namespace_of(client: str, shared: bool) -> str:
    """The client's own namespace (a digest of its id), or one every client shares."""
    if shared:
        return "shared"
    return hashlib.sha256(client.encode()).hexdigest()[:20]


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
            seen = True
    return Directives(no_cache, no_store, ttl) if seen else NONE
