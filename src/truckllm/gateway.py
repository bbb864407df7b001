"""One client request: model -> route; loop { pick -> send -> outcome } until served.

``Route``/``ModelResolver`` (resolve.py) and ``RetryPolicy``/``RetryBudget`` (retry.py) are
re-exported here for callers that see the gateway as one unit.

The only module that knows both the providers and the routing layer. Failover is possible until
the first byte reaches the client; after that an upstream failure ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from truckllm.config import Config, client_key_digests, provider_timeouts
from truckllm.errors import APIError
from truckllm.http.client import HTTPClient
from truckllm.plugins import Registry
from truckllm.providers import Provider, ProviderContext, ProviderFactory
from truckllm.providers.base import (
    Call,
    Endpoint,
    Reply,
    RequestRejected,
    UpstreamError,
    UpstreamTimeout,
)
from truckllm.resolve import ModelResolver, Route, Target
from truckllm.retry import RetryBudget, RetryPolicy
from truckllm.routing import (
    Estimate,
    Outcome,
    OutcomeKind,
    Pick,
    Router,
    RoutingSettings,
    classify_status,
    estimate,
    parse_quota,
)


class Runtime:
    """Everything one configuration needs to serve. Built whole, then swapped in one reference;
    key state carries over from the previous runtime by key id."""

    def __init__(
        self,
        config: Config,
        registry: Registry[ProviderFactory],
        client: HTTPClient,
        previous: Runtime | None = None,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.providers: dict[str, Provider] = {}
        for p in config.providers:
            ctx = ProviderContext(p, client, provider_timeouts(p, config.server.timeouts))
            self.providers[p.id] = registry.get(p.type)(ctx)
        r = config.routing
        settings = RoutingSettings(
            cooldown_base_s=r.cooldown.base,
            cooldown_max_s=r.cooldown.max,
            breaker_failures=r.breaker.failures,
            provider_breaker_failures=r.breaker.provider_failures,
            breaker_open_s=r.breaker.open_for,
            breaker_open_max_s=r.breaker.max_open_for,
            out_of_service_probe_s=r.out_of_service_probe,
        )
        self.router: Router = router or Router(
            config.providers,
            settings,
            default_strategy=r.strategy,
            strategies={p.id: p.strategy for p in config.providers if p.strategy},
            carry_over=previous.router if previous else None,
        )
        self.resolver = ModelResolver(config)
        self.client_keys: Mapping[bytes, str] = client_key_digests(config)
        rc = config.retry
        self.retry = RetryPolicy(
            rc.max_attempts, rc.max_same_key_retries, rc.deadline, rc.backoff_base, rc.backoff_max
        )
        self.first_attempt = self.retry.next(same_key=False)  # the same for every request
        self.budget: RetryBudget = (
            previous.budget if previous else RetryBudget(rc.budget_ratio, rc.budget_burst)
        )
        self.max_wait_s = r.max_wait
        self.default_output_tokens = r.default_max_output_tokens
        self.rng = random.Random()
        self.created = int(time.time())


@dataclass(slots=True)
class Served:
    """A committed upstream reply: the one the client gets."""

    reply: Reply
    pick: Pick
    target: Target
    attempts: int
    started: float
    first: bytes | None = None
    ttft_s: float | None = None
    upstream_s: float = 0.0  # time spent waiting on upstreams, all attempts so far
    estimate: Estimate | None = None  # what the request was guessed to use (billing fallback)
    events_out: int = 0  # stream events relayed to the client
    outcome: Outcome | None = None  # a success not yet reported to the router: see settle()

    def settle(self) -> None:
        """Report a deferred outcome (once). A whole success is reported after its answer is on
        its way to the client, so learning from it is not on the request's critical path."""
        outcome, self.outcome = self.outcome, None
        if outcome is not None:
            self.pick.done(outcome)


