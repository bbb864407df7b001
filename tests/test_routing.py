"""The router in isolation: an injected clock and a seeded random source make every strategy and
every outcome class deterministic. No sleeping."""

from __future__ import annotations

import math
import random
import textwrap
from collections import Counter

import pytest

from truckllm.config import parse_config
from truckllm.gateway import RetryBudget, RetryPolicy
from truckllm.providers.base import Usage
from truckllm.providers.errors import parse_retry_after
from truckllm.routing import (
    Estimate,
    Outcome,
    OutcomeKind,
    Pick,
    ReportedQuota,
    Router,
    RoutingSettings,
    Status,
    parse_quota,
)
from truckllm.routing.headers import parse_duration
from truckllm.routing.windows import SlidingWindow

EST = Estimate(100, 100)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_router(
    keys_yaml: str,
    strategy: str = "round_robin",
    seed: int = 1,
    settings: RoutingSettings | None = None,
    carry_over: Router | None = None,
    clock: FakeClock | None = None,
) -> tuple[Router, FakeClock]:
    keys = textwrap.indent(textwrap.dedent(keys_yaml).strip(), "      ")
    cfg = parse_config(
        f"providers:\n  - id: p\n    base_url: http://x\n    keys:\n{keys}\n", "t", {}, ["openai"]
    )
    clock = clock or FakeClock()
    return Router(
        cfg.providers,
        settings,
        default_strategy=strategy,
        clock=clock,
        rng=random.Random(seed),
        carry_over=carry_over,
    ), clock


FOUR = """
- {id: a, secret: sa}
- {id: b, secret: sb}
- {id: c, secret: sc}
- {id: d, secret: sd}
"""


def pick(router: Router, exclude: set[str] | None = None, est: Estimate = EST) -> Pick:
    p = router.pick(["p"], est, exclude or set())
    assert isinstance(p, Pick), f"no key eligible (wait {p})"
    return p


def ok(p: Pick, latency: float = 0.1, usage: Usage | None = None) -> None:
    p.done(Outcome(OutcomeKind.SUCCESS, 200, latency, usage=usage))


# -- strategies ------------------------------------------------------------------------------


def test_round_robin_rotates_and_skips_ineligible_keys() -> None:
    router, _ = make_router(FOUR)
    order = []
    for _ in range(8):
        p = pick(router)
        order.append(p.key.id)
        ok(p)
    assert order == list("abcdabcd")
    router.states()["b"].disabled_by_operator = True
    order = [pick(router).key.id for _ in range(3)]
    assert order == ["a", "c", "d"]


def test_weighted_shares_are_proportional_and_interleaved() -> None:
    router, _ = make_router(
        "- {id: heavy, secret: h, weight: 3}\n- {id: light, secret: l, weight: 1}", "weighted"
    )
    order = [pick(router).key.id for _ in range(8)]
    assert Counter(order) == {"heavy": 6, "light": 2}
    assert order[:4].count("light") == 1  # smooth: spread out, not bunched at the end


def test_least_loaded_prefers_fewest_in_flight_per_weight() -> None:
    router, _ = make_router(
        "- {id: a, secret: a}\n- {id: b, secret: b, weight: 2}\n- {id: c, secret: c}",
        "least_loaded",
    )
    held = [pick(router) for _ in range(4)]
    assert Counter(p.key.id for p in held) == {"b": 2, "a": 1, "c": 1}
    ok(held[0])
    assert pick(router).key.id == held[0].key.id


def test_lowest_latency_tries_unmeasured_keys_then_the_fastest() -> None:
    router, _ = make_router(
        "- {id: a, secret: a}\n- {id: b, secret: b}\n- {id: c, secret: c}", "lowest_latency"
    )
    for latency in (0.3, 0.1, 0.2):  # each unmeasured key gets tried once
        ok(pick(router), latency)
    assert {s.key.id: s.latency_s for s in router.states().values()} == {
        "a": 0.3,
        "b": 0.1,
        "c": 0.2,
    }
    assert [pick(router).key.id for _ in range(3)] == ["b", "b", "b"]


