"""Runtime state of keys and providers: what the router knows and learns from outcomes.

All times are the router's clock (monotonic seconds). Nothing here does I/O or sleeps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Protocol

from truckllm.config.schema import KeyConfig, Limits
from truckllm.routing.headers import ReportedQuota
from truckllm.routing.outcome import OutcomeKind
from truckllm.routing.outlier import Outlier, OutlierPool, OutlierSettings
from truckllm.routing.windows import SlidingWindow


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """Tuning of cooldowns, breakers and learning. Built from ``routing:`` in the config."""

    cooldown_base_s: float = 1.0  # a 429 that names no reset cools 1 s, 2 s, 4 s, ...
    cooldown_max_s: float = 60.0
    breaker_failures: int = 5  # consecutive failures that open a key's breaker
    provider_breaker_failures: int = 20  # ... and a provider's
    breaker_open_s: float = 10.0  # first open period; doubles while probes fail
    breaker_open_max_s: float = 300.0
    out_of_service_probe_s: float = 300.0  # a key out of service is probed again after this
    ewma_alpha: float = 0.2
    outlier: OutlierSettings = field(default_factory=OutlierSettings)


class SharedLimit(Protocol):
    """A key's limits shared with other processes (see ``truckllm.stores.limits``): consulted
    beside the key's own windows, with the same ``now``, and told of its cooldowns. Synchronous
    and free of I/O, like everything here."""

    def ready_at(self, now: float, tokens: float) -> float: ...

    def take(self, now: float, tokens: float) -> None: ...

    def give(self, now: float, tokens: float) -> None: ...

    def adjust(self, now: float, tokens: float) -> None: ...

    def cooled(self, until: float) -> None: ...


class Status(Enum):
    ACTIVE = "active"
    COOLING = "cooling"
    DISABLED = "disabled"
    OUT_OF_SERVICE = "out_of_service"
    CIRCUIT_OPEN = "circuit_open"
    EJECTED = "ejected"  # success rate too low: skipped while other keys can serve


class Breaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open once the open period
    ends, when exactly one probe may pass; its success closes, its failure reopens for longer."""

    __slots__ = ("_max_s", "_open_s", "_threshold", "failures", "open_s", "open_until", "probing")

    def __init__(self, threshold: int, open_s: float, max_s: float) -> None:
        self._threshold = threshold
        self._open_s = open_s
        self._max_s = max_s
        self.failures = 0
        self.open_until = 0.0  # 0: closed
        self.open_s = open_s
        self.probing = False

    def ready_at(self, now: float) -> float:
        """When a request may pass: ``now`` if it may now."""
        if not self.open_until:
            return now
        if now < self.open_until:
            return self.open_until
        return math.inf if self.probing else now

    def on_pick(self) -> None:
        if self.open_until:
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.open_s = self._open_s
        self.probing = False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.open_until and self.probing:  # the probe failed: reopen for longer
            self.open_s = min(self.open_s * 2, self._max_s)
            self.open_until = now + self.open_s
        elif not self.open_until and self.failures >= self._threshold:
            self.open_until = now + self.open_s
        self.probing = False

    def release(self) -> None:
        """A probe that ended without a verdict (cancelled) frees the probe slot."""
        self.probing = False

    @property
    def state(self) -> str:
        if not self.open_until:
            return "closed"
        return "half_open" if self.probing else "open"


class ProviderState:
    """A provider's own breaker and outlier state, and the pool its keys are ejected from.
    ``pool`` is the router's pool of providers (a private one when absent)."""

    __slots__ = ("breaker", "id", "key_pool", "keys", "outlier")

    def __init__(
        self, provider_id: str, settings: RoutingSettings, pool: OutlierPool | None = None
    ) -> None:
        self.id = provider_id
        self.keys: list[KeyState] = []
        self.breaker = Breaker(
            settings.provider_breaker_failures, settings.breaker_open_s, settings.breaker_open_max_s
        )
        self.key_pool = OutlierPool(settings.outlier)
        self.outlier = Outlier(pool or OutlierPool(settings.outlier))


def _window(limit: int | None, span: float, old: SlidingWindow | None) -> SlidingWindow | None:
    if limit is None:
        return None
    if old is not None:
        old.limit = limit
        return old
    return SlidingWindow(limit, span)


