"""Retry as values: an immutable policy that counts attempts, key switches and same-key retries,
and a budget that keeps retries to a share of traffic."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Immutable: ``next()`` returns the policy for the next attempt, or ``None`` when no attempt
    is left. Key switches and same-key retries are counted apart."""

    max_attempts: int = 3
    max_same_key_retries: int = 1
    deadline_s: float = 60.0
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0
    attempts: int = 0
    key_switches: int = 0
    same_key_retries: int = 0

    def next(self, same_key: bool) -> RetryPolicy | None:
        if self.attempts + 1 > self.max_attempts:
            return None
        if same_key:
            if self.same_key_retries >= self.max_same_key_retries:
                return None
            return replace(
                self, attempts=self.attempts + 1, same_key_retries=self.same_key_retries + 1
            )
        switches = self.key_switches + (1 if self.attempts else 0)
        return replace(self, attempts=self.attempts + 1, key_switches=switches)

    def backoff(self, rng: random.Random) -> float:
        """Full-jitter exponential backoff before retry number ``attempts``, capped."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(self.attempts - 1, 0))
        return rng.uniform(0, cap)


class RetryBudget:
    """Retries are at most ``ratio`` of requests plus a ``burst``: a token bucket that requests
    fill and retries drain, so a provider-wide outage does not become a retry storm."""

    __slots__ = ("_burst", "_ratio", "tokens")

    def __init__(self, ratio: float, burst: int) -> None:
        self._ratio = ratio
        self._burst = float(burst)
        self.tokens = float(burst)

    def on_request(self) -> None:
        self.tokens = min(self.tokens + self._ratio, self._burst)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
