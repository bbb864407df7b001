"""Key state and selection. This first router rotates round-robin over a provider's enabled keys;
the balancer replaces the choice, not the seam: ``pick()`` returns the key together with a
``done(outcome)`` callback, and every attempt reports to exactly the key it used, exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from truckllm.config.schema import KeyConfig, ProviderConfig
from truckllm.routing.outcome import Outcome, OutcomeKind

Clock = Callable[[], float]


@dataclass(slots=True)
class KeyState:
    """Runtime state of one key. Owned by the router; survives reloads by key id."""

    key: KeyConfig
    provider_id: str
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_outcome: OutcomeKind | None = None
    outcomes: dict[OutcomeKind, int] = field(default_factory=dict)


class Pick:
    """The key chosen for one attempt. ``done`` is idempotent: only the first report counts."""

    __slots__ = ("_finished", "_router", "started", "state")

    def __init__(self, router: Router, state: KeyState, started: float) -> None:
        self._router = router
        self.state = state
        self.started = started
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
        self._router._report(self.state, outcome)


class Router:
    def __init__(
        self,
        providers: Iterable[ProviderConfig],
        clock: Clock = time.monotonic,
        carry_over: Router | None = None,
    ) -> None:
        self._clock = clock
        self._keys: dict[str, list[KeyState]] = {}
        self._cursor: dict[str, int] = {}
        previous = carry_over.states() if carry_over is not None else {}
        for p in providers:
            states = []
            for k in p.keys:
                old = previous.get(k.id)
                if old is not None and old.provider_id == p.id:
                    old.key = k  # keep counters, adopt the new settings
                    states.append(old)
                else:
                    states.append(KeyState(k, p.id))
            self._keys[p.id] = states
            self._cursor[p.id] = carry_over._cursor.get(p.id, 0) if carry_over is not None else 0

    def states(self) -> dict[str, KeyState]:
        return {s.key.id: s for states in self._keys.values() for s in states}

    def pick(
        self, provider_id: str, exclude: frozenset[str] | set[str] = frozenset()
    ) -> Pick | None:
        """The next enabled key of the provider in rotation, skipping ids in ``exclude``."""
        states = self._keys.get(provider_id)
        if not states:
            return None
        n = len(states)
        start = self._cursor[provider_id]
        for i in range(n):
            state = states[(start + i) % n]
            if state.key.enabled and state.key.id not in exclude:
                self._cursor[provider_id] = (start + i + 1) % n
                state.in_flight += 1
                state.requests += 1
                return Pick(self, state, self._clock())
        return None

    def _report(self, state: KeyState, outcome: Outcome) -> None:
        state.in_flight -= 1
        state.last_outcome = outcome.kind
        state.outcomes[outcome.kind] = state.outcomes.get(outcome.kind, 0) + 1
        if outcome.kind.retryable:
            state.failures += 1
