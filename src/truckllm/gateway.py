"""One client request: model -> candidate targets; loop { pick -> send -> outcome } until served.

The only module that knows both the providers and the routing layer. Failover is possible until
the first byte reaches the client; after that an upstream failure ends the stream with an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from truckllm.config import Config, client_key_digests, provider_timeouts
from truckllm.errors import APIError
from truckllm.plugins import Registry
from truckllm.providers import Provider, ProviderContext, ProviderFactory
from truckllm.providers.base import Call, Endpoint, Reply, UpstreamError, UpstreamTimeout
from truckllm.routing import Outcome, OutcomeKind, Pick, Router, classify_status


@dataclass(frozen=True, slots=True)
class Target:
    provider_id: str
    model: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Immutable: ``increment()`` returns the policy for the next attempt, or ``None`` when the
    attempts are used up."""

    max_attempts: int = 2
    attempt: int = 1

    def increment(self) -> RetryPolicy | None:
        if self.attempt >= self.max_attempts:
            return None
        return replace(self, attempt=self.attempt + 1)


class ModelResolver:
    """Client model name -> targets: an alias, then ``provider:model``, then providers that list
    the model under its own name (in configuration order)."""

    def __init__(self, cfg: Config) -> None:
        self._providers = {p.id for p in cfg.providers}
        self.aliases: dict[str, tuple[Target, ...]] = {}
        for name, spec in cfg.model_aliases.items():
            specs = (spec,) if isinstance(spec, str) else spec
            self.aliases[name] = tuple(Target(*s.split(":", 1)) for s in specs)
        self.models: dict[str, list[Target]] = {}
        self._catch_all: list[str] = []  # providers listing "*": they serve any other model name
        for p in cfg.providers:
            for m in p.models:
                if m == "*":
                    self._catch_all.append(p.id)
                else:
                    self.models.setdefault(m, []).append(Target(p.id, m))

    def resolve(self, name: str) -> tuple[Target, ...] | None:
        targets = self.aliases.get(name)
        if targets is not None:
            return targets
        pid, sep, model = name.partition(":")
        if sep and model and pid in self._providers:
            return (Target(pid, model),)
        listed = self.models.get(name)
        if listed:
            return tuple(listed)
        if self._catch_all:
            return tuple(Target(pid, name) for pid in self._catch_all)
        return None


class Runtime:
    """Everything one configuration needs to serve. Built whole, then swapped in one reference;
    key state carries over from the previous runtime by key id."""

    def __init__(
        self,
        config: Config,
        registry: Registry[ProviderFactory],
        session: aiohttp.ClientSession,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        self.providers: dict[str, Provider] = {}
        for p in config.providers:
            ctx = ProviderContext(p, session, provider_timeouts(p, config.server.timeouts))
            self.providers[p.id] = registry.get(p.type)(ctx)
        self.router: Router = Router(
            config.providers, carry_over=previous.router if previous else None
        )
        self.resolver = ModelResolver(config)
        self.client_keys: Mapping[bytes, str] = client_key_digests(config)
        self.retry = RetryPolicy(max_attempts=config.retry.max_attempts)
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


class StreamBroken(Exception):
    """The upstream failed after the first byte went to the client."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


_PASSED_ON = frozenset({OutcomeKind.RATE_LIMITED, OutcomeKind.SERVER_ERROR})


def _outcome_for(exc: UpstreamError) -> OutcomeKind:
    return OutcomeKind.TIMEOUT if isinstance(exc, UpstreamTimeout) else OutcomeKind.CONNECTION_ERROR


def _final_error(
    last: Reply | UpstreamError | None, kind: OutcomeKind | None, target: Target | None
) -> APIError:
    """The error a client sees when every attempt failed."""
    if isinstance(last, UpstreamError):
        return APIError(last.status, str(last), code=last.code, type_="api_error")
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
        targets: tuple[Target, ...],
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        stream: bool,
        wants_usage: bool,
        request_id: str,
    ) -> Served:
        policy: RetryPolicy | None = rt.retry
        tried: set[str] = set()
        ti = 0
        attempts = 0
        last: Reply | UpstreamError | None = None
        last_kind: OutcomeKind | None = None
        last_target: Target | None = None
        last_pick: Pick | None = None
        started = time.perf_counter()
        while policy is not None and ti < len(targets):
            target = targets[ti]
            pick = rt.router.pick(target.provider_id, tried)
            if pick is None:
                ti += 1
                continue
            tried.add(pick.key.id)
            attempts += 1
            last_target, last_pick = target, pick
            call = Call(endpoint, body, raw, target.model, stream, wants_usage, request_id)
            t0 = time.perf_counter()
            try:
                reply = await rt.providers[target.provider_id].send(call, pick.key)
            except UpstreamError as exc:
                last_kind = _outcome_for(exc)
                pick.done(Outcome(last_kind, exc.status, time.perf_counter() - t0))
                last = exc
                policy = policy.increment()
                continue
            except BaseException:
                pick.done(Outcome(OutcomeKind.CANCELLED))
                raise
            kind = classify_status(reply.status, reply.error_code)
            if kind is OutcomeKind.SUCCESS and reply.events is not None:
                # Commit only once the first event is in hand: until then another key may serve.
                try:
                    first = await anext(reply.events, b"")
                except UpstreamError as exc:
                    last_kind = _outcome_for(exc)
                    pick.done(Outcome(last_kind, 200, time.perf_counter() - t0))
                    await reply.aclose()
                    last = exc
                    policy = policy.increment()
                    continue
                except BaseException:
                    pick.done(Outcome(OutcomeKind.CANCELLED, 200))
                    await reply.aclose()
                    raise
                return Served(reply, pick, target, attempts, t0, first, time.perf_counter() - t0)
            if kind is OutcomeKind.SUCCESS or not kind.retryable:
                pick.done(Outcome(kind, reply.status, time.perf_counter() - t0, usage=reply.usage))
                return Served(reply, pick, target, attempts, t0)
            pick.done(Outcome(kind, reply.status, time.perf_counter() - t0))
            await reply.aclose()
            last, last_kind = reply, kind
            policy = policy.increment()
        if isinstance(last, Reply) and last_pick and last_target and last_kind in _PASSED_ON:
            # Attempts used up on throttling or server errors: the client sees the last upstream
            # answer (a 429 keeps its Retry-After), as it would from the provider. That attempt
            # has reported already; ``done`` is idempotent.
            return Served(last, last_pick, last_target, attempts, started)
        raise _final_error(last, last_kind, last_target)

    async def relay(self, served: Served) -> AsyncGenerator[bytes, None]:
        """The committed stream's events. Reports the attempt's outcome exactly once, whether the
        stream ends, breaks, or the consumer goes away (``aclose`` or cancellation)."""
        reply = served.reply
        assert reply.events is not None
        kind = OutcomeKind.CANCELLED
        try:
            if served.first:
                yield served.first
            async for batch in reply.events:
                yield batch
            kind = OutcomeKind.SUCCESS
        except UpstreamError as exc:
            kind = OutcomeKind.STREAM_BROKEN
            raise StreamBroken(
                APIError(exc.status, str(exc), code=exc.code, type_="api_error")
            ) from exc
        finally:
            served.pick.done(
                Outcome(kind, 200, time.perf_counter() - served.started, served.ttft_s, reply.usage)
            )
            await reply.aclose()
