"""The response cache on the request path: :meth:`ResponseCache.lookup` after admission (a hit
is answered from the cache, :meth:`ResponseCache.replay`); on a miss the :class:`Lookup` watches
the answer go out and stores it once it is whole, before its last bytes reach the client.

Identical whole (not streamed) misses in flight at the same time make one upstream call: the
others wait for it and are answered as hits. A backend that cannot answer is a miss."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from truckllm.cache.capture import calls_tools, internal_of, tapped
from truckllm.cache.entry import Backend, Entry, decode, encode
from truckllm.cache.events import PASSTHROUGH_DIALECTS, EventKeeper, whole_of
from truckllm.cache.key import (
    cache_key,
    directives,
    kept_by_gateway,
    namespace_of,
    sampled,
    varying,
)
from truckllm.cache.memory import MemoryBackend
from truckllm.cache.redis import RedisBackend
from truckllm.cache.replay import Assembler
from truckllm.cache.stats import CacheStats
from truckllm.config import Config, Pricing
from truckllm.config.schema import CacheConfig
from truckllm.gateway import Route, Runtime, Served
from truckllm.providers.base import INTERNAL, Usage

log = logging.getLogger("truckllm.cache")

Price = Callable[[Pricing, Usage], int]  # nano-dollars
ASGISend = Callable[[dict[str, Any]], Any]


def build_backend(config: Config) -> Backend | None:
    c = config.cache
    if not c.enabled:
        return None
    if c.type == "memory":
        return MemoryBackend(c.max_entries, c.max_bytes)
    store = config.storage.runtime
    url = c.url or store.url
    assert url is not None  # validated
    return RedisBackend(url.reveal(), c.prefix or f"{store.prefix}:cache", c.timeout)


def _backend_id(config: Config) -> tuple[object, ...]:
    c, store = config.cache, config.storage.runtime
    url = c.url or store.url
    return (
        c.enabled,
        c.type,
        c.max_entries,
        c.max_bytes,
        url.reveal() if url else None,
        c.prefix or store.prefix,
        c.timeout,
    )


class ResponseCache:
    """One per app; follows reloads (:meth:`attach`). ``price`` prices a usage at a key's
    pricing (what a hit saves)."""

    def __init__(self, config: Config, price: Price, backend: Backend | None = None) -> None:
        self.settings: CacheConfig = config.cache
        self.price = price
        self.stats = CacheStats()
        self.backend: Backend | None = None
        self._backend_id: tuple[object, ...] = ()
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._use(config, backend)

    def _use(self, config: Config, backend: Backend | None = None) -> None:
        old = self.backend
        self.backend = backend if backend is not None else build_backend(config)
        self._backend_id = _backend_id(config)
        b = self.backend
        self.stats.size = (
            (lambda: (len(b), b.bytes)) if isinstance(b, MemoryBackend) else (lambda: None)
        )
        self.stats.backend_errors = (
            (lambda: b.errors) if isinstance(b, RedisBackend) else (lambda: 0)
        )
        if old is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # swapped outside the serving loop: nothing is open yet
                return
            task = loop.create_task(old.close(), name="cache-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def attach(self, rt: Runtime) -> None:
        """Adopt a reloaded configuration; the backend is rebuilt only when its settings moved."""
        self.settings = rt.config.cache
        if _backend_id(rt.config) != self._backend_id:
            self._use(rt.config)

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- the request path ---------------------------------------------------------------------

    async def lookup(
        self,
        headers: list[tuple[bytes, bytes]],
        client: str,
        endpoint: str,
        body: dict[str, Any],
        stream: bool,
        route: Route,
        rec: Any,
    ) -> Lookup | None:
        """``None`` when the cache has no part in the request; else the lookup, with ``entry``
        set on a hit. ``rec`` (the request's record) learns the result."""
        c = self.settings
        if self.backend is None or endpoint not in c.endpoints:
            return None
        d = directives(headers)
        if d.no_store or (not c.sampled and sampled(endpoint, body)):
            self.stats.results["bypass"] += 1
            rec.cache = "bypass"
            return Lookup(self, "bypass", "", endpoint, body, stream, 0.0)
        ns = namespace_of(client, c.namespace == "shared" and not kept_by_gateway(endpoint, body))
        targets = [(t.provider_id, t.model) for t in route.targets]
        key = cache_key(ns, endpoint, targets, body, varying(endpoint, headers))
        look = Lookup(self, "miss", key, endpoint, body, stream, c.ttl if d.ttl is None else d.ttl)
        if not d.no_cache:
            entry = await self._get(key)
            flight = self._flights.get(key) if entry is None and not stream else None
            if flight is not None:
                entry = await asyncio.shield(flight)
                self.stats.coalesced += entry is not None
            if entry is not None and look.can_replay(entry):
                look.status, look.entry = "hit", entry
                rec.cache = "hit"
                self.stats.results["hit"] += 1
                return look
        if not stream and key not in self._flights:
            look.flight = self._flights[key] = asyncio.get_running_loop().create_future()
        self.stats.results["miss"] += 1
        rec.cache = "miss"
        return look

    async def _get(self, key: str) -> Entry | None:
        assert self.backend is not None
        data = await self.backend.get(key)
        return decode(data) if data is not None else None

    async def _put(self, look: Lookup, entry: Entry) -> None:
        look.settle(entry)
        data = encode(entry)
        if len(data) > self.settings.max_entry_bytes or look.ttl <= 0 or self.backend is None:
            return
        self.stats.stored += 1
        self.stats.bytes_stored += len(data)
        await self.backend.set(look.key, data, look.ttl)


class Lookup:
    """One request's dealings with the cache."""

    def __init__(
        self,
        cache: ResponseCache,
        status: str,
        key: str,
        endpoint: str,
        body: dict[str, Any],
        stream: bool,
        ttl: float,
    ) -> None:
        self.cache = cache
        self.status = status  # "hit", "miss" or "bypass": the x-truckllm-cache header
        self.key = key
        self.endpoint = endpoint
        self.body = body
        self.stream = stream
        self.ttl = ttl
        self.entry: Entry | None = None
        self.flight: asyncio.Future[Entry | None] | None = None
        self.served: Served | None = None
        self.rec: Any = None
        self._send: ASGISend | None = None
        self._status = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def can_replay(self, entry: Entry) -> bool:
        """A stream needs the internal form. A Responses API answer the gateway keeps (``store``)
        is replayed only as it was kept: whole, with the id it was kept under."""
        if self.stream and entry.events is not None:
            return True  # the client's own dialect, as the upstream sent it (the same ids)
        if self.stream and entry.internal is None:
            return False
        if kept_by_gateway(self.endpoint, self.body):
            return not self.stream and entry.body is not None
        return entry.body is not None or entry.internal is not None

    # -- a miss: watch the answer go out, keep it when whole ----------------------------------

    def wrap(self, send: ASGISend, rec: Any) -> ASGISend:
        """``send`` that adds ``x-truckllm-cache`` and keeps a whole answer before its body goes
        out."""
        self._send, self.rec = send, rec
        return self._sending

    async def _sending(self, message: dict[str, Any]) -> None:
        assert self._send is not None
        if message["type"] == "http.response.start":
            self._status = message["status"]
            headers = [*message.get("headers", ()), (b"x-truckllm-cache", self.status.encode())]
            message = {**message, "headers": headers}
        elif (
            self.status == "miss"
            and not self._done
            and self.served is not None
            and self.served.reply.body
        ):
            part = message.get("body", b"")
            self._parts.append(part)
            self._size += len(part)
            if self._size > self.cache.settings.max_entry_bytes:
                # Too large to keep (a large answer relayed as it arrives): not held either.
                self._parts, self._done = [], True
                self.settle(None)
            elif not message.get("more_body"):
                await self._keep_whole(b"".join(self._parts))
        await self._send(message)

    async def tap(self, served: Served) -> None:
        """The answer is committed: a stream in the internal form is read on its way out (and
        kept before its first batch goes when that batch holds all of it)."""
        self.served = served
        reply = served.reply
        if self.status != "miss" or reply.events is None:
            return
        if not reply.content_type.startswith("text/event-stream"):
            return
        if reply.dialect in PASSTHROUGH_DIALECTS:
            self._tap_passthrough(served)
            return
        if reply.dialect != INTERNAL:
            return
        assembler = Assembler(self.cache.settings.max_entry_bytes)  # larger: not kept anyway
        if served.first:
            assembler.feed(served.first)

        async def complete() -> None:
            if not self._done and not assembler.broken:
                internal = assembler.completion(reply.usage)
                await self._keep(None, internal, reply.usage or assembler.usage, "application/json")

        if assembler.done:
            await complete()
        reply.events = tapped(reply.events, assembler, complete)

    def _tap_passthrough(self, served: Served) -> None:
        """A stream passed through untranslated: its events kept as they were once it ended
        well, with the whole answer they spell out."""
        reply = served.reply
        assert reply.events is not None
        keeper = EventKeeper(reply.dialect, self.cache.settings.max_entry_bytes)
        if served.first:
            keeper.feed(served.first)

        async def complete() -> None:
            events = keeper.events
            if self._done or events is None:
                return
            body = whole_of(reply.dialect, events)
            if body is None:
                self._done = True
                self.settle(None)
                return
            await self._keep(body, None, reply.usage, "application/json", events)

        reply.events = tapped(reply.events, keeper, complete)

    async def _keep_whole(self, body: bytes) -> None:
        served = self.served
        assert served is not None
        if self._status != 200 or served.reply.status != 200:
            return
        internal = internal_of(served) if self.endpoint != "embeddings" else None
        await self._keep(body, internal, served.reply.usage, served.reply.content_type)

    async def _keep(
        self,
        body: bytes | None,
        internal: dict[str, Any] | None,
        usage: Usage | None,
        ctype: str,
        events: bytes | None = None,
    ) -> None:
        if self._done:
            return
        self._done = True
        served = self.served
        assert served is not None
        if not self.cache.settings.tool_calls and calls_tools(internal, body):
            self.settle(None)
            return
        cost = self.cache.price(served.pick.key.pricing, usage) if usage is not None else 0
        entry = Entry(
            ctype, body, internal, usage, cost, time.time(), served.target.provider_id,
            served.target.model, events,
        )  # fmt: skip
        await self.cache._put(self, entry)

    def settle(self, entry: Entry | None) -> None:
        """Release the identical requests waiting for this one (``entry``: what they get)."""
        flight, self.flight = self.flight, None
        if flight is not None:
            if self.cache._flights.get(self.key) is flight:
                del self.cache._flights[self.key]
            if not flight.done():
                flight.set_result(entry)

    def close(self) -> None:
        """The request is over: anyone still waiting on it gets a miss."""
        self.settle(None)


def with_send(req: Any, send: ASGISend) -> Any:
    """The request with another ``send`` (and no ``push``, which would write past it)."""
    return dataclasses.replace(req, send=send, push=None)


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)
