"""Sliding-window counters for per-key limits (requests and tokens per minute and per day).

A window is a ring of buckets. It counts the bucket that straddles the window's start in full, so
it never under-counts: a limit of 60 per minute is never exceeded over any 60-second span. The
total is kept running, so reads are O(1) amortised.
"""

from __future__ import annotations

import math


class SlidingWindow:
    __slots__ = (
        "_bucket_s",
        "_buckets",
        "_head",
        "_head_start",
        "_limit",
        "cap",
        "head_end",
        "span_s",
        "total",
    )

    def __init__(self, limit: int, span_s: float, buckets: int = 60) -> None:
        self._limit = limit
        self.cap = float(limit)
        self.span_s = span_s
        self._bucket_s = span_s / buckets
        self._buckets = [0.0] * (buckets + 1)  # + the bucket straddling the window's start
        self._head = 0  # index of the bucket that holds "now"
        self._head_start = 0.0  # start time of the head bucket
        # when the head bucket ends: until then ``total`` is current without a call to move on
        self.head_end = self._bucket_s
        self.total = 0.0

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._limit = limit
        # the limit as a float, kept with it: the counts are floats, and a float compared with
        # (or taken from) a float is the interpreter's fast path, with an int it is not
        self.cap = float(limit)

    def _advance(self, now: float) -> None:
        elapsed = now - self._head_start
        if elapsed < self._bucket_s:  # still in the head bucket: the common case
            return
        steps = int(elapsed // self._bucket_s)
        n = len(self._buckets)
        if steps >= n:
            self._buckets = [0.0] * n
            self.total = 0.0
            self._head = 0
        else:
            for _ in range(steps):
                self._head = (self._head + 1) % n
                self.total -= self._buckets[self._head]
                self._buckets[self._head] = 0.0
        self._head_start += steps * self._bucket_s
        self.head_end = self._head_start + self._bucket_s
        if self.total < 1e-9:
            self.total = 0.0

    def add(self, now: float, amount: float) -> None:
        """Count ``amount`` at ``now`` (negative to give back part of a reservation)."""
        if now >= self.head_end:  # else still in the head bucket
            self._advance(now)
        self._buckets[self._head] += amount
        total = self.total + amount
        self.total = total if total > 0.0 else 0.0

    def take(self, now: float, amount: float) -> bool:
        """Count ``amount`` (>= 0) at ``now`` if it fits (``wait_for`` would say 0); False,
        counting nothing, if it does not."""
        if now >= self.head_end:
            self._advance(now)
        total = self.total + amount
        if total > self.cap:
            return False
        self._buckets[self._head] += amount
        self.total = total
        return True

    def used(self, now: float) -> float:
        if now >= self.head_end:
            self._advance(now)
        return self.total

    def room(self, now: float) -> float:
        return self._limit - self.used(now)

    def wait_for(self, now: float, amount: float) -> float:
        """Seconds until ``amount`` more fits (0 if it fits now; ``inf`` if it never can)."""
        if now >= self.head_end:
            self._advance(now)
        if amount > self._limit:
            return math.inf
        excess = self.total + amount - self._limit
        if excess <= 0:
            return 0.0
        n = len(self._buckets)
        freed = 0.0
        for age in range(n - 1, -1, -1):  # oldest bucket first
            freed += self._buckets[(self._head - age) % n]
            if freed >= excess:
                expiry = self._head_start - age * self._bucket_s + self.span_s + self._bucket_s
                return max(expiry - now, 0.0)
        return self.span_s
