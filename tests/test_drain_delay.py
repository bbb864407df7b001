"""``server.drain_delay``: after SIGTERM the gateway says it is draining (/readyz 503) while it
still accepts and serves, every answer closing its connection, so that a load balancer polling
/readyz takes it out before the listener closes; a second signal cuts the wait short."""

from __future__ import annotations

import http.client
from collections.abc import Callable

import pytest
from helpers import Gateway, wait_until

from truckllm.config import ConfigError, parse_config
from truckllm.testing.mock import MockUpstream

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


def config(url: str, delay: float) -> str:
    return f"""
    providers:
      - id: openai
        base_url: {url}
        models: [gpt-4o-mini]
        keys: [{{id: k1, secret: sk-1}}]
    server: {{drain_delay: {delay}}}
    """


def chat(conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/chat/completions", CHAT, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp


def readyz(gw: Gateway) -> int:
    return gw.request("GET", "/readyz").status


def test_serves_with_readyz_503_until_the_delay_or_a_second_signal(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, 600))
    host, port = "127.0.0.1", gw.server.port
    kept = http.client.HTTPConnection(host, port, timeout=10)
    first = chat(kept)
    assert first.status == 200 and first.getheader("connection") != "close"  # kept alive
    loop = gw.server.loop
    assert loop is not None
    loop.call_soon_threadsafe(gw.server.server.exit)  # SIGTERM
    wait_until(lambda: readyz(gw) == 503, 10, "/readyz answering 503")  # a new connection
    assert gw.request("GET", "/readyz").json() == {"status": "draining"}
    # The connection kept alive from before is still open and served, and closed after.
    resp = chat(kept)
    assert resp.status == 200 and resp.getheader("connection") == "close"
    kept.close()
    fresh = http.client.HTTPConnection(host, port, timeout=10)
    resp = chat(fresh)  # new clients are not refused either
    assert resp.status == 200 and resp.getheader("connection") == "close"
    fresh.close()
    loop.call_soon_threadsafe(gw.server.server.exit)  # a second signal: no 600 s wait, a drain
    gw.server._thread.join(30)
    assert not gw.server._thread.is_alive()
    with pytest.raises(OSError):
        http.client.HTTPConnection(host, port, timeout=2).connect()


def test_without_a_delay_the_listener_closes_at_once(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, 0))
    loop = gw.server.loop
    assert loop is not None
    loop.call_soon_threadsafe(gw.server.server.exit)
    gw.server._thread.join(30)
    assert not gw.server._thread.is_alive()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", gw.server.port, timeout=2).connect()


def test_a_negative_delay_is_refused_by_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("server: {drain_delay: -1}\n", "gw.yaml")
    assert any("server.drain_delay" in p and "negative" in p for p in err.value.problems)
