"""The proxied request's pipeline, shared by every inbound API endpoint: resolve the model,
admit (client rules), execute (the gateway's attempt loop), respond, record."""

from __future__ import annotations

import asyncio
import logging
import time

from truckllm.accounting import Accounting, settle_usage
from truckllm.api.asgi import ClientGone, DisconnectWatch, client_ip
from truckllm.api.respond import Streams, send_stream, send_whole, served_headers
from truckllm.api.routes import Request
from truckllm.api.steps import Proxied
from truckllm.cache import Lookup, ResponseCache, replay, with_send
from truckllm.errors import APIError, model_not_found
from truckllm.gateway import Route, Served, execute
from truckllm.routing import Estimate
from truckllm.telemetry.record import RecordBus, RequestRecord
from truckllm.telemetry.tracing import RequestTrace, Tracer

log = logging.getLogger("truckllm.api")


class Proxy:
    """Runs proxied requests; publishes exactly one record for each, whatever happens."""

    def __init__(
        self, accounting: Accounting, records: RecordBus, cache: ResponseCache | None = None
    ) -> None:
        self.accounting = accounting
        self.records = records
        self.cache = cache
        self.tracer: Tracer | None = None  # set at start when tracing.endpoint is
        self.streams = Streams()  # cut with an error event at a shutdown's drain deadline

    async def run(self, req: Request, p: Proxied) -> None:
        rt = req.rt
        route = p.route or rt.resolver.resolve(p.model)
        if route is None:
            raise model_not_found(p.model)
        alias = p.model if p.model in rt.resolver.aliases else None
        rec = RequestRecord(
            time.time(),
            req.id,
            p.label or p.endpoint,
            p.client,
            p.model,
            alias,
            stream=p.stream,
            session_id=p.session_id,
            client_ip=client_ip(req.scope),
        )
        tracer = self.tracer
        trace = None if tracer is None else tracer.begin(req.scope, p.endpoint, p.body, rt.config)
        try:
            # models, limits, budgets; a token estimate made for a tpm limit is reused below
            est = await self.accounting.admit(
                rec, p.body, len(p.raw), p.endpoint, rt.default_output_tokens
            )
        except APIError as err:
            rec.status, rec.error_code, err.recorded = err.status, err.code, True
            self.records.publish(rec)
            if trace is not None:
                trace.end(rec)
            raise
        look = None
        if self.cache is not None and self.cache.backend is not None:  # a hit is answered here
            label, headers = p.label or p.endpoint, req.scope["headers"]
            look = await self.cache.lookup(headers, p.client, label, p.body, p.stream, route, rec)
            if look is not None and look.entry is not None:
                await self._hit(req, p, rec, look, trace)
                return
            if look is not None:
                req = with_send(req, look.wrap(req.send, rec))
        await self._serve(req, p, route, rec, look, trace, est)

    async def _hit(
        self, req: Request, p: Proxied, rec: RequestRecord, look: Lookup, trace: RequestTrace | None
    ) -> None:
        t0 = time.perf_counter()
        try:
            await replay(req.send, req.id, look, p.egress, p.wants_usage, rec)
        except OSError:  # the server's send() after the client left
            rec.status, rec.error_code = 499, "client_closed_request"
            raise ClientGone from None
        finally:
            rec.latency_s = time.perf_counter() - t0
            self.records.publish(rec)
            if trace is not None:
                trace.end(rec)

    async def _serve(
        self,
        req: Request,
        p: Proxied,
        route: Route,
        rec: RequestRecord,
        look: Lookup | None,
        trace: RequestTrace | None,
        est: Estimate | None = None,
    ) -> None:
        t0 = time.perf_counter()
        served: Served | None = None
        watch = DisconnectWatch(req.scope, req.receive)
        held = req.rt.router.affinity  # prompt-cache affinity: the conversation's key
        affinity = held.ident(p.model, p.body, req.scope["headers"], p.session_id) if held else None
        try:
            served = await execute(
                req.rt,
                route,
                p.endpoint,
                p.body,
                p.raw,
                p.stream,
                p.wants_usage,
                req.id,
                p.inbound,
                p.exclude_keys,
                affinity,
                trace,
                est,
            )
            rec.status, rec.error_code = served.reply.status, served.reply.error_code
            if look is not None:
                await look.tap(served)
            headers = served_headers(req.id, served)
            translate = p.egress is not None and served.reply.dialect != p.egress.dialect
            if translate:
                headers += p.translated_headers
            if served.reply.events is None:
                egress = p.egress if translate else None
                await send_whole(req.send, served, rec, headers, self.accounting, egress, p.keeper)
            else:
                await send_stream(
                    req.send,
                    served,
                    rec,
                    headers,
                    t0,
                    p.egress,
                    translate,
                    p.keeper,
                    self.streams,
                    req.push,
                )
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
            if look is not None:
                look.close()
            rec.latency_s = time.perf_counter() - t0
            if served is not None:
                served.settle()
                self._fill(rec, served)
            self.records.publish(rec)
            if trace is not None:
                trace.end(rec, served.reply.body if served is not None else None)

    def _fill(self, rec: RequestRecord, served: Served) -> None:
        """What only the committed attempt knows: where it went, what it used, what it cost."""
        key = served.pick.key
        rec.provider, rec.key_id = served.target.provider_id, key.id
        rec.upstream_model, rec.response_model = served.target.model, served.reply.model
        rec.attempts, rec.upstream_s = served.attempts, served.upstream_s
        if rec.usage is not None:
            return  # priced when the response started
        usage = settle_usage(served, rec.error_code is None and rec.status == 200)
        if usage is not None:
            rec.usage = usage
            rec.cost_usd = self.accounting.cost_nanos(key.pricing, usage) / 1e9
