"""What one upstream attempt came to, as reported to the key that made it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from truckllm.providers.base import Usage
from truckllm.routing.headers import ReportedQuota


class OutcomeKind(Enum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # the client's fault (other 4xx): not the key's
    RATE_LIMITED = "rate_limited"  # 429
    AUTH_ERROR = "auth_error"  # 401, 403: the key's credentials
    QUOTA_EXHAUSTED = "quota_exhausted"  # 402, insufficient_quota
    SERVER_ERROR = "server_error"  # 5xx, 529
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the client went away or the task was cancelled
    STREAM_BROKEN = "stream_broken"  # the upstream failed after the first byte went out
    NOT_SENT = "not_sent"  # the adapter refused the request before sending it: nothing learnt

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's own
    # __hash__ is Python code, and kinds are hashed several times per request: the sets
    # below, the keys' outcome counts).
    __hash__ = object.__hash__

    @property
    def retryable(self) -> bool:
        """Whether another key may serve the request (before any byte reached the client)."""
        return self in _RETRYABLE

    @property
    def needs_backoff(self) -> bool:
        """Whether the next attempt should wait a little: the upstream itself is struggling."""
        return self in _BACKOFF


_RETRYABLE = frozenset(
    {
        OutcomeKind.RATE_LIMITED,
        OutcomeKind.AUTH_ERROR,
        OutcomeKind.QUOTA_EXHAUSTED,
        OutcomeKind.SERVER_ERROR,
        OutcomeKind.CONNECTION_ERROR,
        OutcomeKind.TIMEOUT,
    }
)
_BACKOFF = frozenset({OutcomeKind.SERVER_ERROR, OutcomeKind.CONNECTION_ERROR, OutcomeKind.TIMEOUT})


def classify_status(status: int, error_code: str | None = None) -> OutcomeKind:
    if status < 400:
        return OutcomeKind.SUCCESS
    if error_code == "insufficient_quota" and status < 500:  # a 429, or a 400/403 on some APIs
        return OutcomeKind.QUOTA_EXHAUSTED
    if status == 429:
        return OutcomeKind.RATE_LIMITED
    if status in (401, 403):
        return OutcomeKind.AUTH_ERROR
    if status == 402:
        return OutcomeKind.QUOTA_EXHAUSTED
    if status >= 500:
        return OutcomeKind.SERVER_ERROR
    return OutcomeKind.CLIENT_ERROR


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    status: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    usage: Usage | None = None
    quota: ReportedQuota | None = None
    retry_after: float | None = None
