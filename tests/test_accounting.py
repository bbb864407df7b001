"""Usage and cost accounting end to end: exact costs, the ledger and its admin view, client rules
(allowed models, rpm/tpm, budgets), and the same bill for streamed and non-streamed answers
through every provider type."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from helpers import Gateway, request, sse_events, wait_until

from truckllm.accounting.money import cost_nanos, format_usd, rates_of, usd_to_nanos
from truckllm.config import ConfigError, Pricing, parse_config
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.fake_gemini import FakeGemini
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import MockUpstream, Scripted

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
ADMIN = {"Authorization": "Bearer adm-1"}


def collect(gw: Gateway) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    return records


# -- money --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pricing", "usage", "nanos"),
    [
        (Pricing(0.15, 0.6, unit="per_1m_tokens"), (10, 8, 0), 6_300),  # 1.5e-6 + 4.8e-6 USD
        (Pricing(0.002, 0.01), (1000, 1000, 0), 12_000_000),  # per 1k: $0.002 + $0.01
        (Pricing(3, 15, 0.3, "per_1m_tokens"), (1000, 100, 800), 2_340_000),  # cached cheaper
        (Pricing(3, 15, None, "per_1m_tokens"), (1000, 100, 800), 4_500_000),  # cached at input
        (Pricing(0.1, 0.1, unit="per_token"), (1, 2, 0), 300_000_000),
        (Pricing(0.0000001, 0, unit="per_1m_tokens"), (3, 0, 0), 0),  # 3e-13 USD rounds to 0
        (Pricing(0.00015, 0.0006), (7, 3, 0), 2_850),  # 1.05e-6 + 1.8e-6
    ],
)
def test_costs_are_exact_nano_dollars(
    pricing: Pricing, usage: tuple[int, int, int], nanos: int
) -> None:
    assert cost_nanos(rates_of(pricing), *usage) == nanos
    expected = Decimal(nanos) / Decimal(10**9)
    assert Decimal(format_usd(nanos)) == expected


def test_money_formatting_and_budgets() -> None:
    assert [format_usd(n) for n in (0, 1, 1_500, 1_000_000_000, 12_345_678_901)] == [
        "0",
        "0.000000001",
        "0.0000015",
        "1",
        "12.345678901",
    ]
    assert usd_to_nanos(0.1) == 100_000_000 and usd_to_nanos(25) == 25_000_000_000


@pytest.mark.parametrize(
    ("yaml", "problem"),
    [
        ("api_keys: [{id: a, key: k, rpm: 0}]", "server.api_keys[0].rpm: must be at least 1"),
        ("api_keys: [{id: a, key: k, tpm: -5}]", "server.api_keys[0].tpm: must be at least 1"),
        (
            "api_keys: [{id: a, key: k, allowed_models: ['']}]",
            "server.api_keys[0].allowed_models[0]: must not be empty",
        ),
        (
            "api_keys: [{id: a, key: k, budget: {daily: -1}}]",
            "server.api_keys[0].budget.daily: must not be negative",
        ),
        (
            "api_keys: [{id: a, key: k, budget: {weekly: 1}}]",
            "server.api_keys[0].budget.weekly: unknown key",
        ),
    ],
)
def test_client_rules_are_validated_with_key_paths(yaml: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(f"providers: [{{id: p, base_url: 'http://x'}}]\nserver:\n  {yaml}\n")
    assert any(problem in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize(
    ("runtime", "problem"),
    [
        ("{type: redsi}", "storage.runtime.type: unknown store type 'redsi'"),
        ("{type: file}", "storage.runtime.path: is required for the file store"),
        ("{type: redis}", "storage.runtime.url: is required for the redis store"),
        ("{type: redis, url: 'http://x'}", "storage.runtime.url: must start with redis://"),
        ("{type: http, url: 'redis://x'}", "storage.runtime.url: must start with http://"),
        ("{flush_interval: 0}", "storage.runtime.flush_interval: must be positive"),
        ("{lease_slack: -1}", "storage.runtime.lease_slack: must not be negative"),
        ("{prefix: 'a{b}'}", "storage.runtime.prefix: must be non-empty"),
        ("{type: memory, colour: red}", "storage.runtime.colour: unknown key"),
    ],
)
def test_storage_is_validated_with_key_paths(runtime: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(f"providers: [{{id: p, base_url: 'http://x'}}]\nstorage: {{runtime: {runtime}}}\n")
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_the_file_store_is_refused_with_several_workers() -> None:
    with pytest.raises(ConfigError, match="the file store serves one process"):
        parse_config(
            "providers: [{id: p, base_url: 'http://x'}]\nserver: {workers: 2}\n"
            "storage: {runtime: {type: file, path: /tmp/usage.json}}\n"
        )


# -- the ledger through the gateway ---------------------------------------------------------------


def test_ledger_totals_equal_the_sum_of_per_request_costs_and_the_admin_view_groups_them(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory(reply_words=3)
    gw = gateway_factory(f"""
        server:
          admin_api_key: adm-1
          api_keys: [{{id: team-a, key: ka}}, {{id: team-b, key: kb}}]
        providers:
          - id: pa
            base_url: {a.url}
            models: [m]
            keys: [{{id: a1, secret: s1, pricing: {{input_token_cost: 0.15, output_token_cost: 0.6, unit: per_1m_tokens}}}}]
          - id: pb
            base_url: {b.url}
            keys: [{{id: b1, secret: s2, pricing: {{input_token_cost: 0.0011, output_token_cost: 0.0044}}}}]
        model_aliases:
          smart: pb:big
        storage: {{runtime: {{flush_interval: 0.05}}}}
        """)
    costs: list[Decimal] = []
    for i in range(30):
        client = {"Authorization": "Bearer ka" if i % 3 else "Bearer kb"}
        body = {**CHAT, "model": "smart" if i % 2 else "m", "messages": [{"role": "user", "content": "x" * i}]}
        resp = gw.post("/v1/chat/completions", body, headers=client)
        assert resp.status == 200, resp.body
        costs.append(Decimal(resp.headers["x-truckllm-cost-usd"]))
    resp = gw.post("/v1/chat/completions", {**CHAT, "model": "nope"}, headers={"Authorization": "Bearer ka"})
    assert resp.status == 404
    usage = gw.request("GET", "/admin/v1/usage", headers=ADMIN)
    assert usage.status == 200, usage.body
    data = usage.json()
    assert Decimal(data["total"]["cost_usd"]) == sum(costs)
    assert data["total"]["requests"] == 31 and data["total"]["errors"] == 1
    grouped = gw.request(
        "GET", "/admin/v1/usage?group_by=client,provider,key,model,alias", headers=ADMIN
    ).json()
    rows = {(r["client"], r["provider"], r["key"], r["model"], r["alias"]): r for r in grouped["data"]}
    assert rows[("team-a", "pb", "b1", "big", "smart")]["requests"] == 10
    assert rows[("team-b", "pa", "a1", "m", "")]["requests"] == 5
    assert sum(Decimal(r["cost_usd"]) for r in grouped["data"]) == sum(costs)
    hourly = gw.request(
        "GET", f"/admin/v1/usage?group_by=client&bucket=hour&from={int(time.time()) - 7200}",
        headers=ADMIN,
    ).json()
    assert hourly["granularity"] == "minute" and all("bucket_start" in r for r in hourly["data"])
    assert gw.request("GET", "/admin/v1/usage?group_by=colour", headers=ADMIN).status == 400
    assert gw.request("GET", "/admin/v1/usage?from=yesterday", headers=ADMIN).status == 400
    assert gw.request("GET", "/admin/v1/usage", headers={"Authorization": "Bearer ka"}).status == 401
    iso = gw.request("GET", "/admin/v1/usage?from=2000-01-01&to=2100-01-01T00:00:00Z", headers=ADMIN)
    assert iso.json()["granularity"] == "day"
    assert Decimal(iso.json()["total"]["cost_usd"]) == sum(costs)


# -- client rules ---------------------------------------------------------------------------------


def test_client_rules_refuse_before_any_upstream_call(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        server:
          api_keys:
            - {{id: narrow, key: kn, allowed_models: [cheap, "gpt-4o-*"]}}
            - {{id: slow, key: ks, rpm: 2}}
            - {{id: thrifty, key: kt, budget: {{daily: 0.000001}}}}
            - {{id: wordy, key: kw, tpm: 100}}
            - open-key
        providers:
          - id: p
            base_url: {upstream.url}
            models: ["*"]
            keys: [{{id: k, secret: s, pricing: {{input_token_cost: 1, output_token_cost: 1, unit: per_1m_tokens}}}}]
        model_aliases: {{cheap: p:m}}
        """)

    def post(key: str, model: str = "m", **extra: Any) -> Any:
        return gw.post(
            "/v1/chat/completions", {**CHAT, "model": model, **extra}, headers={"Authorization": f"Bearer {key}"}
        )

    assert post("kn", "cheap").status == 200
    assert post("kn", "gpt-4o-mini").status == 200
    refused = post("kn", "gpt-5")
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert refused.json()["error"]["param"] == "model"
    assert post("open-key", "gpt-5").status == 200

    assert [post("ks").status for _ in range(2)] == [200, 200]
    limited = post("ks")
    assert limited.status == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(limited.headers["retry-after"]) <= 61

    assert post("kt").status == 200  # 1e-6 USD allowed; this request costs more
    wait_until(lambda: gw.app.accounting.ledger.spent("thrifty", time.time())[0] > 0)
    broke = post("kt")
    assert broke.status == 429
    err = broke.json()["error"]
    assert err["code"] == "insufficient_quota" and err["type"] == "insufficient_quota"
    assert 0 < int(broke.headers["retry-after"]) <= 86400

    statuses = [post("kw", max_tokens=1).status for _ in range(12)]  # ~12-20 tokens each
    assert statuses[:2] == [200, 200] and statuses[-1] == 429, statuses
    wordy = post("kw", max_tokens=1)
    assert wordy.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in wordy.headers
    before = len(upstream.received)
    for key, model in (("kn", "gpt-5"), ("ks", "m"), ("kt", "m")):
        assert post(key, model).status in (403, 429)
    assert len(upstream.received) == before  # refused before any upstream call


