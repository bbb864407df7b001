"""The reference server of the ``http`` store protocol: the in-memory tables behind aiohttp.

Run it beside the tests, or as a starting point for a store of your own. It keeps everything in
memory (a real one would persist), applies each batch at most once per ``(origin, seq)``, and
serialises leases per process (one event loop), which makes each atomic.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from aiohttp import web

from truckllm.stores.base import Adjust, Ask, UsageQuery
from truckllm.stores.kv import KVTable
from truckllm.stores.tables import Tables, batch_from_json, view_to_json


class StoreServer:
    def __init__(self, token: str | None = None) -> None:
        self.tables = Tables()
        self.kv = KVTable()
        self.token = token
        self.requests = 0
        self.fail = False  # answer 503 to everything (tests of a store outage)
        self.url = ""
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/sync", self._sync)
        app.router.add_post("/lease", self._lease)
        app.router.add_post("/query", self._query)
        app.router.add_post("/kv/get", self._kv_get)
        app.router.add_post("/kv/set", self._kv_set)
        app.router.add_post("/kv/delete", self._kv_delete)
        self.app = app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        self.url = f"http://{host}:{server.sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _body(self, request: web.Request) -> Any:
        self.requests += 1
        if self.fail:
            raise web.HTTPServiceUnavailable()
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            raise web.HTTPUnauthorized()
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest() from None

    @staticmethod
    def _json(data: Any) -> web.Response:
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _sync(self, request: web.Request) -> web.Response:
        try:
            batch = batch_from_json(await self._body(request))
        except (KeyError, ValueError, TypeError):
            raise web.HTTPBadRequest() from None
        self.tables.apply(batch)
        return self._json(view_to_json(self.tables.view(batch.now)))

    async def _lease(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        asks = [
            Ask(a["window"], a["span_s"], a["limit"], a["amount"], a["ttl_s"], a["slack_s"])
            for a in data.get("asks", ())
        ]
        adjusts = [
            Adjust(a["window"], a["span_s"], a["amount"], a.get("bucket"))
            for a in data.get("adjusts", ())
        ]
        grants = self.tables.lease(data["scope"], asks, adjusts, int(time.time() * 1000))
        return self._json(
            {
                "grants": [
                    {
                        "window": g.window,
                        "amount": g.amount,
                        "bucket": g.bucket,
                        "retry_s": g.retry_s,
                    }
                    for g in grants
                ]
            }
        )

    async def _query(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        q = UsageQuery(
            tuple(data.get("group_by", ())),
            int(data.get("start", 0)),
            data.get("end"),
            data.get("bucket"),
        )
        result = self.tables.query(q, time.time())
        return self._json(
            {
                "granularity": result.granularity,
                "rows": [{"group": list(g), "bucket": t, "counts": c} for g, t, c in result.rows],
            }
        )

    async def _kv_get(self, request: web.Request) -> web.Response:
        value = self.kv.get(str((await self._body(request))["key"]))
        return self._json(
            {"value": base64.b64encode(value).decode() if value is not None else None}
        )

    async def _kv_set(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        self.kv.set(str(data["key"]), base64.b64decode(data["value"]), float(data["ttl_s"]))
        return self._json({})

    async def _kv_delete(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        return self._json({"deleted": self.kv.delete(str(data["key"]))})
