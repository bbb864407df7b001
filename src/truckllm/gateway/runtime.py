"""What one configuration needs to serve, and the holder that swaps it on reload."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from truckllm.config import Config, client_key_digests, provider_timeouts
from truckllm.gateway.resolve import ModelResolver
from truckllm.gateway.retry import RetryBudget, RetryPolicy
from truckllm.gateway.upstream_log import FailureLog
from truckllm.http.client import HTTPClient
from truckllm.plugins import Registry
from truckllm.providers import Provider, ProviderContext, ProviderFactory
from truckllm.routing import OutlierSettings, Router, RoutingSettings
from truckllm.routing.affinity import Affinity


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
        # Providers whose translated requests refuse built-in tools rather than drop them.
        self.refuses_builtin_tools = frozenset(
            p.id for p in config.providers if p.builtin_tools == "error"
        )
        r = config.routing
        settings = RoutingSettings(
            cooldown_base_s=r.cooldown.base,
            cooldown_max_s=r.cooldown.max,
            breaker_failures=r.breaker.failures,
            provider_breaker_failures=r.breaker.provider_failures,
            breaker_open_s=r.breaker.open_for,
            breaker_open_max_s=r.breaker.max_open_for,
            out_of_service_probe_s=r.out_of_service_probe,
            outlier=OutlierSettings(
                enabled=r.outlier.enabled,
                window_s=r.outlier.window,
                min_requests=r.outlier.min_requests,
                min_success_rate=r.outlier.min_success_rate,
                peer_margin=r.outlier.peer_margin,
                base_ejection_s=r.outlier.base_ejection,
                max_ejection_s=r.outlier.max_ejection,
                max_ejected_share=r.outlier.max_ejected_share,
                probe_successes=r.outlier.probe_successes,
            ),
        )
        self.router: Router = router or Router(
            config.providers,
            settings,
            default_strategy=r.strategy,
            strategies={p.id: p.strategy for p in config.providers if p.strategy},
            carry_over=previous.router if previous else None,
        )
        if r.affinity.enabled:  # prompt-cache affinity: conversations carry over a reload
            previous_affinity = previous.router.affinity if previous else None
            self.router.affinity = Affinity(r.affinity).adopt(previous_affinity)
        self.resolver = ModelResolver(config)
        self.client_keys: Mapping[bytes, str] = client_key_digests(config)
        # presented key -> client id, for keys that matched: saves a SHA-256 per request;
        # bounded (see api.steps.authenticate), and a reload builds a new, empty one
        self.client_key_cache: dict[bytes, str] = {}
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
        self.failure_log: FailureLog = previous.failure_log if previous else FailureLog()
        self.created = int(time.time())


class RuntimeHolder:
    """The runtime in force. Readers take ``current`` once per request and keep it to the end;
    :meth:`swap` builds a new one from a validated configuration (raising, and changing nothing,
    if a provider refuses its settings) and tells ``listeners`` after the swap."""

    def __init__(self, config: Config, registry: Registry[ProviderFactory]) -> None:
        self.config = config
        self.registry = registry
        self.listeners: list[Callable[[Runtime], None]] = []
        self._current: Runtime | None = None
        self._client: HTTPClient | None = None

    @property
    def current(self) -> Runtime:
        if self._current is None:
            raise RuntimeError("the runtime has not been built: App.start() has not run")
        return self._current

    @property
    def built(self) -> bool:
        return self._current is not None

    def build(self, client: HTTPClient) -> Runtime:
        """The first runtime, on the upstream client that every later one shares."""
        self._client = client
        self._current = Runtime(self.config, self.registry, client)
        return self._current

    def swap(self, config: Config) -> Runtime:
        """Install a new configuration; in-flight requests keep the runtime they hold."""
        assert self._client is not None, "swap() before build()"
        rt = Runtime(config, self.registry, self._client, previous=self._current)
        self._current, self.config = rt, config
        for listener in self.listeners:
            listener(rt)
        return rt
