"""Test helpers: a handle on a running gateway, and a tiny stdlib HTTP client."""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from truckllm.api import App
from truckllm.testing.serve import ServerThread


@dataclass
class Gateway:
    app: App
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        return request(method, self.url + path, body, headers, raw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def states(self) -> dict[str, Any]:
        self.settled()
        return self.app.runtime.router.states()

    def settled(self) -> None:
        """Wait until the gateway's loop has finished the step that wrote the last response: the
        work after a write (a success's report to the router, the record) happens in that same
        step, which a test thread reading state could otherwise overtake."""
        loop = self.server.loop
        assert loop is not None
        done = threading.Event()
        loop.call_soon_threadsafe(done.set)
        assert done.wait(5), "the gateway's loop is stuck"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 15.0,
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(
            method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=hdrs
        )
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def sse_events(body: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order."""
    out = []
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out
