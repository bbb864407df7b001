"""Shared rate limits that hold exactly across processes, with no I/O on the hot path.

A limit shared through a store (``rpm: 60`` on a key that three replicas use) is spent in units
leased from the store: a background fetch asks the store, in one atomic step, for a few units of
each window, and the store grants them only while the window's global count stays within the
limit. The router then spends leased units synchronously at pick time, as it spends local window
room. Units not spent within ``ttl_s`` of the request for them expire and go back to the store.

Why the limit holds: the store counts a unit from its grant until ``span + ttl + slack`` later,
and a unit is spent at most ``ttl`` after its grant (measured from before the request for it was
sent, so the store's clock is never needed here). The request it admits reaches the upstream
within ``slack`` of being spent. Any ``span``-long stretch at the upstream therefore sees only
units granted within one ``span + ttl + slack`` stretch, and the store never grants more than the
limit within one. The price is that a window's capacity is spread over ``span + ttl + slack``:
with the defaults (2 s and 1 s), a saturated ``rpm`` limit serves about 95% of its nominal rate.

When the store cannot be reached the limiter steps aside (``degraded``) and the process falls back
to its own windows, set to its share of the limit (the limit divided by the processes last seen);
what it spends meanwhile is charged to the store when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from truckllm.stores.base import Adjust, Ask, Store

log = logging.getLogger("truckllm.stores")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    name: str  # "rpm", "tpm", "rpd", "tpd"
    span_s: float
    limit: int
    tokens: bool  # counts tokens (else requests)


class _WindowPool:
    """Units of one window in hand: leases ``[bucket, units left, expires]``, oldest first."""

    __slots__ = (
        "avail",
        "charges",
        "chunk",
        "leases",
        "retry_at",
        "returns",
        "spec",
        "taken",
        "unsynced",
        "want",
    )

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.leases: deque[list[float]] = deque()
        self.avail = 0.0
        self.retry_at = 0.0  # the store said the window is full until then
        self.taken = 0.0  # spent since the last fetch: the demand estimate
        self.want = 0.0  # the most a caller found missing since the last fetch
        self.chunk = 1
        self.returns: list[tuple[int, int]] = []  # (bucket, units) expired unspent
        self.charges = 0.0  # spent beyond what was leased (token estimates that fell short)
        self.unsynced = 0.0  # spent while degraded

    def expire(self, now: float) -> None:
        leases = self.leases
        while leases and leases[0][2] <= now:
            bucket, units, _ = leases.popleft()
            self.avail -= units
            whole = int(units)
            if whole > 0:
                self.returns.append((int(bucket), whole))
        if not leases:
            self.avail = 0.0

    def spend(self, amount: float) -> None:
        self.taken += amount
        leases = self.leases
        while amount > 0 and leases:
            lease = leases[0]
            used = min(lease[1], amount)
            lease[1] -= used
            self.avail -= used
            amount -= used
            if lease[1] <= 0:
                leases.popleft()
        if amount > 0:
            self.charges += amount

    def refund(self, amount: float) -> None:
        if self.leases:
            self.leases[-1][1] += amount
            self.avail += amount
        # else: the lease expired; the store counts the units until they age out (safe side)


class SharedLimiter:
    """One scope's shared windows (a key's, or a client's). Spent from the event loop only.

    Implements the router's ``SharedLimit`` hook: ``ready_at`` / ``take`` / ``give`` /
    ``adjust`` with the router's monotonic ``now``; ``cooled`` forwards cooldowns to
    ``on_cool``.
    """

    def __init__(
        self,
        scope: str,
        specs: list[WindowSpec],
        store: Store,
        ttl_s: float = 2.0,
        slack_s: float = 1.0,
        clock: Clock = time.monotonic,
        on_cool: Callable[[str, float], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.scope = scope
        self.store = store
        self.ttl_s = ttl_s
        self.slack_s = slack_s
        self.clock = clock
        self.on_cool = on_cool
        self.on_failure = on_failure
        self.pools = [_WindowPool(s) for s in specs]
        self.degraded = False
        self.applying_remote = False
        self.rtt_s = 0.002
        self.stall_s = 0.05  # a lease slower than this: the store counts as unreachable
        self._task: asyncio.Task[None] | None = None
        self._fetch_started = 0.0

    def set_specs(self, specs: list[WindowSpec]) -> None:
        """New limits after a reload; leases in hand for windows that remain are kept."""
        old = {p.spec.name: p for p in self.pools}
        pools = []
        for s in specs:
            p = old.get(s.name)
            if p is None or p.spec.span_s != s.span_s:
                p = _WindowPool(s)
            else:
                p.spec = s
            pools.append(p)
        self.pools = pools

    # -- the router's hook --------------------------------------------------------------------

    def ready_at(self, now: float, tokens: float) -> float:
        if self.degraded or not self.pools:
            return now
        at = now
        short = False
        for pool in self.pools:
            spec = pool.spec
            need = min(tokens, spec.limit) if spec.tokens else 1.0
            if pool.leases and pool.leases[0][2] <= now:
                pool.expire(now)
            if pool.avail < need:
                short = True
                if need > pool.want:
                    pool.want = need
                if pool.retry_at > at:
                    at = pool.retry_at
        if not short:
            return now
        if at <= now:
            task = self._task
            if task is not None and not task.done() and now - self._fetch_started > self.stall_s:
                self._stalled()  # serve on local limits rather than refuse while it hangs
                return now
            self.fetch_soon()
            return now + self.rtt_s
        return at

    def _stalled(self) -> None:
        log.warning(
            "shared limits: the store is not answering; serving on local limits",
            extra={"scope": self.scope},
        )
        self.degraded = True
        if self.on_failure is not None:
            self.on_failure()

    def take(self, now: float, tokens: float) -> None:
        for pool in self.pools:
            amount = tokens if pool.spec.tokens else 1.0
            if self.degraded:
                pool.unsynced += amount
                continue
            pool.spend(amount)
            if pool.avail < pool.chunk / 2 and pool.retry_at <= now:
                self.fetch_soon()  # top up ahead of need

    def give(self, now: float, tokens: float) -> None:
        for pool in self.pools:
            amount = tokens if pool.spec.tokens else 1.0
            if self.degraded:
                pool.unsynced = max(pool.unsynced - amount, 0.0)
            else:
                pool.taken = max(pool.taken - amount, 0.0)
                pool.refund(amount)

    def adjust(self, now: float, tokens: float) -> None:
        """A request used ``tokens`` more (or, negative, fewer) than it reserved."""
        for pool in self.pools:
            if not pool.spec.tokens:
                continue
            if self.degraded:
                pool.unsynced = max(pool.unsynced + tokens, 0.0)
            elif tokens > 0:
                pool.spend(tokens)
            else:
                pool.refund(-tokens)

    def cooled(self, until: float) -> None:
        if self.on_cool is not None and not self.applying_remote:
            self.on_cool(self.scope, until)

    # -- leasing ------------------------------------------------------------------------------

    def fetch_soon(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
                self._task = asyncio.get_running_loop().create_task(
                    self.fetch(), name=f"truckllm-lease-{self.scope}"
                )
                self._fetch_started = self.clock()

    def _adjusts(self) -> list[Adjust]:
        out: list[Adjust] = []
        for pool in self.pools:
            spec = pool.spec
            for bucket, units in pool.returns:
                out.append(Adjust(spec.name, spec.span_s, -units, bucket))
            pool.returns = []
            charge = math.ceil(pool.charges + pool.unsynced)
            if charge > 0:
                out.append(Adjust(spec.name, spec.span_s, charge))
            pool.charges = pool.unsynced = 0.0
        return out

    async def fetch(self) -> None:
        """One round trip: give back what expired, charge overdrafts, ask for what is short."""
        if self.degraded:
            return
        now = self.clock()
        asks: list[Ask] = []
        asked: list[_WindowPool] = []
        for pool in self.pools:
            pool.expire(now)
            spec = pool.spec
            low = pool.taken > 0 and pool.avail < pool.chunk / 2  # being spent: top up
            need = max(pool.want, 1.0 if low else 0.0)
            if need <= 0 or pool.retry_at > now:
                continue
            cap = max(spec.limit // 10, 1)
            demand = max(pool.taken * 1.5, need, 1.0)
            amount = min(max(math.ceil(demand), math.ceil(need)), max(cap, int(need)))
            amount = min(amount, spec.limit)
            pool.chunk = max(amount, 1)
            asks.append(Ask(spec.name, spec.span_s, spec.limit, amount, self.ttl_s, self.slack_s))
            asked.append(pool)
        adjusts = self._adjusts()
        if not asks and not adjusts:
            return
        try:
            grants = await self.store.lease(self.scope, asks, adjusts)
        except Exception as exc:
            log.warning(
                "shared limits: lease failed; serving on local limits",
                extra={"scope": self.scope, "error": str(exc) or type(exc).__name__},
            )
            for pool in self.pools:  # charge them again once the store is back
                for a in adjusts:
                    if a.window == pool.spec.name and a.amount > 0:
                        pool.unsynced += a.amount
            if not self.degraded:
                self.degraded = True
                if self.on_failure is not None:
                    self.on_failure()
            return
        done = self.clock()
        self.rtt_s = 0.8 * self.rtt_s + 0.2 * min(max(done - now, 0.0005), 0.05)
        for pool, grant in zip(asked, grants, strict=False):
            pool.taken = 0.0
            pool.want = 0.0
            if grant.amount > 0:
                # Spendable until ``ttl`` after the request left: the store granted it later.
                pool.leases.append([float(grant.bucket), float(grant.amount), now + self.ttl_s])
                pool.avail += grant.amount
                pool.retry_at = 0.0
            else:
                pool.retry_at = now + max(grant.retry_s, 0.001)

    def sweep(self, now: float) -> None:
        """Give back expired leases and settle charges, even while no request comes."""
        if self.degraded:
            return
        for pool in self.pools:
            if pool.leases and pool.leases[0][2] <= now:
                pool.expire(now)
        if any(p.returns or p.charges or p.unsynced for p in self.pools):
            self.fetch_soon()

    async def settled(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the lease on its way, if any."""
        task = self._task
        if task is None or task.done():
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout_s)

    def recover(self) -> None:
        """The store is back: lease again, and charge it what was spent meanwhile."""
        if self.degraded:
            self.degraded = False
            self.fetch_soon()

    async def close(self) -> None:
        """Give back every unit in hand."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.degraded:
            return
        for pool in self.pools:
            for bucket, units, _ in pool.leases:
                if int(units) > 0:
                    pool.returns.append((int(bucket), int(units)))
            pool.leases.clear()
            pool.avail = 0.0
        adjusts = self._adjusts()
        if adjusts:
            with contextlib.suppress(Exception):
                await self.store.lease(self.scope, [], adjusts)
