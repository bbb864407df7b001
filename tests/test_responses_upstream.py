"""The Responses API's calls that reach an upstream beyond ``POST /v1/responses``: ``GET``,
``input_items`` and ``DELETE`` of a passthrough response go to the provider and key that hold it,
and the upstream's answer comes back (the gateway's copy answers only once that provider or key
is no longer configured); and ``builtin_tools: error``, which refuses built-in tools a translated provider
cannot run instead of leaving them out. The official ``openai`` SDK is the client."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from helpers import Gateway, request

from truckllm.config import parse_config
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


def test_retrieve_of_a_passthrough_response_is_the_upstreams_answer(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, _ = stack
    with sdk(gw) as client:
        made = client.responses.create(model="direct", input="Hi")
        key = native.received[-1].headers["Authorization"]
        native.responses.kept[made.id]["metadata"] = {"from": "upstream"}  # changed there
        got = client.responses.retrieve(made.id)
        sent = native.received[-1]
        assert (sent.method, sent.path) == ("GET", f"/v1/responses/{made.id}")
        assert sent.headers["Authorization"] == key  # the key that holds it
        assert got.metadata == {"from": "upstream"} and got.output_text == made.output_text
        del native.responses.kept[made.id]  # gone upstream: so for the client, copy or not
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.retrieve(made.id)
        assert native.received[-1].status == 404
        assert info.value.body == orjson.loads(native.received[-1].answer)["error"]


def test_input_items_of_a_passthrough_response_are_the_upstreams_list(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, _ = stack
    with sdk(gw) as client:
        made = client.responses.create(
            model="direct",
            input=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "second"},
                {"role": "user", "content": "third"},
            ],
        )
        upstream_ids = [item["id"] for item in native.responses.inputs[made.id]]
        page = client.responses.input_items.list(made.id, order="asc", limit=2)
        sent = native.received[-1]
        assert sent.method == "GET"
        assert sent.path.startswith(f"/v1/responses/{made.id}/input_items?")
        assert "order=asc" in sent.path and "limit=2" in sent.path  # the client's query
        assert [item.id for item in page.data] == upstream_ids[:2]  # the upstream's own ids
        assert page.has_more
        rest = client.responses.input_items.list(made.id, order="asc", after=upstream_ids[1])
        assert [item.id for item in rest.data] == upstream_ids[2:]
        assert [item.id for item in client.responses.input_items.list(made.id)] == list(
            reversed(upstream_ids)
        )  # desc by default, as OpenAI's


def test_a_provider_no_longer_configured_leaves_the_gateways_copy(
    stack: tuple[Gateway, MockUpstream, FakeAnthropic],
) -> None:
    gw, native, claude = stack
    with sdk(gw) as client:
        made = client.responses.create(model="direct", input="Hi")
        asked = len(native.received)
        without = textwrap.dedent(CONFIG.format(native=native.url, anthropic=claude.url))
        without = without.replace("  - id: native", "  - id: renamed")
        without = without.replace("native:gpt-4.1-mini", "renamed:gpt-4.1-mini")
        cfg = parse_config(without, "<test>", {})

        async def swap() -> None:
            gw.app.swap(cfg)

        assert gw.server.loop is not None
        asyncio.run_coroutine_threadsafe(swap(), gw.server.loop).result(10)
        got = client.responses.retrieve(made.id)
        assert got.id == made.id and got.output_text == made.output_text  # the copy
        items = client.responses.input_items.list(made.id)
        assert [item.type for item in items.data] == ["message"]
        assert len(native.received) == asked  # nothing asked of anyone


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
