"""One client request: route -> loop { pick -> send -> outcome } until served, and the relay of a
committed stream.

The only module that knows both the providers and the routing layer. Failover is possible until
the first byte reaches the client; after that an upstream failure ends the stream with an error.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any

from truckllm.errors import APIError
from truckllm.gateway.body import pending
from truckllm.gateway.failures import (
    KEY_SPECIFIC,
    PASSED_ON,
    client_error,
    error_outcome,
    final_error,
    is_context_error,
    no_room,
    outcome_kind,
)
from truckllm.gateway.resolve import Route, Target
from truckllm.gateway.retry import RetryPolicy
from truckllm.gateway.runtime import Runtime
from truckllm.gateway.served import Served, StreamBroken
from truckllm.gateway.trace import AttemptTrace
from truckllm.gateway.upstream_log import Failed
from truckllm.providers import Provider
from truckllm.providers.base import (
    OPENAI_ONLY,
    Call,
    Endpoint,
    Inbound,
    Reply,
    RequestRejected,
    UpstreamError,
)
from truckllm.providers.called import forget_call
from truckllm.providers.direct import Push
from truckllm.providers.errors import error_body
from truckllm.routing import (
    Estimate,
    Outcome,
    OutcomeKind,
    Pick,
    classify_status,
    estimate,
    parse_quota,
)

_GRACE_S = 0.1  # short waits (a shared limit's lease on its way) allowed beyond max_wait

Failure = Reply | UpstreamError | RequestRejected
_Request = tuple[Endpoint, dict[str, Any], bytes, bool, bool, str, Inbound | None]


async def execute(
    rt: Runtime,
    route: Route,
    endpoint: Endpoint,
    body: dict[str, Any],
    raw: bytes,
    stream: bool,
    wants_usage: bool,
    request_id: str,
    inbound: Inbound | None = None,
    exclude: frozenset[str] = frozenset(),
    affinity: str | None = None,
    trace: AttemptTrace | None = None,
    est: Estimate | None = None,
) -> Served:
    """Serve one request from the route's targets: the committed reply, or an :class:`APIError`
    when no attempt succeeded (the last upstream answer itself when it was a 429 or 5xx).

    With ``inbound`` (a client dialect other than the internal form), ``body`` and ``raw`` are
    that dialect's request, used to estimate; each attempt sends it as it is to a provider that
    speaks the dialect, and its internal form to any other. ``affinity`` names the request's
    conversation for prompt-cache affinity (:mod:`truckllm.routing.affinity`); ``trace`` is told
    of each attempt; ``est``, when given, is the request's token estimate already made (by the
    client's tpm limit) for this endpoint, body and ``rt.default_output_tokens``."""
    loop = _AttemptLoop(
        rt, route, endpoint, body, raw, stream, wants_usage, request_id, inbound, est
    )
    loop.affinity, loop.trace = affinity, trace
    if exclude:  # keys the request must not use, not even on a same-key retry (pinned elsewhere)
        loop.excluded = exclude
        loop.tried.update(exclude)
    return await loop.run()


