"""The OpenAI-compatible passthrough over real loopback HTTP, against scripted fake upstreams."""

from __future__ import annotations

import hashlib
import http.client
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import Gateway, assert_no_attempt_in_flight, request, sse_events, wait_until

from truckllm.routing import OutcomeKind
from truckllm.testing.mock import MockUpstream, Scripted

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def one_provider(url: str, keys: int = 2, extra: str = "") -> str:
    key_lines = "\n".join(
        f"          - {{id: k{i}, secret: sk-upstream-{i}}}" for i in range(1, keys + 1)
    )
    return f"""
    providers:
      - id: openai
        base_url: {url}
        models: [gpt-4o-mini]
        keys:
{key_lines}
    model_aliases:
      gpt-4: openai:gpt-4-0613
    routing: {{strategy: round_robin}}
    {extra}
    """


@pytest.fixture
def gw(upstream: MockUpstream, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(one_provider(upstream.url))


# -- passthrough fidelity --------------------------------------------------------------------


def test_only_model_is_rewritten_and_every_other_field_passes_untouched(
    gw: Gateway, upstream: MockUpstream
) -> None:
    body = {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    },
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "none",
        "response_format": {"type": "json_object"},
        "temperature": 0.25,
        "seed": 7,
        "logit_bias": {"50256": -100},
        "vendor_extension": {"nested": [1, 2.5, None, True]},
    }
    upstream.script.append(
        Scripted(body=b'{"id":"x",  "object":"chat.completion", "weird_spacing" : true}')
    )
    resp = gw.post("/v1/chat/completions", body)
    assert resp.status == 200
    assert (
        resp.body == b'{"id":"x",  "object":"chat.completion", "weird_spacing" : true}'
    )  # bytes as they came
    sent = upstream.received[-1].body
    assert sent == {**body, "model": "gpt-4-0613"}


def test_body_is_forwarded_byte_for_byte_when_the_model_name_is_unchanged(
    gw: Gateway, upstream: MockUpstream
) -> None:
    raw = b'{"model": "gpt-4o-mini",   "messages": [{"role": "user", "content": "hi"}], "x": 1.0}'
    assert gw.post("/v1/chat/completions", raw=raw).status == 200
    assert upstream.received[-1].raw == raw


def test_response_headers_name_provider_key_and_request(
    gw: Gateway, upstream: MockUpstream
) -> None:
    resp = gw.post("/v1/chat/completions", CHAT, headers={"X-Request-Id": "my-trace-1"})
    assert resp.headers["x-request-id"] == "my-trace-1"
    assert resp.headers["x-truckllm-provider"] == "openai"
    assert resp.headers["x-truckllm-key-id"] in ("k1", "k2")
    assert resp.headers["x-truckllm-attempts"] == "1"
    assert "sk-upstream" not in str(resp.headers)
    generated = gw.post("/v1/chat/completions", CHAT).headers["x-request-id"]
    assert generated.startswith("req_") and len(generated) > 10


def test_the_key_picked_is_the_key_used_and_keys_rotate(
    gw: Gateway, upstream: MockUpstream
) -> None:
    used = []
    for _ in range(6):
        resp = gw.post("/v1/chat/completions", CHAT)
        key_id = resp.headers["x-truckllm-key-id"]
        assert upstream.received[-1].bearer == f"sk-upstream-{key_id[1:]}"
        used.append(key_id)
    assert used == ["k1", "k2"] * 3
    assert all(s.outcomes == {OutcomeKind.SUCCESS: 3} for s in gw.states().values())


# -- model resolution ------------------------------------------------------------------------


