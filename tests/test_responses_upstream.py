"""The Responses API's calls that reach an upstream beyond ``POST /v1/responses``: ``DELETE`` of
a passthrough response goes to the provider and key that hold it, and the upstream's answer
comes back; and ``builtin_tools: error``, which refuses built-in tools a translated provider
cannot run instead of leaving them out. The official ``openai`` SDK is the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from helpers import Gateway, request

from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.mock import MockUpstream

CONFIG = """
providers:
  - id: native
    base_url: {native}
    responses_api: true
    keys: [{{id: n1, secret: sk-n-1}}, {{id: n2, secret: sk-n-2}}]
  - id: claude
    type: anthropic
    base_url: {anthropic}
    builtin_tools: error
    keys: [{{id: a1, secret: sk-ant-1}}]
  - id: lenient
    type: anthropic
    base_url: {anthropic}
    keys: [{{id: a2, secret: sk-ant-2}}]
model_aliases:
  direct: native:gpt-4.1-mini
  strict: claude:claude-sonnet-4-5
  lenient: lenient:claude-sonnet-4-5
  strict-then-native: [claude:claude-sonnet-4-5, native:gpt-4.1-mini]
server:
  api_keys: [client-key]
retry: {{max_attempts: 2}}
"""


@pytest.fixture
def stack(
    serve_fake: Callable[..., Any], gateway_factory: Callable[..., Gateway]
) -> tuple[Gateway, MockUpstream, FakeAnthropic]:
    native = serve_fake(MockUpstream)
    claude = serve_fake(FakeAnthropic)
    gw = gateway_factory(CONFIG.format(native=native.url, anthropic=claude.url))
    return gw, native, claude


def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key", max_retries=0)


def test_delete_of_a_passthrough_response_reaches_the_upstream(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, _ = stack
    with sdk(gw) as client:
        made = client.responses.create(model="direct", input="Hi")
        key = native.received[-1].headers["Authorization"]
        assert made.id in native.responses.kept
        client.responses.delete(made.id)
        sent = native.received[-1]
        assert (sent.method, sent.path) == ("DELETE", f"/v1/responses/{made.id}")
        assert sent.headers["Authorization"] == key  # the key that holds it
        assert made.id not in native.responses.kept
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)  # the gateway's copy is gone too


def test_delete_relays_the_upstreams_answer(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, _ = stack
    with sdk(gw) as client:
        made = client.responses.create(model="direct", input="Hi")
    del native.responses.kept[made.id]  # expired upstream, still in the gateway's copy
    headers = {"Authorization": "Bearer client-key"}
    resp = request("DELETE", gw.url + f"/v1/responses/{made.id}", None, headers)
    assert resp.status == 404
    upstream = native.received[-1]
    assert (upstream.method, upstream.status) == ("DELETE", 404)
    assert resp.json()["error"] == orjson.loads(upstream.answer)["error"]  # the upstream's answer
    again = request("DELETE", gw.url + f"/v1/responses/{made.id}", None, headers)
    assert again.status == 404 and native.received[-1].method == "DELETE"  # forgotten: not resent
    assert len([r for r in native.received if r.method == "DELETE"]) == 1


def test_builtin_tools_error_is_a_400_in_the_responses_dialect(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, _, claude = stack
    before = len(claude.received)
    with sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(
                model="strict", input="Hi", tools=[{"type": "web_search"}]
            )
        assert info.value.code == "unsupported_tool" and info.value.param == "tools"
        assert "web_search" in info.value.message
        assert len(claude.received) == before  # nothing sent
        # without built-in tools the same provider serves
        assert client.responses.create(model="strict", input="Hi").output_text
        # the default, drop: left out and named
        raw = client.responses.with_raw_response.create(
            model="lenient", input="Hi", tools=[{"type": "web_search"}]
        )
        assert raw.headers["x-truckllm-dropped-tools"] == "web_search"


def test_builtin_tools_error_fails_over_to_a_provider_that_runs_them(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, claude = stack
    before = len(claude.received)
    with sdk(gw) as client:
        answer = client.responses.create(
            model="strict-then-native", input="Hi", tools=[{"type": "web_search"}]
        )
    assert answer.output_text
    assert native.received[-1].body["tools"] == [{"type": "web_search"}]  # passed through
    assert len(claude.received) == before
