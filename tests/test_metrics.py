"""The Prometheus page, read with the Prometheus client's own parser, against the requests sent
through the gateway over real HTTP."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import Gateway, Response, sse_events, wait_until
from prometheus_client.parser import text_string_to_metric_families

from truckllm.api import App
from truckllm.config import ConfigError, load_config, parse_config
from truckllm.config.schema import Pricing
from truckllm.providers.base import Usage
from truckllm.telemetry.exposition import Page
from truckllm.telemetry.metrics import Metrics
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.mock import KeyBehaviour, MockUpstream, Scripted
from truckllm.testing.serve import ServerThread

PRICING = {
    "k1": Pricing(input_token_cost=0.5, output_token_cost=1.5, unit="per_1m_tokens"),
    "k2": Pricing(input_token_cost=0.002, output_token_cost=0.004),
}
SECRET_MODEL = "client-chosen-model-name-never-a-label"


def config(url: str, extra: str = "") -> str:
    return f"""
    providers:
      - id: openai
        base_url: {url}
        models: [gpt-4o-mini, text-embedding-3-small]
        keys:
          - id: k1
            secret: sk-upstream-1
            pricing: {{input_token_cost: 0.5, output_token_cost: 1.5, unit: per_1m_tokens}}
          - id: k2
            secret: sk-upstream-2
            pricing: {{input_token_cost: 0.002, output_token_cost: 0.004}}
    model_aliases:
      gpt-4: openai:gpt-4-0613
    routing: {{strategy: round_robin}}
    {extra}
    """


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: Gateway, path: str = "/metrics") -> tuple[Samples, str]:
    resp = gw.request("GET", path)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = resp.body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type != "unknown", family  # every sample belongs to its declared family
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, text


def total(samples: Samples, name: str, **match: str) -> float:
    want = set(match.items())
    return sum(v for (n, labels), v in samples.items() if n == name and want <= labels)


def usage_of(resp: Response, stream: bool) -> dict[str, Any]:
    if not stream:
        usage: dict[str, Any] = resp.json()["usage"]
        return usage
    chunks = [orjson.loads(e) for e in sse_events(resp.body) if e != b"[DONE]"]
    return next(c["usage"] for c in chunks if c.get("usage"))


@pytest.fixture
def upstream(upstream_factory: Callable[..., MockUpstream]) -> MockUpstream:
    # k1's provider reports its remaining requests in OpenAI's rate-limit headers.
    return upstream_factory(keys={"sk-upstream-1": KeyBehaviour(rpm=1000)})


def test_metrics_page_matches_the_requests_sent(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url))
    sent: list[tuple[Response, str, bool]] = []  # response, endpoint, stream
    body: dict[str, Any]
    for i in range(3):
        body = {"model": "text-embedding-3-small", "input": f"embed {i}"}
        sent.append((gw.post("/v1/embeddings", body), "embeddings", False))
    for i in range(6):
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi " * (i + 1)}]}
        sent.append((gw.post("/v1/chat/completions", body), "chat", False))
    for _ in range(4):
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream please"}],
        }
        sent.append((gw.post("/v1/chat/completions", body), "chat", True))
    # One throttled attempt: the key cools down and the request fails over to the other key.
    upstream.script.append(
        Scripted(
            status=429,
            headers={"retry-after": "30"},
            body={
                "error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
            },
        )
    )
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "after 429"}]}
    sent.append((gw.post("/v1/chat/completions", body), "chat", False))
    unknown = gw.post(
        "/v1/chat/completions",
        {"model": SECRET_MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert unknown.status == 404
    assert all(r.status == 200 for r, _, _ in sent)

    samples, text = scrape(gw)

    # Requests by provider, key and status, exactly as the responses said.
    expected = Counter((r.headers["x-truckllm-key-id"], ep) for r, ep, _ in sent)
    for (key_id, endpoint), n in expected.items():
        assert (
            total(
                samples,
                "truckllm_requests_total",
                provider="openai",
                key_id=key_id,
                status="200",
                endpoint=endpoint,
            )
            == n
        )
    assert total(samples, "truckllm_requests_total", status="200") == len(sent)
    assert total(samples, "truckllm_requests_total", status="404", provider="") == 1
    assert total(samples, "truckllm_requests_total", alias="gpt-4") == 7
    assert SECRET_MODEL not in text  # a client's model name never becomes a label
    assert "sk-upstream" not in text

    # Tokens and cost: the upstream's usage, priced with each key's pricing.
    tokens: dict[str, Counter[str]] = {"k1": Counter(), "k2": Counter()}
    cost = {"k1": 0.0, "k2": 0.0}
    for resp, _, stream in sent:
        key_id = resp.headers["x-truckllm-key-id"]
        u = usage_of(resp, stream)
        prompt, completion = u["prompt_tokens"], u.get("completion_tokens", 0)
        tokens[key_id].update(prompt=prompt, completion=completion)
        cost[key_id] += PRICING[key_id].cost_usd(prompt, completion)
    for key_id in ("k1", "k2"):
        for kind in ("prompt", "completion"):
            assert (
                total(samples, "truckllm_tokens_total", key_id=key_id, type=kind)
                == tokens[key_id][kind]
            )
        assert total(samples, "truckllm_tokens_total", key_id=key_id, type="cached") == 0
        # (the ledger may round each request's cost to a billionth of a dollar)
        assert total(samples, "truckllm_cost_usd_total", key_id=key_id) == pytest.approx(
            cost[key_id], abs=1e-9 * len(sent)
        )
        assert cost[key_id] > 0

    # Histograms: every proxied request has a duration and an overhead; streams a TTFT.
    assert total(samples, "truckllm_request_duration_seconds_count") == len(sent)
    assert total(samples, "truckllm_gateway_overhead_seconds_count") == len(sent)
    assert total(samples, "truckllm_time_to_first_token_seconds_count") == 4
    assert (
        total(samples, "truckllm_request_duration_seconds_bucket", le="+Inf", endpoint="embeddings")
        == 3
    )
    overhead = total(samples, "truckllm_gateway_overhead_seconds_sum")
    duration = total(samples, "truckllm_request_duration_seconds_sum")
    assert 0 < overhead < duration

    # Retries and the key that was throttled.
    last = sent[-1][0]
    assert last.headers["x-truckllm-attempts"] == "2"
    cooled = "k1" if last.headers["x-truckllm-key-id"] == "k2" else "k2"
    assert total(samples, "truckllm_retries_total") == 1
    assert total(samples, "truckllm_retries_total", alias="gpt-4") == 1
    assert total(samples, "truckllm_key_status", key_id=cooled, status="cooling") == 1
    assert total(samples, "truckllm_key_status", key_id=cooled, status="active") == 0
    assert total(samples, "truckllm_key_status", status="active") == 1
    until = total(samples, "truckllm_key_cooldown_until_timestamp_seconds", key_id=cooled)
    assert time.time() + 25 < until < time.time() + 31
    assert total(samples, "truckllm_key_attempts_total", key_id=cooled, outcome="rate_limited") == 1
    attempts_ok = total(samples, "truckllm_key_attempts_total", outcome="success")
    assert attempts_ok == len(sent)

    # Per-key state read at scrape time.
    assert total(samples, "truckllm_key_in_flight_requests") == 0
    k1_served = sum(1 for key, _ in upstream.arrivals if key == "sk-upstream-1")
    assert total(samples, "truckllm_key_remaining_requests", key_id="k1") == 1000 - k1_served
    assert (
        "truckllm_key_remaining_requests",
        frozenset({("provider", "openai"), ("key_id", "k2")}),
    ) not in samples
    assert 0 < total(samples, "truckllm_key_success_ratio", key_id="k1") <= 1
    assert total(samples, "truckllm_key_latency_seconds", key_id="k1") > 0
    assert total(samples, "truckllm_provider_circuit_open", provider="openai") == 0
    assert total(samples, "truckllm_config_last_reload_successful") == 1


def test_scrapes_are_not_requests_and_counters_only_grow(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url))
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    assert gw.post("/v1/chat/completions", body).status == 200
    first, _ = scrape(gw)
    second, _ = scrape(gw)
    assert total(first, "truckllm_requests_total") == total(second, "truckllm_requests_total") == 1
    assert gw.post("/v1/chat/completions", body).status == 200
    third, _ = scrape(gw)
    assert total(third, "truckllm_requests_total") == 2
    assert total(third, "truckllm_tokens_total") > total(first, "truckllm_tokens_total")


def test_metrics_path_is_configurable_and_metrics_can_be_off(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, "metrics: {path: /internal/prom}"))
    scrape(gw, "/internal/prom")
    assert gw.request("GET", "/metrics").status == 404
    assert gw.request("POST", "/internal/prom").status == 405
    off = gateway_factory(config(upstream.url, "metrics: {enabled: false}"))
    assert off.request("GET", "/metrics").status == 404
    assert off.app.telemetry.metrics is None
    off.app.telemetry.reload_result(False, time.time())  # a no-op, not an error


def test_reload_results_show_in_metrics(tmp_path: Path, upstream: MockUpstream) -> None:
    path = tmp_path / "config.yaml"
    good = config(upstream.url, "server: {admin_api_key: adm-x, reload_interval: 0}")
    path.write_text(good)
    app = App(load_config(path, env={}), config_path=str(path))
    server = ServerThread(app).start()
    try:
        gw = Gateway(app, server)
        samples, _ = scrape(gw)
        started = total(samples, "truckllm_config_last_reload_success_timestamp_seconds")
        assert time.time() - 60 < started <= time.time()
        assert total(samples, "truckllm_config_reloads_total") == 0

        admin = {"Authorization": "Bearer adm-x"}
        path.write_text(good + "\n    routing: {strategy: nonsense}\n")
        assert gw.request("POST", "/admin/v1/reload", headers=admin).json()["reloaded"] is False
        samples, _ = scrape(gw)
        assert total(samples, "truckllm_config_last_reload_successful") == 0
        assert total(samples, "truckllm_config_reloads_total", result="failure") == 1
        assert total(samples, "truckllm_config_last_reload_success_timestamp_seconds") == started

        path.write_text(good)
        assert gw.request("POST", "/admin/v1/reload", headers=admin).json()["reloaded"] is True
        samples, _ = scrape(gw)
        assert total(samples, "truckllm_config_last_reload_successful") == 1
        assert total(samples, "truckllm_config_reloads_total", result="success") == 1
        assert total(samples, "truckllm_config_last_reload_success_timestamp_seconds") > started
    finally:
        server.stop()


def test_label_values_are_escaped_and_endpoints_bounded() -> None:
    metrics = Metrics()
    weird = 'say "hi"\\now\nnext'
    for path in ("/v1/unknown/a", "/v1/unknown/b", "/whatever"):
        metrics.consume(RequestRecord(time.time(), "r", path, status=404))
    metrics.consume(
        RequestRecord(
            time.time(),
            "r",
            "chat",
            alias=weird,
            provider="p",
            key_id="k",
            status=200,
            attempts=3,
            latency_s=0.2,
            upstream_s=0.15,
            usage=Usage(10, 5, 2, 1),
            cost_usd=0.25,
        )
    )
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    requests = families["truckllm_requests"].samples
    assert {s.labels["endpoint"] for s in requests} == {"other", "chat"}
    assert sum(s.value for s in requests if s.labels["endpoint"] == "other") == 3
    assert any(s.labels["alias"] == weird for s in requests)
    tokens = {s.labels["type"]: s.value for s in families["truckllm_tokens"].samples}
    assert tokens == {"prompt": 10, "completion": 5, "cached": 2, "reasoning": 1}
    assert [s.value for s in families["truckllm_retries"].samples] == [2]
    overhead = families["truckllm_gateway_overhead_seconds"].samples
    assert next(s.value for s in overhead if s.name.endswith("_sum")) == pytest.approx(0.05)
    assert next(s.value for s in overhead if s.labels.get("le") == "0.05") == 0  # 0.05000...01
    assert next(s.value for s in overhead if s.labels.get("le") == "0.1") == 1


def test_histogram_buckets_are_cumulative() -> None:
    page = Page()
    page.family("x_seconds", "histogram", "x")
    page.histogram("x_seconds", (("a", "b"),), (0.1, 1.0), [2, 0, 3], 4.5)
    (family,) = text_string_to_metric_families(page.render().decode())
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values == {
        ("x_seconds_bucket", "0.1"): 2,
        ("x_seconds_bucket", "1"): 2,
        ("x_seconds_bucket", "+Inf"): 5,
        ("x_seconds_sum", None): 4.5,
        ("x_seconds_count", None): 5,
    }


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("metrics: {path: metrics}", "metrics.path: 'metrics' must start with '/'"),
        ("metrics: {path: /v1/metrics}", "metrics.path: '/v1/metrics' is taken by the API"),
        ("metrics: {enabled: maybe}", "metrics.enabled: expected a boolean, got a string"),
        ("metrics: {port: 9100}", "metrics.port: unknown key"),
    ],
)
def test_metrics_config_errors_name_the_key(extra: str, problem: str) -> None:
    text = "providers: [{id: openai, base_url: 'http://x/v1'}]\n" + extra
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>", {})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_metrics_of_a_gateway_that_served_nothing_parse(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url))
    samples, _ = scrape(gw)
    assert total(samples, "truckllm_build_info") == 1
    assert total(samples, "truckllm_key_status", status="active") == 2
    assert not any(name == "truckllm_requests_total" for name, _ in samples)


def test_event_loop_lag_shows_a_stalled_loop(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url))
    name = "truckllm_event_loop_lag_seconds"
    # A few ticks on an idle loop: all of them on time.
    def idle_ticked() -> Samples | None:
        samples, _ = scrape(gw)
        return samples if total(samples, name + "_count") >= 2 else None

    samples = wait_until(idle_ticked, 10, "ticks on an idle loop")
    idle_ticks = total(samples, name + "_count")
    assert total(samples, name + "_bucket", le="0.1") == idle_ticks
    loop = gw.server.loop
    assert loop is not None
    loop.call_soon_threadsafe(time.sleep, 0.4)  # something holds the loop for 400 ms

    def late_ticks() -> float:
        samples, _ = scrape(gw)
        return total(samples, name + "_count") - total(samples, name + "_bucket", le="0.1")

    late = wait_until(late_ticks, 10, "a late tick")
    samples, _ = scrape(gw)
    assert late >= 1  # the tick that had to wait shows up past 100 ms
    assert total(samples, name + "_sum") >= 0.1