def test_model_resolution_alias_then_provider_prefix_then_listing(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(f"""
        providers:
          - {{id: a, base_url: {a.url}, models: [shared, only-a]}}
          - {{id: b, base_url: {b.url}, models: [shared, "b:colon-model"]}}
        model_aliases:
          smart: [b:big, a:big]
          only-a: b:other
        """)
    cases = [
        ("smart", "b", "big"),
        ("only-a", "b", "other"),
        ("a:shared", "a", "shared"),
        ("b:llama3:8b", "b", "llama3:8b"),
        ("shared", "a", "shared"),
    ]
    for model, provider, upstream_model in cases:
        resp = gw.post("/v1/chat/completions", {**CHAT, "model": model})
        assert resp.status == 200, (model, resp.body)
        assert resp.headers["x-truckllm-provider"] == provider
        mock = a if provider == "a" else b
        assert mock.received[-1].body["model"] == upstream_model
    for unknown in ("nope", "c:shared", "a:"):
        resp = gw.post("/v1/chat/completions", {**CHAT, "model": unknown})
        assert resp.status == 404
        assert resp.json()["error"]["code"] == "model_not_found"
        assert resp.json()["error"]["param"] == "model"


def test_catch_all_provider_serves_any_model_name(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(f"providers: [{{id: local, base_url: {upstream.url}, models: ['*']}}]")
    assert gw.post("/v1/chat/completions", {**CHAT, "model": "qwen2.5:7b"}).status == 200
    assert upstream.received[-1].body["model"] == "qwen2.5:7b"
    assert "authorization" not in {
        h.lower() for h in upstream.received[-1].headers
    }  # keyless upstream


def test_models_listing_and_retrieval(gw: Gateway) -> None:
    listing = gw.request("GET", "/v1/models").json()
    assert listing["object"] == "list"
    assert {m["id"]: m["owned_by"] for m in listing["data"]} == {
        "gpt-4": "truckllm",
        "gpt-4o-mini": "openai",
    }
    one = gw.request("GET", "/v1/models/gpt-4o-mini")
    assert (
        one.status == 200 and one.json()["id"] == "gpt-4o-mini" and one.json()["object"] == "model"
    )
    assert gw.request("GET", "/v1/models/nope").json()["error"]["code"] == "model_not_found"


# -- client auth -----------------------------------------------------------------------------


def test_client_auth_plain_and_hashed_keys(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    digest = hashlib.sha256(b"hashed-client-key").hexdigest()
    gw = gateway_factory(
        one_provider(
            upstream.url,
            extra=f"""
    server:
      api_keys: [plain-client-key, {{id: team, key_sha256: "{digest}"}}]
    """,
        )
    )
    for headers, status, code in [
        ({}, 401, "missing_api_key"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
        ({"Authorization": "Basic plain-client-key"}, 401, "missing_api_key"),
        ({"Authorization": "Bearer plain-client-key"}, 200, None),
        ({"Authorization": "Bearer hashed-client-key"}, 200, None),
    ]:
        resp = gw.post("/v1/chat/completions", CHAT, headers=headers)
        assert resp.status == status, headers
        if code:
            assert resp.json()["error"]["code"] == code
    assert len(upstream.received) == 2  # rejected requests never reach the upstream
    assert gw.request("GET", "/v1/models").status == 401


# -- client errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param", "fragment"),
    [
        (b"{not json", None, "could not parse the JSON body"),
        (b"[1, 2]", None, "must be a JSON object"),
        (
            b'{"messages": [{"role": "user", "content": "x"}]}',
            "model",
            "you must provide a model parameter",
        ),
        (
            b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
            "model",
            "expected a string, got a number",
        ),
        (b'{"model": "gpt-4", "messages": "hello"}', "messages", "expected an array, got a string"),
        (b'{"model": "gpt-4", "messages": []}', "messages", "non-empty array"),
        (
            b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
            "expected a boolean",
        ),
        (
            b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "stream": true, "stream_options": 1}',
            "stream_options",
            "expected an object",
        ),
    ],
)
def test_bad_requests_get_400_and_never_reach_the_upstream(
    gw: Gateway, upstream: MockUpstream, raw: bytes, param: str | None, fragment: str
) -> None:
    resp = gw.post("/v1/chat/completions", raw=raw)
    assert resp.status == 400
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"]
    assert upstream.received == []


def test_embeddings_input_is_validated(gw: Gateway) -> None:
    resp = gw.post("/v1/embeddings", {"model": "gpt-4o-mini"})
    assert resp.status == 400 and resp.json()["error"]["param"] == "input"


def test_oversized_bodies_get_413(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(one_provider(upstream.url, extra="server: {max_body_bytes: 1000}"))
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    resp = gw.post("/v1/chat/completions", big)
    assert resp.status == 413 and resp.json()["error"]["code"] == "request_too_large"
    # Without a Content-Length (chunked upload) the limit holds while reading.
    host, port = gw.server.host, gw.server.port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=iter([orjson.dumps(big)]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    chunked = conn.getresponse()
    assert chunked.status == 413
    conn.close()
    assert upstream.received == []


def test_unknown_paths_and_methods(gw: Gateway) -> None:
    assert gw.request("GET", "/v1/nothing").json()["error"]["code"] == "unknown_url"
    resp = gw.request("GET", "/v1/chat/completions")
    assert resp.status == 405 and resp.json()["error"]["type"] == "invalid_request_error"
    assert gw.request("GET", "/healthz").json()["status"] == "ok"


# -- upstream errors, retries and failover ---------------------------------------------------


def test_upstream_client_errors_pass_through_untouched_without_retry(
    gw: Gateway, upstream: MockUpstream
) -> None:
    err = b'{"error":{"message":"This model\'s maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}'
    upstream.script.append(Scripted(status=400, body=err))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert (resp.status, resp.body) == (400, err)
    assert resp.headers["x-truckllm-attempts"] == "1"
    assert len(upstream.received) == 1


@pytest.mark.parametrize(
    "first",
    [
        Scripted(
            status=429,
            body={
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            headers={"retry-after": "20"},
        ),
        Scripted(
            status=500,
            body={
                "error": {"message": "boom", "type": "server_error", "param": None, "code": None}
            },
        ),
        Scripted(status=503, body=b"<html>Service Unavailable</html>"),
        Scripted(reset=True),
        Scripted(
            status=401,
            body={
                "error": {
                    "message": "Incorrect API key provided: sk-upstream-1.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
        ),
    ],
)
def test_retryable_failures_move_to_the_next_key(
    gw: Gateway, upstream: MockUpstream, first: Scripted
) -> None:
    upstream.script.append(first)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200, resp.body
    assert resp.headers["x-truckllm-attempts"] == "2"
    assert resp.headers["x-truckllm-key-id"] == "k2"
    assert [r.bearer for r in upstream.received] == ["sk-upstream-1", "sk-upstream-2"]
    assert gw.states()["k1"].outcomes.get(OutcomeKind.SUCCESS) is None
    assert sum(gw.states()["k1"].outcomes.values()) == 1 and gw.states()["k2"].outcomes == {
        OutcomeKind.SUCCESS: 1
    }
    assert_no_attempt_in_flight(gw)


def test_when_every_key_is_throttled_the_client_gets_the_429_and_retry_after(
    gw: Gateway, upstream: MockUpstream
) -> None:
    body = {
        "error": {
            "message": "Rate limit reached for requests",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    upstream.script.extend([Scripted(status=429, body=body, headers={"retry-after": "7"})] * 2)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 429
    assert resp.json() == body
    assert resp.headers["retry-after"] == "7"
    assert resp.headers["x-truckllm-attempts"] == "2"


def test_upstream_credential_failures_become_502_without_leaking_the_key(
    gw: Gateway, upstream: MockUpstream
) -> None:
    for i in (1, 2):
        upstream.script.append(
            Scripted(
                status=401,
                body={
                    "error": {
                        "message": f"Incorrect API key provided: sk-upstream-{i}",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
        )
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 502
    assert resp.json()["error"]["code"] == "upstream_auth_failed"
    assert b"sk-upstream" not in resp.body


def test_unreachable_upstream_is_502_and_timeout_is_504(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gw = gateway_factory(one_provider(f"http://127.0.0.1:{dead_port}/v1"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 502
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    assert resp.headers.get("x-request-id")
    slow = gateway_factory(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            timeout: 0.3
            keys: [{{id: k1, secret: a}}, {{id: k2, secret: b}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        """)
    # Answers that never come in the client's time (it gives up after 15 s): only the gateway's
    # 0.3 s timeout can answer it.
    upstream.script.extend([Scripted(delay=60), Scripted(delay=60)])
    resp = slow.post("/v1/chat/completions", CHAT)
    assert resp.status == 504 and resp.json()["error"]["code"] == "upstream_timeout"
    assert_no_attempt_in_flight(slow)


def test_aliases_fail_over_between_providers(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    a, b = upstream_factory(), upstream_factory()
    gw = gateway_factory(f"""
        providers:
          - {{id: a, base_url: {a.url}, keys: [{{secret: ka}}]}}
          - {{id: b, base_url: {b.url}, keys: [{{secret: kb}}]}}
        model_aliases: {{smart: [a:m1, b:m2]}}
        """)
    a.script.append(Scripted(status=502, body=b"bad gateway"))
    resp = gw.post("/v1/chat/completions", {**CHAT, "model": "smart"})
    assert resp.status == 200 and resp.headers["x-truckllm-provider"] == "b"
    assert b.received[-1].body["model"] == "m2"


def test_retry_budget_is_configurable(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(one_provider(upstream.url, keys=3, extra="retry: {max_attempts: 1}"))
    upstream.script.append(
        Scripted(
            status=500,
            body={"error": {"message": "x", "type": "server_error", "param": None, "code": None}},
        )
    )
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 500 and len(upstream.received) == 1


# -- streaming -------------------------------------------------------------------------------


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def open_stream(
    gw: Gateway, body: dict[str, Any]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(gw.server.host, gw.server.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    return conn, conn.getresponse()


def test_stream_events_are_forwarded_as_they_arrive(gw: Gateway, upstream: MockUpstream) -> None:
    events = [chunk("a"), chunk("b"), chunk("c"), chunk(None, "stop"), "[DONE]"]
    # The upstream sends the first event and then nothing: it reaches the client all the same.
    upstream.script.append(Scripted(events=events, stall_after=1))
    conn, resp = open_stream(gw, {**CHAT, "stream": True})
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
    first = resp.readline()
    assert b'"content":"a"' in first
    conn.close()
    # And a whole stream arrives whole.
    upstream.script.append(Scripted(events=events))
    conn, resp = open_stream(gw, {**CHAT, "stream": True})
    assert [orjson.loads(e) for e in sse_events(resp.read())[:-1]] == events[:-1]
    conn.close()


def test_stream_usage_is_requested_and_stripped_when_the_client_did_not_ask(
    gw: Gateway, upstream: MockUpstream
) -> None:
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert upstream.received[-1].body["stream_options"] == {"include_usage": True}
    payloads = sse_events(resp.body)
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)
    state = gw.states()[resp.headers["x-truckllm-key-id"]]
    assert state.outcomes == {OutcomeKind.SUCCESS: 1}


def test_stream_usage_reaches_the_client_that_asked(gw: Gateway, upstream: MockUpstream) -> None:
    resp = gw.post(
        "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    chunks = [orjson.loads(p) for p in sse_events(resp.body)[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert upstream.received[-1].raw == orjson.dumps(
        {**CHAT, "model": "gpt-4-0613", "stream": True, "stream_options": {"include_usage": True}}
    )


def test_a_stream_that_fails_before_its_first_event_fails_over(
    gw: Gateway, upstream: MockUpstream
) -> None:
    upstream.script.append(Scripted(events=[chunk("never")], cut_after=0))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["x-truckllm-attempts"] == "2"
    assert sse_events(resp.body)[-1] == b"[DONE]"
    assert_no_attempt_in_flight(gw)


def test_a_stream_cut_after_the_first_byte_ends_with_an_error_event_not_done(
    gw: Gateway, upstream: MockUpstream
) -> None:
    upstream.script.append(
        Scripted(
            events=[chunk("partial"), chunk("more"), chunk("lost")], cut_after=2, event_delay=0.05
        )
    )
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    payloads = sse_events(resp.body)
    assert b'"partial"' in payloads[0]
    assert b"[DONE]" not in payloads
    last = orjson.loads(payloads[-1])
    assert last["error"]["code"] == "upstream_unavailable"
    assert len(upstream.received) == 1  # never retried after the first byte
    assert gw.states()[resp.headers["x-truckllm-key-id"]].outcomes == {OutcomeKind.STREAM_BROKEN: 1}
    assert_no_attempt_in_flight(gw)


def test_a_client_that_disconnects_cancels_the_upstream_stream(
    gw: Gateway, upstream: MockUpstream
) -> None:
    upstream.script.append(Scripted(events=[chunk("one"), chunk("two")], stall_after=1))
    conn, resp = open_stream(gw, {**CHAT, "stream": True})
    assert b'"one"' in resp.readline()
    key_id = resp.getheader("x-truckllm-key-id")
    assert gw.states()[key_id].in_flight == 1
    conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    conn.close()
    assert_no_attempt_in_flight(gw)
    assert gw.states()[key_id].outcomes == {OutcomeKind.CANCELLED: 1}
    wait_until(lambda: upstream.cancelled == 1)  # the upstream saw its request dropped


def test_a_client_that_disconnects_while_waiting_cancels_the_upstream_call(
    gw: Gateway, upstream: MockUpstream
) -> None:
    upstream.script.append(Scripted(delay=30))
    sock = socket.create_connection((gw.server.host, gw.server.port))
    body = orjson.dumps(CHAT)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # Leave once the upstream holds the request (the gateway notices a disconnect at once, so
    # leaving earlier would cancel the call before it is sent).
    wait_until(
        lambda: len(upstream.received) == 1 and any(s.in_flight for s in gw.states().values())
    )
    sock.close()
    assert_no_attempt_in_flight(gw)
    assert sum(s.outcomes.get(OutcomeKind.CANCELLED, 0) for s in gw.states().values()) == 1
    wait_until(lambda: upstream.cancelled == 1)


def test_every_attempt_reports_exactly_once_under_concurrency(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    import concurrent.futures

    # k3's credentials are refused upstream: every request that draws it first moves on.
    upstream = upstream_factory(valid_keys={"sk-upstream-1", "sk-upstream-2"})
    gw = gateway_factory(one_provider(upstream.url, keys=3))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: gw.post("/v1/chat/completions", {**CHAT, "stream": i % 2 == 0}),
                range(120),
            )
        )
    assert [r.status for r in results] == [200] * 120
    attempts = sum(int(r.headers["x-truckllm-attempts"]) for r in results)
    assert attempts > 120
    reports = sum(sum(s.outcomes.values()) for s in gw.states().values())
    assert reports == attempts == len(upstream.received)
    assert gw.states()["k3"].outcomes == {OutcomeKind.AUTH_ERROR: attempts - 120}
    assert_no_attempt_in_flight(gw)


def test_non_json_upstream_error_is_wrapped_in_openai_shape(
    gw: Gateway, upstream: MockUpstream
) -> None:
    upstream.script.append(Scripted(status=404, body=b"404 page not found"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 404
    err = resp.json()["error"]
    assert "404 page not found" in err["message"] and err["type"] == "not_found_error"


def test_direct_request_helper_speaks_to_mock(upstream: MockUpstream) -> None:
    assert request("GET", upstream.url + "/models").json()["object"] == "list"


def test_crlf_event_boundaries_split_across_reads_are_found(
    gw: Gateway, upstream: MockUpstream
) -> None:
    first = orjson.dumps(chunk("a"))
    second = orjson.dumps(chunk("b"))
    events: list[dict[str, Any] | bytes | str] = [
        b"data: " + first + b"\r\n\r",  # the blank line's CRLF arrives in two reads
        b"\ndata: " + second + b"\r\n\r\n",
        b"data: [DONE]\r\n\r\n",
    ]
    upstream.script.append(Scripted(events=events, event_delay=0.05))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    payloads = sse_events(resp.body)
    assert payloads[:2] == [first, second] and payloads[-1] == b"[DONE]"


def test_every_request_yields_one_record_with_what_happened(
    gw: Gateway, upstream: MockUpstream
) -> None:
    from truckllm.telemetry.record import RequestRecord

    records: list[RequestRecord] = []
    gw.app.records.subscribe(records.append)
    gw.post("/v1/chat/completions", CHAT, headers={"X-Request-Id": "r1"})
    gw.post("/v1/chat/completions", {**CHAT, "stream": True}, headers={"X-Request-Id": "r2"})
    upstream.script.append(
        Scripted(
            status=400,
            body={
                "error": {
                    "message": "bad",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "x",
                }
            },
        )
    )
    gw.post("/v1/chat/completions", CHAT, headers={"X-Request-Id": "r3"})
    gw.post("/v1/chat/completions", {**CHAT, "model": "nope"}, headers={"X-Request-Id": "r4"})
    gw.post("/v1/chat/completions", raw=b"{", headers={"X-Request-Id": "r5"})
    wait_until(lambda: len(records) == 5)
    by_id = {r.request_id: r for r in records}
    ok, streamed, upstream_400, unknown, malformed = (by_id[f"r{i}"] for i in range(1, 6))
    assert (ok.status, ok.provider, ok.alias, ok.model, ok.upstream_model, ok.attempts) == (
        200,
        "openai",
        "gpt-4",
        "gpt-4",
        "gpt-4-0613",
        1,
    )
    assert (
        ok.client_id == "anonymous"
        and ok.key_id in ("k1", "k2")
        and ok.usage is not None
        and ok.usage.completion_tokens == 8
    )
    assert 0 < ok.upstream_s <= ok.latency_s and ok.overhead_s < ok.latency_s
    assert (
        streamed.stream and streamed.ttft_s is not None and streamed.usage is not None
    )  # usage even unasked
    assert (upstream_400.status, upstream_400.error_code) == (400, "x")
    assert (unknown.status, unknown.error_code, unknown.provider) == (404, "model_not_found", None)
    assert (malformed.status, malformed.endpoint, malformed.error_code) == (
        400,
        "chat",
        "invalid_json",
    )
