"""The response cache over real loopback HTTP against the mock upstream: hits answer the same
body or an equivalent stream (read with the official SDKs), tenants never share answers, the
client's Cache-Control is obeyed, entries expire, identical misses in flight make one call."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import orjson
import pytest
from helpers import Gateway, Response, wait_until

from truckllm.cache.entry import Entry, decode, encode
from truckllm.cache.key import cache_key, directives
from truckllm.cache.memory import MemoryBackend
from truckllm.cache.replay import Assembler, chunks
from truckllm.config import ConfigError, parse_config
from truckllm.providers.base import Usage
from truckllm.testing.mock import MockUpstream, Scripted

CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}
A = {"Authorization": "Bearer client-a"}
B = {"Authorization": "Bearer client-b"}
PRICING = "{input_token_cost: 1.0, output_token_cost: 2.0, unit: per_1m_tokens}"


def config(url: str, cache: str = "{enabled: true}") -> str:
    return f"""
    server:
      api_keys:
        - {{key: client-a, id: a}}
        - {{key: client-b, id: b}}
    providers:
      - id: p
        base_url: {url}
        models: [m]
        keys: [{{id: k1, secret: sk-1, pricing: {PRICING}}}]
    cache: {cache}
    """


@pytest.fixture
def gw(upstream: MockUpstream, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(config(upstream.url))


def chat_calls(upstream: MockUpstream) -> int:
    return sum(1 for r in upstream.received if r.path == "/v1/chat/completions")


def post(gw: Gateway, body: dict[str, Any], headers: dict[str, str] = A, **more: str) -> Response:
    return gw.post("/v1/chat/completions", body, headers={**headers, **more})


# -- whole answers ---------------------------------------------------------------------------


def test_a_hit_returns_the_same_body_without_an_upstream_call(
    gw: Gateway, upstream: MockUpstream
) -> None:
    first = post(gw, CHAT)
    assert first.status == 200 and first.headers["x-truckllm-cache"] == "miss"
    again = post(gw, {**CHAT, "stream": False, "user": "someone", "metadata": {"x": "y"}})
    assert again.status == 200 and again.headers["x-truckllm-cache"] == "hit"
    assert again.body == first.body  # byte for byte, the upstream's id included
    assert again.headers["x-truckllm-cost-usd"] == "0"
    assert float(again.headers["x-truckllm-cache-saved-usd"]) == pytest.approx(
        float(first.headers["x-truckllm-cost-usd"])
    )
    assert chat_calls(upstream) == 1
    other = post(gw, {**CHAT, "messages": [{"role": "user", "content": "hello"}]})
    assert other.headers["x-truckllm-cache"] == "miss" and chat_calls(upstream) == 2


def test_embeddings_are_cached(gw: Gateway, upstream: MockUpstream) -> None:
    body = {"model": "m", "input": ["one", "two"]}
    first = gw.post("/v1/embeddings", body, headers=A)
    again = gw.post("/v1/embeddings", body, headers=A)
    assert (first.headers["x-truckllm-cache"], again.headers["x-truckllm-cache"]) == (
        "miss",
        "hit",
    )
    assert again.body == first.body
    assert sum(1 for r in upstream.received if r.path == "/v1/embeddings") == 1


def test_tenants_never_read_each_others_answers(
    gw: Gateway, upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    a = post(gw, CHAT, A)
    b = post(gw, CHAT, B)
    assert b.headers["x-truckllm-cache"] == "miss" and b.body != a.body
    assert post(gw, CHAT, B).body == b.body and post(gw, CHAT, A).body == a.body
    assert chat_calls(upstream) == 2
    shared = gateway_factory(config(upstream.url, "{enabled: true, namespace: shared}"))
    first = post(shared, CHAT, A)
    assert post(shared, CHAT, B).body == first.body  # one namespace, as configured


def test_no_cache_refreshes_and_no_store_bypasses(gw: Gateway, upstream: MockUpstream) -> None:
    first = post(gw, CHAT)
    fresh = post(gw, CHAT, **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-truckllm-cache"] == "miss" and fresh.body != first.body
    assert post(gw, CHAT).body == fresh.body  # the refreshed answer replaced the old one
    bypass = post(gw, {**CHAT, "seed": 1}, **{"Cache-Control": "no-store"})
    assert bypass.headers["x-truckllm-cache"] == "bypass"
    assert post(gw, {**CHAT, "seed": 1}).headers["x-truckllm-cache"] == "miss"  # not kept
    assert post(gw, CHAT, **{"Cache-Control": "no-store"}).body != fresh.body  # nor read
    assert chat_calls(upstream) == 5


def test_sampled_requests_and_tool_calls_are_cached_only_when_configured(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url))
    warm = {**CHAT, "temperature": 0.7}
    unset = {k: v for k, v in CHAT.items() if k != "temperature"}
    for body in (warm, unset, warm):
        assert post(gw, body).headers["x-truckllm-cache"] == "bypass"
    tools = {
        **CHAT,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "required",
    }
    first = post(gw, tools)
    assert first.json()["choices"][0]["message"]["tool_calls"]
    assert post(gw, tools).headers["x-truckllm-cache"] == "miss"  # not kept
    allowed = gateway_factory(
        config(upstream.url, "{enabled: true, sampled: true, tool_calls: true}")
    )
    for body in (warm, tools):
        assert post(allowed, body).headers["x-truckllm-cache"] == "miss"
        assert post(allowed, body).headers["x-truckllm-cache"] == "hit"


def test_entries_expire_after_their_ttl(gw: Gateway, upstream: MockUpstream) -> None:
    first = post(gw, CHAT, **{"x-truckllm-cache-ttl": "0.05"})
    assert first.headers["x-truckllm-cache"] == "miss"
    # Poll: once the 50 ms have passed the same request is a miss again and is kept anew.
    wait_until(lambda: post(gw, CHAT).headers["x-truckllm-cache"] == "miss", 10)
    assert post(gw, CHAT).headers["x-truckllm-cache"] == "hit"


def test_memory_lru_expires_and_evicts_on_an_injected_clock() -> None:
    now = [100.0]
    m = MemoryBackend(max_entries=2, max_bytes=10, clock=lambda: now[0])

    async def run() -> None:
        await m.set("a", b"1111", 5)
        await m.set("b", b"2222", 5)
        assert await m.get("a") == b"1111"  # a is now the most recently used
        await m.set("c", b"3333", 5)  # over max_entries: b goes
        assert await m.get("b") is None and await m.get("a") == b"1111"
        await m.set("d", b"444444", 5)  # over max_bytes: the least recently used go
        assert m.bytes <= 10 and await m.get("d") == b"444444"
        now[0] += 5
        assert await m.get("d") is None and len(m) <= 1

    asyncio.run(run())


def test_identical_misses_in_flight_make_one_upstream_call(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    upstream = upstream_factory(latency=1.0)
    gw = gateway_factory(config(upstream.url))
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: post(gw, CHAT), range(6)))
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 1
    results = sorted(a.headers["x-truckllm-cache"] for a in answers)
    assert results.count("miss") == chat_calls(upstream)
    assert chat_calls(upstream) < 6  # the requests that came while it was in flight waited


# -- streams ---------------------------------------------------------------------------------


def sdk(gw: Gateway, key: str = "client-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_a_whole_answer_is_replayed_as_a_stream_to_the_openai_sdk(
    gw: Gateway, upstream: MockUpstream
) -> None:
    client = sdk(gw)
    whole = client.chat.completions.create(model="m", messages=CHAT["messages"], temperature=0)
    with client.chat.completions.with_streaming_response.create(
        model="m",
        messages=CHAT["messages"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-truckllm-cache"] == "hit"
        parts = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in parts if c.choices][-1] == "stop"
    assert parts[-1].usage is not None and whole.usage is not None
    assert parts[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.id == whole.id for c in parts)
    assert chat_calls(upstream) == 1


def test_a_streamed_miss_is_kept_once_complete_and_served_whole_or_streamed(
    gw: Gateway, upstream: MockUpstream
) -> None:
    client = sdk(gw)
    stream = client.chat.completions.create(
        model="m", messages=CHAT["messages"], temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    whole = client.chat.completions.with_raw_response.create(
        model="m", messages=CHAT["messages"], temperature=0
    )
    assert whole.headers["x-truckllm-cache"] == "hit"
    assert whole.parse().choices[0].message.content == streamed
    again = client.chat.completions.create(
        model="m", messages=CHAT["messages"], temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == streamed
    assert chat_calls(upstream) == 1


def test_a_broken_stream_is_never_kept(gw: Gateway, upstream: MockUpstream) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "part"}, "finish_reason": None}],
    }
    upstream.script.append(Scripted(events=[chunk, chunk, chunk, "[DONE]"], cut_after=2))
    with pytest.raises(openai.APIError):
        for _ in sdk(gw).chat.completions.create(
            model="m", messages=CHAT["messages"], temperature=0, stream=True
        ):
            pass
    after = wait_until(lambda: (r := post(gw, CHAT)).status == 200 and r, 10)  # key cooled down
    assert after.headers["x-truckllm-cache"] == "miss"


def test_messages_clients_get_hits_as_anthropic_streams(
    gw: Gateway, upstream: MockUpstream
) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="client-a", max_retries=0, timeout=10)
    ask: dict[str, Any] = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "extra_body": {"temperature": 0},
    }
    first = client.messages.with_raw_response.create(**ask)
    assert first.headers["x-truckllm-cache"] == "miss"
    hit = client.messages.with_raw_response.create(**ask)
    assert hit.headers["x-truckllm-cache"] == "hit"
    assert hit.http_response.content == first.http_response.content
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == first.parse().content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert chat_calls(upstream) == 1


# -- the pieces ------------------------------------------------------------------------------


def test_the_key_ignores_delivery_fields_and_sorts_keys_at_every_depth() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": {"b": 1, "a": 2}}
    same = {"n": {"a": 2, "b": 1}, "stream": True, "user": "u", **body}
    targets = [("p", "m")]
    assert cache_key("ns", "chat", targets, body) == cache_key("ns", "chat", targets, same)
    assert cache_key("ns", "chat", targets, body) != cache_key("ns", "chat", [("p", "m2")], body)
    assert cache_key("ns", "chat", targets, body) != cache_key("ns", "messages", targets, body)
    assert cache_key("ns", "chat", targets, body) != cache_key("other", "chat", targets, body)


def test_directives_are_read_from_the_headers() -> None:
    d = directives([(b"cache-control", b"max-age=0, No-Store"), (b"x-truckllm-cache-ttl", b"9")])
    assert d.no_store and not d.no_cache and d.ttl == 9.0
    assert directives([(b"x-truckllm-cache-ttl", b"soon")]).ttl is None


def test_a_stream_assembles_into_the_completion_it_was_made_from() -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hello there",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
    }
    usage = Usage(3, 4, 1, 0)
    a = Assembler()
    a.feed(chunks(completion, usage, True))
    assert a.done and not a.broken
    back = a.completion(None)
    assert back["choices"] == completion["choices"] and back["id"] == "c1"
    assert back["usage"]["prompt_tokens_details"]["cached_tokens"] == 1
    entry = Entry("application/json", b"{}", back, usage, 7, 1.0, "p", "m")
    assert decode(encode(entry)) == entry
    assert decode(b"not an entry") is None and decode(orjson.dumps({}) + b"\n") is None


# -- accounting ------------------------------------------------------------------------------


def test_a_hit_is_recorded_as_a_cache_hit_with_what_it_saved_and_counted(
    gw: Gateway, upstream: MockUpstream
) -> None:
    records: list[Any] = []
    gw.app.records.subscribe(records.append)
    first = post(gw, CHAT)
    post(gw, CHAT)
    gw.settled()
    miss, hit = records
    assert (miss.cache, miss.provider, miss.key_id) == ("miss", "p", "k1")
    assert (hit.cache, hit.provider, hit.key_id, hit.cost_usd) == ("hit", "cache", "", 0.0)
    assert hit.saved_usd == pytest.approx(float(first.headers["x-truckllm-cost-usd"]))
    assert hit.saved_usd > 0 and hit.usage is None and hit.status == 200
    ledger_rows = [row for _, row in gw.app.accounting.ledger.pending]
    assert ("a", "cache", "", "m", "", "") in ledger_rows  # the ledger counts hits apart
    metrics = gw.request("GET", "/metrics").body.decode()
    assert 'truckllm_cache_requests_total{result="hit"} 1' in metrics
    assert 'truckllm_cache_requests_total{result="miss"} 1' in metrics
    assert f"truckllm_cache_saved_usd_total {hit.saved_usd}" in metrics
    assert "truckllm_cache_entries 1" in metrics
    served = f'truckllm_cache_bytes_total{{direction="served"}} {len(first.body)}'
    assert served in metrics


def test_client_limits_still_apply_to_hits(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    text = config(upstream.url).replace("{key: client-a, id: a}", "{key: client-a, id: a, rpm: 1}")
    gw = gateway_factory(text)
    assert post(gw, CHAT).status == 200
    limited = post(gw, CHAT)
    assert limited.status == 429 and "x-truckllm-cache" not in limited.headers


CACHE_BAD = [
    ("cache: {ttl: 0}", "test.yaml: cache.ttl: must be positive"),
    ("cache: {type: disk}", "test.yaml: cache.type: "),
    ("cache: {endpoints: [chat, images]}", "test.yaml: cache.endpoints[1]: "),
    ("cache: {max_entries: 0}", "test.yaml: cache.max_entries: must be at least 1"),
    (
        "cache: {enabled: true, type: redis}",
        "test.yaml: cache.url: is required for a redis cache unless storage.runtime is redis",
    ),
    ("cache: {enabled: true, type: redis, url: 'http://x'}", "test.yaml: cache.url: must start"),
    ("routing: {affinity: {min_headroom: 2}}", "test.yaml: routing.affinity.min_headroom: "),
    ("routing: {affinity: {prefix_bytes: 0}}", "test.yaml: routing.affinity.prefix_bytes: "),
    ("routing: {affinity: {sticky: true}}", "test.yaml: routing.affinity.sticky: unknown key"),
]


@pytest.mark.parametrize(("text", "expected"), CACHE_BAD)
def test_cache_and_affinity_config_errors_name_the_file_and_key_path(
    text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("providers: [{id: openai, keys: [{secret: k}]}]\n" + text, "test.yaml", {})
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_a_reload_turns_the_cache_on_and_off(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, "{enabled: false}"))
    assert "x-truckllm-cache" not in post(gw, CHAT).headers
    on = parse_config(textwrap.dedent(config(upstream.url)), "<test>", {})
    gw.server.loop.call_soon_threadsafe(gw.app.swap, on)  # as the reloader does, on the loop
    wait_until(lambda: post(gw, CHAT).headers.get("x-truckllm-cache") == "hit", 10)
    assert chat_calls(upstream) >= 2
