"""The ``http`` store: the store's protocol over HTTP, so operators can plug in their own backend.

Three JSON endpoints under ``storage.runtime.url`` (``POST``, ``Content-Type: application/json``,
``Authorization: Bearer <token>`` when a token is configured); any status but 200 is a failure
and the gateway retries later. The README documents the bodies; the reference implementation is
:mod:`truckllm.testing.store_server`.

- ``/sync``: a batch in, the view out. Must apply each ``(origin, seq)`` at most once.
- ``/lease``: ``{scope, asks, adjusts}`` in, ``{grants}`` out, applied atomically per scope.
- ``/query``: ``{group_by, start, end, bucket}`` in, ``{granularity, rows}`` out.
- ``/kv/get``: ``{key}`` in, ``{value}`` out (base64, or null when there is none).
- ``/kv/set``: ``{key, value, ttl_s}`` in (value in base64); ``/kv/delete``: ``{key}`` in,
  ``{deleted}`` out.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson

from truckllm.http.client import HTTPClient, HTTPClientError, ParsedURL
from truckllm.http.exchange import post_whole
from truckllm.http.proxy import Proxy, ProxyEnv
from truckllm.stores.base import (
    Adjust,
    Ask,
    Batch,
    Grant,
    StoreError,
    UsageQuery,
    UsageResult,
    View,
)
from truckllm.stores.tables import batch_to_json, view_from_json


class HttpStore:
    shared = True

    def __init__(
        self, url: str, token: str | None = None, timeout_s: float = 1.0, proxy: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._proxy_option = proxy  # None: the environment's proxies; "none": direct
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout_s
        self._client: HTTPClient | None = None
        self._urls: dict[str, tuple[ParsedURL, Proxy | None]] = {}
        self._error: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> HttpStore:
        if config.url is None:
            raise StoreError("storage.runtime.url is required for the http store")
        token = config.token.reveal() if config.token is not None else None
        return cls(config.url.reveal(), token, config.timeout, getattr(config, "proxy", None))

    async def _post(self, path: str, body: Any) -> Any:
        if self._client is None:
            self._client = HTTPClient(keepalive=30.0, proxies=ProxyEnv.from_process())
        try:
            route = self._urls.get(path)
            if route is None:
                url = ParsedURL.parse(self.url + path)
                proxy = self._client.proxies.choose(self._proxy_option, *url.origin)
                route = self._urls[path] = (url, proxy)
            status, _, data = await post_whole(
                self._client,
                route[0],
                self._headers,
                orjson.dumps(body),
                self._timeout,
                proxy=route[1],
            )
            if status != 200:
                raise StoreError(f"{path}: HTTP {status}: {data[:200]!r}")
            result = orjson.loads(data)
        except (
            HTTPClientError,
            OSError,
            TimeoutError,
            ValueError,  # a URL that is not http(s); orjson's decode error too
            StoreError,
        ) as exc:
            self._error = f"http store unreachable: {type(exc).__name__}: {exc}"[:300]
            raise StoreError(self._error) from exc
        self._error = None
        return result

    async def sync(self, batch: Batch) -> View:
        return view_from_json(await self._post("/sync", batch_to_json(batch)))

    async def lease(
        self, scope: str, asks: Sequence[Ask], adjusts: Sequence[Adjust]
    ) -> list[Grant]:
        data = await self._post(
            "/lease",
            {
                "scope": scope,
                "asks": [ask_to_json(a) for a in asks],
                "adjusts": [adjust_to_json(a) for a in adjusts],
            },
        )
        return [
            Grant(str(g["window"]), int(g["amount"]), int(g["bucket"]), float(g.get("retry_s", 0)))
            for g in data["grants"]
        ]

    async def query(self, q: UsageQuery) -> UsageResult:
        data = await self._post(
            "/query",
            {"group_by": list(q.group_by), "start": q.start, "end": q.end, "bucket": q.bucket},
        )
        rows = [
            (tuple(r["group"]), r.get("bucket"), [int(c) for c in r["counts"]])
            for r in data["rows"]
        ]
        return UsageResult(data["granularity"], rows)

    async def kv_get(self, key: str) -> bytes | None:
        value = (await self._post("/kv/get", {"key": key})).get("value")
        return base64.b64decode(value) if isinstance(value, str) else None

    async def kv_set(self, key: str, value: bytes, ttl_s: float) -> None:
        body = {"key": key, "value": base64.b64encode(value).decode(), "ttl_s": ttl_s}
        await self._post("/kv/set", body)

    async def kv_delete(self, key: str) -> bool:
        return bool((await self._post("/kv/delete", {"key": key})).get("deleted"))

    def health(self) -> tuple[bool, str | None]:
        return self._error is None, self._error

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def ask_to_json(a: Ask) -> dict[str, Any]:
    return {
        "window": a.window,
        "span_s": a.span_s,
        "limit": a.limit,
        "amount": a.amount,
        "ttl_s": a.ttl_s,
        "slack_s": a.slack_s,
    }


def adjust_to_json(a: Adjust) -> dict[str, Any]:
    return {"window": a.window, "span_s": a.span_s, "amount": a.amount, "bucket": a.bucket}
