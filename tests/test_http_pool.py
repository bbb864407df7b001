"""The upstream client's per-origin connection cap (``providers[].max_connections``) and its
pool wait (``pool_timeout``), over real loopback sockets on both loops; and through the gateway,
a provider at its cap failing over to the next one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import orjson
import pytest
from helpers import Gateway
from test_http_client import Conn, RawServer, Runner, ok, post, run

from truckllm.http.client import HTTPClient, HTTPClientError, PoolTimeout
from truckllm.testing.mock import MockUpstream, Scripted

__all__ = ["run"]  # the fixture, shared with the main suite


class Held:
    """A handler that answers each request only when told: one ``release()`` per answer."""

    def __init__(self) -> None:
        self.requests = asyncio.Queue[int]()
        self.go = asyncio.Queue[None]()
        self.seen = 0

    async def __call__(self, conn: Conn) -> None:
        while True:
            await conn.request()
            self.seen += 1
            await self.requests.put(self.seen)
            await self.go.get()
            await conn.reply(ok(b'{"ok":true}'))

    def release(self) -> None:
        self.go.put_nowait(None)


def test_at_the_cap_a_request_waits_for_a_connection_to_come_back(run: Runner) -> None:
    async def main() -> None:
        held = Held()
        async with RawServer(held) as srv:
            client = HTTPClient()
            target = srv.url()
            tasks = [
                asyncio.create_task(post(client, target, max_connections=2, pool_timeout=10))
                for _ in range(3)
            ]
            await held.requests.get()
            await held.requests.get()
            assert srv.connections == 2 and held.requests.empty()  # the third waits
            held.release()
            first = await next(asyncio.as_completed(tasks))
            assert await first.read() == b'{"ok":true}'  # back to the pool: to the waiter
            await held.requests.get()
            assert srv.connections == 2  # served on the connection that came back
            held.release()
            held.release()
            for resp in await asyncio.gather(*tasks):
                await resp.read()
            await client.close()

    run(main())


def test_a_wait_past_pool_timeout_is_a_pool_timeout(run: Runner) -> None:
    async def main() -> None:
        held = Held()
        async with RawServer(held) as srv:
            client = HTTPClient()
            busy = asyncio.create_task(post(client, srv.url(), max_connections=1))
            await held.requests.get()
            with pytest.raises(PoolTimeout, match=r"busy for 0\.1 s"):
                await post(client, srv.url(), max_connections=1, pool_timeout=0.1)
            assert srv.connections == 1
            held.release()
            assert await (await busy).read() == b'{"ok":true}'
            # The waiter that gave up left nothing behind: the next request gets the connection.
            held.release()
            resp = await post(client, srv.url(), max_connections=1, pool_timeout=0.1)
            await resp.read()
            assert srv.connections == 1
            await client.close()

    run(main())


def test_a_connection_that_closes_makes_room_for_a_new_one(run: Runner) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        if srv.connections == 1:  # the first: a head, half a body, then nothing
            await conn.reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
            await conn.reader.read()
            return
        await conn.reply(ok(b'{"ok":true}'))

    async def main() -> None:
        async with RawServer(handler) as server:
            nonlocal srv
            srv = server
            client = HTTPClient()
            first = await post(client, srv.url(), max_connections=1)
            waiting = asyncio.create_task(post(client, srv.url(), max_connections=1))
            await _waiters(client, 1)
            first.release()  # abandoned mid-body: its connection is closed, room for another
            assert await (await waiting).read() == b'{"ok":true}'
            assert srv.connections == 2
            await client.close()

    srv: RawServer
    run(main())


async def _waiters(client: HTTPClient, n: int) -> None:
    """Until ``n`` requests wait for a connection (the test looks inside the pool)."""
    while sum(len(p.waiters) for p in client._pools.values()) < n:  # noqa: ASYNC110
        await asyncio.sleep(0)


def test_closing_the_client_fails_its_waiters(run: Runner) -> None:
    async def main() -> None:
        held = Held()
        async with RawServer(held) as srv:
            client = HTTPClient()
            busy = asyncio.create_task(post(client, srv.url(), max_connections=1))
            await held.requests.get()
            waiting = asyncio.create_task(post(client, srv.url(), max_connections=1))
            await _waiters(client, 1)
            await client.close()
            with pytest.raises(HTTPClientError):
                await waiting
            busy.cancel()

    run(main())


def test_a_provider_at_its_cap_fails_over_once_the_pool_wait_times_out(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    # a's one connection is held by a stream that stalls after its first event.
    hello = {"choices": [{"delta": {"content": "Hel"}}]}
    a.script.append(Scripted(events=[hello, hello, "[DONE]"], stall_after=1))
    gw = gateway_factory(f"""
        providers:
          - {{id: a, base_url: {a.url}, keys: [{{id: a1, secret: ka1}}],
              max_connections: 1, pool_timeout: 0.2}}
          - {{id: b, base_url: {b.url}, keys: [{{id: b1, secret: kb1}}]}}
        model_aliases: {{smart: [a:m, b:m]}}
        """)
    chat = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    held = socket.create_connection((gw.server.host, gw.server.port), timeout=10)
    body = orjson.dumps({**chat, "stream": True})
    held.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    got = b""
    while b"Hel" not in got:
        got += held.recv(65536)
    resp = gw.post("/v1/chat/completions", chat)
    assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "b"
    assert resp.headers["x-truckllm-attempts"] == "2"
    assert len(a.received) == 1  # the second request never reached a: it waited, then moved
    # With nowhere else to go, the client is told why.
    resp = gw.post("/v1/chat/completions", {**chat, "model": "a:m"})
    assert resp.status == 502 and "max_connections" in resp.json()["error"]["message"]
    assert len(a.received) == 1
    held.close()
