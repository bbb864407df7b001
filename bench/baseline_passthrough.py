"""Bare passthrough baseline: the leanest reasonable HTTP proxy for one route.

A raw ASGI callable under uvicorn (uvloop + httptools) that forwards
``POST /v1/chat/completions`` to an upstream with a shared aiohttp client
session and returns the upstream body verbatim.  No routing table, no
validation, no JSON parsing, no logging: it is the reference for "what a
perfect Python gateway costs" in ``bench/overhead.py``.

Usage::

    python bench/baseline_passthrough.py --listen 127.0.0.1:9001 \\
        --upstream http://127.0.0.1:9000/v1 [--api-key sk-bench-1]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE = "/v1/chat/completions"


class Passthrough:
    """ASGI app forwarding one route to ``{upstream}/chat/completions``."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {api_key}",
        }
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                    auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(total=60),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != ROUTE or scope["method"] != "POST":
            await _respond(send, 404, b"application/json", b'{"error":"not found"}')
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        assert self.session is not None, "lifespan startup did not run"
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                data = await resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "application/json")
        except aiohttp.ClientError:
            await _respond(send, 502, b"application/json", b'{"error":"bad gateway"}')
            return
        await _respond(send, status, ctype.encode("latin-1"), data)


async def _respond(send: Send, status: int, ctype: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9001", help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://h:p/v1")
    parser.add_argument("--api-key", default="sk-bench-1")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        Passthrough(args.upstream, args.api_key),
        host=host or "127.0.0.1",
        port=int(port),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
