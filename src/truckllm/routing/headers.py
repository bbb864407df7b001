"""What a provider says about a key's remaining quota, read from its response headers.

OpenAI and most OpenAI-compatible services: ``x-ratelimit-remaining-requests``,
``x-ratelimit-remaining-tokens`` and ``x-ratelimit-reset-requests``/``-tokens`` as durations such
as ``1s``, ``6m0s`` or ``20ms``. Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,
output-tokens}-{remaining,reset}`` with RFC 3339 reset times. ``retry-after`` is read by the
provider adapters into ``Reply.retry_after`` (Gemini's ``RetryInfo`` too).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_RESET_S = 7 * 86400.0  # a reset further away than this is not believed
_MAX_COUNT = 1 << 53  # a remaining count or limit larger than this is not believed


@dataclass(frozen=True, slots=True)
class ReportedQuota:
    """Remaining requests/tokens and the seconds until each resets; ``None`` where not said."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None

    @property
    def empty(self) -> bool:
        return self.remaining_requests is None and self.remaining_tokens is None


_NO_QUOTA = ReportedQuota()


def _seconds(value: float) -> float | None:
    """A reset time an upstream reports: ``None`` (unknown) unless finite, not negative and
    within :data:`_MAX_RESET_S`. Every value here comes from an upstream and may be anything."""
    return value if math.isfinite(value) and 0.0 <= value <= _MAX_RESET_S else None


def parse_duration(text: str) -> float | None:
    """``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or plain seconds -> seconds; ``None``
    when unreadable, negative, not finite or absurdly long."""
    text = text.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return _seconds(sum(float(n) * _UNIT[u] for n, u in parts))


def _seconds_until(stamp: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
        return _seconds(max(when.timestamp() - now, 0.0))
    except (ValueError, OverflowError, OSError):
        return None


def _int(value: str | None) -> int | None:
    """A count: ``None`` when absent, unreadable, negative, not finite or absurdly large."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or not 0 <= number <= _MAX_COUNT:
        return None
    return int(number)


def parse_quota(headers: Mapping[str, str], wall_now: float | None = None) -> ReportedQuota:
    """The quota a response reports. Header names are matched case-insensitively by the mapping
    (aiohttp's ``CIMultiDictProxy``); a plain dict must use lower-case names."""
    get = headers.get
    remaining_requests = _int(get("x-ratelimit-remaining-requests"))
    if remaining_requests is not None or get("x-ratelimit-remaining-tokens") is not None:
        reset_r = get("x-ratelimit-reset-requests")
        reset_t = get("x-ratelimit-reset-tokens")
        return ReportedQuota(
            remaining_requests,
            _int(get("x-ratelimit-remaining-tokens")),
            parse_duration(reset_r) if reset_r else None,
            parse_duration(reset_t) if reset_t else None,
            _int(get("x-ratelimit-limit-requests")),
            _int(get("x-ratelimit-limit-tokens")),
        )
    remaining_requests = _int(get("anthropic-ratelimit-requests-remaining"))
    if (
        remaining_requests is None
        and get("anthropic-ratelimit-tokens-remaining") is None
        and get("anthropic-ratelimit-input-tokens-remaining") is None
    ):
        return _NO_QUOTA  # the common case for servers that send no rate-limit headers
    tokens = [
        _int(get(f"anthropic-ratelimit-{kind}-remaining"))
        for kind in ("tokens", "input-tokens", "output-tokens")
    ]
    known = [t for t in tokens if t is not None]
    if remaining_requests is None and not known:
        return ReportedQuota()
    now = time.time() if wall_now is None else wall_now
    resets = [
        _seconds_until(stamp, now)
        for kind in ("tokens", "input-tokens", "output-tokens")
        if (stamp := get(f"anthropic-ratelimit-{kind}-reset"))
    ]
    reset_r = get("anthropic-ratelimit-requests-reset")
    return ReportedQuota(
        remaining_requests,
        min(known) if known else None,
        _seconds_until(reset_r, now) if reset_r else None,
        max((r for r in resets if r is not None), default=None),
        _int(get("anthropic-ratelimit-requests-limit")),
        _int(get("anthropic-ratelimit-tokens-limit")),
    )