def test_a_request_refused_for_tokens_is_not_counted_against_requests(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        server:
          api_keys:
            - {{id: both, key: kb, rpm: 1000, tpm: 100}}
        providers:
          - id: p
            base_url: {upstream.url}
            models: ["*"]
            keys: [{{id: k, secret: s}}]
        """)
    statuses = [
        gw.post(
            "/v1/chat/completions", {**CHAT, "max_tokens": 1}, headers={"Authorization": "Bearer kb"}
        ).status
        for _ in range(12)
    ]
    admitted = statuses.count(200)
    assert admitted >= 2 and statuses.count(429) == 12 - admitted, statuses
    rpm = gw.app.accounting.policies["both"].rpm
    assert rpm is not None and rpm.used(time.monotonic()) == admitted


# -- the same bill, streamed or not, through every provider type ----------------------------------


@pytest.fixture
def fakes(loop_thread: LoopThread) -> Iterator[dict[str, Any]]:
    anthropic = FakeAnthropic(cache_read_tokens=40, reply_words=6)
    gemini = FakeGemini(cached_tokens=30, thoughts_tokens=7, reply_words=6)
    openai = MockUpstream(reply_words=6)
    for fake in (anthropic, gemini, openai):
        loop_thread.run(fake.start())
    yield {"anthropic": anthropic, "gemini": gemini, "openai": openai}
    for fake in (anthropic, gemini, openai):
        loop_thread.run(fake.stop())


PRICE = "{input_token_cost: 3, output_token_cost: 15, cached_input_token_cost: 0.3, unit: per_1m_tokens}"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_streamed_and_non_streamed_answers_bill_the_same(
    provider: str, fakes: dict[str, Any], gateway_factory: Callable[..., Gateway]
) -> None:
    fake = fakes[provider]
    gw = gateway_factory(f"""
        providers:
          - id: {provider}
            base_url: {fake.url}
            models: [m]
            keys: [{{id: k, secret: s, pricing: {PRICE}}}]
        """)
    records = collect(gw)
    plain = gw.post("/v1/chat/completions", CHAT)
    assert plain.status == 200, plain.body
    reported = plain.json()["usage"]
    streamed = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    asked = gw.post(
        "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.status == asked.status == 200
    assert b'"usage"' not in streamed.body  # the gateway's own usage request stays invisible
    chunk = orjson.loads(sse_events(asked.body)[-2])
    assert chunk["usage"]["prompt_tokens"] == reported["prompt_tokens"]
    wait_until(lambda: len(records) == 3)
    first, second, third = records
    assert first.usage is not None and not first.usage.estimated
    assert first.usage == second.usage == third.usage
    assert first.cost_usd == second.cost_usd == third.cost_usd
    u = first.usage
    assert u.prompt_tokens == reported["prompt_tokens"]
    assert u.cached_tokens > 0 or provider == "openai"  # the OpenAI mock caches nothing
    expected = cost_nanos(rates_of(Pricing(3, 15, 0.3, "per_1m_tokens")), u.prompt_tokens, u.completion_tokens, u.cached_tokens)
    assert Decimal(plain.headers["x-truckllm-cost-usd"]) == Decimal(expected) / 10**9
    assert "x-truckllm-cost-usd" not in streamed.headers


def test_a_stream_cut_short_is_billed_as_an_estimate(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        providers:
          - {{id: p, base_url: "{upstream.url}", models: [m], keys: [{{id: k, secret: s, pricing: {PRICE}}}]}}
        """)
    records = collect(gw)
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
    upstream.script.append(Scripted(events=[chunk] * 6 + ["[DONE]"], cut_after=5))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200 and b'"error"' in resp.body
    wait_until(lambda: len(records) == 1)
    rec = records[0]
    assert rec.usage is not None and rec.usage.estimated
    assert rec.usage.completion_tokens == 4 and rec.usage.prompt_tokens >= 1
    assert rec.cost_usd is not None and rec.cost_usd > 0
    gw.app.accounting.ledger.add(rec)  # counted as estimated in the ledger
    assert any(c[2] for c in gw.app.accounting.ledger.pending.values())


