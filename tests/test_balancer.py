"""The balancer end to end: real HTTP against a fake upstream that enforces per-key limits with
real 429s and OpenAI's rate-limit headers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from helpers import Gateway

from truckllm.routing.outcome import Outcome, OutcomeKind
from truckllm.routing.router import Pick
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import KeyBehaviour, MockUpstream, Scripted
from truckllm.testing.simulate import CHAT, fire, slow_and_flaky


def keys_yaml(spec: dict[str, str]) -> str:
    return "\n".join(f"      - {{id: {kid}, secret: {secret}}}" for kid, secret in spec.items())


def test_per_key_limits_hold_under_load_and_no_429_reaches_a_client(
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
    loop_thread: LoopThread,
) -> None:
    # Three keys whose limits the gateway knows, one whose limit only the upstream knows (it
    # learns it from the rate-limit headers and the 429s). Together they cover the load.
    upstream = upstream_factory(
        keys={
            "sk-a": KeyBehaviour(rpm=650),
            "sk-b": KeyBehaviour(rpm=650),
            "sk-c": KeyBehaviour(rpm=650),
            "sk-d": KeyBehaviour(rpm=150),
        }
    )
    gw = gateway_factory(f"""
        providers:
          - id: p
            base_url: {upstream.url}
            models: [m]
            keys:
              - {{id: a, secret: sk-a, limits: {{rpm: 650}}}}
              - {{id: b, secret: sk-b, limits: {{rpm: 650}}}}
              - {{id: c, secret: sk-c, limits: {{rpm: 650}}}}
              - {{id: d, secret: sk-d}}
        routing: {{max_wait: 5}}
        retry: {{max_attempts: 4, budget_burst: 1000}}
        """)
    # What the gateway did and when, on the clock the fake's records use (system-wide
    # monotonic): when it picked each key, and when it learnt of each 429 (by the secret: key
    # "a" is "sk-a" upstream).
    router = gw.app.runtime.router
    picks: dict[str, list[float]] = {}
    learnt: dict[str, list[float]] = {}
    pick, report = router.pick, router._report

    def recording_pick(*args: Any, **kwargs: Any) -> Pick | float:
        choice = pick(*args, **kwargs)
        if isinstance(choice, Pick):
            picks.setdefault("sk-" + choice.key.id, []).append(time.monotonic())
        return choice

    def recording_report(p: Pick, outcome: Outcome) -> None:
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            learnt.setdefault("sk-" + p.key.id, []).append(time.monotonic())
        report(p, outcome)

    router.pick = recording_pick  # type: ignore[method-assign]
    router._report = recording_report  # type: ignore[method-assign]
    results = loop_thread.run(fire(gw.url, 2000, 64), timeout=120)
    statuses = Counter(r.status for r in results)
    assert statuses == {200: 2000}, statuses
    per_key = Counter(key for key, _ in upstream.arrivals)
    assert per_key["sk-a"] <= 650 and per_key["sk-b"] <= 650 and per_key["sk-c"] <= 650
    served_by = Counter(r.headers["x-truckllm-key-id"] for r in results)
    assert served_by["d"] <= 150 and sum(served_by.values()) == 2000
    # No key receives a request while it cools down, except those the gateway had already
    # picked for it when it learnt of the 429 (a pick comes before its arrival, the 429 before
    # the gateway learns of it): at most the picks made before then that had not yet arrived
    # when the 429 went out. Counted, not timed: no allowance for how long the wire takes.
    for key, sent, retry_after in upstream.throttled:
        learnt_at = min(t for t in learnt[key] if t >= sent)
        picked_before = sum(1 for t in picks[key] if t < learnt_at)
        arrived = [t for k, t in upstream.arrivals if k == key]
        on_the_wire = picked_before - sum(1 for t in arrived if t <= sent)
        during = [t for t in arrived if sent < t < sent + retry_after]
        assert len(during) <= on_the_wire, f"{key} got {len(during)} requests while cooling"
    states = gw.states()
    assert sum(s.in_flight for s in states.values()) == 0


def test_when_every_key_is_at_its_limit_the_gateway_answers_429_without_calling_upstream(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: p
            base_url: {upstream.url}
            models: [m]
            keys: [{{id: a, secret: sk-a, limits: {{rpm: 2}}}}, {{id: b, secret: sk-b, limits: {{rpm: 1}}}}]
        routing: {{max_wait: 0}}
        """)
    assert [gw.post("/v1/chat/completions", CHAT).status for _ in range(3)] == [200, 200, 200]
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 429
    err = resp.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "rate_limit_error"
    assert 55 <= int(resp.headers["retry-after"]) <= 62
    assert len(upstream.received) == 3


