"""OpenTelemetry tracing through a real gateway: spans exported over OTLP/HTTP to an in-process
collector (a loopback HTTP server decoding the protobuf ``ExportTraceServiceRequest``), their
parent links and GenAI attributes, the client's ``traceparent`` continued and each attempt's
passed to the upstream; and nothing of OpenTelemetry loaded when tracing is off."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import Gateway, sse_events, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from truckllm.config import ConfigError, parse_config
from truckllm.telemetry.tracing import header_lines, parse_traceparent
from truckllm.testing.mock import MockUpstream, Scripted

SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CHAT: dict[str, Any] = {"model": "smart", "messages": [{"role": "user", "content": "secret plan"}]}


class Span:
    """One received span, its ids as hex and its attributes as a dict."""

    def __init__(self, proto: Any, resource: dict[str, Any]) -> None:
        self.name: str = proto.name
        self.kind: int = proto.kind
        self.trace_id = proto.trace_id.hex()
        self.span_id = proto.span_id.hex()
        self.parent_id = proto.parent_span_id.hex()
        self.start, self.end = proto.start_time_unix_nano, proto.end_time_unix_nano
        self.error = proto.status.code == 2  # STATUS_CODE_ERROR
        self.attrs = _attrs(proto.attributes)
        self.resource = resource


def _attrs(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which)
    return out


class Collector:
    """An OTLP/HTTP trace receiver on loopback."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.refuse = 0  # answer the next exports 503
        self.posts = 0
        self.cond = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                collector.posts += 1
                if collector.refuse:
                    collector.refuse -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                assert self.path == "/v1/traces"
                assert self.headers["Content-Type"] == "application/x-protobuf"
                req = ExportTraceServiceRequest()
                req.ParseFromString(data)
                spans = [
                    Span(span, _attrs(rs.resource.attributes))
                    for rs in req.resource_spans
                    for ss in rs.scope_spans
                    for span in ss.spans
                ]
                with collector.cond:
                    collector.spans += spans
                    collector.cond.notify_all()
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def wait(self, n: int, timeout: float = 10.0) -> list[Span]:
        """The first ``n`` spans received (the bound only fails the test)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.spans) >= n, timeout), self.spans
            return list(self.spans[:n])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def config(a: str, b: str, collector: Collector, extra: str = "") -> str:
    return f"""
        providers:
          - {{id: a, base_url: {a}, keys: [{{id: a1, secret: ka1}}]}}
          - {{id: b, base_url: {b}, keys: [{{id: b1, secret: kb1}}]}}
        model_aliases: {{smart: [a:m-a, b:m-b]}}
        tracing: {{endpoint: {collector.url}, service_name: gw-test, flush_interval: 0.02{extra}}}
        """


def header(received: Any, name: str) -> str | None:
    return next((v for k, v in received.headers.items() if k.lower() == name), None)


def assert_has(attrs: dict[str, Any], expected: dict[str, Any]) -> None:
    wrong = {k: (attrs.get(k), v) for k, v in expected.items() if attrs.get(k) != v}
    assert not wrong, f"(got, expected): {wrong}"


def by_kind(spans: list[Span]) -> tuple[Span, list[Span]]:
    (server,) = [s for s in spans if s.kind == SERVER]
    attempts = sorted(
        (s for s in spans if s.kind == CLIENT), key=lambda s: s.attrs["truckllm.attempt"]
    )
    return server, attempts


def test_a_request_continues_the_clients_trace_and_each_attempt_is_a_child_span(
    collector: Collector,  # first: it outlives the gateways, which flush to it when they stop
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector))
    resp = gw.post(
        "/v1/chat/completions",
        CHAT,
        headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=x"},
    )
    assert resp.status == 200
    server, (attempt,) = by_kind(collector.wait(2))
    assert server.trace_id == attempt.trace_id == TRACE
    assert server.parent_id == PARENT and attempt.parent_id == server.span_id
    assert server.start <= attempt.start < attempt.end <= server.end
    assert server.resource["service.name"] == "gw-test"
    assert server.name == "chat smart" and attempt.name == "chat m-a"
    assert not server.error and not attempt.error
    usage = resp.json()["usage"]
    assert_has(
        server.attrs,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "smart",
            "gen_ai.response.model": "m-a",
            "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": usage["prompt_tokens"],
            "gen_ai.usage.output_tokens": usage["completion_tokens"],
            "http.request.method": "POST",
            "url.path": "/v1/chat/completions",
            "http.response.status_code": 200,
            "truckllm.alias": "smart",
            "truckllm.key_id": "a1",
            "truckllm.attempts": 1,
        },
    )
    assert server.attrs["truckllm.request_id"] == resp.headers["x-request-id"]
    port = int(a.url.rsplit(":", 1)[1].split("/")[0])
    assert_has(
        attempt.attrs,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "m-a",
            "gen_ai.response.model": "m-a",
            "gen_ai.usage.input_tokens": usage["prompt_tokens"],
            "server.address": "127.0.0.1",
            "server.port": port,
            "http.response.status_code": 200,
            "truckllm.key_id": "a1",
            "truckllm.attempt": 1,
        },
    )
    assert "error.type" not in attempt.attrs and "error.type" not in server.attrs
    # No content without capture_content, and no secret anywhere.
    everything = repr([s.attrs for s in (server, attempt)])
    assert "secret plan" not in everything and "ka1" not in everything
    # The upstream saw the attempt span as its parent, in the client's trace.
    (received,) = a.received
    assert header(received, "traceparent") == f"00-{TRACE}-{attempt.span_id}-01"
    assert header(received, "tracestate") == "vendor=x"
    exported = 'truckllm_trace_spans_total{result="exported"} 2'

    def metrics_page() -> str | None:  # counted once the export's POST has returned
        page = gw.request("GET", "/metrics").body.decode()
        return page if exported in page else None

    metrics = wait_until(metrics_page)
    assert 'truckllm_trace_spans_total{result="dropped"} 0' in metrics


def test_failover_gives_two_attempt_spans_the_first_with_its_error_and_cooldown(
    collector: Collector,  # first: it outlives the gateways, which flush to it when they stop
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector))
    a.script.append(
        Scripted(
            status=429,
            headers={"retry-after": "30"},
            body={"error": {"message": "slow down", "type": "rate_limit", "code": None}},
        )
    )
    resp = gw.post("/v1/chat/completions", CHAT)  # no traceparent: the gateway starts one
    assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "b"
    server, (first, second) = by_kind(collector.wait(3))
    assert server.parent_id == "" and len(server.trace_id) == 32
    assert first.parent_id == second.parent_id == server.span_id
    assert first.trace_id == second.trace_id == server.trace_id
    assert first.end <= second.start
    assert first.error and not second.error and not server.error
    assert_has(
        first.attrs,
        {
            "truckllm.attempt": 1,
            "truckllm.key_id": "a1",
            "error.type": "rate_limited",
            "http.response.status_code": 429,
            "truckllm.key.status": "cooling",
        },
    )
    assert 25 < first.attrs["truckllm.key.cooldown_s"] <= 30
    assert "gen_ai.usage.input_tokens" not in first.attrs
    assert_has(
        second.attrs,
        {
            "truckllm.attempt": 2,
            "truckllm.key_id": "b1",
            "gen_ai.request.model": "m-b",
            "http.response.status_code": 200,
        },
    )
    assert "gen_ai.usage.input_tokens" in second.attrs
    assert server.attrs["truckllm.attempts"] == 2 and server.attrs["truckllm.key_id"] == "b1"
    assert server.attrs["gen_ai.response.model"] == "m-b"
    # Each upstream saw its own attempt's span as the parent.
    assert header(a.received[0], "traceparent") == f"00-{server.trace_id}-{first.span_id}-01"
    assert header(b.received[0], "traceparent") == f"00-{server.trace_id}-{second.span_id}-01"


def test_an_upstream_error_passed_on_and_a_stream(
    collector: Collector,  # first: it outlives the gateways, which flush to it when they stop
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector).replace("[a:m-a, b:m-b]", "[a:m-a]"))
    a.script.append(Scripted(status=400, body={"error": {"message": "bad", "type": "x"}}))
    assert gw.post("/v1/chat/completions", CHAT).status == 400
    server, (attempt,) = by_kind(collector.wait(2))
    assert server.attrs["error.type"] == "400" and server.attrs["http.response.status_code"] == 400
    assert attempt.attrs["error.type"] == "client_error" and attempt.error
    assert not server.error  # a client's 4xx is no error of the gateway's (HTTP server spans)

    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200 and sse_events(resp.body)[-1] == b"[DONE]"
    server, (attempt,) = by_kind(collector.wait(4)[2:])
    assert server.attrs["gen_ai.request.stream"] is True
    assert "gen_ai.response.time_to_first_chunk" in server.attrs
    assert attempt.attrs["gen_ai.usage.output_tokens"] > 0
    assert attempt.end <= server.end


def test_an_unsampled_trace_exports_nothing_but_is_still_passed_on(
    collector: Collector,  # first: it outlives the gateways, which flush to it when they stop
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector, ", sample_ratio: 0"))
    unsampled = f"00-{TRACE}-{PARENT}-00"
    assert gw.post("/v1/chat/completions", CHAT, headers={"traceparent": unsampled}).status == 200
    sent = parse_traceparent(header(a.received[0], "traceparent").encode())  # type: ignore[union-attr]
    assert sent is not None and f"{sent[0]:032x}" == TRACE and sent[2] is False
    # sample_ratio 0: a trace the gateway starts is not sampled; a client's sampled one is.
    assert gw.post("/v1/chat/completions", CHAT).status == 200
    sampled = f"00-{TRACE}-{PARENT}-01"
    assert gw.post("/v1/chat/completions", CHAT, headers={"traceparent": sampled}).status == 200
    spans = collector.wait(2)
    assert {s.trace_id for s in spans} == {TRACE}
    gw.server.stop()  # flushes the exporter
    assert len(collector.spans) == 2


def test_capture_content_exports_the_messages_and_the_answer(
    collector: Collector,  # first: it outlives the gateways, which flush to it when they stop
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector, ", capture_content: true"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200
    server, _ = by_kind(collector.wait(2))
    assert "secret plan" in server.attrs["gen_ai.input.messages"]
    answer = resp.json()["choices"][0]["message"]["content"]
    assert answer and answer in server.attrs["gen_ai.output.messages"]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (f"00-{TRACE}-{PARENT}-01", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-00", (int(TRACE, 16), int(PARENT, 16), False)),
        (f"01-{TRACE}-{PARENT}-01-future", (int(TRACE, 16), int(PARENT, 16), True)),
        (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE}-{PARENT}-01", None),
        (f"00-{'0' * 32}-{PARENT}-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE.upper()}-{PARENT}-01", None),
        ("garbage", None),
    ],
)
def test_traceparent_parsing(value: str, parsed: tuple[int, int, bool] | None) -> None:
    assert parse_traceparent(value.encode()) == parsed
    if parsed is not None and value.startswith("00"):
        line = header_lines(*parsed).decode()
        assert line == f"traceparent: {value}\r\n"


def test_tracing_off_loads_no_exporter() -> None:
    """With no tracing.endpoint the serving path never imports the exporter (nor OpenTelemetry:
    the gateway's tracing needs none of its packages)."""
    code = (
        "import sys\n"
        "import truckllm.api, truckllm.runner, truckllm.workers, truckllm.cli\n"
        "from truckllm.config.schema import TracingConfig\n"
        "from truckllm.telemetry.tracing import build_tracer\n"
        "assert build_tracer(TracingConfig()) is None\n"
        "names = ('opentelemetry', 'truckllm.telemetry.otel', 'truckllm.telemetry.otlp')\n"
        "print(sorted(m for m in sys.modules if m.startswith(names)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("tracing", "problem"),
    [
        ("{endpoint: collector:4318}", "cfg.yaml: tracing.endpoint: 'collector:4318' is not"),
        ("{endpoint: 'http://c:4318', sample_ratio: 2}", "tracing.sample_ratio: must be between"),
        ("{endpoint: 'http://c:4318', timeout: 0}", "tracing.timeout: must be positive"),
        ("{endpoint: 'http://c:4318', headers: {'a b': x}}", "tracing.headers.a b: is not a valid"),
        ("{endpont: 'http://c:4318'}", "tracing.endpont"),
    ],
)
def test_tracing_config_errors_name_the_key(tracing: str, problem: str) -> None:
    text = f"providers: [{{id: openai, keys: [{{secret: k}}]}}]\ntracing: {tracing}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml")
    assert problem in str(info.value)


