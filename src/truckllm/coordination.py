"""Coordination across processes through the state store: the usage ledger's flush, shared rate
limits (leases) on every key and client, and cooldowns one process learned, applied in all.

A background task sends the ledger's counts to the store every
``storage.runtime.flush_interval`` and brings back what other processes did (spend, cooldowns).
When a shared store is unreachable the gateway serves on local state (each process keeps its
share of every shared key and client limit: the limit over the processes last seen), says so
through :meth:`Coordinator.health`, and catches up when the store is back. Nothing here is on a request's path but the limiters' O(1) checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from truckllm.accounting import Accounting
from truckllm.config import Config, Limits
from truckllm.gateway import Runtime
from truckllm.plugins import Registry
from truckllm.routing import KeyState
from truckllm.stores import Store, StoreFactory, store_registry
from truckllm.stores.base import StoreError, UsageQuery, UsageResult
from truckllm.stores.limits import SharedLimiter, WindowSpec

log = logging.getLogger("truckllm.coordination")
T = TypeVar("T")


def key_specs(limits: Limits) -> list[WindowSpec]:
    return [
        WindowSpec(name, span, limit, name.startswith("t"))
        for name, span, limit in (
            ("rpm", 60.0, limits.rpm),
            ("tpm", 60.0, limits.tpm),
            ("rpd", 86400.0, limits.rpd),
            ("tpd", 86400.0, limits.tpd),
        )
        if limit is not None
    ]


class Coordinator:
    """Owns the state store for one app. ``accounting`` supplies the ledger to flush and the
    client policies that get shared limits; the router's key states get theirs in
    :meth:`attach`."""

    def __init__(
        self, config: Config, accounting: Accounting, stores: Registry[StoreFactory] | None = None
    ) -> None:
        self.settings = config.storage.runtime  # read once: changing the store needs a restart
        self.stores = stores if stores is not None else store_registry()
        self.accounting = accounting
        self.ledger = accounting.ledger
        self.store: Store | None = None
        self.limiters: dict[str, SharedLimiter] = {}  # scope -> limiter
        self.degraded = False
        self._rt: Runtime | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error_log = 0.0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self, rt: Runtime) -> None:
        rc = self.settings
        if self.store is None:
            self.store = self.stores.get(rc.type)(rc)
        self.attach(rt)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(force=True), rc.timeout * 2)  # spend, cooldowns
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="truckllm-coordination-flush"
            )

    def attach(self, rt: Runtime) -> None:
        """Adopt a (new) runtime: shared limits on every key and client when the store is
        shared. Limiters carry over by scope. Call after the accounting has attached."""
        self._rt = rt
        store = self.store
        if store is None or not store.shared:
            return
        for state in rt.router.states().values():
            limiter = self._limiter(f"key:{state.key.id}", key_specs(state.key.limits))
            state.shared = limiter
            if self.degraded:
                self._fair_share(state)
        for policy in self.accounting.policies.values():
            policy.shared = (
                self._limiter(f"client:{policy.id}", policy.specs) if policy.specs else None
            )
            if self.degraded:
                policy.share_limits(self._peers())

    def _limiter(self, scope: str, specs: list[WindowSpec]) -> SharedLimiter:
        assert self.store is not None
        limiter = self.limiters.get(scope)
        if limiter is None:
            rc = self.settings
            limiter = self.limiters[scope] = SharedLimiter(
                scope,
                specs,
                self.store,
                rc.lease_ttl,
                rc.lease_slack,
                on_cool=self._on_cool,
                on_failure=self._on_failure,
            )
            limiter.degraded = self.degraded
        else:
            limiter.set_specs(specs)
        return limiter

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for limiter in self.limiters.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(limiter.close(), self.settings.timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), self.settings.timeout * 2)
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()

    def health(self) -> tuple[bool, str | None]:
        if self.store is None:
            return True, None
        ok, reason = self.store.health()
        if not ok:
            return (
                False,
                f"{reason}; serving on local state ({self.ledger.backlog} usage rows unsent)",
            )
        return True, None

    # -- the store's key-value table ----------------------------------------------------------

    def _kv_store(self) -> Store:
        store = self.store
        if store is None:
            raise StoreError("the state store has not started")
        if not hasattr(store, "kv_get"):
            raise StoreError(f"the {self.settings.type} store keeps no key-value state")
        return store

    async def kv_get(self, key: str) -> bytes | None:
        """Raises :class:`StoreError` when the store cannot answer in time."""
        return await self._bounded(self._kv_store().kv_get(key))

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._bounded(self._kv_store().kv_set(key, value, ttl_s))

    async def kv_delete(self, key: str) -> bool:
        return bool(await self._bounded(self._kv_store().kv_delete(key)))

    async def _bounded(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.settings.timeout * 2)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"state store: {type(exc).__name__}: {exc}"[:300]) from exc

    async def query(self, q: UsageQuery) -> UsageResult:
        """The ledger's aggregates, this process's latest requests included."""
        store = self.store
        if store is None:
            raise RuntimeError("the state store has not started")
        await self.flush()
        return await store.query(q)

    # -- background ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("ledger flush failed")

    async def flush(self, force: bool = False) -> None:
        """Send the pending usage (or the unconfirmed batch again) and adopt the store's view.
        A store of this process alone is only called when there is something to send."""
        store = self.store
        if store is None:
            return
        ledger = self.ledger
        idle = ledger.inflight is None and not ledger.pending and not ledger.cooldowns
        if idle and not store.shared and not force:
            return
        batch = ledger.next_batch(time.time())
        try:
            view = await asyncio.wait_for(store.sync(batch), self.settings.timeout * 2)
        except Exception as exc:
            self._on_failure(exc)
            return
        ledger.confirmed(view)
        self._apply_cooldowns(view.cooldowns)
        if self.degraded:
            self._recover()
        now = time.monotonic()
        for limiter in self.limiters.values():
            limiter.sweep(now)

    def _on_cool(self, scope: str, until: float) -> None:
        key_id = scope.removeprefix("key:")
        self.ledger.cooldowns[key_id] = time.time() + (until - time.monotonic())

    def _apply_cooldowns(self, cooldowns: dict[str, float]) -> None:
        rt = self._rt
        if rt is None or not cooldowns:
            return
        wall, now = time.time(), time.monotonic()
        states = rt.router.states()
        for key_id, until_wall in cooldowns.items():
            state = states.get(key_id)
            seconds = until_wall - wall
            if state is None or seconds <= 0 or now + seconds <= state.cooling_until + 0.05:
                continue
            limiter = self.limiters.get(f"key:{key_id}")
            if limiter is not None:
                limiter.applying_remote = True
            try:
                state.cool(now, seconds)
            finally:
                if limiter is not None:
                    limiter.applying_remote = False

    def _on_failure(self, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 30:
            self._last_error_log = now
            log.warning(
                "state store unreachable: serving on local state",
                extra={"store": self.settings.type, "error": str(exc) if exc else None},
            )
        if self.degraded or self.store is None or not self.store.shared:
            return
        self.degraded = True
        for limiter in self.limiters.values():
            limiter.degraded = True
        if self._rt is not None:
            for state in self._rt.router.states().values():
                self._fair_share(state)
        for policy in self.accounting.policies.values():
            policy.share_limits(self._peers())

    def _peers(self) -> int:
        return max(self.ledger.view.peers, 1)

    def _fair_share(self, state: KeyState) -> None:
        """While the store is away, a process keeps its share of each shared key limit."""
        peers = self._peers()
        for window in (state.rpm, state.tpm, state.rpd, state.tpd):
            if window is not None:
                window.limit = max(window.limit // peers, 1)

    def _recover(self) -> None:
        log.info("state store reachable again", extra={"store": self.settings.type})
        self.degraded = False
        if self._rt is not None:
            for state in self._rt.router.states().values():
                state.apply_limits(state.key.limits)
        for policy in self.accounting.policies.values():
            policy.share_limits(1)
        for limiter in self.limiters.values():
            limiter.recover()
