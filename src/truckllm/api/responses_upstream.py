"""``DELETE /v1/responses/{id}`` of a response an upstream holds (passthrough to a provider
with ``responses_api``): the call goes to that provider with the key that made the response,
and the client gets the upstream's answer as it came (status and body). The gateway's copy is
forgotten when the upstream deleted it or no longer knows it. No pick, limit or accounting: it
is no model call."""

from __future__ import annotations

from typing import Any

from truckllm.errors import APIError
from truckllm.gateway import Runtime
from truckllm.providers.base import UpstreamError


async def forward(
    rt: Runtime, method: str, response_id: str, upstream: Any
) -> tuple[int, bytes] | None:
    """The upstream's (status, body), or None when the record names no provider in force that
    can take the call (the gateway's copy then answers alone)."""
    provider_id = upstream.get("provider") if isinstance(upstream, dict) else None
    key_id = upstream.get("key") if isinstance(upstream, dict) else None
    provider = rt.providers.get(provider_id) if isinstance(provider_id, str) else None
    call = getattr(provider, "response_by_id", None)
    cfg = next((p for p in rt.config.providers if p.id == provider_id), None)
    key = next((k for k in cfg.keys if k.id == key_id), None) if cfg is not None else None
    if call is None or key is None:
        return None
    try:
        status, body = await call(method, response_id, key)
    except UpstreamError as exc:
        raise APIError(exc.status, str(exc), type_="server_error", code=exc.code) from None
    return int(status), bytes(body)