def test_traces_url_and_provider_names() -> None:
    from truckllm.telemetry.spans import provider_info, traces_url

    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    assert provider_info("gemini", "https://generativelanguage.googleapis.com") == (
        "gcp.gemini",
        "generativelanguage.googleapis.com",
        443,
    )
    assert provider_info("anthropic", "http://127.0.0.1:9000")[::2] == ("anthropic", 9000)
    assert provider_info("openai", "https://x.openai.azure.com/openai")[0] == "azure.ai.openai"
    assert provider_info("openai", "https://api.groq.com/openai/v1")[0] == "groq"


def test_the_encoder_writes_what_the_official_protobuf_classes_read() -> None:
    from truckllm.telemetry.otlp import CLIENT as KIND_CLIENT
    from truckllm.telemetry.otlp import SERVER as KIND_SERVER
    from truckllm.telemetry.otlp import Encoder, request

    stable = (("s", "héllo" * 40), ("t", True), ("absent", None), ("i", 300), ("small", 7))
    varying = {"f": False, "neg": -5, "big": 2**62, "d": 0.25, "seq": ["a", "b"], "ints": (1, 2)}
    attrs = {k: v for k, v in stable if v is not None} | varying
    enc = Encoder()
    times = (1_700_000_000_000_000_001, 1_700_000_000_000_000_999)
    for _ in range(2):  # the second time from the cache
        ids = (int(TRACE, 16), 1, int(PARENT, 16))
        spans = [
            enc.span(ids, "a", KIND_SERVER, times, (stable, varying), True),
            enc.span((int(TRACE, 16), 2**64 - 1, None), "b", KIND_CLIENT, times, ((), {}), False),
        ]
        req = ExportTraceServiceRequest()
        req.ParseFromString(request(enc.resource({"service.name": "x"}, ("tl", "9.9")), spans))
        (rs,) = req.resource_spans
        assert _attrs(rs.resource.attributes) == {"service.name": "x"}
        (ss,) = rs.scope_spans
        assert (ss.scope.name, ss.scope.version) == ("tl", "9.9")
        a, b = ss.spans
        assert a.trace_id.hex() == TRACE and a.span_id.hex() == "0000000000000001"
        assert a.parent_span_id.hex() == PARENT and b.parent_span_id == b""
        assert b.span_id.hex() == "f" * 16
        assert (a.name, a.kind, b.kind) == ("a", SERVER, CLIENT)
        assert (a.start_time_unix_nano, a.end_time_unix_nano) == times
        assert (a.status.code, b.status.code) == (2, 0)  # ERROR, UNSET
        got = _attrs(a.attributes)
        seq, ints = got.pop("seq"), got.pop("ints")
        assert got == {k: v for k, v in attrs.items() if k not in ("seq", "ints")}
        assert [v.string_value for v in seq.values] == ["a", "b"]
        assert [v.int_value for v in ints.values] == [1, 2]
        assert list(b.attributes) == []


