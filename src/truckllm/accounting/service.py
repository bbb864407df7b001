"""Accounting for one app: the store, the usage ledger, client rules and shared limits.

On the request path it does three O(1) things and no I/O: ``admit`` checks the client's rules,
``cost_nanos`` prices a reply, ``record`` counts a finished request. A background task sends the
counts to the store every ``storage.runtime.flush_interval`` and brings back what other processes
did (spend, cooldowns). When the store is unreachable the gateway serves on local state, says so
through :meth:`health`, and catches up when the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from truckllm.accounting.ledger import Ledger
from truckllm.accounting.money import Rates, cost_nanos, rates_of
from truckllm.accounting.policy import (
    ClientPolicy,
    build_policies,
    model_not_allowed,
    rate_limited,
)
from truckllm.config import Config, Limits, Pricing
from truckllm.plugins import Registry
from truckllm.providers.base import Usage
from truckllm.routing import estimate
from truckllm.stores import Store, StoreFactory, store_registry
from truckllm.stores.limits import SharedLimiter, WindowSpec
from truckllm.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from truckllm.gateway import Runtime, Served
    from truckllm.routing import KeyState

log = logging.getLogger("truckllm.accounting")

_LEASE_WAIT_S = 0.25  # how long admission waits for a client limit's lease on its way


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


def settle_usage(served: Served, complete: bool) -> Usage | None:
    """The usage to bill for a committed reply. A stream that ended before its final usage (cut
    short, or from an upstream that sends none) is estimated and marked so: the prompt from the
    upstream's own count when it gave one (Anthropic and Gemini do early), else from the request;
    the completion as one token per event relayed, or the upstream's partial count if higher."""
    reply = served.reply
    usage = reply.usage
    if reply.events is None or (usage is not None and complete):
        return usage
    prompt_est = served.estimate.prompt_tokens if served.estimate is not None else 0
    return Usage(
        usage.prompt_tokens if usage is not None and usage.prompt_tokens else prompt_est,
        max(usage.completion_tokens if usage is not None else 0, max(served.events_out - 1, 0)),
        usage.cached_tokens if usage is not None else 0,
        usage.reasoning_tokens if usage is not None else 0,
        estimated=True,
    )


class Accounting:
    def __init__(self, config: Config, stores: Registry[StoreFactory] | None = None) -> None:
        self.config = config
        self.settings = config.storage.runtime  # read once: changing the store needs a restart
        self.stores = stores if stores is not None else store_registry()
        self.ledger = Ledger(os.urandom(8).hex())
        self.store: Store | None = None
        self.policies: dict[str, ClientPolicy] = {}
        self.limiters: dict[str, SharedLimiter] = {}  # scope -> limiter
        self.degraded = False
        self._rates: dict[Pricing, Rates] = {}
        self._rt: Runtime | None = None
        self._task: asyncio.Task[None] | None = None
        self._default_output = config.routing.default_max_output_tokens
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
                self._run(), name="truckllm-accounting-flush"
            )

    def attach(self, rt: Runtime) -> None:
        """Adopt a (new) runtime: client rules, and shared limits on every key when the store is
        shared. State carries over by id."""
        self._rt = rt
        self.config = rt.config
        self._default_output = rt.default_output_tokens
        self.policies = build_policies(rt.config, self.policies)
        store = self.store
        if store is None or not store.shared:
            return
        for state in rt.router.states().values():
            limiter = self._limiter(f"key:{state.key.id}", key_specs(state.key.limits))
            state.shared = limiter
            if self.degraded:
                self._fair_share(state)
        for policy in self.policies.values():
            policy.shared = (
                self._limiter(f"client:{policy.id}", policy.specs) if policy.specs else None
            )

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
            return False, f"{reason}; serving on local state ({self.ledger.backlog} usage rows unsent)"
        return True, None

    # -- the request path ---------------------------------------------------------------------

    async def admit(self, rec: RequestRecord, body: dict[str, Any], raw_len: int) -> None:
        """Refuse the request (an :class:`~truckllm.errors.APIError`) when the client may not
        make it: model not allowed (403), budget spent (429 ``insufficient_quota``), over its
        rpm/tpm (429 ``rate_limit_exceeded`` with ``Retry-After``)."""
        policy = self.policies.get(rec.client_id or "")
        if policy is None:
            return
        model = rec.model or ""
        if not policy.allows(model):
            raise model_not_allowed(model)
        if policy.has_budget:
            wall = time.time()
            policy.check_budget(self.ledger.spent(policy.id, wall), wall)
        if policy.rpm is None and policy.tpm is None:
            return
        tokens = 0
        if policy.tpm is not None:
            endpoint = "chat" if rec.endpoint == "chat" else "embeddings"
            tokens = estimate(endpoint, body, raw_len, self._default_output).total
        now = time.monotonic()
        wait = policy.wait_s(now, tokens)
        shared = policy.shared
        if 0 < wait <= 0.05 and shared is not None:  # a lease is on its way
            await shared.settled(_LEASE_WAIT_S)
            now = time.monotonic()
            wait = policy.wait_s(now, tokens)
        if wait > 0:
            rpm_wait = policy.rpm.wait_for(now, 1.0) if policy.rpm is not None else 0.0
            raise rate_limited(wait, "requests per minute" if rpm_wait else "tokens per minute")
        policy.reserve(now, tokens)
        rec.client_tokens = tokens

    def cost_nanos(self, pricing: Pricing, usage: Usage) -> int:
        rates = self._rates.get(pricing)
        if rates is None:
            rates = self._rates[pricing] = rates_of(pricing)
        return cost_nanos(rates, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)

    def record(self, rec: RequestRecord) -> None:
        """The record consumer: count the request, and correct the client's tpm reservation."""
        self.ledger.add(rec)
        if rec.client_tokens:
            policy = self.policies.get(rec.client_id or "")
            if policy is not None:
                u = rec.usage
                actual = u.prompt_tokens + u.completion_tokens if u is not None else rec.client_tokens
                policy.reconcile(time.monotonic(), actual - rec.client_tokens)

    # -- background ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("accounting flush failed")

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

    def _fair_share(self, state: KeyState) -> None:
        """While the store is away, a process keeps its share of each shared key limit."""
        peers = max(self.ledger.view.peers, 1)
        for window in (state.rpm, state.tpm, state.rpd, state.tpd):
            if window is not None:
                window.limit = max(window.limit // peers, 1)

    def _recover(self) -> None:
        log.info("state store reachable again", extra={"store": self.settings.type})
        self.degraded = False
        if self._rt is not None:
            for state in self._rt.router.states().values():
                state.apply_limits(state.key.limits)
        for limiter in self.limiters.values():
            limiter.recover()
