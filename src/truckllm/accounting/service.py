"""Accounting for one app: the usage ledger, prices, and client rules.

On the request path it does three O(1) things and no I/O: ``admit`` checks the client's rules,
``cost_nanos`` prices a reply, ``record`` counts a finished request. Sending the ledger to the
state store, and sharing limits across processes, is :mod:`truckllm.coordination`'s job.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from truckllm.accounting.ledger import Ledger, nanos_of
from truckllm.accounting.money import Rates, cost_nanos, rates_of
from truckllm.accounting.policy import (
    ClientPolicy,
    build_policies,
    model_not_allowed,
    rate_limited,
)
from truckllm.config import Config, Pricing
from truckllm.providers.base import Usage
from truckllm.routing import Estimate, estimate
from truckllm.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from truckllm.gateway import Runtime, Served

_LEASE_WAIT_S = 0.25  # how long admission waits for a client limit's lease on its way


def settle_usage(served: Served, complete: bool) -> Usage | None:
    """The usage to bill for a committed reply. A stream that ended before its final usage (cut
    short, or from an upstream that sends none) is estimated and marked so: the prompt from the
    upstream's own count when it gave one (Anthropic and Gemini do early), else from the request;
    the completion as one token per event relayed, or the upstream's partial count if higher."""
    reply = served.reply
    usage = reply.usage
    if reply.events is None or (usage is not None and complete):
        return usage
    if not reply.content_type.startswith("text/event-stream"):
        return usage  # audio: its bytes are not events, nor tokens
    prompt_est = served.estimate.prompt_tokens if served.estimate is not None else 0
    return Usage(
        usage.prompt_tokens if usage is not None and usage.prompt_tokens else prompt_est,
        max(usage.completion_tokens if usage is not None else 0, max(served.events_out - 1, 0)),
        usage.cached_tokens if usage is not None else 0,
        usage.reasoning_tokens if usage is not None else 0,
        estimated=True,
    )


# Endpoints (record labels) whose requests are estimated as themselves, not as chat.
_OWN_ESTIMATE = frozenset(
    {"embeddings", "completions", "audio.transcriptions", "audio.translations"}
)


class Accounting:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ledger = Ledger(os.urandom(8).hex())
        self.policies: dict[str, ClientPolicy] = {}
        self._rates: dict[Pricing, Rates] = {}
        # by the Pricing object's id, holding the object (so the id stays its own): a frozen
        # dataclass hashes all its fields on every lookup by value; emptied on each reload
        self._rates_by_id: dict[int, tuple[Pricing, Rates]] = {}
        self._default_output = config.routing.default_max_output_tokens

    def attach(self, rt: Runtime) -> None:
        """Adopt a (new) runtime's client rules; their state carries over by client id."""
        self.config = rt.config
        self._default_output = rt.default_output_tokens
        self.policies = build_policies(rt.config, self.policies)
        self._rates_by_id = {}

    # -- the request path ---------------------------------------------------------------------

    async def admit(
        self,
        rec: RequestRecord,
        body: dict[str, Any],
        raw_len: int,
        endpoint: str = "",
        default_output: int = -1,
    ) -> Estimate | None:
        """Refuse the request (an :class:`~truckllm.errors.APIError`) when the client may not
        make it: model not allowed (403), budget spent (429 ``insufficient_quota``), over its
        rpm/tpm (429 ``rate_limit_exceeded`` with ``Retry-After``). Returns the token estimate
        made for a tpm limit when it is the one the gateway would make for ``endpoint`` with
        ``default_output`` (so the gateway need not make it again), else None."""
        policy = self.policies.get(rec.client_id or "")
        if policy is None:
            return None
        model = rec.model or ""
        if policy.allowed is not None and not policy.allows(model):
            raise model_not_allowed(model)
        if policy.has_budget:
            wall = time.time()
            policy.check_budget(self.ledger.spent(policy.id, wall), wall)
        if policy.rpm is None and policy.tpm is None:
            return None
        tokens = 0
        est = None
        if policy.tpm is not None:
            as_endpoint = rec.endpoint if rec.endpoint in _OWN_ESTIMATE else "chat"
            est = estimate(as_endpoint, body, raw_len, self._default_output)
            tokens = est.total
            if as_endpoint != endpoint or default_output != self._default_output:
                est = None
        now = time.monotonic()
        if policy.take(now, tokens):  # fits every window as counted: reserved
            rec.client_tokens = tokens
            return est
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
        return est

    def cost_nanos(self, pricing: Pricing, usage: Usage) -> int:
        known = self._rates_by_id.get(id(pricing))
        if known is not None and known[0] is pricing:
            rates = known[1]
        else:
            found = self._rates.get(pricing)
            rates = self._rates[pricing] = rates_of(pricing) if found is None else found
            if len(self._rates_by_id) >= 4096:  # the configured keys' prices: never this many
                self._rates_by_id = {}
            self._rates_by_id[id(pricing)] = (pricing, rates)
        return cost_nanos(
            rates,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_creation_tokens,
            (usage.images, usage.seconds, usage.characters),
        )

    def record(self, rec: RequestRecord) -> None:
        """The record consumer: count the request, and correct the client's tpm reservation."""
        self.count(rec, int(rec.time) // 60 * 60, nanos_of(rec.cost_usd))

    def count(self, rec: RequestRecord, minute: int, nanos: int) -> None:
        """:meth:`record` with the record's minute and cost in nano-dollars read by the caller."""
        self.ledger.count(rec, minute, nanos)
        if rec.client_tokens:
            policy = self.policies.get(rec.client_id or "")
            if policy is not None:
                u = rec.usage
                actual = (
                    u.prompt_tokens + u.completion_tokens if u is not None else rec.client_tokens
                )
                policy.reconcile(time.monotonic(), actual - rec.client_tokens)
