"""Failover through a real gateway when the retry budget is spent: the budget still stops retries
against a struggling provider, but not a move to another provider in good health; and a flapping
first target of a priority alias is ejected, after which first attempts go to the healthy one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers import Gateway

from truckllm.testing.mock import KeyBehaviour, MockUpstream, Scripted

CHAT: dict[str, Any] = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
ERROR = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
NO_BUDGET = "retry: {budget_ratio: 0, budget_burst: 0, backoff_base: 0}"


def two_providers(a: str, b: str, extra: str = NO_BUDGET) -> str:
    return f"""
        providers:
          - {{id: a, base_url: {a}, keys: [{{id: a1, secret: ka1}}, {{id: a2, secret: ka2}}]}}
          - {{id: b, base_url: {b}, keys: [{{id: b1, secret: kb1}}]}}
        model_aliases: {{smart: [a:m, b:m]}}
        {extra}
        """


def test_a_spent_budget_still_fails_over_to_a_healthy_provider(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(two_providers(a.url, b.url))
    assert gw.app.runtime.budget.tokens == 0
    for _ in range(3):
        a.script.append(Scripted(status=500, body=ERROR))
        resp = gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "b"
        assert resp.headers["x-truckllm-attempts"] == "2"  # no second key of a: that is a retry


def test_a_spent_budget_stops_retries_against_the_same_or_an_unhealthy_provider(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(two_providers(a.url, b.url).replace("[a:m, b:m]", "[a:m]"))
    a.script.append(Scripted(status=500, body=ERROR))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 500 and len(a.received) == 1  # the other key of a is not tried
    # b in poor health (its breaker open): no exempt failover to it either.
    gw2 = gateway_factory(two_providers(a.url, b.url))
    gw2.app.runtime.router.providers["b"].breaker.open_until = 1e12
    a.script.append(Scripted(status=500, body=ERROR))
    assert gw2.post("/v1/chat/completions", CHAT).status == 500
    assert b.received == []


def test_a_flapping_first_target_is_ejected_and_first_attempts_go_to_the_healthy_one(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    flaky = KeyBehaviour(faults={"500": 0.25, "503": 0.25})
    a = upstream_factory(keys={"ka1": flaky, "ka2": flaky}, seed=4)
    b = upstream_factory()
    gw = gateway_factory(two_providers(a.url, b.url, extra=""))
    statuses = []
    for _ in range(60):
        resp = gw.post("/v1/chat/completions", CHAT)
        statuses.append((resp.status, resp.headers.get("x-truckllm-attempts")))
        if gw.app.runtime.router.providers["a"].outlier.ejected_until:
            break
    assert all(s == 200 for s, _ in statuses), statuses
    assert gw.app.runtime.router.providers["a"].outlier.ejected_until, "never ejected"
    before = len(a.received)
    for _ in range(20):
        resp = gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200 and resp.headers["x-truckllm-attempts"] == "1"
        assert resp.headers["x-truckllm-provider"] == "b"
    assert len(a.received) == before