def test_readyz_reports_a_store_that_is_down(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"""
        providers: [{{id: p, base_url: "{upstream.url}", models: [m]}}]
        storage: {{runtime: {{type: http, url: "http://127.0.0.1:9", timeout: 0.2, flush_interval: 0.05}}}}
        """)
    assert gw.post("/v1/chat/completions", CHAT).status == 200  # serves on local state
    wait_until(lambda: not gw.app.coordinator.health()[0])
    ready = request("GET", gw.url + "/readyz")
    assert ready.status == 200
    body = ready.json()
    assert body["status"] == "degraded" and "store" in body["problems"]


def test_spend_survives_a_restart_with_the_file_store(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway], tmp_path: Any
) -> None:
    text = f"""
        server:
          api_keys: [{{id: thrifty, key: kt, budget: {{total: 0.000001}}}}]
        providers:
          - id: p
            base_url: {upstream.url}
            models: [m]
            keys: [{{id: k, secret: s, pricing: {{input_token_cost: 1, output_token_cost: 1, unit: per_1m_tokens}}}}]
        storage: {{runtime: {{type: file, path: "{tmp_path / 'usage.json'}"}}}}
        """
    client = {"Authorization": "Bearer kt"}
    first = gateway_factory(text)
    assert first.post("/v1/chat/completions", CHAT, headers=client).status == 200
    first.server.stop()  # a clean shutdown flushes the ledger
    second = gateway_factory(text)
    resp = second.post("/v1/chat/completions", CHAT, headers=client)
    assert resp.status == 429 and resp.json()["error"]["code"] == "insufficient_quota"