def test_max_wait_waits_for_the_earliest_reset(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: p
            base_url: {upstream.url}
            models: [m]
            keys: [{{id: a, secret: sk-a}}]
        routing: {{max_wait: 30}}
        """)
    upstream.script.append(
        Scripted(
            status=429,
            headers={"retry-after-ms": "700"},
            body={
                "error": {
                    "message": "slow down",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
        )
    )
    t0 = time.monotonic()
    resp = gw.post("/v1/chat/completions", CHAT)  # gives up after 15 s, half of max_wait
    assert resp.status == 200, resp.body
    assert time.monotonic() - t0 >= 0.7  # it waited for the reset, and not for max_wait
    assert resp.headers["x-truckllm-attempts"] == "2"


def test_server_errors_are_retried_with_backoff_and_the_same_key_when_it_is_the_only_one(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        providers: [{{id: p, base_url: "{upstream.url}", models: [m], keys: [{{id: only, secret: s}}]}}]
        retry: {{max_attempts: 3, max_same_key_retries: 1, backoff_base: 0.01}}
        """)
    upstream.script.append(Scripted(status=503, body=b"busy"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200 and resp.headers["x-truckllm-attempts"] == "2"
    upstream.script.extend([Scripted(status=503, body=b"busy")] * 3)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert (
        resp.status == 503 and resp.headers["x-truckllm-attempts"] == "2"
    )  # one same-key retry only


def test_context_length_errors_move_to_the_configured_larger_alias(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    small, large = upstream_factory(), upstream_factory()
    gw = gateway_factory(f"""
        providers:
          - {{id: small, base_url: "{small.url}"}}
          - {{id: large, base_url: "{large.url}"}}
        model_aliases:
          chat: {{targets: ["small:m-8k"], context_fallback: chat-long}}
          chat-long: large:m-128k
        """)
    small.script.append(
        Scripted(
            status=400,
            body={
                "error": {
                    "message": "This model's maximum context length is 8192 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
        )
    )
    resp = gw.post("/v1/chat/completions", {**CHAT, "model": "chat"})
    assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "large"
    assert large.received[-1].body["model"] == "m-128k"


def test_balance_mode_spreads_an_alias_over_providers(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(f"""
        providers:
          - {{id: a, base_url: "{a.url}", keys: [{{secret: ka}}]}}
          - {{id: b, base_url: "{b.url}", keys: [{{secret: kb}}]}}
        model_aliases:
          both: {{targets: ["a:m", "b:m"], mode: balance}}
          ordered: [a:m, b:m]
        """)
    served = Counter(
        gw.post("/v1/chat/completions", {**CHAT, "model": "both"}).headers["x-truckllm-provider"]
        for _ in range(60)
    )
    assert served["a"] > 10 and served["b"] > 10
    ordered = Counter(
        gw.post("/v1/chat/completions", {**CHAT, "model": "ordered"}).headers["x-truckllm-provider"]
        for _ in range(10)
    )
    assert ordered == {"a": 10}


def test_adaptive_beats_round_robin_with_a_slow_and_a_failing_key(loop_thread: LoopThread) -> None:
    rr = slow_and_flaky("round_robin", loop_thread)
    adaptive = slow_and_flaky("adaptive", loop_thread)
    assert rr["ok"] == adaptive["ok"] == 300
    # Which keys served, not wall-clock percentiles of two runs (which is faster follows from
    # it: the slow key takes 150 ms, the others 5 ms). Round robin spreads the requests evenly
    # (the flaky key's failures move on to the next key); adaptive sends most to the fast key.
    assert rr["share_fast"] < 0.45 and rr["share_slow"] > 0.3, rr
    assert adaptive["share_fast"] > max(0.5, rr["share_fast"] + 0.1), (adaptive, rr)
    assert adaptive["failed_attempts"] < rr["failed_attempts"], (adaptive, rr)
    ejecting = slow_and_flaky("round_robin", loop_thread, outlier=True)
    assert ejecting["ok"] == 300 and ejecting["failed_attempts"] < rr["failed_attempts"]