class _AttemptLoop:
    """The state of one request's attempts: keys tried, the last failure, time and retries left."""

    __slots__ = (
        "affinity",
        "attempts",
        "deadline",
        "est",
        "excluded",
        "failed",
        "failed_providers",
        "failover_only",
        "grace_left",
        "last",
        "last_kind",
        "last_pick",
        "last_target",
        "no_room_s",
        "policy",
        "providers",
        "rejected",
        "request",
        "route",
        "rt",
        "trace",
        "tried",
        "upstream_s",
        "wait_left",
    )

    def __init__(
        self,
        rt: Runtime,
        route: Route,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
        wants_usage: bool,
        request_id: str,
        inbound: Inbound | None,
        est: Estimate | None = None,
    ) -> None:
        self.rt, self.route = rt, route
        self.request = (endpoint, body, raw, stream, wants_usage, request_id, inbound)
        if est is None:
            est = estimate(endpoint, body, len(raw), rt.default_output_tokens)
        self.est = est
        self.policy: RetryPolicy | None = rt.first_attempt
        self.deadline = rt.router.clock() + rt.retry.deadline_s
        self.wait_left = rt.max_wait_s
        self.grace_left = _GRACE_S
        self.providers = route.provider_ids
        self.tried: set[str] = set()
        self.excluded: frozenset[str] = frozenset()
        self.failed_providers: tuple[str, ...] = ()
        self.failover_only = False  # the retry budget is spent: only healthy other providers
        self.attempts = 0
        self.upstream_s = 0.0
        self.no_room_s = math.inf
        self.last: Reply | UpstreamError | None = None
        self.last_kind: OutcomeKind | None = None
        self.last_target: Target | None = None
        self.last_pick: Pick | None = None
        self.rejected: RequestRejected | None = None
        self.failed: Failed | None = None  # the last failed attempt, logged at the next step
        self.affinity: str | None = None
        self.trace: AttemptTrace | None = None

    async def run(self) -> Served:
        self.rt.budget.on_request()
        while self.policy is not None:
            choice = self._choose()
            if not isinstance(choice, Pick):
                if await self._wait_for_room(choice):
                    continue
                break
            served, go_on = await self._try(choice)
            if served is not None:
                return served
            if not go_on:
                break
        self._log_failure(self._gave_up())
        return self._give_up()

    def _choose(self) -> Pick | float:
        """A key to try, or the seconds until one may have room. When every key has been tried
        and the last failure calls for backoff, one already tried is retried (a same-key retry)."""
        router, route, policy = self.rt.router, self.route, self.policy
        assert policy is not None
        choice = router.pick(
            self.providers,
            self.est,
            self.tried,
            route.strategy,
            route.balance,
            panic=not self.failover_only,
            affinity=self.affinity,
        )
        kind = self.last_kind
        if (
            not isinstance(choice, Pick)
            and self.tried
            and kind is not None
            and kind.needs_backoff
            and not self.failover_only
        ):
            same = policy.next(same_key=True) if self.attempts else None
            if same is not None:
                choice = router.pick(
                    self.providers, self.est, self.excluded, route.strategy, route.balance
                )
                if isinstance(choice, Pick):
                    self.policy = same
        return choice

    async def _wait_for_room(self, wait_s: float) -> bool:
        """Wait for room when it comes within ``routing.max_wait`` (or the grace) and before the
        deadline; False when the request should give up instead."""
        self.no_room_s = wait_s
        fits = wait_s <= self.wait_left or wait_s <= self.grace_left
        if not fits or self.rt.router.clock() + wait_s >= self.deadline:
            return False
        if wait_s <= self.wait_left:
            self.wait_left -= wait_s
        else:
            self.grace_left -= wait_s
        await asyncio.sleep(wait_s + 0.001)
        return True

    async def _try(self, pick: Pick) -> tuple[Served | None, bool]:
        """One attempt: (served, _) when the client gets this reply, else (None, go on?)."""
        if self.failed is not None:
            same = self.failed.key_id == pick.key.id
            self._log_failure("retrying the same key" if same else f"moved to key {pick.key.id!r}")
        target = self.route.target_for(pick.provider.id)
        self.attempts += 1
        self.last_target, self.last_pick = target, pick
        if self.trace is not None:
            self.trace.attempt(pick, target.model, self.attempts)
        a0 = time.perf_counter()
        kind, failure, served = await _attempt(self.rt, pick, target, self.attempts, self.request)
        self.upstream_s += time.perf_counter() - a0
        if self.trace is not None and served is None:
            self.trace.failed(pick, kind, failure, self.rt.router.clock())
        if served is not None:
            served.upstream_s, served.estimate = self.upstream_s, self.est
            if served.reply.events is not None:
                served.on_broken = self._stream_broken
            return served, False
        if isinstance(failure, RequestRejected):
            # This provider cannot express the request; another target of the route may.
            self.rejected, self.attempts = failure, self.attempts - 1
            self.providers = tuple(p for p in self.providers if p != pick.provider.id)
            return None, bool(self.providers)
        log = self.rt.failure_log
        self.failed = log.failure(pick, failure, kind, self.attempts, self.rt.router.clock())
        if kind is OutcomeKind.CLIENT_ERROR and isinstance(failure, Reply):
            served, go_on = await self._client_error(failure, pick, target)
            if served is not None:
                self._log_failure("passed to the client")
            return served, go_on
        return None, await self._after_failure(pick, kind, failure)

    def _stream_broken(self, served: Served, exc: UpstreamError, kind: OutcomeKind) -> None:
        """The committed stream failed (and has reported to its pick): its line."""
        rt = self.rt
        now = rt.router.clock()
        self.failed = rt.failure_log.failure(served.pick, exc, kind, self.attempts, now)
        self._log_failure(f"ended the stream with an error event after {served.events_out} events")

    def _log_failure(self, next_step: str) -> None:
        """The last failed attempt's line, now that the request's next step is known."""
        if self.failed is not None:
            self.rt.failure_log.log(self.failed, next_step, self.request[5])
            self.failed = None

    async def _client_error(
        self, reply: Reply, pick: Pick, target: Target
    ) -> tuple[Served | None, bool]:
        """A client error is the client's answer, unless it is a context-length error and the
        route names a fallback with a longer context."""
        route = self.route
        fallback = (
            self.rt.resolver.resolve(route.context_fallback) if route.context_fallback else None
        )
        if fallback is None or not is_context_error(reply):
            return Served(
                reply, pick, target, self.attempts, pick.started, upstream_s=self.upstream_s
            ), False
        assert self.policy is not None
        self.route, self.tried, self.providers = fallback, set(self.excluded), fallback.provider_ids
        await reply.aclose()
        self.policy = self.policy.next(same_key=False)
        return None, True

    async def _after_failure(
        self, pick: Pick, kind: OutcomeKind, failure: Reply | UpstreamError | None
    ) -> bool:
        """Learn from a failed attempt; whether another may follow (after its backoff)."""
        go_on, backoff = self._decide(pick, kind, failure)
        if backoff:
            assert self.policy is not None
            await asyncio.sleep(self.policy.backoff(self.rt.rng))
        return go_on

    def _decide(
        self, pick: Pick, kind: OutcomeKind, failure: Reply | UpstreamError | None
    ) -> tuple[bool, bool]:
        """Whether another attempt may follow, and whether after a backoff."""
        assert self.policy is not None
        self.last, self.last_kind = failure, kind
        if kind.needs_backoff:
            # A throttled or refused key is kept out by its own state (cooling, out of
            # service); one that failed is kept out of this request's later attempts.
            self.tried.add(pick.key.id)
            self.failed_providers += (pick.provider.id,)
        self.policy = policy = self.policy.next(same_key=False)
        rt = self.rt
        if policy is None or rt.router.clock() >= self.deadline:
            return False, False
        if not rt.budget.try_spend():
            return self._failover_only(pick.provider.id), False
        return True, kind.needs_backoff

    def _gave_up(self) -> str:
        passed = isinstance(self.last, Reply) and self.last_kind in PASSED_ON
        what = "gave up and passed the last answer on" if passed else "gave up"
        return f"{what} after {self.attempts} attempt{'s' if self.attempts > 1 else ''}"

    def _failover_only(self, failed: str) -> bool:
        """The retry budget is spent. It guards a struggling upstream against a storm of retries;
        a move to another provider in good health is no retry against the one that failed, so it
        stays allowed (with no backoff): the rest of the request may only go to such providers."""
        router = self.rt.router
        healthy = tuple(
            p
            for p in self.providers
            if p != failed and p not in self.failed_providers and router.healthy(p)
        )
        if not healthy:
            return False
        self.providers, self.failover_only = healthy, True
        return True

    def _give_up(self) -> Served:
        """Attempts used up on throttling or server errors: the client sees the last upstream
        answer (a 429 keeps its Retry-After), as it would from the provider. That attempt has
        reported already; ``done`` is idempotent. Anything else is an error of the gateway's."""
        last, pick, target = self.last, self.last_pick, self.last_target
        if isinstance(last, Reply) and pick and target and self.last_kind in PASSED_ON:
            return Served(
                last, pick, target, self.attempts, pick.started, upstream_s=self.upstream_s
            )
        if last is None and self.rejected is not None:
            raise APIError(self.rejected.status, "", headers=[]).with_body(self.rejected.body)
        if last is None:
            raise no_room(self.no_room_s)
        raise final_error(last, self.last_kind, target)


