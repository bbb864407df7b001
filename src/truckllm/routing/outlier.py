"""Outlier ejection, in the manner of Envoy's: a key or provider whose success rate over a sliding
window falls below a threshold, or well below its peers', is taken out of rotation for a while.

A consecutive-failure breaker only opens on failures in a row, which a target failing half its
requests rarely produces; the success rate sees it after ``min_requests``. Ejection is a
preference, not a verdict: a pick skips ejected keys and providers while any other target can
serve, and falls back on them only when nothing else could (Envoy's panic mode). At most
``max_ejected_share`` of a pool (a provider's keys, or the router's providers) is out at once.

An ejection lasts ``base_ejection_s`` times the number of recent ejections (capped at
``max_ejection_s``; every ``window_s`` back in service forgives one). When it ends, the target is
on probation: one request at a time may probe it, ``probe_successes`` successes in a row bring it
back with a clean record, and a failed probe ejects it again, for longer.

Everything is O(1) per outcome: ten buckets of counts per target, the pool's sums kept beside
them. All times are the router's clock (monotonic seconds); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Tuning of success-rate ejection. Built from ``routing.outlier`` in the config."""

    enabled: bool = True
    window_s: float = 30.0  # the sliding window the success rate is measured over
    min_requests: int = 10  # outcomes in the window before a rate counts
    min_success_rate: float = 0.7  # eject below this ...
    peer_margin: float = 0.2  # ... or this far below the rest of the pool's rate
    base_ejection_s: float = 10.0  # times the number of recent ejections ...
    max_ejection_s: float = 300.0  # ... capped
    max_ejected_share: float = 0.5  # of a pool at once (at least one member of a pool of two)
    probe_successes: int = 3  # probes in a row that bring an ejected target back


