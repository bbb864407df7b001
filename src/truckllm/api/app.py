"""A raw ASGI callable: client auth, size limits, minimal parse, OpenAI-shaped errors, JSON or SSE
out. No framework on the hot path: a request costs a dict lookup for its route and one JSON parse.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from truckllm import __version__
from truckllm.accounting import Accounting, format_usd, settle_usage
from truckllm.admin import AdminAPI
from truckllm.api.asgi import (
    SSE_HEADERS,
    ClientGone,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    json_type,
    read_body,
    send_error,
    send_json,
)
from truckllm.config import Config
from truckllm.errors import APIError, invalid_request, model_not_found
from truckllm.gateway import Gateway, Runtime, Served, StreamBroken
from truckllm.http.client import HTTPClient
from truckllm.plugins import Registry
from truckllm.providers import ProviderFactory, provider_registry
from truckllm.providers.base import Endpoint
from truckllm.reload import Reloader
from truckllm.telemetry.hub import Telemetry
from truckllm.telemetry.record import RecordBus, RequestRecord

log = logging.getLogger("truckllm.api")


class App:
    """The gateway's ASGI application. Owns the shared upstream client and the current runtime.

    ``start()``/``close()`` run from the ASGI lifespan, or by whoever embeds the app.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry[ProviderFactory] | None = None,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else provider_registry()
        self.gateway = Gateway()
        self.client: HTTPClient | None = None
        self._runtime: Runtime | None = None
        self.records = RecordBus()  # survives reloads: metrics, sinks and the ledger subscribe
        self.admin = AdminAPI(self)
        self.records.subscribe(self.admin.stats)
        self.accounting = Accounting(config)  # usage ledger, client rules, the state store
        self.reloader = (
            Reloader(self, config_path, config.server.reload_interval) if config_path else None
        )
        # Readiness checks beside the runtime itself: name -> () -> (ok, reason).
        self.health_checks: dict[str, Callable[[], tuple[bool, str | None]]] = {}
        self.draining = False
        self._id_prefix = "req_" + os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._routes: dict[
            tuple[str, str], Callable[[Runtime, Scope, Receive, Send, str], Awaitable[None]]
        ] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }
        # Metrics (GET <metrics.path>, unauthenticated: a scrape target) and request-log sinks.
        self.telemetry = Telemetry(config, self.records)
        if self.telemetry.metrics_path is not None:
            self._routes[("GET", self.telemetry.metrics_path)] = self.telemetry.serve_metrics
        if self.reloader is not None:
            self.reloader.listeners.append(self.telemetry.reload_result)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("App.start() has not run")
        return self._runtime

    async def start(self) -> None:
        if self.client is None:
            self.client = HTTPClient(keepalive=30.0)
        self._runtime = Runtime(self.config, self.registry, self.client)
        await self.telemetry.start()
        if self.accounting.store is None:  # first start: subscribe once
            self.records.subscribe(self.accounting.record)
            self.health_checks["store"] = self.accounting.health
        await self.accounting.start(self._runtime)
        if self.reloader is not None:
            self.reloader.start_watching()
        if not self._runtime.client_keys:
            log.warning(
                "server.api_keys is empty: the gateway serves ANY client without authentication. "
                "Set server.api_keys before exposing it beyond this machine."
            )

    def swap(self, config: Config) -> None:
        """Install a new configuration. The caller validated it; in-flight requests keep the old
        runtime they already hold; key state carries over by id."""
        assert self.client is not None
        self._runtime = Runtime(config, self.registry, self.client, previous=self._runtime)
        self.accounting.attach(self._runtime)
        self.config = config

    async def close(self) -> None:
        self.draining = True
        if self.reloader is not None:
            await self.reloader.stop()
        await self.telemetry.close()  # flushes the request-log sinks
        await self.accounting.close()  # flushes the usage ledger, gives back leased limits
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
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
        rt = self.runtime  # one runtime for the whole request, even if a reload swaps it
        request_id = self._request_id(scope)
        try:
            route = self._routes.get((scope["method"], scope["path"]))
            if route is None:
                route = self._fallback_route(scope)
            await route(rt, scope, receive, send, request_id)
        except APIError as err:  # raised only before the response starts
            if not err.recorded:
                self.records.publish(
                    RequestRecord(
                        time.time(),
                        request_id,
                        _ENDPOINTS.get(scope["path"]) or str(scope["path"]),
                        status=err.status,
                        error_code=err.code,
                    )
                )
            await send_error(send, err, request_id)
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

    def _fallback_route(
        self, scope: Scope
    ) -> Callable[[Runtime, Scope, Receive, Send, str], Awaitable[None]]:
        method, path = scope["method"], scope["path"]
        if path.startswith("/v1/models/") and method == "GET":
            return self._model
        if path.startswith("/admin/"):
            return self._admin
        if any(p == path for (_, p) in self._routes) or path.startswith("/v1/models/"):
            raise APIError(
                405,
                f"Method {method} is not allowed on {path}.",
                code="method_not_allowed",
                type_="invalid_request_error",
            )
        raise APIError(
            404,
            f"Unknown request URL: {method} {path}.",
            code="unknown_url",
            type_="invalid_request_error",
        )

    # -- auth and input -----------------------------------------------------------------------

    @staticmethod
    def _authenticate(rt: Runtime, scope: Scope) -> str:
        """The client id for the request's bearer key. Keys are looked up by their SHA-256 digest,
        never compared as text, so the time taken reveals nothing about any configured key."""
        if not rt.client_keys:
            return "anonymous"
        token = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
                break
        if not token:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
                type_="invalid_request_error",
            )
        digest = hashlib.sha256(token.strip()).digest()
        client = rt.client_keys.get(digest)
        if client is None:
            raise APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                type_="invalid_request_error",
            )
        return client

    async def _read_json(
        self, rt: Runtime, scope: Scope, receive: Receive
    ) -> tuple[dict[str, Any], bytes]:
        raw = await read_body(scope, receive, rt.config.server.max_body_bytes)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid_request(
                f"We could not parse the JSON body of your request. ({exc.msg} at position {exc.pos})",
                code="invalid_json",
            ) from None
        if not isinstance(body, dict):
            raise invalid_request("The request body must be a JSON object.", code="invalid_json")
        return body, raw

    # -- endpoints ----------------------------------------------------------------------------

    async def _chat(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        client = self._authenticate(rt, scope)
        body, raw = await self._read_json(rt, scope, receive)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid_request(
                "'messages' is required and must be a non-empty array."
                if messages is None or messages == []
                else f"Invalid type for 'messages': expected an array, got {json_type(messages)}.",
                param="messages",
            )
        await self._proxy(rt, scope, receive, send, request_id, client, "chat", body, raw)

    async def _embeddings(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        client = self._authenticate(rt, scope)
        body, raw = await self._read_json(rt, scope, receive)
        inp = body.get("input")
        if not isinstance(inp, str | list) or (isinstance(inp, list) and not inp):
            raise invalid_request(
                "'input' is required and must be a string or a non-empty array.", param="input"
            )
        await self._proxy(rt, scope, receive, send, request_id, client, "embeddings", body, raw)

    async def _proxy(
        self,
        rt: Runtime,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        client: str,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
    ) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise invalid_request(
                "you must provide a model parameter"
                if model is None
                else f"Invalid type for 'model': expected a string, got {json_type(model)}.",
                param="model",
            )
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise invalid_request(
                f"Invalid type for 'stream': expected a boolean, got {json_type(stream)}.",
                param="stream",
            )
        if endpoint != "chat":
            stream = False
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise invalid_request(
                f"Invalid type for 'stream_options': expected an object, got {json_type(opts)}.",
                param="stream_options",
            )
        wants_usage = bool(opts.get("include_usage")) if opts else False
        route = rt.resolver.resolve(model)
        if route is None:
            raise model_not_found(model)

        rec = RequestRecord(
            time.time(),
            request_id,
            endpoint,
            client,
            model,
            model if model in rt.resolver.aliases else None,
            stream=stream,
        )
        try:
            await self.accounting.admit(rec, body, len(raw))  # allowed models, limits, budgets
        except APIError as err:
            rec.status, rec.error_code, err.recorded = err.status, err.code, True
            self.records.publish(rec)
            raise
        t0 = time.perf_counter()
        served: Served | None = None
        watch = DisconnectWatch(scope, receive)
        try:
            served = await self.gateway.execute(
                rt, route, endpoint, body, raw, stream, wants_usage, request_id
            )
            reply = served.reply
            rec.status, rec.error_code = reply.status, reply.error_code
            headers = [
                (b"x-request-id", request_id.encode()),
                (b"x-truckllm-provider", served.target.provider_id.encode()),
                (b"x-truckllm-key-id", served.pick.key.id.encode()),
                (b"x-truckllm-attempts", str(served.attempts).encode()),
            ]
            if reply.events is None:
                assert reply.body is not None
                if reply.status == 429 and reply.retry_after is not None:
                    # Whatever the provider's form (header, RetryInfo), clients get seconds.
                    headers.append(
                        (b"retry-after", str(max(math.ceil(reply.retry_after), 1)).encode())
                    )
                if reply.usage is not None:
                    nanos = self.accounting.cost_nanos(served.pick.key.pricing, reply.usage)
                    rec.usage, rec.cost_usd = reply.usage, nanos / 1e9
                    headers.append((b"x-truckllm-cost-usd", format_usd(nanos).encode()))
                await send(
                    {
                        "type": "http.response.start",
                        "status": reply.status,
                        "headers": [
                            (b"content-type", reply.content_type.encode()),
                            (b"content-length", str(len(reply.body)).encode()),
                            *headers,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": reply.body})
                served.settle()
                return
            await send(
                {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers}
            )
            events = self.gateway.relay(served)
            try:
                async for batch in events:
                    if rec.ttft_s is None:
                        rec.ttft_s = time.perf_counter() - t0
                    await send({"type": "http.response.body", "body": batch, "more_body": True})
            except StreamBroken as broken:
                rec.error_code = broken.error.code or "stream_broken"
                log.warning(
                    "stream broken after first byte",
                    extra={"request_id": request_id, "error": broken.error.message},
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + broken.error.body() + b"\n\n",
                        "more_body": True,
                    }
                )
            finally:
                await events.aclose()
            await send({"type": "http.response.body", "body": b""})
        except APIError as err:
            rec.status, rec.error_code, err.recorded = err.status, err.code, True
            raise
        except asyncio.CancelledError:
            rec.status, rec.error_code = 499, "client_closed_request"
            if not watch.gone:
                raise
            watch.task.uncancel()
            raise ClientGone from None
        except OSError:  # the server's send() after the client left
            rec.status, rec.error_code = 499, "client_closed_request"
            raise ClientGone from None
        finally:
            watch.stop()
            rec.latency_s = time.perf_counter() - t0
            if served is not None:
                served.settle()
                _fill(rec, served, self.accounting)
            self.records.publish(rec)

    async def _models(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        self._authenticate(rt, scope)
        data = [_model_obj(name, "truckllm", rt.created) for name in rt.resolver.aliases]
        seen = set(rt.resolver.aliases)
        for name, targets in rt.resolver.models.items():
            if name not in seen:
                seen.add(name)
                data.append(_model_obj(name, targets[0].provider_id, rt.created))
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}), request_id)

    async def _model(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        self._authenticate(rt, scope)
        name = scope["path"][len("/v1/models/") :]
        route = rt.resolver.resolve(name)
        if route is None:
            raise model_not_found(name)
        owner = "truckllm" if name in rt.resolver.aliases else route.targets[0].provider_id
        await send_json(send, 200, orjson.dumps(_model_obj(name, owner, rt.created)), request_id)

    async def _admin(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        body = b""
        if scope["method"] == "POST":
            limit = min(rt.config.server.max_body_bytes, 1024 * 1024)
            body = await read_body(scope, receive, limit)
        status, payload = await self.admin.handle(rt, scope, body)
        await send_json(send, status, payload, request_id)

    async def _readyz(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        """200 while serving (``degraded`` with reasons when a dependency such as a shared store
        is down but the gateway still serves on local state); 503 while draining."""
        if self.draining:
            await send_json(send, 503, b'{"status":"draining"}', request_id)
            return
        problems = {}
        for name, check in self.health_checks.items():
            ok, reason = check()
            if not ok:
                problems[name] = reason
        body = {
            "status": "degraded" if problems else "ready",
            "problems": problems,
            "config": rt.config.source,
        }
        await send_json(send, 200, orjson.dumps(body), request_id)

    async def _healthz(
        self, rt: Runtime, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        await send_json(
            send, 200, orjson.dumps({"status": "ok", "version": __version__}), request_id
        )


_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}


def _fill(rec: RequestRecord, served: Served, accounting: Accounting) -> None:
    """What only the committed attempt knows: where it went, what it used, what it cost."""
    key = served.pick.key
    rec.provider, rec.key_id, rec.upstream_model = (
        served.target.provider_id,
        key.id,
        served.target.model,
    )
    rec.attempts, rec.upstream_s = served.attempts, served.upstream_s
    if rec.usage is not None:
        return  # priced when the response started
    usage = settle_usage(served, rec.error_code is None and rec.status == 200)
    if usage is not None:
        rec.usage = usage
        rec.cost_usd = accounting.cost_nanos(key.pricing, usage) / 1e9


def _model_obj(name: str, owner: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner}