def test_lowest_cost_uses_pricing_and_the_request_estimate() -> None:
    router, _ = make_router(
        """
        - {id: pricey, secret: a, pricing: {input_token_cost: 10, output_token_cost: 30, unit: per_1m_tokens}}
        - {id: cheap-in, secret: b, pricing: {input_token_cost: 1, output_token_cost: 60, unit: per_1m_tokens}}
        - {id: cheap-out, secret: c, pricing: {input_token_cost: 20, output_token_cost: 5, unit: per_1m_tokens}}
        """,
        "lowest_cost",
    )
    assert pick(router, est=Estimate(10_000, 10)).key.id == "cheap-in"  # prompt-heavy request
    assert pick(router, est=Estimate(10, 10_000)).key.id == "cheap-out"  # output-heavy request


def test_adaptive_spreads_over_equal_keys_and_avoids_slow_and_failing_ones() -> None:
    router, _ = make_router(FOUR, "adaptive", seed=7)
    counts: Counter[str] = Counter()
    for _ in range(400):
        p = pick(router)
        counts[p.key.id] += 1
        ok(p, 0.1)
    assert min(counts.values()) > 60  # equal keys share: none takes everything
    slow, failing = router.states()["a"], router.states()["b"]
    counts.clear()
    for _ in range(400):
        p = pick(router)
        counts[p.key.id] += 1
        if p.state is slow:
            ok(p, 2.0)
        elif p.state is failing:
            p.done(Outcome(OutcomeKind.SERVER_ERROR, 500, 0.1))
        else:
            ok(p, 0.1)
    assert counts["a"] < 40 and counts["b"] < 40, counts  # a trickle keeps their figures fresh
    assert counts["c"] + counts["d"] > 320


def test_adaptive_prefers_headroom() -> None:
    router, _ = make_router(
        "- {id: tight, secret: a, limits: {rpm: 10}}\n- {id: roomy, secret: b, limits: {rpm: 1000}}",
        "adaptive",
    )
    for _ in range(8):
        ok(pick(router, exclude={"roomy"}))
    counts = Counter(pick(router).key.id for _ in range(100))
    assert counts["roomy"] > 90 and counts["tight"] <= 2


# -- limits ----------------------------------------------------------------------------------


def test_rpm_limit_reserves_before_the_call_and_frees_after_the_window() -> None:
    router, clock = make_router("- {id: a, secret: a, limits: {rpm: 3}}")
    held = [pick(router) for _ in range(3)]  # in flight: reserved, not yet done
    wait = router.pick(["p"], EST)
    assert isinstance(wait, float) and 59 <= wait <= 62
    for p in held:
        ok(p)
    clock.advance(30)
    assert not isinstance(router.pick(["p"], EST), Pick)
    clock.advance(wait - 30 + 0.01)
    assert isinstance(router.pick(["p"], EST), Pick)


def test_tpm_reservation_is_reconciled_with_real_usage() -> None:
    router, _ = make_router("- {id: a, secret: a, limits: {tpm: 1000}}")
    p = pick(router, est=Estimate(300, 300))
    assert router.states()["a"].tpm is not None and router.states()["a"].tpm.used(1000.0) == 600
    assert not isinstance(router.pick(["p"], Estimate(300, 300)), Pick)  # 600 + 600 > 1000
    ok(p, usage=Usage(prompt_tokens=250, completion_tokens=50))
    assert router.states()["a"].tpm.used(1000.0) == 300  # type: ignore[union-attr]
    assert isinstance(router.pick(["p"], Estimate(300, 300)), Pick)


def test_a_failed_attempt_gives_back_its_token_reservation() -> None:
    router, _ = make_router("- {id: a, secret: a, limits: {tpm: 1000}}")
    pick(router, est=Estimate(400, 400)).done(Outcome(OutcomeKind.CONNECTION_ERROR, 502))
    assert router.states()["a"].tpm.used(1000.0) == 0  # type: ignore[union-attr]