def test_a_refused_export_is_retried_and_an_absent_collector_costs_no_request(
    collector: Collector,
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    collector.refuse = 1
    gw = gateway_factory(config(a.url, b.url, collector))
    assert gw.post("/v1/chat/completions", CHAT).status == 200
    assert len(collector.wait(2)) == 2 and collector.posts >= 2
    # Nobody listening: requests are served all the same.
    dead = Collector()
    dead.close()
    gw2 = gateway_factory(config(a.url, b.url, dead, ", timeout: 1"))
    for _ in range(3):
        assert gw2.post("/v1/chat/completions", CHAT).status == 200


def test_messages_api_clients_traced_to_anthropic_and_gemini_and_a_refused_client(
    collector: Collector,
    serve_fake: Callable[..., Any],
    gateway_factory: Callable[..., Gateway],
) -> None:
    """Claude Code's API through the official SDK: passthrough to Anthropic and translation to
    Gemini both carry the attempt's traceparent; a client over its rpm gets a span of its own."""
    import anthropic

    from truckllm.testing.fake_anthropic import FakeAnthropic
    from truckllm.testing.fake_gemini import FakeGemini

    claude, gemini = serve_fake(FakeAnthropic), serve_fake(FakeGemini)
    gw = gateway_factory(f"""
        providers:
          - {{id: claude, type: anthropic, base_url: {claude.url}, keys: [{{id: c1, secret: sk-ant}}]}}
          - {{id: gem, type: gemini, base_url: {gemini.url}, keys: [{{id: g1, secret: g-key}}]}}
        model_aliases: {{direct: claude:claude-sonnet-4-5, translated: gem:gemini-2.5-flash}}
        server: {{api_keys: [{{id: cc, key: client-key, rpm: 2}}]}}
        tracing: {{endpoint: {collector.url}, flush_interval: 0.02}}
        """)
    sdk = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
    traceparent = f"00-{TRACE}-{PARENT}-01"
    for i, (model, fake, provider) in enumerate(
        [("direct", claude, "anthropic"), ("translated", gemini, "gcp.gemini")]
    ):
        sdk.messages.create(
            model=model,
            max_tokens=50,
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"traceparent": traceparent},
        )
        server, (attempt,) = by_kind(collector.wait(2 * i + 2)[2 * i :])
        assert server.parent_id == PARENT and attempt.parent_id == server.span_id
        assert server.name == f"chat {model}" and server.attrs["url.path"] == "/v1/messages"
        assert attempt.attrs["gen_ai.provider.name"] == provider
        assert server.attrs["gen_ai.usage.output_tokens"] > 0
        assert server.attrs["truckllm.client_id"] == "cc"
        assert header(fake.received[-1], "traceparent") == f"00-{TRACE}-{attempt.span_id}-01"
    with pytest.raises(anthropic.RateLimitError):
        sdk.messages.create(
            model="direct", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    (server,) = collector.wait(5)[4:]
    assert server.kind == SERVER and server.attrs["http.response.status_code"] == 429
    assert server.attrs["error.type"] and server.attrs["truckllm.attempts"] == 0


def test_a_cache_hit_has_its_request_span_and_no_attempt(
    collector: Collector,
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(config(a.url, b.url, collector) + "cache: {enabled: true}\n")
    for _ in range(2):  # (only deterministic requests are cached by default)
        assert gw.post("/v1/chat/completions", {**CHAT, "temperature": 0}).status == 200
    spans = collector.wait(3)
    miss, (attempt,) = by_kind(spans[:2])
    (hit,) = spans[2:]
    assert miss.attrs["truckllm.cache"] == "miss" and attempt.parent_id == miss.span_id
    assert hit.kind == SERVER and hit.attrs["truckllm.cache"] == "hit"
    assert hit.attrs["truckllm.attempts"] == 0 and len(a.received) == 1
