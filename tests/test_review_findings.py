"""Regressions found by the adversarial review of the day's merges: each test failed before
its fix (a 500 on an odd query, a secret in an error line, a cache entry a client could pin)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import Gateway, wait_until
from test_dashboard_api import ADMIN, make
from test_tracing import CHAT as TRACED_CHAT
from test_tracing import Collector
from test_tracing import config as tracing_config
from test_upload_stream import BOUNDARY
from test_upload_stream import form as upload_form
from test_upload_stream import post as upload
from test_upstream_tls_proxy import config_problems

from truckllm.api.app import proxies_from_environment
from truckllm.cache.key import MAX_TTL, directives
from truckllm.cache.replay import Assembler
from truckllm.config import ConfigError, parse_config
from truckllm.config.advice import base_url_warnings
from truckllm.config.schema import AffinityConfig
from truckllm.routing.affinity import Affinity
from truckllm.testing.mock import MockUpstream
from truckllm.testing.mock_media import parse_form


def test_admin_numbers_past_float_range_are_a_400_not_a_500(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = make(gateway_factory, upstream.url)
    for query in (
        "overview?window=inf",
        "overview?window=-inf",
        "requests?limit=inf",
        "requests?after=1e400",
    ):
        resp = gw.request("GET", f"/admin/v1/{query}", headers=ADMIN)
        assert resp.status == 400, (query, resp.status)
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert gw.request("GET", "/admin/v1/requests?limit=1e3", headers=ADMIN).status == 200


def test_usage_query_oddities_are_a_400_not_a_500(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = make(gateway_factory, upstream.url)
    for query in ("from=inf", "to=-inf", "group_by=model&top=%C2%B2"):  # top=² (a digit to isdigit)
        resp = gw.request("GET", f"/admin/v1/usage?{query}", headers=ADMIN)
        assert resp.status == 400, (query, resp.status, resp.body)
    assert gw.request("GET", "/admin/v1/usage?group_by=model&top=2", headers=ADMIN).status == 200


def test_a_proxy_url_that_is_not_http_keeps_its_password_out_of_errors_and_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    problems = config_problems(
        """
        storage: {runtime: {type: http, url: "http://s:1", proxy: "socks5://me:hun/ter2@p:1"}}
        """
    )
    assert any("storage.runtime.proxy: not an http:// proxy URL" in p for p in problems)
    assert not any("hun" in p or "ter2" in p for p in problems), problems
    monkeypatch.setenv("HTTPS_PROXY", "https://me:hunter2@proxy.internal:3128")
    with caplog.at_level(logging.INFO):
        assert proxies_from_environment().https is None  # ignored, and said so
    assert "proxy.internal" in caplog.text and "hunter2" not in caplog.text


def test_a_cache_ttl_that_is_not_finite_is_the_configured_one() -> None:
    # nan made an entry that never expired (its deadline compared false), inf as well; for
    # Redis, int(inf * 1000) raises OverflowError in the middle of sending the answer
    for value in (b"nan", b"inf", b"1e400", b"-nan"):
        assert directives([(b"x-truckllm-cache-ttl", value)]).ttl is None, value
    assert directives([(b"x-truckllm-cache-ttl", b"-inf")]).ttl == 0.0  # not kept
    assert directives([(b"x-truckllm-cache-ttl", b" 5 ")]).ttl == 5.0
    assert directives([(b"x-truckllm-cache-ttl", b"-3")]).ttl == 0.0


def test_a_failing_span_export_logs_the_collector_url_without_its_query_or_password(
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = upstream_factory(), upstream_factory()
    dead = Collector()
    dead.close()  # nobody listens there: the export fails, the spans are dropped
    url = dead.url.replace("http://", "http://me:pw-SECRET@") + "/v1/traces?key=q-SECRET"
    dead.url = f'"{url}"'  # quoted: a flow mapping in the YAML
    gw = gateway_factory(tracing_config(a.url, b.url, dead, ", timeout: 0.2"))
    with caplog.at_level(logging.INFO, logger="truckllm"):
        assert gw.post("/v1/chat/completions", TRACED_CHAT).status == 200
        wait_until(
            lambda: (
                'truckllm_trace_spans_total{result="dropped"} 0'
                not in gw.request("GET", "/metrics").body.decode()
            ),
            timeout=15,
        )
        logged = [r for r in caplog.records if r.getMessage() == "spans dropped"]
        wait_until(lambda: logged or None)
    assert logged and all(
        "SECRET" not in f"{r.getMessage()} {r.__dict__}" for r in caplog.records
    ), [r.__dict__ for r in caplog.records if "SECRET" in str(r.__dict__)]
    assert "/v1/traces" in logged[0].__dict__["url"]


@pytest.mark.parametrize("second", ['name="model"', "name=model", 'name="model"; filename="x"'])
def test_an_upload_with_a_second_model_field_is_refused_not_sent_on(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway], second: str
) -> None:
    # The gateway routed, checked (allowed_models) and priced the first 'model' while the
    # upstream's form parser took the last: any model, at the price of an allowed one.
    up = serve_fake(MockUpstream)
    gw = gateway_factory(f"""
        providers:
          - {{id: oa, base_url: "{up.url}", keys: [{{id: o1, secret: sk-o-1}}]}}
        model_aliases: {{cheap: "oa:whisper-1"}}
        server: {{api_keys: [{{key: client-key, id: c, allowed_models: [cheap]}}]}}
        """)
    body = upload_form("cheap", False, b"abc")
    extra = f"--{BOUNDARY}\r\nContent-Disposition: form-data; {second}\r\n\r\ngpt-4o-transcribe\r\n"
    body = body.replace(f"--{BOUNDARY}--".encode(), extra.encode() + f"--{BOUNDARY}--".encode())
    status, answer = upload(gw, body)
    assert status == 400 and answer["error"]["param"] == "model", answer
    assert not [r for r in up.received if r.status == 200]  # no whole form reached it
    # one model field, however it is written, still goes
    status, answer = upload(gw, upload_form("cheap", True, b"abc"))
    assert status == 200, answer
    assert parse_form(up.received[-1].headers["Content-Type"], up.received[-1].raw)["model"] == (
        "whisper-1"
    )


def test_base_url_warnings_show_no_password_or_query_token() -> None:
    cfg = parse_config(
        """
        providers:
          - {id: a, base_url: "https://me:pw-SECRET@llm.corp/chat?token=q-SECRET", keys: [{id: k, secret: s}]}
          - {id: b, type: anthropic, base_url: "https://me:pw-SECRET@anth.corp/v1", keys: [{id: k2, secret: s}]}
        """,
        "test.yaml",
        {},
        ["openai", "anthropic", "gemini"],
    )
    found = base_url_warnings(cfg)
    assert len(found) == 2 and not any("SECRET" in line for line in found), found
    assert found[0].startswith("providers[0].base_url: 'https://llm.corp/chat' has no version")
    assert "use 'https://anth.corp'" in found[1]


def test_affinity_remembers_a_digest_of_a_long_session_not_the_header_itself() -> None:
    # The client's session header went into the table whole: max_entries (100 000) of them at
    # up to 64 KiB each.
    table = Affinity(AffinityConfig(enabled=True))
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    one = table.ident("m", body, [], "s" * 60_000 + "1")
    two = table.ident("m", body, [], "s" * 60_000 + "2")
    long_model = table.ident("m" * 60_000, body, [], None)
    assert one is not None and two is not None and long_model is not None
    assert max(len(one), len(two), len(long_model)) <= 320 and one != two
    assert table.ident("m", body, [], "short") == "m\x1fs\x1fshort"  # kept as it is


@pytest.mark.parametrize(
    "section",
    [
        'tracing: {endpoint: "ftp://me:pw-SECRET@h/x?token=q-SECRET"}',
        'logging: {sinks: [{type: webhook, url: "ftp://me:pw-SECRET@h/x?token=q-SECRET"}]}',
        'providers: [{id: b, base_url: "ftp://me:pw-SECRET@h/x?token=q-SECRET", keys: []}]',
    ],
)
def test_a_url_that_is_not_http_keeps_its_password_and_token_out_of_the_config_error(
    section: str,
) -> None:
    text = 'providers: [{id: a, base_url: "http://x/v1", keys: [{id: k, secret: s}]}]\n'
    with pytest.raises(ConfigError) as err:
        yaml = section if section.startswith("providers") else text + section
        parse_config(yaml, "t.yaml", {}, ["openai"])
    (problem,) = [p for p in err.value.problems if "is not an http(s) URL" in p]
    assert "'ftp://***@h/x' is not an http(s) URL" in problem, problem


def test_a_client_cache_ttl_is_at_most_a_year() -> None:
    assert directives([(b"x-truckllm-cache-ttl", b"1e300")]).ttl == MAX_TTL == 365 * 86400
    assert directives([(b"x-truckllm-cache-ttl", b"86400")]).ttl == 86400


def test_the_cache_reads_a_stream_in_bounded_memory_and_never_breaks_it() -> None:
    # The stream's text was kept whole whatever its size (and copied at every delta), and a
    # chunk of an odd shape raised inside the tap, cutting the client's stream.
    def event(delta: dict[str, Any], index: Any = 0) -> bytes:
        chunk = {"id": "c", "choices": [{"index": index, "delta": delta}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    small = Assembler(limit=100)
    small.feed(event({"content": "x" * 60}) + event({"content": "y" * 60}) + b"data: [DONE]\n\n")
    assert small.broken and not small.choices  # too large to keep: nothing held
    odd = Assembler()
    odd.feed(event({"tool_calls": [{"index": [1], "function": {"arguments": "{}"}}]}))
    odd.feed(event({"content": "hi"}, index={"a": 1}) + b'data: {"choices": 5}\n\n')
    assert odd.broken  # not kept, and nothing raised
    whole = Assembler(limit=100)
    whole.feed(event({"content": "he"}) + event({"content": "llo"}) + b"data: [DONE]\n\n")
    assert whole.done and not whole.broken
    assert whole.completion(None)["choices"][0]["message"]["content"] == "hello"


def test_admin_views_mask_a_password_in_any_configured_url(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    # The proxy option was masked; tracing.endpoint, base_url and sink URLs were shown whole.
    host = upstream.url.split("://", 1)[1]
    gw = gateway_factory(f"""
        providers:
          - {{id: p, base_url: "http://me:pw-SECRET@{host}/v1", keys: [{{id: k1, secret: s}}]}}
        server: {{admin_api_key: adm}}
        tracing: {{endpoint: "http://me:tr-SECRET@127.0.0.1:9/v1/traces"}}
        logging: {{sinks: [{{type: webhook, url: "http://me:wh-SECRET@127.0.0.1:9/x"}}]}}
        """)
    adm = {"Authorization": "Bearer adm"}
    for path in ("config", "providers"):
        resp = gw.request("GET", f"/admin/v1/{path}", headers=adm)
        assert resp.status == 200 and b"SECRET" not in resp.body, resp.body
    view = gw.request("GET", "/admin/v1/config", headers=adm).json()
    assert view["config"]["tracing"]["endpoint"].endswith("@127.0.0.1:9/v1/traces")
