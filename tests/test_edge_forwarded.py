"""``server.trusted_proxies``: X-Forwarded-For believed only from a trusted peer, its rightmost
untrusted address taken as the client, over real loopback sockets (the peer is 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import Gateway
from hypothesis import given
from hypothesis import strategies as st
from test_http_server import Served, exchange, get, serve

from truckllm.http.forwarded import forwarded_client, parse_networks
from truckllm.http.server import EdgeLimits
from truckllm.telemetry.record import RequestRecord

__all__ = ["serve"]  # the fixture, imported for its use by name

LB = parse_networks(["127.0.0.0/8", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("values", "client"),
    [
        ([b"203.0.113.7"], "203.0.113.7"),
        ([b"203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # our own balancer's hop skipped
        ([b"6.6.6.6, 203.0.113.7"], "203.0.113.7"),  # the client's own claim is ignored
        ([b"6.6.6.6", b"203.0.113.7, 10.0.0.9"], "203.0.113.7"),  # headers joined in order
        ([b"10.0.0.1, 10.0.0.2"], "10.0.0.1"),  # all trusted: the leftmost
        ([b"garbage"], None),
        ([b"203.0.113.7, garbage, 10.0.0.2"], "10.0.0.2"),  # the walk stops at garbage
        ([b"[2001:db8::1]:4711"], "2001:db8::1"),
        ([b"203.0.113.7:5000"], "203.0.113.7"),
        ([b"::ffff:203.0.113.7"], "203.0.113.7"),
        ([b""], None),
    ],
)
def test_rightmost_untrusted_address(values: list[bytes], client: str | None) -> None:
    assert forwarded_client(values, LB) == client


@given(st.lists(st.binary(max_size=60), max_size=4))
def test_any_header_bytes_give_an_address_or_none(values: list[bytes]) -> None:
    result = forwarded_client(values, LB)
    assert result is None or isinstance(result, str)


def client_seen(srv: Served, *headers: str) -> list[Any]:
    with srv.connect() as sock:
        (resp,) = exchange(sock, get("/echo", *headers))
    client: list[Any] = resp.json()["client"]
    return client


def test_only_a_trusted_peer_sets_the_client(serve: Callable[..., Served]) -> None:
    behind = serve(limits=EdgeLimits(trusted_proxies=parse_networks(["127.0.0.1/32"])))
    assert client_seen(behind, "X-Forwarded-For: 6.6.6.6, 203.0.113.7") == ["203.0.113.7", 0]
    assert client_seen(behind, "X-Forwarded-For: 203.0.113.7, 127.0.0.1") == ["203.0.113.7", 0]
    peer = client_seen(behind)  # no header: the peer
    assert peer[0] == "127.0.0.1" and peer[1] > 0
    assert client_seen(behind, "X-Forwarded-For: not-an-ip")[0] == "127.0.0.1"
    # a peer outside trusted_proxies (and the default, none) cannot choose its address
    for limits in (EdgeLimits(trusted_proxies=parse_networks(["10.0.0.0/8"])), EdgeLimits()):
        direct = serve(limits=limits)
        assert client_seen(direct, "X-Forwarded-For: 203.0.113.7")[0] == "127.0.0.1"


def test_request_records_carry_the_real_client(
    gateway_factory: Callable[..., Gateway], upstream: Any
) -> None:
    gw = gateway_factory(
        f"""
        server:
          trusted_proxies: ["127.0.0.0/8"]
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: k1, secret: sk-1}}]
        model_aliases:
          gpt-4: openai:gpt-4
        """
    )
    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    r = gw.post("/v1/chat/completions", body, headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status == 200
    r = gw.post("/v1/chat/completions", {"model": "nope", "messages": []})
    assert r.status >= 400
    gw.settled()
    assert [rec.client_ip for rec in records] == ["203.0.113.7", "127.0.0.1"]


def test_trusted_proxies_are_validated() -> None:
    from truckllm.config import ConfigError, parse_config
    from truckllm.providers import provider_registry

    yaml = "server: {trusted_proxies: [10.0.0.0/8, nonsense]}\nproviders: [{id: openai}]\n"
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies\[1\]: 'nonsense'"):
        parse_config(yaml, "<test>", {}, provider_registry().names())
