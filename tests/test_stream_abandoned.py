"""A stream given up before its relay began still reports its attempt and closes its upstream
connection: here the client leaves while the Responses API's store is keeping the stream's first
event (``Keeper.stream_started``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson
from helpers import Gateway, LoopServer, assert_no_attempt_in_flight

from truckllm.testing.mock import MockUpstream

GatewayFactory = Callable[..., Gateway]


class HangingStore(LoopServer):
    """An ``http`` state store that never answers ``/kv/set`` (``asked`` is set when one comes)
    and fails everything else."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if head.startswith(b"POST /kv/set "):
                    self.asked.set()
                    await reader.read()  # no answer, until the gateway hangs up
                    break
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def test_a_client_that_leaves_while_the_first_event_is_kept_leaves_no_attempt_in_flight(
    gateway_factory: GatewayFactory, serve_fake: Callable[..., Any]
) -> None:
    upstream = serve_fake(MockUpstream)
    store = HangingStore()
    try:
        gw = gateway_factory(f"""
            server:
              api_keys: [ck-1]
            providers:
              - id: native
                base_url: {upstream.url}
                responses_api: true
                keys: [{{id: n1, secret: sk-n-1}}]
            model_aliases:
              direct: native:gpt-4.1-mini
            storage: {{runtime: {{type: http, url: "{store.url}", timeout: 30}}}}
            """)
        body = orjson.dumps({"model": "direct", "input": "Hi", "stream": True})
        with socket.create_connection((gw.server.host, gw.server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ck-1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            assert store.asked.wait(10)  # the stream's first event is being kept
        assert_no_attempt_in_flight(gw)  # the client left: the attempt reported all the same
    finally:
        store.stop()