def test_provider_quota_headers_stop_picks_before_a_429() -> None:
    router, clock = make_router("- {id: a, secret: a}\n- {id: b, secret: b}")
    quota = parse_quota(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "1",
            "x-ratelimit-reset-requests": "2s",
        }
    )
    p = pick(router, exclude={"b"})
    p.done(Outcome(OutcomeKind.SUCCESS, 200, 0.1, quota=quota))
    ok(pick(router, exclude={"b"}))  # the last one the provider allows
    assert isinstance(router.pick(["p"], EST, {"b"}), float)  # "a" would 429 now: skipped
    clock.advance(2.01)
    assert isinstance(router.pick(["p"], EST, {"b"}), Pick)


# -- outcomes --------------------------------------------------------------------------------


def test_429_cools_the_key_until_retry_after_then_backoff_when_unsaid() -> None:
    router, clock = make_router("- {id: a, secret: a}\n- {id: b, secret: b}")
    a = router.states()["a"]
    pick(router).done(Outcome(OutcomeKind.RATE_LIMITED, 429, retry_after=7.0))
    assert a.status(clock.now)[0] is Status.COOLING and a.cooling_until == clock.now + 7
    assert [pick(router).key.id for _ in range(3)] == ["b", "b", "b"]
    clock.advance(7.01)
    p = pick(router, exclude={"b"})
    p.done(
        Outcome(OutcomeKind.RATE_LIMITED, 429)
    )  # no advice: backoff 1 s, 2 s, 4 s by consecutive 429s
    assert a.cooling_until == pytest.approx(clock.now + 2.0)  # the second in a row
    clock.advance(2.01)
    pick(router, exclude={"b"}).done(Outcome(OutcomeKind.RATE_LIMITED, 429))
    assert a.cooling_until == pytest.approx(clock.now + 4.0)
    clock.advance(4.01)
    ok(pick(router, exclude={"b"}))
    assert a.consecutive_429 == 0


def test_429_cooldown_from_the_reset_headers() -> None:
    router, clock = make_router("- {id: a, secret: a}")
    quota = parse_quota(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}
    )
    pick(router).done(Outcome(OutcomeKind.RATE_LIMITED, 429, quota=quota))
    assert router.states()["a"].cooling_until == pytest.approx(clock.now + 90)


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        (OutcomeKind.AUTH_ERROR, 401, "credentials refused (HTTP 401)"),
        (OutcomeKind.QUOTA_EXHAUSTED, 429, "quota exhausted (HTTP 429)"),
    ],
)
def test_credential_and_quota_failures_take_the_key_out_of_service(
    kind: OutcomeKind, status: int, reason: str
) -> None:
    router, clock = make_router(
        "- {id: a, secret: a}\n- {id: b, secret: b}",
        settings=RoutingSettings(out_of_service_probe_s=300),
    )
    pick(router).done(Outcome(kind, status))
    a = router.states()["a"]
    assert a.status(clock.now) == (Status.OUT_OF_SERVICE, reason, clock.now + 300)
    assert all(pick(router).key.id == "b" for _ in range(5))
    clock.advance(300)
    probe = pick(router, exclude={"b"})  # one probe after the period
    assert isinstance(router.pick(["p"], EST, {"b"}), float)  # ... and only one
    ok(probe)
    assert a.status(clock.now)[0] is Status.ACTIVE


