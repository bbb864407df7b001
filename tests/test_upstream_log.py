"""Failed upstream attempts as the operator sees them: one structured warning per attempt (JSON,
as the gateway logs it in production), rate-limited per provider; and client errors that name
the upstream call that failed. Real requests on loopback against the fakes."""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from helpers import Gateway

from truckllm.gateway.upstream_log import FailureLog
from truckllm.telemetry.log import JSONFormatter
from truckllm.testing.mock import MockUpstream, Scripted

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


class Lines:
    """The ``truckllm.upstream`` log as JSON objects, one per line written."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def all(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def upstream_log() -> Iterator[Lines]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("truckllm.upstream")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield Lines(stream)
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_upstream_logs_each_attempt_and_names_the_call(
    gateway_factory: Callable[..., Gateway], upstream_log: Lines
) -> None:
    port = dead_port()
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: http://127.0.0.1:{port}/v1
            query_params: {{api-key: sk-in-the-query}}
            keys: [{{id: k1, secret: sk-secret-one}}, {{id: k2, secret: sk-secret-two}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        retry: {{max_attempts: 2, backoff_base: 0.001, backoff_max: 0.001}}
        """)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 502
    message = resp.json()["error"]["message"]
    assert message.startswith("provider 'openai' is unreachable: ConnectionRefusedError")
    assert message.endswith("(POST /v1/chat/completions)")
    lines = upstream_log.all()
    assert [line["attempt"] for line in lines] == [1, 2]
    assert {line["key_id"] for line in lines} == {"k1", "k2"}  # the second attempt moved on
    for line in lines:
        assert line["level"] == "warning" and line["logger"] == "truckllm.upstream"
        assert line["provider"] == "openai" and line["method"] == "POST"
        assert line["url"] == f"http://127.0.0.1:{port}/v1/chat/completions"  # no query
        assert line["status"] is None
        assert line["error"].startswith("ConnectionRefusedError: ")
        assert line["request_id"] == resp.headers["x-request-id"]
    assert lines[0]["action"].endswith(f"moved to key '{lines[1]['key_id']}'")
    assert lines[1]["action"].endswith("gave up after 2 attempts")
    text = upstream_log.stream.getvalue()
    for secret in ("sk-in-the-query", "sk-secret-one", "sk-secret-two"):
        assert secret not in text and secret not in resp.body.decode()


def test_a_throttled_key_is_cooled_and_the_request_moves_on(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway], upstream_log: Lines
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: k1, secret: sk-key-one}}, {{id: k2, secret: sk-key-two}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        """)
    upstream.script.append(
        Scripted(
            status=429,
            headers={"retry-after": "7"},
            body={
                "error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
            },
        )
    )
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200
    (line,) = upstream_log.all()
    assert line["status"] == 429
    assert line["error"] == "HTTP 429 rate_limit_exceeded: slow down"
    assert line["attempt"] == 1 and line["url"] == f"{upstream.url}/chat/completions"
    cooled, step = line["action"].split("; ")
    assert cooled.startswith("cooled the key for ") and cooled.endswith(" s")
    assert 6.0 <= float(cooled.split()[-2]) <= 7.0
    other = "k2" if line["key_id"] == "k1" else "k1"
    assert step == f"moved to key '{other}'"
    assert f"key '{line['key_id']}'" in line["message"]


def test_a_wrong_base_url_names_the_path_to_the_client_and_the_log(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway], upstream_log: Lines
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: k1, secret: sk-key-one}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        """)
    # What a server answers for a path it does not have: a plain-text 404.
    upstream.script.append(Scripted(status=404, body=b"404: Not Found"))
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 404
    assert resp.json()["error"]["message"] == (
        "provider 'openai' answered 404 for POST /v1/chat/completions: 404: Not Found"
    )
    (line,) = upstream_log.all()
    assert line["status"] == 404 and line["action"] == "passed to the client"
    assert line["error"].startswith("HTTP 404: provider 'openai' answered 404 for POST")


def test_refused_credentials_take_the_key_out_and_say_which_call(
    upstream_factory: Callable[..., MockUpstream],
    gateway_factory: Callable[..., Gateway],
    upstream_log: Lines,
) -> None:
    upstream = upstream_factory(valid_keys={"sk-good"})
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: bad, secret: sk-bad}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        """)
    resp = gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 502
    assert resp.json()["error"]["message"] == (
        "provider 'openai' rejected the gateway's credentials for POST /v1/chat/completions"
    )
    (line,) = upstream_log.all()
    assert line["status"] == 401 and line["key_id"] == "bad"
    assert line["error"] == "HTTP 401 invalid_api_key: Incorrect API key provided."
    assert line["action"] == (
        "took the key out of service (credentials refused (HTTP 401)); gave up after 1 attempt"
    )
    assert "sk-bad" not in upstream_log.stream.getvalue()


def test_an_outage_cannot_flood_the_log(
    gateway_factory: Callable[..., Gateway], upstream_log: Lines
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: http://127.0.0.1:{dead_port()}/v1
            keys: [{{id: k1, secret: sk-key-one}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        retry: {{max_attempts: 1}}
        routing: {{breaker: {{failures: 1000, provider_failures: 1000}}}}
        """)
    now = [0.0]
    gw.app.runtime.failure_log = FailureLog(burst=3, per_second=0.5, clock=lambda: now[0])
    for _ in range(10):
        assert gw.post("/v1/chat/completions", CHAT).status == 502
    assert len(upstream_log.all()) == 3  # the burst, then silence
    now[0] += 2.0  # one more line's worth of time
    assert gw.post("/v1/chat/completions", CHAT).status == 502
    lines = upstream_log.all()
    assert len(lines) == 4
    assert lines[-1]["suppressed"] == 7
    assert lines[-1]["message"].endswith("(7 similar lines suppressed)")
    assert [line["suppressed"] for line in lines[:3]] == [0, 0, 0]


def test_the_bucket_is_per_provider() -> None:
    now = [0.0]
    failures = FailureLog(burst=1, per_second=1.0, clock=lambda: now[0])
    assert failures.allow("a") == 0 and failures.allow("b") == 0
    assert failures.allow("a") is None and failures.allow("a") is None
    now[0] += 1.0
    assert failures.allow("a") == 2 and failures.allow("b") == 0


def test_a_stream_broken_after_its_first_byte_is_logged(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway], upstream_log: Lines
) -> None:
    gw = gateway_factory(f"""
        providers:
          - id: openai
            base_url: {upstream.url}
            keys: [{{id: k1, secret: sk-key-one}}]
        model_aliases: {{gpt-4: openai:gpt-4}}
        """)
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    upstream.script.append(Scripted(events=[chunk, chunk, chunk, "[DONE]"], cut_after=2))
    resp = gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200
    assert b'"error"' in resp.body and b"[DONE]" not in resp.body
    assert b"(POST /v1/chat/completions)" in resp.body  # the error event names the call
    (line,) = upstream_log.all()
    assert line["key_id"] == "k1" and line["attempt"] == 1 and line["status"] is None
    assert line["error"].startswith("ConnectionBroken")
    assert line["action"].endswith("ended the stream with an error event after 2 events")
