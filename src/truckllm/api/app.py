"""The gateway's ASGI application: its parts built once, the lifespan, and the dispatch of each
request to its endpoint's handler (:mod:`truckllm.api.endpoints`). No framework on the hot path:
a request costs a dict lookup for its route and one JSON parse.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from functools import partial

from truckllm.accounting import Accounting
from truckllm.admin import AdminAPI, AdminContext, Stats
from truckllm.api.asgi import ClientGone, Receive, Scope, Send, client_ip, send_error
from truckllm.api.counts import Counts
from truckllm.api.endpoints import all_routes
from truckllm.api.proxy import Proxy
from truckllm.api.routes import Readiness, Request, Route
from truckllm.api.services import Services
from truckllm.cache import ResponseCache
from truckllm.config import Config
from truckllm.coordination import Coordinator
from truckllm.errors import APIError
from truckllm.gateway import Runtime, RuntimeHolder
from truckllm.http.client import HTTPClient, ProxyEnv
from truckllm.http.server import EDGE_STATS, PUSH_EXTENSION
from truckllm.plugins import Registry
from truckllm.providers import ProviderFactory, provider_registry
from truckllm.reload import Reloader
from truckllm.telemetry.hub import Telemetry
from truckllm.telemetry.pool import render_pool
from truckllm.telemetry.record import RecordBus, RequestRecord

log = logging.getLogger("truckllm.api")


def proxies_from_environment() -> ProxyEnv:
    """HTTPS_PROXY/HTTP_PROXY/ALL_PROXY/NO_PROXY as they are at start; a proxy URL the client
    cannot use (not http://) is logged and upstreams are reached directly."""
    try:
        proxies = ProxyEnv.from_environ(os.environ)
    except ValueError as exc:
        log.error("proxy environment ignored, upstreams are reached directly: %s", exc)
        return ProxyEnv()
    for scheme, proxy in (("https", proxies.https), ("http", proxies.http)):
        if proxy is not None:
            log.info(
                "%s upstreams through the proxy %s:%d (NO_PROXY: %s)",
                scheme,
                proxy.host,
                proxy.port,
                ",".join(proxies.no_proxy) or "none",
            )
    return proxies


class App:
    """``start()``/``close()`` run from the ASGI lifespan, or by whoever embeds the app. Owns
    the shared upstream client, the runtime holder, and the parts that outlive reloads: the
    record bus (metrics, sinks, the ledger and the admin stats subscribe), the accounting, the
    coordination through the state store, and telemetry."""

    def __init__(
        self,
        config: Config,
        registry: Registry[ProviderFactory] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.registry = registry if registry is not None else provider_registry()
        self.holder = RuntimeHolder(config, self.registry)
        self.client: HTTPClient | None = None
        self.records = RecordBus()
        self.accounting = Accounting(config)  # usage ledger, prices, client rules
        self.coordinator = Coordinator(config, self.accounting)  # the state store
        self.holder.listeners += [self.accounting.attach, self.coordinator.attach]
        self.reloader = (
            Reloader(self.holder, config_path, config.server.reload_interval)
            if config_path
            else None
        )
        self.telemetry = Telemetry(config, self.records)
        self.telemetry.feed_metrics = False  # fed by the app's Counts, below
        if self.reloader is not None:
            self.reloader.listeners.append(self.telemetry.reload_result)
        stats = Stats()
        self.readiness = Readiness(checks={"store": self.coordinator.health})
        admin = AdminAPI(
            AdminContext(
                stats,
                self.reloader,
                self.coordinator.query,
                self.registry.names,
                accounting=self.accounting,
            )
        )
        # the admin counts, the usage ledger, the dashboard's overview and tail, the metrics:
        # one consumer, one pass over each record (the request-log sinks subscribe at start)
        self.records.subscribe(
            Counts(stats, admin.context.recent, self.accounting, self.telemetry.metrics)
        )
        self.cache = ResponseCache(config, self.accounting.cost_nanos)  # docs/cache.md
        self.holder.listeners.append(self.cache.attach)
        if self.telemetry.metrics is not None:
            self.telemetry.metrics.extra.append(self.cache.stats.render)
        proxy = Proxy(self.accounting, self.records, self.cache)
        self.services = Services(proxy, admin, self.telemetry, self.readiness, self.coordinator)
        self._exact: dict[tuple[str, str], Route] = {}
        self._prefixes: list[Route] = []
        for route in all_routes(self.services):
            if route.prefix:
                self._prefixes.append(route)
            else:
                self._exact[(route.method, route.path)] = route
        self._id_prefix = "req_" + os.urandom(6).hex()
        self._ids = itertools.count(1)

    @property
    def config(self) -> Config:
        return self.holder.config

    @property
    def runtime(self) -> Runtime:
        return self.holder.current

    @property
    def admin(self) -> AdminAPI:
        return self.services.admin

    @property
    def draining(self) -> bool:
        """Set when shutdown begins: ``/readyz`` answers 503 from then on."""
        return self.readiness.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.readiness.draining = value

    def cut_streams(self) -> int:
        """End every stream still being sent with an error event the SDKs raise (the drain
        deadline has come); the number cut. Call on the serving loop."""
        return self.services.proxy.streams.cut()

    async def start(self) -> None:
        if self.client is None:
            self.client = HTTPClient(
                keepalive=30.0,
                max_response_bytes=self.config.server.max_response_bytes,
                proxies=proxies_from_environment(),
            )
        rt = self.holder.build(self.client)
        await self.telemetry.start()
        if self.telemetry.metrics is not None:  # the upstream pools' waits
            self.telemetry.metrics.extra.append(partial(render_pool, stats=self.client.pool_stats))
        self.services.proxy.tracer = self.telemetry.tracer
        self.accounting.attach(rt)
        await self.coordinator.start(rt)
        if self.reloader is not None:
            self.reloader.start_watching()
        if not rt.client_keys:
            log.warning(
                "server.api_keys is empty: the gateway serves ANY client without authentication. "
                "Set server.api_keys before exposing it beyond this machine."
            )

    def swap(self, config: Config) -> None:
        """Install a new, validated configuration (see :meth:`RuntimeHolder.swap`)."""
        self.holder.swap(config)

    async def close(self) -> None:
        self.readiness.draining = True
        if self.reloader is not None:
            await self.reloader.stop()
        await self.telemetry.close()  # flushes the request-log sinks
        await self.coordinator.close()  # flushes the usage ledger, gives back leased limits
        await self.cache.close()
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = scope.get("extensions") or {}
        self.telemetry.edge = extensions.get(EDGE_STATS)  # our own server's counters
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = self._request_id(scope)
        route: Route | None = None
        try:
            route = self._route(scope["method"], scope["path"])
            # One runtime for the whole request, even if a reload swaps it meanwhile.
            extensions = scope.get("extensions")
            push = extensions.get(PUSH_EXTENSION) if extensions else None
            req = Request(self.holder.current, scope, receive, send, request_id, push)
            await route.handler(req)
        except APIError as err:  # raised only before the response starts
            if not err.recorded:
                name = route.name if route is not None and route.name else str(scope["path"])
                self.records.publish(
                    RequestRecord(
                        time.time(),
                        request_id,
                        name,
                        status=err.status,
                        error_code=err.code,
                        client_ip=client_ip(scope),
                    )
                )
            shape = route.errors if route is not None else None
            await send_error(send, err, request_id, shape(err) if shape is not None else None)
        except ClientGone:
            pass
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            await send_error(
                send,
                APIError(
                    500,
                    f"internal gateway error (request id {request_id})",
                    code="internal_error",
                    type_="server_error",
                ),
                request_id,
            )

    def _route(self, method: str, path: str) -> Route:
        route = self._exact.get((method, path))
        if route is not None:
            return route
        if method == "HEAD":  # a GET route answers HEAD; the server sends no body
            route = self._exact.get(("GET", path))
            if route is not None:
                return route
        allowed = {m for (m, p) in self._exact if p == path}
        for route in self._prefixes:
            if path.startswith(route.path):
                if route.method in ("*", method) or (method == "HEAD" and route.method == "GET"):
                    return route
                allowed.add(route.method)
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise APIError(
                405,
                f"Method {method} is not allowed on {path}.",
                code="method_not_allowed",
                type_="invalid_request_error",
                headers=[(b"allow", ", ".join(sorted(allowed)).encode())],
            )
        raise APIError(
            404,
            f"Unknown request URL: {method} {path}.",
            code="unknown_url",
            type_="invalid_request_error",
        )

    def _request_id(self, scope: Scope) -> str:
        """The client's ``X-Request-Id`` when it sends a sane one, else a new unique id: a random
        per-process prefix and a counter (no system call per request)."""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= 128 and value.isascii():
                    text: str = value.decode()
                    if text.isprintable():
                        return text
                break
        return f"{self._id_prefix}{next(self._ids):x}"
