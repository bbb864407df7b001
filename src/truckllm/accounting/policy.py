"""Per-client rules checked before any upstream call: allowed models, rpm/tpm, budgets.

Every check is O(1): a set lookup (one precompiled regular expression for globs), a few window
reads and three integer comparisons.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import time

from truckllm.accounting.money import format_usd, usd_to_nanos
from truckllm.config import ClientKey, Config, Secret, client_key_digests
from truckllm.errors import APIError
from truckllm.routing.windows import SlidingWindow
from truckllm.stores.limits import SharedLimiter, WindowSpec


class ClientPolicy:
    __slots__ = (
        "_caps",
        "_checks",
        "allowed",
        "budgets",
        "has_budget",
        "id",
        "pattern",
        "rpm",
        "shared",
        "specs",
        "tpm",
    )

    def __init__(self, client_id: str, entry: ClientKey, old: ClientPolicy | None) -> None:
        self.id = client_id
        self.allowed: frozenset[str] | None = None
        self.pattern: re.Pattern[str] | None = None
        if entry.allowed_models is not None:
            globs = [m for m in entry.allowed_models if any(c in m for c in "*?[")]
            self.allowed = frozenset(m for m in entry.allowed_models if m not in globs)
            if globs:
                self.pattern = re.compile("|".join(fnmatch.translate(g) for g in globs))
        self.rpm: SlidingWindow | None = _window(entry.rpm, old.rpm if old else None)
        self.tpm: SlidingWindow | None = _window(entry.tpm, old.tpm if old else None)
        b = entry.budget
        self.budgets: tuple[int | None, int | None, int | None] = (
            (None, None, None)
            if b is None
            else tuple(  # type: ignore[assignment]
                None if v is None else usd_to_nanos(v) for v in (b.daily, b.monthly, b.total)
            )
        )
        # (index into the ledger's (day, month, total), limit, period) of each budget set
        self._checks = tuple(
            (i, limit, period)
            for i, (limit, period) in enumerate(
                zip(self.budgets, ("daily", "monthly", "total"), strict=True)
            )
            if limit is not None
        )
        self.has_budget = bool(self._checks)
        # each budget as a bound the spend is compared with (one no spend reaches when unset)
        day, month, total = self.budgets
        self._caps = (
            math.inf if day is None else day,
            math.inf if month is None else month,
            math.inf if total is None else total,
        )
        self.specs = [
            WindowSpec(name, 60.0, limit, name == "tpm")
            for name, limit in (("rpm", entry.rpm), ("tpm", entry.tpm))
            if limit is not None
        ]
        self.shared: SharedLimiter | None = old.shared if old else None

    def allows(self, model: str) -> bool:
        if self.allowed is None or model in self.allowed:
            return True
        return self.pattern is not None and self.pattern.fullmatch(model) is not None

    def wait_s(self, now: float, tokens: float) -> float:
        """Seconds until the client may send a request of ``tokens`` (0: now)."""
        wait = 0.0
        if self.rpm is not None:
            wait = self.rpm.wait_for(now, 1.0)
        if self.tpm is not None and tokens:
            wait = max(wait, self.tpm.wait_for(now, min(tokens, self.tpm.limit)))
        if self.shared is not None and wait == 0.0:
            wait = max(self.shared.ready_at(now, tokens) - now, 0.0)
        return wait

    def take(self, now: float, tokens: float) -> bool:
        """Reserve the request at once when it fits every window as counted (a window moving on
        only lowers its count, so it fits then too) and no shared limiter is involved. False:
        nothing was reserved; :meth:`wait_s` and :meth:`reserve` decide."""
        if self.shared is not None:
            return False
        rpm, tpm = self.rpm, self.tpm
        if rpm is not None and not rpm.take(now, 1.0):
            return False
        if tpm is not None and tokens and not tpm.take(now, tokens):
            if rpm is not None:
                rpm.add(now, -1.0)  # given back: as if never counted
            return False
        return True

    def reserve(self, now: float, tokens: float) -> None:
        if self.rpm is not None:
            self.rpm.add(now, 1.0)
        if self.tpm is not None and tokens:
            self.tpm.add(now, tokens)
        if self.shared is not None:
            self.shared.take(now, tokens)

    def reconcile(self, now: float, delta: float) -> None:
        if self.tpm is not None and delta:
            self.tpm.add(now, delta)
            if self.shared is not None:
                self.shared.adjust(now, delta)

    def share_limits(self, peers: int) -> None:
        """Hold this process to its share of the client's limits (``peers`` processes), while the
        shared store that keeps them exact is away; ``peers`` 1 restores them whole."""
        for spec in self.specs:
            window = self.tpm if spec.tokens else self.rpm
            if window is not None:
                window.limit = max(spec.limit // max(peers, 1), 1)

    def check_budget(self, spent: tuple[int, int, int], wall: float) -> None:
        day, month, total = self._caps
        if spent[0] < day and spent[1] < month and spent[2] < total:
            return
        for i, limit, period in self._checks:
            if spent[i] >= limit:
                raise _over_budget(period, limit, wall)


def _window(limit: int | None, old: SlidingWindow | None) -> SlidingWindow | None:
    if limit is None:
        return None
    if old is not None:
        old.limit = limit
        return old
    return SlidingWindow(limit, 60.0)


def build_policies(config: Config, old: dict[str, ClientPolicy]) -> dict[str, ClientPolicy]:
    """Client id -> policy, for the client keys that carry any rule. Windows carry over by id."""
    ids = client_key_digests(config)
    out: dict[str, ClientPolicy] = {}
    for entry in config.server.api_keys:
        if isinstance(entry, Secret) or not (
            entry.allowed_models is not None
            or entry.rpm is not None
            or entry.tpm is not None
            or entry.budget is not None
        ):
            continue
        if entry.key is not None:
            digest = hashlib.sha256(entry.key.reveal().encode()).digest()
        elif entry.key_sha256 is not None:
            digest = bytes.fromhex(entry.key_sha256)
        else:
            continue
        cid = ids.get(digest)
        if cid is not None:
            out[cid] = ClientPolicy(cid, entry, old.get(cid))
    return out


def model_not_allowed(model: str) -> APIError:
    return APIError(
        403,
        f"This API key is not allowed to use the model `{model}`.",
        code="model_not_allowed",
        param="model",
        type_="invalid_request_error",
    )


def rate_limited(wait_s: float, what: str) -> APIError:
    seconds = max(1, math.ceil(wait_s))
    return APIError(
        429,
        f"Rate limit reached for this API key ({what}); retry after {seconds} s.",
        code="rate_limit_exceeded",
        type_="rate_limit_error",
        headers=[(b"retry-after", str(seconds).encode())],
    )


def _over_budget(period: str, limit: int, wall: float) -> APIError:
    headers: list[tuple[bytes, bytes]] = []
    if period == "daily":
        reset = float((int(wall) // 86400 + 1) * 86400)
        headers.append((b"retry-after", str(max(int(reset - wall), 1)).encode()))
    elif period == "monthly":
        t = time.gmtime(wall)
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        reset = _utc(year, month)
        headers.append((b"retry-after", str(max(int(reset - wall), 1)).encode()))
    return APIError(
        429,
        f"You exceeded the {period} budget of ${format_usd(limit)} set for this API key.",
        code="insufficient_quota",
        type_="insufficient_quota",
        headers=headers,
    )


def _utc(year: int, month: int) -> float:
    import calendar

    return float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))