def test_breaker_opens_after_repeated_failures_and_half_opens_for_one_probe() -> None:
    settings = RoutingSettings(breaker_failures=3, breaker_open_s=10, breaker_open_max_s=40)
    router, clock = make_router("- {id: a, secret: a}\n- {id: b, secret: b}", settings=settings)
    a = router.states()["a"]
    for _ in range(3):
        pick(router, exclude={"b"}).done(Outcome(OutcomeKind.SERVER_ERROR, 500))
    assert a.status(clock.now)[0] is Status.CIRCUIT_OPEN
    assert isinstance(router.pick(["p"], EST, {"b"}), float)
    clock.advance(10)
    probe = pick(router, exclude={"b"})
    assert isinstance(router.pick(["p"], EST, {"b"}), float)  # one probe at a time
    probe.done(Outcome(OutcomeKind.TIMEOUT, 504))  # the probe fails: open twice as long
    clock.advance(10)
    assert isinstance(router.pick(["p"], EST, {"b"}), float)
    clock.advance(10)
    ok(pick(router, exclude={"b"}))
    assert a.breaker.state == "closed" and a.status(clock.now)[0] is Status.ACTIVE


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    settings = RoutingSettings(breaker_failures=1, breaker_open_s=5)
    router, clock = make_router("- {id: a, secret: a}", settings=settings)
    pick(router).done(Outcome(OutcomeKind.CONNECTION_ERROR, 502))
    clock.advance(5)
    pick(router).done(Outcome(OutcomeKind.CANCELLED))
    assert isinstance(router.pick(["p"], EST), Pick)


def test_provider_breaker_opens_on_failures_across_keys() -> None:
    settings = RoutingSettings(breaker_failures=100, provider_breaker_failures=4, breaker_open_s=10)
    router, _ = make_router(FOUR, settings=settings)
    for _ in range(4):
        pick(router).done(Outcome(OutcomeKind.CONNECTION_ERROR, 502))
    wait = router.pick(["p"], EST)
    assert wait == pytest.approx(10)


def test_client_errors_change_nothing_about_the_key() -> None:
    router, clock = make_router("- {id: a, secret: a}")
    for _ in range(10):
        pick(router).done(Outcome(OutcomeKind.CLIENT_ERROR, 400, 0.05))
    a = router.states()["a"]
    assert a.status(clock.now)[0] is Status.ACTIVE and a.success_rate == 1.0 and a.in_flight == 0


def test_done_is_idempotent_and_in_flight_balances() -> None:
    router, _ = make_router("- {id: a, secret: a}")
    p = pick(router)
    assert router.states()["a"].in_flight == 1
    ok(p)
    ok(p)
    p.done(Outcome(OutcomeKind.SERVER_ERROR))
    assert router.states()["a"].in_flight == 0 and router.states()["a"].outcomes == {
        OutcomeKind.SUCCESS: 1
    }


def test_state_survives_a_reload_by_key_id() -> None:
    router, clock = make_router("- {id: a, secret: a, limits: {rpm: 5}}\n- {id: b, secret: b}")
    pick(router).done(Outcome(OutcomeKind.RATE_LIMITED, 429, retry_after=30))
    ok(pick(router), 0.25)
    new, _ = make_router(
        "- {id: a, secret: a, limits: {rpm: 10}}\n- {id: c, secret: c}",
        carry_over=router,
        clock=clock,
    )
    a = new.states()["a"]
    assert a is router.states()["a"] and a.cooling_until == clock.now + 30
    assert a.rpm is not None and a.rpm.limit == 10 and a.rpm.used(clock.now) == 1
    assert "b" not in new.states() and new.states()["c"].requests == 0


def test_a_reload_gives_a_kept_key_its_new_price() -> None:
    price = "pricing: {input_token_cost: 1, output_token_cost: 2}"
    router, clock = make_router(f"- {{id: a, secret: a}}\n- {{id: b, secret: b, {price}}}")
    a, b = router.states()["a"], router.states()["b"]
    assert a.free and not b.free and a.price != b.price
    new, _ = make_router(
        f"- {{id: a, secret: a, {price}}}\n- {{id: b, secret: b, {price}}}",
        carry_over=router,
        clock=clock,
    )
    assert new.states()["a"] is a and not a.free and a.price == b.price
    assert a.key.pricing == b.key.pricing and a.key.pricing is not b.key.pricing


# -- policies and parsing --------------------------------------------------------------------


def test_retry_policy_counts_key_switches_and_same_key_retries_apart() -> None:
    policy: RetryPolicy | None = RetryPolicy(max_attempts=4, max_same_key_retries=1).next(
        same_key=False
    )
    assert policy is not None and policy.attempts == 1
    policy = policy.next(same_key=False)
    assert policy is not None and (policy.attempts, policy.key_switches) == (2, 1)
    policy = policy.next(same_key=True)
    assert policy is not None and (policy.attempts, policy.same_key_retries) == (3, 1)
    assert policy.next(same_key=True) is None  # same-key retries used up
    last = policy.next(same_key=False)
    assert last is not None and last.attempts == 4 and last.next(same_key=False) is None


