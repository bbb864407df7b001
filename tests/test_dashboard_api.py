"""The dashboard's serving and data, without a browser: the static files at /ui (only with an
admin key, GET/HEAD only, content types, caching, CSP, gzip), and the admin endpoints it reads
(overview, request tail, budgets) over real traffic through the gateway."""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Callable

from helpers import Gateway

from truckllm.admin.recent import Minute, Recent, percentile_ms
from truckllm.telemetry.record import RequestRecord
from truckllm.testing.mock import MockUpstream

ADMIN = {"Authorization": "Bearer adm-TOPSECRET"}
CLIENT = {"Authorization": "Bearer client-TOPSECRET"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def make(gateway_factory: Callable[..., Gateway], url: str, admin: bool = True) -> Gateway:
    return gateway_factory(f"""
        providers:
          - id: openai
            base_url: {url}
            models: [gpt-4o-mini]
            keys:
              - {{id: k1, secret: sk-up-TOPSECRET-1, pricing: {{input_token_cost: 1000, output_token_cost: 1000, unit: per_1m_tokens}}}}
        server:
          {"admin_api_key: adm-TOPSECRET" if admin else ""}
          api_keys:
            - {{id: team, key: client-TOPSECRET, rpm: 100, budget: {{daily: 1, total: 10}}}}
            - {{id: other, key: other-TOPSECRET}}
        """)


def test_the_dashboard_is_served_only_with_an_admin_key(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    off = make(gateway_factory, upstream.url, admin=False)
    resp = off.request("GET", "/ui/")
    assert resp.status == 404 and b"admin_api_key" in resp.body
    gw = make(gateway_factory, upstream.url)
    resp = gw.request("GET", "/ui")
    assert resp.status == 308 and resp.headers["location"] == "/ui/"
    page = gw.request("GET", "/ui/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    assert b"<script>" not in page.body and b"TOPSECRET" not in page.body  # no inline script
    assert gw.request("GET", "/ui/index.html").body == page.body
    # the page names every other file with its hash: those are cached for good
    refs = re.findall(rb'(?:src|href)="([^"#]+)\?v=([0-9a-f]{12})"', page.body)
    assert {r[0] for r in refs} >= {b"app.js", b"pages.js", b"app.css", b"vendor/uPlot.iife.min.js"}
    types = {b"js": "text/javascript; charset=utf-8", b"css": "text/css; charset=utf-8"}
    for name, version in refs:
        resp = gw.request("GET", f"/ui/{name.decode()}?v={version.decode()}")
        assert resp.status == 200, name
        assert resp.headers["content-type"] == types[name.rsplit(b".", 1)[1]]
        assert "immutable" in resp.headers["cache-control"]
    # revalidation, compression, HEAD, and nothing but GET/HEAD
    etag = page.headers["etag"]
    assert gw.request("GET", "/ui/", headers={"If-None-Match": etag}).status == 304
    packed = gw.request("GET", "/ui/vendor/uPlot.iife.min.js", headers={"Accept-Encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(packed.body).startswith(b"/*! https://github.com/leeoniya/uPlot")
    head = gw.request("HEAD", "/ui/app.css")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
    assert gw.request("POST", "/ui/", raw=b"x").status == 405
    assert gw.request("GET", "/ui/../pyproject.toml").status == 404
    assert gw.request("GET", "/ui/vendor/uPlot.LICENSE").status == 404  # only web files


def test_overview_tail_and_budgets_report_the_traffic_and_no_secret(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = make(gateway_factory, upstream.url)
    for i in range(3):
        headers = {**CLIENT, "X-Request-Id": f"rq-{i}"}
        assert gw.post("/v1/chat/completions", CHAT, headers=headers).status == 200
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert gw.post("/v1/chat/completions", stream, headers=CLIENT).status == 200
    bad = gw.post("/v1/chat/completions", {**CHAT, "model": "nope"}, headers=CLIENT)
    assert bad.status == 404
    assert gw.request("GET", "/admin/v1/overview").status == 401
    gw.settled()

    o = gw.request("GET", "/admin/v1/overview?window=300", headers=ADMIN).json()
    assert o["window_s"] == 300 and o["requests"] == 5 and o["errors"] == 1
    assert o["error_rate"] == 0.2 and o["keys"] == {"active": 1}
    assert o["latency_ms"]["p50"] > 0 and o["latency_ms"]["p95"] >= o["latency_ms"]["p50"]
    assert o["ttft_ms"]["p50"] is not None  # the stream's
    assert o["overhead_ms"]["p50"] is not None
    assert o["tokens"]["prompt"] > 0 and o["tokens"]["completion"] > 0
    assert o["cost_usd"] > 0 and sum(o["series"]["requests"]) == 5
    assert gw.request("GET", "/admin/v1/overview?window=x", headers=ADMIN).status == 400

    tail = gw.request("GET", "/admin/v1/requests", headers=ADMIN).json()
    assert [r["status"] for r in tail["data"]] == [404, 200, 200, 200, 200]  # newest first
    first = tail["data"][-1]
    assert first["request_id"] == "rq-0" and first["key"] == "k1" and first["client"] == "team"
    assert first["prompt_tokens"] > 0 and "client_ip" not in first
    q = "/admin/v1/requests?status=error"
    assert [r["status"] for r in gw.request("GET", q, headers=ADMIN).json()["data"]] == [404]
    q = f"/admin/v1/requests?after={first['seq']}&key=k1&limit=2"
    newer = gw.request("GET", q, headers=ADMIN).json()["data"]
    assert [r["seq"] for r in newer] == [first["seq"] + 3, first["seq"] + 2]

    budgets = gw.request("GET", "/admin/v1/budgets", headers=ADMIN).json()["data"]
    assert [b["client"] for b in budgets] == ["team"]  # the one client with rules
    team = budgets[0]
    assert team["rpm"] == 100 and team["budgets"]["daily"]["limit_usd"] == "1"
    assert team["budgets"]["monthly"]["limit_usd"] is None
    assert 0 < team["budgets"]["daily"]["used"] < 1
    assert team["budgets"]["daily"]["spent_usd"] == team["budgets"]["total"]["spent_usd"]

    for path in ("overview", "requests", "budgets", "keys", "config"):
        assert b"TOPSECRET" not in gw.request("GET", "/admin/v1/" + path, headers=ADMIN).body


def test_percentiles_from_the_histograms_are_within_six_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-2, 1) for _ in range(5000)]  # seconds
    m = Minute()
    for v in values:
        m.add(RequestRecord(0.0, "r", "chat", status=200, latency_s=v))
    values.sort()
    for q in (0.5, 0.95):
        exact = values[int(q * len(values)) - 1] * 1000
        got = percentile_ms(m.latency, q)
        assert got is not None and abs(got - exact) / exact < 0.07, (q, got, exact)
    assert percentile_ms(Minute().latency, 0.5) is None


def test_the_overview_keeps_one_day_of_minutes_and_the_tail_a_bounded_ring() -> None:
    recent = Recent(tail_size=10)
    start = 1_700_000_000
    for i in range(0, 2 * 86400, 600):  # every 10 minutes for two days
        recent(RequestRecord(start + i, f"r{i}", "chat", status=200, latency_s=0.1))
    recent(RequestRecord(start, "admin", "/admin/v1/keys", status=401))  # not traffic
    assert len(recent.tail) == 10 and recent.tail[-1][1].request_id == f"r{2 * 86400 - 600}"
    assert len(recent.minutes) == 144  # one day's worth
    assert sum(m.requests for _, m in recent.window(start + 2 * 86400 - 3600)) == 6


def test_every_static_file_is_package_data_in_the_wheel() -> None:
    """``pip wheel .`` ships what ``[tool.setuptools.package-data]`` names: every file of the
    dashboard must match one of its patterns (a new folder needs a new pattern)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["truckllm.ui"]
    package = root / "src" / "truckllm" / "ui"
    files = [
        p.relative_to(package).as_posix() for p in (package / "static").rglob("*") if p.is_file()
    ]
    assert "static/vendor/uPlot.LICENSE" in files
    for name in files:
        assert any(
            fnmatch.fnmatch(name, pat) and name.count("/") == pat.count("/") for pat in patterns
        ), name


def test_usage_top_keeps_the_costliest_groups_and_sums_the_rest(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = make(gateway_factory, upstream.url)
    store = gw.app.coordinator.store
    assert store is not None and gw.server.loop is not None
    import asyncio
    import time

    from truckllm.stores.base import METRICS, Batch

    minute = int(time.time()) // 3600 * 3600
    usage = {}
    for i, model in enumerate(["a", "b", "c", "d"]):
        counts = [0] * len(METRICS)
        counts[0], counts[-1] = 10 - i, (i + 1) * 1000  # d costs most, a least
        usage[(minute, ("team", "openai", "k1", model, "", ""))] = counts
    batch = Batch("test", 1, time.time(), usage)
    asyncio.run_coroutine_threadsafe(store.sync(batch), gw.server.loop).result(5)
    q = f"/admin/v1/usage?group_by=model&from={minute}&bucket=hour&top=2"
    rows = gw.request("GET", q, headers=ADMIN).json()["data"]
    assert [(r["model"], r.get("other", False), r["requests"]) for r in rows] == [
        ("c", False, 8),
        ("d", False, 7),
        (None, True, 19),
    ]
    assert gw.request("GET", q.replace("top=2", "top=x"), headers=ADMIN).status == 400
    total = gw.request("GET", f"/admin/v1/usage?from={minute}&top=2", headers=ADMIN).json()
    assert [r.get("other") for r in total["data"]] == [None] and total["total"]["requests"] == 34