class SuccessWindow:
    """Successes and attempts over the last ``span_s`` seconds, in ten buckets aligned on
    multiples of the bucket length, so that windows of the same span subtract exactly."""

    __slots__ = ("_bucket_s", "_head", "_head_start", "_ok", "_total", "ok", "total")

    def __init__(self, span_s: float) -> None:
        self._bucket_s = span_s / _BUCKETS
        self._ok = [0] * _BUCKETS
        self._total = [0] * _BUCKETS
        self._head = 0
        self._head_start = 0.0
        self.ok = 0
        self.total = 0

    def _advance(self, now: float) -> None:
        elapsed = now - self._head_start
        if elapsed < self._bucket_s:  # still in the head bucket: the common case
            return
        steps = int(elapsed // self._bucket_s)
        if steps >= _BUCKETS:
            self.clear()
        else:
            ok, total = self._ok, self._total
            for _ in range(steps):
                h = self._head = (self._head + 1) % _BUCKETS
                self.ok -= ok[h]
                self.total -= total[h]
                ok[h] = total[h] = 0
        self._head_start = (now // self._bucket_s) * self._bucket_s

    def clear(self) -> None:
        self._ok = [0] * _BUCKETS
        self._total = [0] * _BUCKETS
        self.ok = self.total = 0

    def record(self, now: float, success: bool) -> None:
        if now - self._head_start >= self._bucket_s:
            self._advance(now)
        h = self._head
        self._total[h] += 1
        self.total += 1
        if success:
            self._ok[h] += 1
            self.ok += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, attempts) in the window ending at ``now``."""
        self._advance(now)
        return self.ok, self.total


class OutlierPool:
    """The members among which ejections are capped and peers compared: one provider's keys, or
    a router's providers."""

    __slots__ = ("ejected", "members", "settings", "window")

    def __init__(self, settings: OutlierSettings) -> None:
        self.settings = settings
        self.members = 0
        self.window = SuccessWindow(settings.window_s)
        self.ejected: list[Outlier] = []  # ejected or on probation

    def room(self) -> bool:
        """Whether one more member may be ejected now."""
        n = self.members
        if n < 2:
            return False
        allowed = max(int(n * self.settings.max_ejected_share), 1)
        return len(self.ejected) < allowed


class Outlier:
    """One key's or provider's success rate and ejection. Mutated by the router only."""

    __slots__ = (
        "ejected_until",
        "ejections",
        "pool",
        "probe_ok",
        "probing",
        "reason",
        "returned_at",
        "window",
    )

    def __init__(self, pool: OutlierPool) -> None:
        self.pool = pool
        pool.members += 1
        self.window = SuccessWindow(pool.settings.window_s)
        self.ejected_until = 0.0  # 0: in service
        self.ejections = 0  # recent ejections: the multiplier of the next one
        self.returned_at = 0.0
        self.probing = False
        self.probe_ok = 0
        self.reason = ""

    def adopt(self, old: Outlier) -> None:
        """Carry state over a reload (the pool is the new one's)."""
        if old.pool.settings.window_s == self.pool.settings.window_s:
            self.window = old.window
        self.ejections, self.returned_at = old.ejections, old.returned_at
        self.ejected_until, self.reason = old.ejected_until, old.reason
        self.probe_ok = old.probe_ok
        if self.ejected_until:
            self.pool.ejected.append(self)

    def admits(self, now: float) -> bool:
        """Whether a pick may choose this target outside panic: in service, or on probation with
        no probe in flight. Callers test ``ejected_until`` first (0 in the common case)."""
        return now >= self.ejected_until and not self.probing

    def on_pick(self, now: float) -> None:
        if self.ejected_until and now >= self.ejected_until:
            self.probing = True

    def release(self) -> None:
        """A pick that ended without a verdict (not sent, cancelled, throttled)."""
        self.probing = False

    def report(self, now: float, success: bool) -> None:
        """Learn from one attempt's verdict on this target's health."""
        if self.ejected_until:
            if not self.probing:
                return  # a pick while ejected (panic): the probe decides, not this
            self.probing = False
            if not success:
                self._eject(now, "probe failed")
            else:
                self.probe_ok += 1
                if self.probe_ok >= self.pool.settings.probe_successes:
                    self._restore(now)
            return
        self.window.record(now, success)
        pool = self.pool
        if pool.members > 1:  # alone in its pool, a target has no peers: nothing reads the sums
            pool.window.record(now, success)
        if not success:
            self._judge(now)

    def _judge(self, now: float) -> None:
        st = self.pool.settings
        ok, total = self.window.counts(now)
        if total < st.min_requests:
            return
        rate = ok / total
        if rate < st.min_success_rate:
            reason = f"success rate {rate:.0%} over {total} requests"
        else:
            pool_ok, pool_total = self.pool.window.counts(now)
            peers = pool_total - total
            if peers < st.min_requests:
                return
            peer_rate = (pool_ok - ok) / peers
            if rate >= peer_rate - st.peer_margin:
                return
            reason = f"success rate {rate:.0%} over {total} requests, peers {peer_rate:.0%}"
        if self.pool.room():
            self.ejections = max(self.ejections - self._forgiven(now), 0)
            self.pool.ejected.append(self)
            self._eject(now, reason)

    def _forgiven(self, now: float) -> int:
        if not self.returned_at:
            return 0
        return int((now - self.returned_at) // self.pool.settings.window_s)

    def _eject(self, now: float, reason: str) -> None:
        st = self.pool.settings
        self.ejections += 1
        self.ejected_until = now + min(st.base_ejection_s * self.ejections, st.max_ejection_s)
        self.probe_ok = 0
        self.reason = reason

    def _restore(self, now: float) -> None:
        self.ejected_until = 0.0
        self.returned_at = now
        self.probe_ok = 0
        self.reason = ""
        self.window.clear()
        if self in self.pool.ejected:
            self.pool.ejected.remove(self)

    def state(self, now: float) -> str:
        if not self.ejected_until:
            return "in_service"
        return "ejected" if now < self.ejected_until else "probation"