def test_backoff_is_jittered_capped_and_grows() -> None:
    rng = random.Random(3)
    p = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.3)
    caps = [0.1, 0.2, 0.3, 0.3]
    for attempts, cap in zip(range(1, 5), caps, strict=True):
        values = [
            RetryPolicy(
                backoff_base_s=p.backoff_base_s, backoff_max_s=p.backoff_max_s, attempts=attempts
            ).backoff(rng)
            for _ in range(200)
        ]
        assert max(values) <= cap and max(values) > cap * 0.8


def test_retry_budget_limits_retries_to_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.1, burst=5)
    spent = 0
    for _ in range(1000):
        budget.on_request()
        if budget.try_spend():
            spent += 1
    assert 100 <= spent <= 105


def test_sliding_window_never_undercounts() -> None:
    w = SlidingWindow(limit=10, span_s=60)
    for t in range(10):
        w.add(float(t), 1)
    assert w.room(10.0) == 0
    assert w.wait_for(10.0, 1) == pytest.approx(
        51.0
    )  # the oldest bucket leaves after 60 s + a bucket
    assert w.room(60.99) == 0 and w.room(61.0) == 1 and w.room(62.0) == 2
    assert w.wait_for(0.0, 11) == math.inf


def test_sliding_window_take_counts_only_what_fits() -> None:
    w = SlidingWindow(limit=10, span_s=60)
    assert w.take(0.0, 6) and w.total == 6
    assert not w.take(1.0, 5) and w.total == 6  # refused: nothing counted
    assert w.take(1.5, 4) and w.room(1.5) == 0
    assert not w.take(60.5, 1)  # the first bucket is still in the window
    assert w.take(61.5, 6) and w.used(61.5) == 10  # it left at 61 s: 4 + 6


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("2.5", 2.5),
        ("soon", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_quota_openai_and_anthropic() -> None:
    assert parse_quota(
        {
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6ms",
            "x-ratelimit-limit-requests": "60",
        }
    ) == ReportedQuota(59, 149984, 1.0, 0.006, 60, None)
    q = parse_quota(
        {
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-reset": "2026-11-27T12:00:30Z",
            "anthropic-ratelimit-input-tokens-remaining": "30000",
            "anthropic-ratelimit-output-tokens-remaining": "7000",
            "anthropic-ratelimit-tokens-reset": "2026-11-27T12:00:10Z",
        },
        wall_now=1795780800.0,
    )  # 2026-11-27T12:00:00Z
    assert (q.remaining_requests, q.remaining_tokens, q.limit_requests) == (49, 7000, 50)
    assert q.reset_requests_s == pytest.approx(30) and q.reset_tokens_s == pytest.approx(10)
    assert parse_quota({}).empty


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("20") == 20.0
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:30 GMT", now=1795780800.0) == pytest.approx(30)
    assert (
        parse_retry_after("-5") is None  # negative is not a wait: unknown (issue 17)
        and parse_retry_after("1e400") is None
        and parse_retry_after("nan") is None
        and parse_retry_after("later") is None
        and parse_retry_after(None) is None
    )


def test_insufficient_quota_takes_a_key_out_whatever_the_4xx() -> None:
    from truckllm.routing import classify_status

    assert classify_status(400, "insufficient_quota") is OutcomeKind.QUOTA_EXHAUSTED
    assert classify_status(429, "insufficient_quota") is OutcomeKind.QUOTA_EXHAUSTED
    assert classify_status(429, "rate_limit_exceeded") is OutcomeKind.RATE_LIMITED
    assert classify_status(400, "invalid_value") is OutcomeKind.CLIENT_ERROR
    assert classify_status(529) is OutcomeKind.SERVER_ERROR