async def _attempt(
    rt: Runtime,
    pick: Pick,
    target: Target,
    attempts: int,
    request: _Request,
) -> tuple[OutcomeKind, Failure | None, Served | None]:
    """One upstream attempt, reported to its pick. Returns (kind, failure, served):
    ``served`` when the reply is committed, else the failed reply or transport error."""
    provider = rt.providers[target.provider_id]
    try:
        call = _call(provider, target, request, rt.refuses_builtin_tools)
    except RequestRejected as rejected:
        pick.done(Outcome(OutcomeKind.NOT_SENT))
        return OutcomeKind.NOT_SENT, rejected, None
    t0 = time.perf_counter()
    forget_call()
    try:
        reply = await provider.send(call, pick.key)
    except UpstreamError as exc:
        outcome = error_outcome(exc, time.perf_counter() - t0)
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
        return await _first_event(reply, pick, target, attempts, t0)
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
        served = Served(reply, pick, target, attempts, t0, outcome=outcome)
        return kind, None, pending(served) if reply.rest is not None else served
    pick.done(outcome)
    if kind.retryable:
        await reply.aclose()
    return kind, reply, None


def _call(
    provider: Provider, target: Target, request: _Request, refuses_builtin: frozenset[str]
) -> Call:
    endpoint, body, raw, stream, wants_usage, request_id, inbound = request
    if endpoint in OPENAI_ONLY and endpoint not in getattr(provider, "endpoints", ()):
        raise RequestRejected(
            400,
            error_body(
                f"provider {target.provider_id!r} does not serve OpenAI's {endpoint} endpoint; "
                "route this model to an OpenAI-type provider.",
                400,
                "unsupported_endpoint",
                "model",
                "invalid_request_error",
            ),
            "unsupported_endpoint",
        )
    if inbound is None:
        return Call(endpoint, body, raw, target.model, stream, wants_usage, request_id)
    if inbound.dialect in getattr(provider, "dialects", ()):
        return Call(
            endpoint,
            body,
            raw,
            target.model,
            stream,
            wants_usage,
            request_id,
            inbound.dialect,
            inbound.headers,
            inbound.source,
        )
    if endpoint == "count_tokens":
        raise RequestRejected(
            400,
            error_body(
                f"provider {target.provider_id!r} cannot count tokens for this API",
                400,
                "unsupported_endpoint",
                None,
                "invalid_request_error",
            ),
            "unsupported_endpoint",
        )
    if inbound.dropped and target.provider_id in refuses_builtin:
        raise builtin_tools_refused(target.provider_id, inbound.dropped)
    internal, internal_raw = inbound.internal()
    return Call(endpoint, internal, internal_raw, target.model, stream, True, request_id)


