"""What a failed attempt teaches the router, and the error a client sees when none succeeded."""

from __future__ import annotations

import math

from truckllm.errors import APIError
from truckllm.gateway.resolve import Target
from truckllm.providers.base import Reply, UpstreamError, UpstreamTimeout
from truckllm.providers.called import call_text
from truckllm.routing import Outcome, OutcomeKind, classify_status

KEY_SPECIFIC = frozenset(
    {OutcomeKind.RATE_LIMITED, OutcomeKind.AUTH_ERROR, OutcomeKind.QUOTA_EXHAUSTED}
)
PASSED_ON = frozenset({OutcomeKind.RATE_LIMITED, OutcomeKind.SERVER_ERROR})


def outcome_kind(exc: UpstreamError) -> OutcomeKind:
    if exc.upstream_status is not None:  # the upstream named its error: learn as from a status
        return classify_status(exc.upstream_status, exc.code)
    return OutcomeKind.TIMEOUT if isinstance(exc, UpstreamTimeout) else OutcomeKind.CONNECTION_ERROR


def error_outcome(exc: UpstreamError, seconds: float) -> Outcome:
    return Outcome(
        outcome_kind(exc), exc.upstream_status or exc.status, seconds, retry_after=exc.retry_after
    )


def client_error(exc: UpstreamError) -> APIError:
    """The error a client sees for a transport failure: the provider's words and the upstream
    call that failed (method and path; never the host's query)."""
    where = call_text()
    message = f"{exc} ({where})" if where else str(exc)
    return APIError(exc.status, message, code=exc.code, type_=exc.error_type)


def no_room(wait_s: float) -> APIError:
    if math.isinf(wait_s):
        return APIError(
            503,
            "no upstream key is available for this model",
            code="no_available_key",
            type_="api_error",
        )
    seconds = max(1, math.ceil(wait_s))
    return APIError(
        429,
        f"Every key for this model is at its rate limit; retry after {seconds} s.",
        code="rate_limit_exceeded",
        type_="rate_limit_error",
        headers=[(b"retry-after", str(seconds).encode())],
    )


def is_context_error(reply: Reply) -> bool:
    if reply.error_code == "context_length_exceeded":
        return True
    text = (reply.body or b"")[:2000].lower()
    return b"context length" in text or b"context window" in text or b"prompt is too long" in text


def final_error(
    last: Reply | UpstreamError | None, kind: OutcomeKind | None, target: Target | None
) -> APIError:
    """The error a client sees when every attempt failed."""
    if isinstance(last, UpstreamError):
        return client_error(last)
    where = f"provider {target.provider_id!r}" if target else "the provider"
    call = call_text()
    call = f" for {call}" if call else ""
    if kind is OutcomeKind.AUTH_ERROR:
        return APIError(
            502,
            f"{where} rejected the gateway's credentials{call}",
            code="upstream_auth_failed",
            type_="api_error",
        )
    if kind is OutcomeKind.QUOTA_EXHAUSTED:
        return APIError(
            502,
            f"{where} reports the gateway's quota exhausted{call}",
            code="upstream_quota_exhausted",
            type_="api_error",
        )
    return APIError(
        503,
        "no upstream key is available for this model",
        code="no_available_key",
        type_="api_error",
    )
