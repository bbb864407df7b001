"""Key selection and learning. ``pick()`` returns the chosen key together with its ``done(outcome)``
callback: the key picked is the key used, and every attempt reports to exactly that key, exactly
once. Health, limits, cooldowns and latency learn from those reports only.

The router never sleeps or does I/O; the clock and the random source are injected.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from truckllm.config.schema import KeyConfig, ProviderConfig
from truckllm.routing.estimate import Estimate
from truckllm.routing.keystate import KeyState, ProviderState, RoutingSettings
from truckllm.routing.outcome import Outcome, OutcomeKind
from truckllm.routing.outlier import Outlier, OutlierPool
from truckllm.routing.strategies import (
    DEFAULT_LATENCY_S,
    adaptive_score,
    choose_exact,
    request_cost,
)

if TYPE_CHECKING:
    from truckllm.routing.affinity import Affinity

Clock = Callable[[], float]
T = TypeVar("T")
_SAMPLE_DRAWS = 8  # random draws before adaptive falls back to scanning every key


class Pick:
    """The key chosen for one attempt. ``done`` is idempotent: only the first report counts."""

    __slots__ = ("_finished", "_router", "provider", "reserved", "started", "state")

    def __init__(
        self,
        router: Router,
        state: KeyState,
        provider: ProviderState,
        started: float,
        reserved: float,
    ) -> None:
        self._router = router
        self.state = state
        self.provider = provider
        self.started = started
        self.reserved = reserved
        self._finished = False

    @property
    def key(self) -> KeyConfig:
        return self.state.key

    @property
    def finished(self) -> bool:
        return self._finished

    def done(self, outcome: Outcome) -> None:
        if self._finished:
            return
        self._finished = True
        self._router._report(self, outcome)


class Router:
    def __init__(
        self,
        providers: Iterable[ProviderConfig],
        settings: RoutingSettings | None = None,
        default_strategy: str = "adaptive",
        strategies: dict[str, str] | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        carry_over: Router | None = None,
    ) -> None:
        self.settings = settings or RoutingSettings()
        self.clock = clock
        self._rng = rng or random.Random()
        self._default_strategy = default_strategy
        self._strategies = strategies or {}
        self.providers: dict[str, ProviderState] = {}
        self._cursor: dict[str, int] = {}
        self._outliers = self.settings.outlier.enabled
        self._panic = False  # set by a pick that skipped an ejected key or provider
        self.affinity: Affinity | None = None  # prompt-cache affinity (routing.affinity)
        pool = OutlierPool(self.settings.outlier)  # the providers' pool
        previous = carry_over.states() if carry_over is not None else {}
        for p in providers:
            old_provider = carry_over.providers.get(p.id) if carry_over is not None else None
            ps = ProviderState(p.id, self.settings, pool)
            if old_provider is not None:
                ps.breaker = old_provider.breaker
                ps.outlier.adopt(old_provider.outlier)
            for k in p.keys:
                old = previous.get(k.id)
                if old is not None and old.provider_id == p.id:
                    # keep counters, cooldowns and averages; adopt the new settings
                    old.configure(k)
                    old.settings = self.settings
                    outlier = Outlier(ps.key_pool)
                    outlier.adopt(old.outlier)
                    old.outlier = outlier
                    ps.keys.append(old)
                else:
                    ps.keys.append(KeyState(k, p.id, self.settings, ps.key_pool))
            self.providers[p.id] = ps
            self._cursor[p.id] = carry_over._cursor.get(p.id, 0) if carry_over is not None else 0

    def states(self) -> dict[str, KeyState]:
        return {s.key.id: s for ps in self.providers.values() for s in ps.keys}

    def strategy_of(self, provider_id: str) -> str:
        return self._strategies.get(provider_id, self._default_strategy)

    # -- selection ----------------------------------------------------------------------------

    def pick(
        self,
        provider_ids: Sequence[str],
        est: Estimate,
        exclude: set[str] | frozenset[str] = frozenset(),
        strategy: str | None = None,
        balance: bool = False,
        panic: bool = True,
        affinity: str | None = None,
    ) -> Pick | float:
        """Pick and reserve a key among the providers, in order (first with an eligible key), or
        by score across all of them when ``balance``. Returns the seconds until one could be
        eligible (``inf`` if none ever will without an operator) when none is eligible now.

        Ejected keys and providers are passed over while another can serve; when none can, a
        second pass takes them too (unless ``panic`` is False). ``affinity`` names the request's
        conversation: its key, when it may serve, is kept (:mod:`truckllm.routing.affinity`)."""
        if affinity is not None and self.affinity is not None:
            held = self.affinity.pick(self, affinity, provider_ids, est, exclude, balance)
            if held is not None:
                return held
        now = self.clock()
        self._panic = False
        found, wait = self._scan(provider_ids, est, exclude, strategy, balance, now, False)
        if not found and self._panic and panic:
            found, wait = self._scan(provider_ids, est, exclude, strategy, balance, now, True)
        if not found:
            return wait
        state, ps = found[0]
        if len(found) == 2:
            prior = self._prior_latency([s for s, _ in found])
            cheapest = (
                0.0
                if all(s.free for s, _ in found)
                else min(request_cost(s, est) for s, _ in found)
            )
            state, ps = self._soft_min(
                found[0],
                found[1],
                adaptive_score(found[0][0], now, est, prior, cheapest),
                adaptive_score(found[1][0], now, est, prior, cheapest),
            )
        tokens = float(est.total)  # a float, as the windows count: no int arithmetic on them
        state.reserve(now, tokens)
        if ps.outlier.ejected_until:
            ps.outlier.on_pick(now)
        if affinity is not None and self.affinity is not None:
            self.affinity.remember(affinity, state.key.id)
        return Pick(self, state, ps, now, tokens)

    def _scan(
        self,
        provider_ids: Sequence[str],
        est: Estimate,
        exclude: set[str] | frozenset[str],
        strategy: str | None,
        balance: bool,
        now: float,
        panic: bool,
    ) -> tuple[list[tuple[KeyState, ProviderState]], float]:
        wait = math.inf
        found: list[tuple[KeyState, ProviderState]] = []
        for pid in provider_ids:
            ps = self.providers.get(pid)
            if ps is None:
                continue
            o = ps.outlier
            if o.ejected_until and not panic and not o.admits(now):
                self._panic = True
                continue
            state, w = self._choose(ps, strategy or self.strategy_of(pid), est, exclude, now, panic)
            if state is None:
                wait = min(wait, w)
                continue
            found.append((state, ps))
            if not balance or len(found) == 2:
                break
        return found, wait

    def healthy(self, provider_id: str) -> bool:
        """Whether a provider is in good health: breaker closed, not ejected, and its success
        rate (once measured) at or above ``routing.outlier.min_success_rate``."""
        ps = self.providers.get(provider_id)
        if ps is None or ps.breaker.open_until or ps.outlier.ejected_until:
            return False
        st = self.settings.outlier
        ok, total = ps.outlier.window.counts(self.clock())
        return total < st.min_requests or ok >= st.min_success_rate * total

    def _choose(
        self,
        ps: ProviderState,
        strategy: str,
        est: Estimate,
        exclude: set[str] | frozenset[str],
        now: float,
        panic: bool = False,
    ) -> tuple[KeyState | None, float]:
        ready = ps.breaker.ready_at(now)
        if ready > now:
            return None, ready - now
        keys = ps.keys
        n = len(keys)
        tokens = float(est.total)
        if strategy == "round_robin":
            start = self._cursor[ps.id]
            wait = math.inf
            for i in range(n):
                s = keys[(start + i) % n]
                if s.key.id in exclude or (
                    s.outlier.ejected_until and self._ejected(s, now, panic)
                ):
                    continue
                at = s.ready_at(now, tokens)
                if at <= now:
                    self._cursor[ps.id] = (start + i + 1) % n
                    return s, 0.0
                wait = min(wait, at - now)
            return None, wait
        if strategy == "adaptive" and n > 2:
            sampled: list[KeyState] = []
            for _ in range(_SAMPLE_DRAWS):
                s = keys[self._rng.randrange(n)]
                if s.key.id in exclude or (sampled and s is sampled[0]):
                    continue
                if s.outlier.ejected_until and self._ejected(s, now, panic):
                    continue
                if s.ready_at(now, tokens) <= now:
                    sampled.append(s)
                    if len(sampled) == 2:
                        return self._better(sampled, now, est), 0.0
        eligible: list[KeyState] = []
        wait = math.inf
        for s in keys:
            if s.key.id in exclude or (s.outlier.ejected_until and self._ejected(s, now, panic)):
                continue
            at = s.ready_at(now, tokens)
            if at <= now:
                eligible.append(s)
            else:
                wait = min(wait, at - now)
        if not eligible:
            return None, wait
        if strategy == "adaptive":
            if len(eligible) > 2:
                eligible = self._rng.sample(eligible, 2)
            return self._better(eligible, now, est), 0.0
        start = self._cursor[ps.id]
        self._cursor[ps.id] = start + 1
        return choose_exact(strategy, eligible, est, start), 0.0

    def _ejected(self, s: KeyState, now: float, panic: bool) -> bool:
        """Whether an ejected (or probing) key is passed over by this scan."""
        if panic or s.outlier.admits(now):
            return False
        self._panic = True
        return True

    def _better(self, candidates: list[KeyState], now: float, est: Estimate) -> KeyState:
        if len(candidates) == 1:
            return candidates[0]
        prior = self._prior_latency(candidates)
        a, b = candidates[0], candidates[1]
        # Free keys, or keys at one price: price plays no part (the ratio would be 1 for both).
        if (a.free and b.free) or a.price == b.price:
            return self._soft_min(
                a,
                b,
                adaptive_score(a, now, est, prior, 0.0),
                adaptive_score(b, now, est, prior, 0.0),
            )
        cost_a, cost_b = request_cost(a, est), request_cost(b, est)
        cheapest = min(cost_a, cost_b)
        return self._soft_min(
            a,
            b,
            adaptive_score(a, now, est, prior, cheapest, cost_a),
            adaptive_score(b, now, est, prior, cheapest, cost_b),
        )

    def _soft_min(self, a: T, b: T, score_a: float, score_b: float) -> T:
        """``a`` with probability ``score_b**2 / (score_a**2 + score_b**2)``: a key twice as good
        wins 80% of the time, equal keys share evenly, and a worse key still gets a trickle that
        keeps its figures fresh."""
        wa, wb = score_b * score_b, score_a * score_a
        total = wa + wb
        if total <= 0 or math.isinf(total):
            return a if score_a <= score_b else b
        return a if self._rng.random() * total < wa else b

    @staticmethod
    def _prior_latency(candidates: list[KeyState]) -> float:
        known = [s.latency_s for s in candidates if s.latency_s is not None]
        return min(known) if known else DEFAULT_LATENCY_S

    # -- learning -----------------------------------------------------------------------------

    def _report(self, pick: Pick, outcome: Outcome) -> None:
        now = self.clock()
        s = pick.state
        kind = outcome.kind
        s.in_flight -= 1
        s.outcomes[kind] = s.outcomes.get(kind, 0) + 1
        if kind is OutcomeKind.NOT_SENT:
            s.release(now, pick.reserved)
            pick.provider.breaker.release()
            pick.provider.outlier.release()
            return
        if outcome.usage is not None:
            actual = float(outcome.usage.prompt_tokens + outcome.usage.completion_tokens)
        elif kind in (OutcomeKind.SUCCESS, OutcomeKind.STREAM_BROKEN, OutcomeKind.CANCELLED):
            actual = pick.reserved  # the upstream may have spent them; keep the estimate
        else:
            actual = 0.0
        s.reconcile_tokens(now, pick.reserved, actual)
        if outcome.quota is not None and not outcome.quota.empty:
            s.observe_quota(now, outcome.quota)
        latency = outcome.ttft_s if outcome.ttft_s is not None else outcome.latency_s
        if kind is OutcomeKind.SUCCESS or kind is OutcomeKind.CLIENT_ERROR:
            s.consecutive_429 = 0
            s.out_of_service = None
            for b in (s.breaker, pick.provider.breaker):
                if b.failures or b.open_until or b.probing:  # else closed already: nothing to reset
                    b.success()
            s.learn(latency, True if kind is OutcomeKind.SUCCESS else None)
            self._health(pick, now, True)
            return
        if kind is OutcomeKind.RATE_LIMITED:
            s.consecutive_429 += 1
            s.cool(now, self._cooldown(s, outcome))
        elif kind is OutcomeKind.AUTH_ERROR or kind is OutcomeKind.QUOTA_EXHAUSTED:
            what = "credentials refused" if kind is OutcomeKind.AUTH_ERROR else "quota exhausted"
            s.out_of_service = f"{what} (HTTP {outcome.status})"
            s.probe_at = now + self.settings.out_of_service_probe_s
        elif kind is not OutcomeKind.CANCELLED:  # server error, timeout, connection, broken
            s.learn(None, False)
            s.breaker.failure(now)
            pick.provider.breaker.failure(now)
            self._health(pick, now, False)
            return
        # throttled, refused or cancelled: no verdict on the upstream's health
        s.breaker.release()
        pick.provider.breaker.release()
        s.outlier.release()
        pick.provider.outlier.release()

    def _health(self, pick: Pick, now: float, success: bool) -> None:
        """Tell the key's and the provider's outlier detection (O(1))."""
        if self._outliers:
            pick.state.outlier.report(now, success)
            pick.provider.outlier.report(now, success)

    def _cooldown(self, s: KeyState, outcome: Outcome) -> float:
        """How long a throttled key rests: what the provider said, else exponential backoff."""
        if outcome.retry_after is not None:
            return min(outcome.retry_after, 3600.0)
        q = outcome.quota
        if q is not None:
            if q.remaining_requests == 0 and q.reset_requests_s is not None:
                return q.reset_requests_s
            if q.remaining_tokens is not None and q.reset_tokens_s is not None:
                return q.reset_tokens_s
        st = self.settings
        backoff: float = st.cooldown_base_s * 2.0 ** (s.consecutive_429 - 1)
        return min(backoff, st.cooldown_max_s)
