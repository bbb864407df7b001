"""The in-process counts each finished request feeds in one pass (``api/counts.py``): the admin
API's counts since start, the dashboard's overview, the usage ledger and the Prometheus metrics
must each agree with the records the gateway published, request for request, over real HTTP."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from helpers import Gateway, wait_until

from truckllm.telemetry.record import RequestRecord
from truckllm.testing.mock import MockUpstream

ADMIN = {"Authorization": "Bearer adm-1"}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
PRICING = "pricing: {input_token_cost: 0.15, output_token_cost: 0.6, unit: per_1m_tokens}"


def metric_sum(page: str, family: str, match: str = "") -> float:
    """The sum of a family's samples whose labels contain ``match``."""
    total = 0.0
    for line in page.splitlines():
        m = re.match(rf"{family}\{{([^}}]*)\}} (\S+)$", line)
        if m and match in m.group(1):
            total += float(m.group(2))
    return total


def test_admin_counts_overview_ledger_and_metrics_agree_with_the_records(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory(reply_words=3)
    gw = gateway_factory(f"""
        server:
          admin_api_key: adm-1
          api_keys:
            - {{id: team-a, key: ka, rpm: 6}}
            - {{id: team-b, key: kb}}
        providers:
          - id: pa
            base_url: {a.url}
            models: [m]
            keys: [{{id: a1, secret: s1, {PRICING}}}]
          - id: pb
            base_url: {b.url}
            keys: [{{id: b1, secret: s2, {PRICING}}}]
        model_aliases:
          smart: pb:big
        metrics: {{enabled: true, path: /metrics}}
        storage: {{runtime: {{flush_interval: 0.05}}}}
        """)
    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    for i in range(12):  # team-a's rpm of 6 refuses some of its requests (429)
        client = {"Authorization": "Bearer ka" if i % 2 else "Bearer kb"}
        body: dict[str, Any] = {**CHAT, "model": "smart" if i % 3 else "m"}
        if i % 4 == 0:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        gw.post("/v1/chat/completions", body, headers=client)
    nope = gw.post(
        "/v1/chat/completions", {**CHAT, "model": "nope"}, headers={"Authorization": "Bearer kb"}
    )
    assert nope.status == 404
    gw.settled()
    statuses = Counter(r.status for r in records)
    assert len(records) == 13 and statuses[200] >= 8 and statuses[404] == 1
    prompt = sum(r.usage.prompt_tokens for r in records if r.usage is not None)
    completion = sum(r.usage.completion_tokens for r in records if r.usage is not None)
    nanos = sum(round(r.cost_usd * 1e9) for r in records if r.cost_usd)
    assert prompt > 0 and completion > 0 and nanos > 0

    stats = gw.request("GET", "/admin/v1/stats", headers=ADMIN).json()
    assert stats["requests"] == 13
    assert {int(k): v for k, v in stats["by_status"].items()} == dict(statuses)
    keys = {k["id"]: k for k in gw.request("GET", "/admin/v1/keys", headers=ADMIN).json()["data"]}
    for key_id in ("a1", "b1"):
        mine = [r for r in records if r.key_id == key_id]
        usage = keys[key_id]["usage"]
        assert usage["requests"] == len(mine) > 0
        assert usage["prompt_tokens"] == sum(r.usage.prompt_tokens for r in mine if r.usage)
        micros = sum(round(r.cost_usd * 1e6) for r in mine if r.cost_usd)
        assert usage["cost_usd"] == micros / 1e6

    o = gw.request("GET", "/admin/v1/overview?window=300", headers=ADMIN).json()
    assert o["requests"] == 13 and o["errors"] == sum(n for s, n in statuses.items() if s >= 400)
    assert o["rate_limited"] == statuses[429]
    assert o["tokens"]["prompt"] == prompt and o["tokens"]["completion"] == completion
    assert o["cost_usd"] == nanos / 1e9
    tail = gw.request("GET", "/admin/v1/requests", headers=ADMIN).json()["data"]
    assert [r["request_id"] for r in tail] == [r.request_id for r in reversed(records)]

    def ledger() -> dict[str, Any]:
        total: dict[str, Any] = gw.request("GET", "/admin/v1/usage", headers=ADMIN).json()["total"]
        return total

    wait_until(lambda: ledger()["requests"] == 13)
    total = ledger()
    assert total["errors"] == o["errors"]
    assert total["prompt_tokens"] == prompt and total["completion_tokens"] == completion
    assert Decimal(total["cost_usd"]) == Decimal(nanos) / Decimal(10**9)

    page = gw.request("GET", "/metrics").body.decode()
    assert metric_sum(page, "truckllm_requests_total") == 13
    for status, n in statuses.items():
        assert metric_sum(page, "truckllm_requests_total", f'status="{status}"') == n
    assert metric_sum(page, "truckllm_tokens_total", 'type="prompt"') == prompt
    assert metric_sum(page, "truckllm_tokens_total", 'type="completion"') == completion
    assert abs(metric_sum(page, "truckllm_cost_usd_total") - nanos / 1e9) < 1e-12
