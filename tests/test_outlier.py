"""Success-rate ejection of keys and providers, driven through the router with an injected clock
and a seeded random source: ejection, its growth, the pool-share cap, the probe back, and the
priority alias that sends first attempts straight to the healthy target."""

from __future__ import annotations

import random

from truckllm.config import parse_config
from truckllm.routing import (
    Estimate,
    Outcome,
    OutcomeKind,
    OutlierSettings,
    Pick,
    Router,
    RoutingSettings,
    Status,
)

EST = Estimate(100, 100)
OK = Outcome(OutcomeKind.SUCCESS, 200, 0.1)
FAIL = Outcome(OutcomeKind.SERVER_ERROR, 500)
# Breakers out of the way: these tests are about the success rate.
SETTINGS = RoutingSettings(
    breaker_failures=1000,
    provider_breaker_failures=1000,
    outlier=OutlierSettings(
        window_s=30, min_requests=10, base_ejection_s=10, max_ejection_s=25, probe_successes=2
    ),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def router_for(
    providers: dict[str, list[str]], settings: RoutingSettings = SETTINGS
) -> tuple[Router, FakeClock]:
    lines = ["providers:"]
    for pid, keys in providers.items():
        ks = ", ".join(f"{{id: {k}, secret: s{k}}}" for k in keys)
        lines.append(f"  - {{id: {pid}, base_url: 'http://x', keys: [{ks}]}}")
    cfg = parse_config("\n".join(lines) + "\n", "t", {}, ["openai"])
    clock = FakeClock()
    router = Router(cfg.providers, settings, "round_robin", clock=clock, rng=random.Random(3))
    return router, clock


def pick(router: Router, providers: list[str], exclude: set[str] | None = None) -> Pick:
    p = router.pick(providers, EST, exclude or set())
    assert isinstance(p, Pick), f"nothing eligible (wait {p})"
    return p


def fail_key(router: Router, key: str, n: int, provider: str = "p") -> None:
    others = {k for k in router.states() if k != key}
    for _ in range(n):
        p = pick(router, [provider], others)
        assert p.key.id == key
        p.done(FAIL)


def test_a_key_below_the_success_rate_is_ejected_and_skipped_while_others_serve() -> None:
    router, clock = router_for({"p": ["a", "b", "c", "d"]})
    a = router.states()["a"]
    fail_key(router, "a", 9)
    assert a.status(clock.now)[0] is Status.ACTIVE  # under the minimum volume: no verdict
    fail_key(router, "a", 1)
    status, reason, until = a.status(clock.now)
    assert status is Status.EJECTED and until == clock.now + 10
    assert reason is not None and "success rate 0% over 10 requests" in reason
    assert {pick(router, ["p"]).key.id for _ in range(30)} == {"b", "c", "d"}


def test_peers_far_healthier_eject_a_key_above_the_absolute_threshold() -> None:
    settings = RoutingSettings(
        breaker_failures=1000,
        outlier=OutlierSettings(min_requests=10, min_success_rate=0.5, peer_margin=0.2),
    )
    router, clock = router_for({"p": ["a", "b"]}, settings)
    for _ in range(20):
        pick(router, ["p"], {"a"}).done(OK)  # b: 100%
    for i in range(10):
        pick(router, ["p"], {"b"}).done(FAIL if i % 3 == 0 else OK)  # a: 60%, 4 failures of 10
    assert router.states()["a"].status(clock.now)[0] is Status.EJECTED


def test_no_more_than_the_pool_share_is_ejected_at_once() -> None:
    router, clock = router_for({"p": ["a", "b", "c", "d"]})  # share 0.5: two of four
    states = router.states()
    for k in ("a", "b", "c"):
        fail_key(router, k, 10)
    ejected = [k for k, s in states.items() if s.status(clock.now)[0] is Status.EJECTED]
    assert ejected == ["a", "b"]
    # A pool of two may lose one; a lone key is never ejected.
    router2, clock2 = router_for({"p": ["a", "b"], "q": ["z"]})
    for k in ("a", "b"):
        fail_key(router2, k, 10)
    fail_key(router2, "z", 20, provider="q")
    s2 = router2.states()
    assert s2["a"].status(clock2.now)[0] is Status.EJECTED
    assert s2["b"].status(clock2.now)[0] is not Status.EJECTED
    assert s2["z"].status(clock2.now)[0] is not Status.EJECTED


def test_probes_bring_a_key_back_and_a_failed_probe_ejects_it_for_longer() -> None:
    router, clock = router_for({"p": ["a", "b"]})
    a = router.states()["a"]
    fail_key(router, "a", 10)
    clock.advance(9.9)
    assert all(pick(router, ["p"]).key.id == "b" for _ in range(5))
    clock.advance(0.1)  # probation: one probe at a time
    probe = pick(router, ["p"], {"b"})
    assert probe.key.id == "a"
    assert all(pick(router, ["p"]).key.id == "b" for _ in range(5))  # the probe is in flight
    probe.done(FAIL)  # ejected again, for 2 x 10 s
    assert a.status(clock.now) == (Status.EJECTED, "ejected: probe failed", clock.now + 20)
    clock.advance(20)
    pick(router, ["p"], {"b"}).done(OK)
    assert a.status(clock.now)[0] is Status.EJECTED  # on probation: one success of two
    pick(router, ["p"], {"b"}).done(OK)
    assert a.status(clock.now)[0] is Status.ACTIVE
    assert {pick(router, ["p"]).key.id for _ in range(4)} == {"a", "b"}


def test_ejection_time_grows_with_repeated_ejections_up_to_the_cap_then_is_forgiven() -> None:
    router, clock = router_for({"p": ["a", "b"]})
    a = router.states()["a"]
    spans = []
    for _ in range(3):
        fail_key(router, "a", 10)
        until = a.status(clock.now)[2]
        assert until is not None
        spans.append(until - clock.now)
        clock.advance(spans[-1])
        for _ in range(2):
            pick(router, ["p"], {"b"}).done(OK)  # back in service
        assert a.status(clock.now)[0] is Status.ACTIVE
    assert spans == [10, 20, 25]  # base x ejections, capped at max_ejection
    clock.advance(60)  # two windows back in service forgive two ejections
    fail_key(router, "a", 10)
    assert a.status(clock.now)[2] == clock.now + 20


def test_a_cancelled_or_throttled_probe_frees_the_probe_slot() -> None:
    router, clock = router_for({"p": ["a", "b"]})
    fail_key(router, "a", 10)
    clock.advance(10)
    pick(router, ["p"], {"b"}).done(Outcome(OutcomeKind.CANCELLED))
    pick(router, ["p"], {"b"}).done(Outcome(OutcomeKind.NOT_SENT))
    assert pick(router, ["p"], {"b"}).key.id == "a"


def test_an_ejected_first_target_of_a_priority_alias_is_skipped_on_first_attempts() -> None:
    router, clock = router_for({"flaky": ["f1", "f2"], "good": ["g1"]})
    targets = ["flaky", "good"]
    rng = random.Random(5)
    attempts_before = 0
    while router.providers["flaky"].outlier.ejected_until == 0:
        p = pick(router, targets)
        attempts_before += 1
        p.done(FAIL if rng.random() < 0.5 and p.provider.id == "flaky" else OK)
        assert attempts_before < 100
    assert router.providers["flaky"].outlier.state(clock.now) == "ejected"
    assert not router.healthy("flaky") and router.healthy("good")
    for _ in range(50):
        p = pick(router, targets)
        assert p.provider.id == "good"
        p.done(OK)
    clock.advance(10)  # probation: one request probes, the rest keep going to the healthy one
    probe = pick(router, targets)
    assert probe.provider.id == "flaky"
    assert pick(router, targets).provider.id == "good"
    probe.done(OK)
    pick(router, targets).done(OK)
    assert router.providers["flaky"].outlier.state(clock.now) == "in_service"
    assert pick(router, targets).provider.id == "flaky"


def test_when_every_target_is_ejected_the_ejected_still_serve() -> None:
    router, _ = router_for({"p": ["a", "b"]})
    fail_key(router, "a", 10)
    assert pick(router, ["p"], {"b"}).key.id == "a"  # nothing else may serve: panic
    assert isinstance(router.pick(["p"], EST, {"b"}, panic=False), float)


def test_outlier_state_survives_a_reload_and_can_be_turned_off() -> None:
    router, clock = router_for({"p": ["a", "b"]})
    fail_key(router, "a", 10)
    cfg = parse_config(
        "providers: [{id: p, base_url: 'http://x', keys: [{id: a, secret: sa}, {id: b, secret: sb}]}]\n",
        "t",
        {},
        ["openai"],
    )
    again = Router(cfg.providers, SETTINGS, "round_robin", clock=clock, carry_over=router)
    assert again.states()["a"].status(clock.now)[0] is Status.EJECTED
    assert again.providers["p"].key_pool.ejected == [again.states()["a"].outlier]
    off = RoutingSettings(
        breaker_failures=1000,
        provider_breaker_failures=1000,
        outlier=OutlierSettings(enabled=False),
    )
    router3, clock3 = router_for({"p": ["a", "b"]}, off)
    fail_key(router3, "a", 30)
    assert router3.states()["a"].status(clock3.now)[0] is Status.ACTIVE