class KeyState:
    """One key's state. Mutated only by the router (pick, reserve, report)."""

    def __init__(
        self,
        key: KeyConfig,
        provider_id: str,
        settings: RoutingSettings,
        pool: OutlierPool | None = None,
    ) -> None:
        self.key = key
        self.provider_id = provider_id
        self.settings = settings
        self.disabled_by_operator = False
        self.cooling_until = 0.0
        self.consecutive_429 = 0
        self.out_of_service: str | None = None
        self.probe_at = 0.0
        self.breaker = Breaker(
            settings.breaker_failures, settings.breaker_open_s, settings.breaker_open_max_s
        )
        self.in_flight = 0
        self.requests = 0
        self.latency_s: float | None = None  # time to the answer's start (TTFT for streams)
        self.latency_samples = 0
        self.success_rate = 1.0  # decaying
        self.outcomes: dict[OutcomeKind, int] = {}
        self.cooldowns: deque[tuple[float, float]] = deque(maxlen=64)
        self.quota = ReportedQuota()
        self.quota_seen_at = 0.0
        self.quota_requests_used = 0  # picks since the provider last reported its remaining figures
        self.quota_tokens_used = 0.0
        self.rr_weight = 0.0  # smooth weighted round robin's running weight
        self.rpm: SlidingWindow | None = None
        self.tpm: SlidingWindow | None = None
        self.rpd: SlidingWindow | None = None
        self.tpd: SlidingWindow | None = None
        self._windows: list[tuple[SlidingWindow, bool]] = []
        self.shared: SharedLimit | None = None  # set when a shared store holds the limits
        self.outlier = Outlier(pool or OutlierPool(settings.outlier))
        self.free = True
        self.price: tuple[object, ...] = ()
        self.configure(key)

    def configure(self, key: KeyConfig) -> None:
        """Adopt ``key``'s settings, at start and on every reload: its limits, and what each pick
        reads of its price. ``free``: the key costs nothing (no pricing configured), so price
        plays no part in its score; ``price``: its prices as a tuple, equal for two keys exactly
        when their ``Pricing`` is (compared in C, not by the dataclass's ``__eq__``)."""
        self.key = key
        p = key.pricing
        self.free = not (p.input_token_cost or p.output_token_cost or p.cached_input_token_cost)
        self.price = tuple(getattr(p, f.name) for f in fields(p))
        self.apply_limits(key.limits)

    def apply_limits(self, limits: Limits) -> None:
        self.rpm = _window(limits.rpm, 60.0, self.rpm)
        self.tpm = _window(limits.tpm, 60.0, self.tpm)
        self.rpd = _window(limits.rpd, 86400.0, self.rpd)
        self.tpd = _window(limits.tpd, 86400.0, self.tpd)
        self._windows = [
            (w, is_tokens)
            for w, is_tokens in (
                (self.rpm, False),
                (self.rpd, False),
                (self.tpm, True),
                (self.tpd, True),
            )
            if w is not None
        ]

    # -- eligibility --------------------------------------------------------------------------

    def ready_at(self, now: float, tokens: float) -> float:
        """The earliest time this key could take a request of ``tokens``: ``now`` if it can now,
        ``inf`` if only an operator (or a later probe) can bring it back. Called for many keys
        per pick, so the common case (no limits, nothing wrong) is a few attribute reads."""
        if self.disabled_by_operator or not self.key.enabled:
            return math.inf
        at = now
        if self.out_of_service is not None and self.probe_at > at:
            at = self.probe_at
        if self.cooling_until > at:
            at = self.cooling_until
        if self.breaker.open_until:
            b = self.breaker.ready_at(now)
            if b > at:
                at = b
        for window, is_tokens in self._windows:
            # a request over the limit waits for an empty window
            cap = window.cap
            amount = (tokens if tokens < cap else cap) if is_tokens else 1.0
            # fits even before the window moves on (moving on only lowers total): no wait
            if window.total + amount <= cap:
                continue
            wait = window.wait_for(now, amount)
            if wait and now + wait > at:
                at = now + wait
        q = self.quota
        if q.remaining_requests is not None or q.remaining_tokens is not None:
            at = self._quota_ready_at(at, tokens)
        if self.shared is not None and at <= now:
            at = self.shared.ready_at(now, tokens)
        return at

    def _quota_ready_at(self, at: float, tokens: float) -> float:
        q = self.quota
        if q.remaining_requests is not None and q.remaining_requests - self.quota_requests_used < 1:
            reset = self.quota_seen_at + (
                q.reset_requests_s if q.reset_requests_s is not None else 1.0
            )
            if reset > at:
                at = reset
        if q.remaining_tokens is not None and q.remaining_tokens - self.quota_tokens_used < tokens:
            reset = self.quota_seen_at + (q.reset_tokens_s if q.reset_tokens_s is not None else 1.0)
            if reset > at:
                at = reset
        return at

    def headroom(self, now: float, tokens: float) -> float:
        """The smallest share of any limit left after this request, in [0, 1]; 1 if unlimited."""
        share = 1.0
        for window, is_tokens in self._windows:
            amount = tokens if is_tokens else 1.0
            used = window.total if now < window.head_end else window.used(now)
            cap = window.cap
            left = (cap - used - amount) / cap
            if left < share:
                share = left
        q = self.quota
        if not (q.limit_requests or q.limit_tokens):
            return max(share, 0.0)
        fresh_r = now < self.quota_seen_at + (q.reset_requests_s or 60.0)
        if q.limit_requests and q.remaining_requests is not None and fresh_r:
            left = q.remaining_requests - self.quota_requests_used - 1
            share = min(share, left / q.limit_requests)
        fresh_t = now < self.quota_seen_at + (q.reset_tokens_s or 60.0)
        if q.limit_tokens and q.remaining_tokens is not None and fresh_t:
            left_t = q.remaining_tokens - self.quota_tokens_used - tokens
            share = min(share, left_t / q.limit_tokens)
        return max(share, 0.0)

    def status(self, now: float) -> tuple[Status, str | None, float | None]:
        """(status, reason, until) for operators."""
        if self.disabled_by_operator or not self.key.enabled:
            return (
                Status.DISABLED,
                "disabled by operator" if self.disabled_by_operator else "enabled: false",
                None,
            )
        if self.out_of_service is not None:
            return Status.OUT_OF_SERVICE, self.out_of_service, self.probe_at
        if self.cooling_until > now:
            return Status.COOLING, "rate limited", self.cooling_until
        if (
            self.breaker.open_until
            and self.breaker.state != "closed"
            and self.breaker.open_until > now
        ):
            return (
                Status.CIRCUIT_OPEN,
                f"{self.breaker.failures} consecutive failures",
                self.breaker.open_until,
            )
        o = self.outlier
        if o.ejected_until:
            what = "ejected" if now < o.ejected_until else "on probation"
            return Status.EJECTED, f"{what}: {o.reason}", o.ejected_until
        return Status.ACTIVE, None, None

    # -- bookkeeping --------------------------------------------------------------------------

    def reserve(self, now: float, tokens: float) -> None:
        self.in_flight += 1
        self.requests += 1
        for window, is_tokens in self._windows:
            window.add(now, tokens if is_tokens else 1.0)
        self.quota_requests_used += 1
        self.quota_tokens_used += tokens
        self.breaker.on_pick()
        if self.outlier.ejected_until:
            self.outlier.on_pick(now)
        if self.out_of_service is not None:
            self.probe_at = now + self.settings.out_of_service_probe_s  # one probe per period
        if self.shared is not None:
            self.shared.take(now, tokens)

    def release(self, now: float, tokens: float) -> None:
        """Give back a reservation whose request was never sent."""
        for window, amount in (
            (self.rpm, -1.0),
            (self.rpd, -1.0),
            (self.tpm, -tokens),
            (self.tpd, -tokens),
        ):
            if window is not None:
                window.add(now, amount)
        self.requests -= 1
        self.quota_requests_used = max(self.quota_requests_used - 1, 0)
        self.quota_tokens_used = max(self.quota_tokens_used - tokens, 0.0)
        self.breaker.release()
        self.outlier.release()
        if self.shared is not None:
            self.shared.give(now, tokens)

    def reconcile_tokens(self, now: float, reserved: float, actual: float) -> None:
        delta = actual - reserved
        if delta:
            for window in (self.tpm, self.tpd):
                if window is not None:
                    window.add(now, delta)
            if self.shared is not None:
                self.shared.adjust(now, delta)

    def observe_quota(self, now: float, quota: ReportedQuota) -> None:
        """Adopt the provider's figures. Requests still in flight may not have reached it yet, so
        they count as used: concurrency cannot overshoot what it says remains."""
        self.quota = quota
        self.quota_seen_at = now
        self.quota_requests_used = self.in_flight
        self.quota_tokens_used = 0.0

    def cool(self, now: float, seconds: float) -> None:
        until = now + seconds
        if until > self.cooling_until:
            self.cooling_until = until
            self.cooldowns.append((now, until))
            if self.shared is not None:
                self.shared.cooled(until)

    def learn(self, latency_s: float | None, success: bool | None) -> None:
        a = self.settings.ewma_alpha
        if latency_s is not None:
            self.latency_s = (
                latency_s if self.latency_s is None else (1 - a) * self.latency_s + a * latency_s
            )
        if success is not None:
            self.success_rate = (1 - a) * self.success_rate + a * (1.0 if success else 0.0)