async def _first_event(
    reply: Reply, pick: Pick, target: Target, attempts: int, t0: float
) -> tuple[OutcomeKind, Failure | None, Served | None]:
    """Commit a stream only once its first event is in hand: until then another key may serve."""
    assert reply.events is not None
    try:
        first = await anext(reply.events, b"")
    except UpstreamError as exc:
        outcome = error_outcome(exc, time.perf_counter() - t0)
        pick.done(outcome)
        await reply.aclose()
        return outcome.kind, exc, None
    except BaseException:
        pick.done(Outcome(OutcomeKind.CANCELLED, 200))
        await reply.aclose()
        raise
    served = Served(reply, pick, target, attempts, t0, first, time.perf_counter() - t0)
    return OutcomeKind.SUCCESS, None, served


async def relay(served: Served, push: Push | None = None) -> AsyncGenerator[bytes, None]:
    """The committed stream's events. Reports the attempt's outcome exactly once, whether the
    stream ends, breaks, or the consumer goes away (``aclose`` or cancellation).

    With ``push`` (a plain writer to the client: the server's ``truckllm.push``), a passthrough
    stream's events after the first are written by it from the upstream's read callback
    (:class:`~truckllm.providers.direct.Direct`) and not yielded, while the client keeps up;
    what comes while it catches up is yielded (its consumer waits for the drain), then the
    read callback takes over again."""
    reply = served.reply
    assert reply.events is not None
    kind = OutcomeKind.CANCELLED
    broken: UpstreamError | None = None
    clock = time.perf_counter
    waited, count = 0.0, 0  # kept in locals per event, written to ``served`` once at the end
    direct = reply.direct
    resume: Callable[[], Awaitable[None]] | None = None  # the read-callback relay, to resume
    if push is not None and direct is not None and direct.events is reply.events:
        resume = partial(direct.relay, push)
    else:
        direct = None  # (no writer, or the cache's tap replaced the events: it sees every one)
    try:
        if served.first:
            count = served.first.count(b"\n\n")
            yield served.first
        t = clock()
        if resume is not None:
            await resume()
        async for batch in reply.events:
            waited += clock() - t
            count += batch.count(b"\n\n")
            yield batch
            t = clock()
            if resume is not None:  # the client has taken that batch: the callback again
                await resume()
        waited += clock() - t  # the wait for the end of the stream
        kind = OutcomeKind.SUCCESS
    except UpstreamError as exc:
        # After the first byte no retry is possible; a named upstream error (a rate limit
        # mid-stream) still teaches the key, anything else counts as a broken stream.
        named = outcome_kind(exc) if exc.upstream_status is not None else None
        kind = named if named in KEY_SPECIFIC else OutcomeKind.STREAM_BROKEN
        broken = exc
        raise StreamBroken(client_error(exc)) from exc
    finally:
        if direct is not None:  # the client's writes are the gateway's time, not the upstream's
            count += direct.sent
            waited -= direct.pushed_s
        served.upstream_s += waited
        served.events_out += count
        served.pick.done(
            Outcome(kind, 200, time.perf_counter() - served.started, served.ttft_s, reply.usage)
        )
        if broken is not None and served.on_broken is not None:
            served.on_broken(served, broken, kind)
        # The error's traceback holds this frame, which holds the error and the client's
        # writer: dropped, so the request's objects are freed by reference counting.
        broken = direct = resume = push = None
        await reply.aclose()


def builtin_tools_refused(provider_id: str, tools: tuple[str, ...]) -> RequestRejected:
    """A translated request's built-in tools, on a provider set to refuse them
    (``builtin_tools: error``): the route's other providers are tried first, then this 400."""
    return RequestRejected(
        400,
        error_body(
            f"provider {provider_id!r} cannot run the built-in tools {', '.join(tools)}; "
            "leave them out or route this model to a provider that serves the Responses API.",
            400,
            "unsupported_tool",
            "tools",
            "invalid_request_error",
        ),
        "unsupported_tool",
    )
