"""``truckllm check --probe``: one cheap authenticated call per provider key (the model list,
which costs no tokens) and a verdict for each: valid, rejected, unreachable, or failed (any other
answer). The key's secret is sent as the provider's type sends it and never shown; the URL is,
without its query.

- ``openai``: ``GET {base_url}/models`` with the key as a bearer token (or ``auth_header``);
- ``anthropic``: ``GET {base_url}/v1/models`` with ``x-api-key`` and ``anthropic-version``;
- ``gemini``: ``GET {base_url}/v1beta/models`` with ``x-goog-api-key``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from truckllm.config.schema import Config, KeyConfig, ProviderConfig, Timeouts
from truckllm.http.client import HTTPClient
from truckllm.providers.base import ProviderContext
from truckllm.providers.called import shown_url
from truckllm.providers.http import AuthHeaders, UpstreamHTTP, bearer, header

VerdictKind = Literal["valid", "rejected", "unreachable", "failed", "skipped"]
ANTHROPIC_VERSION = "2023-06-01"  # as providers.anthropic sends it
_REJECTED = frozenset({401, 403})


@dataclass(frozen=True)
class Verdict:
    provider: str
    key_id: str
    verdict: VerdictKind
    detail: str  # the call and what came back: "GET http://host/v1/models: 401"


def probe_call(p: ProviderConfig) -> tuple[str, AuthHeaders, dict[str, str]] | None:
    """The URL, the key's headers and the fixed headers of the provider type's model list;
    ``None`` for a type this does not know (a plugin's)."""
    query = ("?" + urlencode(p.query_params)) if p.query_params else ""
    custom = p.auth_header.lower() != "authorization"
    if p.type == "openai":
        return p.base_url + "/models" + query, header(p.auth_header) if custom else bearer, {}
    if p.type == "anthropic":
        return (
            p.base_url + "/v1/models" + query,
            header("x-api-key"),
            {"anthropic-version": ANTHROPIC_VERSION},
        )
    if p.type == "gemini":
        base = p.base_url.rstrip("/")
        if not base.endswith(("/v1beta", "/v1", "/v1alpha")):
            base += "/v1beta"  # as providers.gemini builds its URLs
        return base + "/models" + query, header(p.auth_header if custom else "x-goog-api-key"), {}
    return None


async def probe_keys(cfg: Config, seconds: float, client: HTTPClient) -> list[Verdict]:
    """Every key of every provider probed at once, each within ``seconds``; in config order."""
    jobs: list[Coroutine[Any, Any, Verdict]] = []
    for p in cfg.providers:
        call = probe_call(p)
        if call is None:
            jobs.extend(_skipped(p, k) for k in p.keys)
            continue
        url, auth, fixed = call
        ctx = ProviderContext(p, client, Timeouts(connect=seconds, read=seconds, total=seconds))
        http = UpstreamHTTP(ctx, auth, fixed)
        jobs.extend(_probe(http, url, p, k, seconds) for k in p.keys)
    return list(await asyncio.gather(*jobs))


async def _skipped(p: ProviderConfig, key: KeyConfig) -> Verdict:
    return Verdict(p.id, key.id, "skipped", f"type {p.type!r} has no known model list to call")


async def _probe(
    http: UpstreamHTTP, url: str, p: ProviderConfig, key: KeyConfig, seconds: float
) -> Verdict:
    where = f"GET {shown_url(url)}"
    if not key.enabled:
        return Verdict(p.id, key.id, "skipped", "enabled: false")
    try:
        status, body = await http.get_whole(url, key, seconds)
    except TimeoutError:
        return Verdict(p.id, key.id, "unreachable", f"{where}: no answer within {seconds:g} s")
    except Exception as exc:  # the client's errors, OSError, TLS: the wire did not work
        return Verdict(p.id, key.id, "unreachable", f"{where}: {type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Verdict(p.id, key.id, "valid", f"{where}: {status}")
    if status in _REJECTED or (status == 400 and b"API_KEY_INVALID" in body):
        # Gemini refuses an unknown key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        shown = f"{status} API_KEY_INVALID" if status == 400 else str(status)
        return Verdict(p.id, key.id, "rejected", f"{where}: {shown}")
    hint = " (is base_url right?)" if status in (404, 405) else ""
    return Verdict(p.id, key.id, "failed", f"{where}: {status}{hint}")