class StreamBroken(Exception):
    """The upstream failed after the first byte went to the client."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


_GRACE_S = 0.1
_KEY_SPECIFIC = frozenset(
    {OutcomeKind.RATE_LIMITED, OutcomeKind.AUTH_ERROR, OutcomeKind.QUOTA_EXHAUSTED}
)
_PASSED_ON = frozenset({OutcomeKind.RATE_LIMITED, OutcomeKind.SERVER_ERROR})


def _outcome_for(exc: UpstreamError) -> OutcomeKind:
    if exc.upstream_status is not None:  # the upstream named its error: learn as from a status
        return classify_status(exc.upstream_status, exc.code)
    return OutcomeKind.TIMEOUT if isinstance(exc, UpstreamTimeout) else OutcomeKind.CONNECTION_ERROR


def _error_outcome(exc: UpstreamError, seconds: float) -> Outcome:
    return Outcome(
        _outcome_for(exc), exc.upstream_status or exc.status, seconds, retry_after=exc.retry_after
    )


def _client_error(exc: UpstreamError) -> APIError:
    return APIError(exc.status, str(exc), code=exc.code, type_=exc.error_type)


def _no_room(wait_s: float) -> APIError:
    if math.isinf(wait_s):
        return APIError(
            503,
            "no upstream key is available for this model",
            code="no_available_key",
            type_="api_error",
        )
    seconds = max(1, math.ceil(wait_s))
    return APIError(
        429,
        f"Every key for this model is at its rate limit; retry after {seconds} s.",
        code="rate_limit_exceeded",
        type_="rate_limit_error",
        headers=[(b"retry-after", str(seconds).encode())],
    )


def _is_context_error(reply: Reply) -> bool:
    if reply.error_code == "context_length_exceeded":
        return True
    text = (reply.body or b"")[:2000].lower()
    return b"context length" in text or b"context window" in text or b"prompt is too long" in text


def _final_error(
    last: Reply | UpstreamError | None, kind: OutcomeKind | None, target: Target | None
) -> APIError:
    """The error a client sees when every attempt failed."""
    if isinstance(last, UpstreamError):
        return _client_error(last)
    where = f"provider {target.provider_id!r}" if target else "the provider"
    if kind is OutcomeKind.AUTH_ERROR:
        return APIError(
            502,
            f"{where} rejected the gateway's credentials",
            code="upstream_auth_failed",
            type_="api_error",
        )
    if kind is OutcomeKind.QUOTA_EXHAUSTED:
        return APIError(
            502,
            f"{where} reports the gateway's quota exhausted",
            code="upstream_quota_exhausted",
            type_="api_error",
        )
    return APIError(
        503,
        "no upstream key is available for this model",
        code="no_available_key",
        type_="api_error",
    )


class Gateway:
    """Runs the attempt loop for a request against one runtime."""

    async def execute(
        self,
        rt: Runtime,
        route: Route,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
        wants_usage: bool,
        request_id: str,
    ) -> Served:
        router = rt.router
        est = estimate(endpoint, body, len(raw), rt.default_output_tokens)
        rt.budget.on_request()
        policy: RetryPolicy | None = rt.first_attempt
        deadline = router.clock() + rt.retry.deadline_s
        wait_left = rt.max_wait_s
        grace_left = _GRACE_S  # short waits (a shared limit's lease on its way) beyond max_wait
        tried: set[str] = set()
        attempts = 0
        last: Reply | UpstreamError | None = None
        last_kind: OutcomeKind | None = None
        last_target: Target | None = None
        last_pick: Pick | None = None
        no_room_s = math.inf
        upstream_s = 0.0
        providers = route.provider_ids
        rejected: RequestRejected | None = None
        while policy is not None:
            choice = router.pick(providers, est, tried, route.strategy, route.balance)
            if (
                not isinstance(choice, Pick)
                and tried
                and last_kind is not None
                and last_kind.needs_backoff
            ):
                same = policy.next(same_key=True) if attempts else None
                if same is not None:  # no other key left: retry one already tried
                    choice = router.pick(providers, est, frozenset(), route.strategy, route.balance)
                    if isinstance(choice, Pick):
                        policy = same
            if not isinstance(choice, Pick):
                no_room_s = choice
                fits = choice <= wait_left or choice <= grace_left
                if fits and router.clock() + choice < deadline:
                    if choice <= wait_left:
                        wait_left -= choice
                    else:
                        grace_left -= choice
                    await asyncio.sleep(choice + 0.001)
                    continue
                break
            pick = choice
            target = route.target_for(pick.provider.id)
            attempts += 1
            last_target, last_pick = target, pick
            a0 = time.perf_counter()
            kind, failure, served = await self._attempt(
                rt, pick, target, endpoint, body, raw, stream, wants_usage, request_id, attempts
            )
            upstream_s += time.perf_counter() - a0
            if served is not None:
                served.upstream_s = upstream_s
                served.estimate = est
                return served
            if isinstance(failure, RequestRejected):
                # This provider cannot express the request; another target of the route may.
                rejected, attempts = failure, attempts - 1
                providers = tuple(p for p in providers if p != pick.provider.id)
                if not providers:
                    break
                continue
            if kind is OutcomeKind.CLIENT_ERROR and isinstance(failure, Reply):
                reply = failure
                fallback = (
                    rt.resolver.resolve(route.context_fallback) if route.context_fallback else None
                )
                if fallback is not None and _is_context_error(reply):
                    route, tried = fallback, set()
                    providers = route.provider_ids
                    await reply.aclose()
                    policy = policy.next(same_key=False)
                    continue
                return Served(reply, pick, target, attempts, pick.started, upstream_s=upstream_s)
            last, last_kind = failure, kind
            if kind.needs_backoff:
                # A throttled or refused key is kept out by its own state (cooling, out of
                # service); one that failed is kept out of this request's later attempts.
                tried.add(pick.key.id)
            policy = policy.next(same_key=False)
            if policy is None or router.clock() >= deadline or not rt.budget.try_spend():
                break
            if kind.needs_backoff:
                await asyncio.sleep(policy.backoff(rt.rng))
        if isinstance(last, Reply) and last_pick and last_target and last_kind in _PASSED_ON:
            # Attempts used up on throttling or server errors: the client sees the last upstream
            # answer (a 429 keeps its Retry-After), as it would from the provider. That attempt
            # has reported already; ``done`` is idempotent.
            return Served(
                last, last_pick, last_target, attempts, last_pick.started, upstream_s=upstream_s
            )
        if last is None and rejected is not None:
            raise APIError(rejected.status, "", headers=[]).with_body(rejected.body)
        if last is None:
            raise _no_room(no_room_s)
        raise _final_error(last, last_kind, last_target)

    async def _attempt(
        self,
        rt: Runtime,
        pick: Pick,
        target: Target,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
        wants_usage: bool,
        request_id: str,
        attempts: int,
    ) -> tuple[OutcomeKind, Reply | UpstreamError | RequestRejected | None, Served | None]:
        """One upstream attempt, reported to its pick. Returns (kind, failure, served):
        ``served`` when the reply is committed, else the failed reply or transport error."""
        call = Call(endpoint, body, raw, target.model, stream, wants_usage, request_id)
        t0 = time.perf_counter()
        try:
            reply = await rt.providers[target.provider_id].send(call, pick.key)
        except UpstreamError as exc:
            outcome = _error_outcome(exc, time.perf_counter() - t0)
            pick.done(outcome)
            return outcome.kind, exc, None
        except RequestRejected as rejected:
            pick.done(Outcome(OutcomeKind.NOT_SENT))
            return OutcomeKind.NOT_SENT, rejected, None
        except BaseException:
            pick.done(Outcome(OutcomeKind.CANCELLED))
            raise
        kind = classify_status(reply.status, reply.error_code)
        if kind is OutcomeKind.SUCCESS and reply.events is not None:
            # Commit only once the first event is in hand: until then another key may serve.
            try:
                first = await anext(reply.events, b"")
            except UpstreamError as exc:
                outcome = _error_outcome(exc, time.perf_counter() - t0)
                pick.done(outcome)
                await reply.aclose()
                return outcome.kind, exc, None
            except BaseException:
                pick.done(Outcome(OutcomeKind.CANCELLED, 200))
                await reply.aclose()
                raise
            return (
                kind,
                None,
                Served(reply, pick, target, attempts, t0, first, time.perf_counter() - t0),
            )
        outcome = Outcome(
            kind,
            reply.status,
            time.perf_counter() - t0,
            None,
            reply.usage,
            parse_quota(reply.headers),
            reply.retry_after,
        )
        if kind is OutcomeKind.SUCCESS:
            return kind, None, Served(reply, pick, target, attempts, t0, outcome=outcome)
        pick.done(outcome)
        if kind.retryable:
            await reply.aclose()
        return kind, reply, None

    async def relay(self, served: Served) -> AsyncGenerator[bytes, None]:
        """The committed stream's events. Reports the attempt's outcome exactly once, whether the
        stream ends, breaks, or the consumer goes away (``aclose`` or cancellation)."""
        reply = served.reply
        assert reply.events is not None
        kind = OutcomeKind.CANCELLED
        try:
            if served.first:
                served.events_out += served.first.count(b"\n\n")
                yield served.first
            events = reply.events
            while True:
                t = time.perf_counter()
                try:
                    batch = await anext(events)
                except StopAsyncIteration:
                    break
                served.upstream_s += time.perf_counter() - t
                served.events_out += batch.count(b"\n\n")
                yield batch
            kind = OutcomeKind.SUCCESS
        except UpstreamError as exc:
            # After the first byte no retry is possible; a named upstream error (a rate limit
            # mid-stream) still teaches the key, anything else counts as a broken stream.
            named = _outcome_for(exc) if exc.upstream_status is not None else None
            kind = named if named in _KEY_SPECIFIC else OutcomeKind.STREAM_BROKEN
            raise StreamBroken(_client_error(exc)) from exc
        finally:
            served.pick.done(
                Outcome(kind, 200, time.perf_counter() - served.started, served.ttft_s, reply.usage)
            )
            await reply.aclose()


__all__ = [
    "Gateway",
    "ModelResolver",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "Runtime",
    "Served",
    "StreamBroken",
    "Target",
]
