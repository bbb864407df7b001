"""One structured warning per failed upstream attempt, rate-limited per provider.

The line names the provider, the key (by id), the method and URL called (without query or user
information: no secret travels there), what came back (the status and error code, or the
exception's class and message), the attempt's number, and what the balancer did about it (the
key cooled, out of service, its breaker opened; retrying, or given up). Logger
``truckllm.upstream``; the fields go into the JSON log as they are (``provider``, ``key_id``,
``method``, ``url``, ``status``, ``error``, ``attempt``, ``action``, ``request_id``,
``suppressed``).

An outage must not flood the log: each provider has a token bucket of ``burst`` lines refilled
at ``per_second``. Lines over it are counted, not written; the next line written for that
provider says how many were held back (``suppressed``) and ends "(N similar lines suppressed)".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from truckllm.providers.base import Reply, UpstreamError
from truckllm.providers.called import called, shown_url
from truckllm.routing import OutcomeKind, Pick
from truckllm.routing.keystate import Status

BURST = 10  # lines a provider may log at once
PER_SECOND = 1.0  # and then this many a second
MESSAGE_CHARS = 300  # of the upstream's error message, in a line

log = logging.getLogger("truckllm.upstream")


class _Bucket:
    __slots__ = ("at", "suppressed", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.suppressed = 0


class FailureLog:
    """Writes the failure lines of one runtime. Not thread-safe: the serving loop's own."""

    def __init__(
        self,
        burst: int = BURST,
        per_second: float = PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.clock = clock
        self.logger = logger
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, provider: str) -> int | None:
        """The count of lines held back before this one, or ``None``: hold this one back too."""
        now = self.clock()
        bucket = self._buckets.get(provider)
        if bucket is None:
            bucket = self._buckets[provider] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return None
        bucket.tokens -= 1.0
        held, bucket.suppressed = bucket.suppressed, 0
        return held

    def failure(
        self,
        pick: Pick,
        failure: Reply | UpstreamError | None,
        kind: OutcomeKind,
        attempt: int,
        now: float,
    ) -> Failed:
        """What one failed attempt (already reported to ``pick``) came to, taken now: the
        upstream call, the answer or exception, and what the router did to the key. Logged by
        :meth:`log` once the request knows its next step."""
        note = called()
        status, error = _what(failure, kind)
        return Failed(
            pick.provider.id,
            pick.key.id,
            note[0] if note else "",
            shown_url(note[1]) if note else "",
            status,
            error,
            attempt,
            _key_effect(pick, now),
        )

    def log(self, failed: Failed, next_step: str, request_id: str) -> None:
        """Write the line, unless the provider's bucket is empty; ``next_step`` is what the
        request did next ("moved to key 'k2'", "gave up after 3 attempts"...)."""
        if not self.logger.isEnabledFor(logging.WARNING):
            return
        held = self.allow(failed.provider)
        if held is None:
            return
        action = "; ".join(a for a in (failed.key_effect, next_step) if a)
        call = f" {failed.method} {failed.url}" if failed.method else ""
        message = (
            f"upstream attempt {failed.attempt} failed: provider {failed.provider!r} key "
            f"{failed.key_id!r}{call}: {failed.error}; {action}"
        )
        if held:
            message += f" ({held} similar lines suppressed)"
        self.logger.warning(
            message,
            extra={
                "provider": failed.provider,
                "key_id": failed.key_id,
                "method": failed.method,
                "url": failed.url,
                "status": failed.status,
                "error": failed.error,
                "attempt": failed.attempt,
                "action": action,
                "request_id": request_id,
                "suppressed": held,
            },
        )


@dataclass(frozen=True, slots=True)
class Failed:
    """One failed attempt, as its log line tells it."""

    provider: str
    key_id: str
    method: str
    url: str  # without query or user information
    status: int | None  # None: no answer (a transport failure)
    error: str
    attempt: int
    key_effect: str  # what the router did to the key ("cooled the key for 7.0 s"), or ""


def _what(failure: Reply | UpstreamError | None, kind: OutcomeKind) -> tuple[int | None, str]:
    """The status (None for a transport failure) and what went wrong, in words."""
    if isinstance(failure, Reply):
        code = f" {failure.error_code}" if failure.error_code else ""
        said = _message(failure.body)
        return failure.status, f"HTTP {failure.status}{code}{f': {said}' if said else ''}"
    if isinstance(failure, UpstreamError):
        if failure.upstream_status is not None:
            return failure.upstream_status, f"HTTP {failure.upstream_status} {failure}"
        cause = failure.__cause__ or failure
        return None, f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return None, kind.value


def _message(body: bytes | None) -> str:
    """The upstream's own words from an OpenAI-shaped error body (secrets already scrubbed by
    the adapter), cut to ``MESSAGE_CHARS``."""
    if not body:
        return ""
    try:
        err = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    text = err.get("message") if isinstance(err, dict) else None
    if not isinstance(text, str):
        return ""
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def _key_effect(pick: Pick, now: float) -> str:
    """What the router did to the key on hearing of the failure."""
    status, reason, until = pick.state.status(now)
    left = f" for {max(until - now, 0.0):.1f} s" if until is not None else ""
    if status is Status.COOLING:
        return f"cooled the key{left}"
    if status is Status.OUT_OF_SERVICE:
        return f"took the key out of service ({reason})"
    if status is Status.CIRCUIT_OPEN:
        return f"opened the key's circuit breaker{left}"
    if status is Status.EJECTED:
        return f"ejected the key ({reason})"
    return ""
