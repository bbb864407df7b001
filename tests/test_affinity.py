"""Prompt-cache affinity over real loopback HTTP: a conversation stays on one key while that key
may serve, moves when it may not; and the fakes report cached prompt tokens, each in its
provider's way, when a prefix repeats on the same key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from helpers import Gateway, request

from truckllm.testing.fake_anthropic import FakeAnthropic
from truckllm.testing.fake_gemini import FakeGemini
from truckllm.testing.mock import KeyBehaviour, MockUpstream
from truckllm.testing.prompt_cache import PromptCache

SYSTEM = "You are a careful assistant. " * 200  # about 1,500 tokens: past the 1,024 minimum


def conversation(first: str, turns: int) -> list[list[dict[str, Any]]]:
    """The messages of each turn of one conversation (each turn repeats the ones before)."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": first},
    ]
    out = [list(msgs)]
    for t in range(1, turns):
        msgs += [
            {"role": "assistant", "content": f"answer {t}"},
            {"role": "user", "content": f"q{t}"},
        ]
        out.append(list(msgs))
    return out


def config(
    url: str, affinity: str, keys: int = 4, limits: str = "{}", strategy: str = "round_robin"
) -> str:
    key_lines = ", ".join(f"{{id: k{i}, secret: sk-{i}, limits: {limits}}}" for i in range(keys))
    return f"""
    providers:
      - id: p
        base_url: {url}
        models: [m]
        keys: [{key_lines}]
    routing: {{strategy: {strategy}, affinity: {affinity}}}
    """


def chat(gw: Gateway, messages: list[dict[str, Any]], **headers: str) -> tuple[str, Any]:
    r = gw.post("/v1/chat/completions", {"model": "m", "messages": messages}, headers=headers)
    assert r.status == 200, r.body
    return r.headers["x-truckllm-key-id"], r.json()["usage"]


def test_a_conversation_stays_on_its_key_and_reads_the_providers_prompt_cache(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    upstream = upstream_factory(prompt_cache=PromptCache())
    on = gateway_factory(config(upstream.url, "{enabled: true}"))
    for first in ("alpha", "beta", "gamma"):
        turns = [chat(on, msgs) for msgs in conversation(first, 5)]
        assert len({key for key, _ in turns}) == 1  # every turn on the first turn's key
        cached = [u["prompt_tokens_details"]["cached_tokens"] for _, u in turns]
        # The first turn may find the system prompt cached (another conversation on the key);
        # every later turn finds at least the turns before it.
        assert all(c > cached[0] + 1024 // 2 or c > 1024 for c in cached[1:])
        assert cached[1:] == sorted(cached[1:])
    off = gateway_factory(config(upstream.url, "{enabled: false}"))
    keys = [chat(off, msgs)[0] for msgs in conversation("delta", 4)]
    assert len(set(keys)) == 4  # round robin: one conversation over every key


def test_new_conversations_still_spread_over_the_keys(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, "{enabled: true}"))
    firsts = [chat(gw, conversation(f"topic {i}", 1)[0])[0] for i in range(8)]
    assert Counter(firsts) == {"k0": 2, "k1": 2, "k2": 2, "k3": 2}


def test_sessions_named_by_header_or_prompt_cache_key_stay_on_one_key(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, "{enabled: true, header: x-session}"))
    # Different prompts, one session: the header holds them together.
    keys = {
        chat(gw, [{"role": "user", "content": f"m{i}"}], **{"x-session": "s1"})[0] for i in range(4)
    }
    assert len(keys) == 1

    def body(i: int) -> dict[str, Any]:
        msgs = [{"role": "user", "content": f"n{i}"}]
        return {"model": "m", "messages": msgs, "prompt_cache_key": "pk"}

    keys = {gw.post("/v1/chat/completions", body(i)).headers["x-truckllm-key-id"] for i in range(4)}
    assert len(keys) == 1

    # Claude Code's session header on the Messages API.
    def message(i: int) -> str:
        r = gw.post(
            "/v1/messages",
            {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": f"c{i}"}]},
            headers={"x-claude-code-session-id": "cc-1", "anthropic-version": "2023-06-01"},
        )
        assert r.status == 200, r.body
        return r.headers["x-truckllm-key-id"]

    assert len({message(i) for i in range(4)}) == 1


def test_a_conversation_moves_when_its_key_runs_out_of_headroom(
    upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    gw = gateway_factory(config(upstream.url, "{enabled: true, min_headroom: 0.5}", 2, "{rpm: 4}"))
    keys = [chat(gw, msgs)[0] for msgs in conversation("omega", 4)]
    # rpm 4: after two requests a key has under half its limit left, so the third moves.
    assert keys[0] == keys[1] and keys[2] != keys[0] and keys[3] == keys[2]
    assert gw.app.runtime.router.affinity is not None
    assert gw.app.runtime.router.affinity.moves >= 1


def test_a_conversation_moves_when_its_key_fails(
    upstream_factory: Callable[..., MockUpstream], gateway_factory: Callable[..., Gateway]
) -> None:
    upstream = upstream_factory()
    gw = gateway_factory(config(upstream.url, "{enabled: true}", 2))
    turns = conversation("sigma", 3)
    first, _ = chat(gw, turns[0])
    upstream.conditions.set("sk-" + first[1:], KeyBehaviour(faults={"503": 1.0}))  # it now fails
    second, _ = chat(gw, turns[1])  # failed over to the other key, which now holds it
    assert second != first
    upstream.conditions.set("sk-" + first[1:], KeyBehaviour())
    assert chat(gw, turns[2])[0] == second


# -- the fakes' prompt caches ----------------------------------------------------------------


def test_each_fake_reports_cached_tokens_its_providers_way(serve_fake: Callable[..., Any]) -> None:
    cache = PromptCache()
    messages = conversation("x", 2)
    openai_fake = serve_fake(MockUpstream, prompt_cache=cache)
    usage = []
    for msgs in messages:
        r = request(
            "POST",
            openai_fake.url + "/chat/completions",
            {"model": "m", "messages": msgs},
            {"Authorization": "Bearer sk-a"},
        )
        usage.append(r.json()["usage"])
    assert usage[0]["prompt_tokens_details"]["cached_tokens"] == 0
    assert 1024 <= usage[1]["prompt_tokens_details"]["cached_tokens"] <= usage[1]["prompt_tokens"]
    other_key = request(
        "POST",
        openai_fake.url + "/chat/completions",
        {"model": "m", "messages": messages[1]},
        {"Authorization": "Bearer sk-b"},
    )
    assert other_key.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    anthropic_fake = serve_fake(FakeAnthropic, prompt_cache=PromptCache())
    turns = [[m for m in msgs if m["role"] != "system"] for msgs in messages]
    got = []
    for msgs in turns:
        r = request(
            "POST",
            anthropic_fake.url + "/v1/messages",
            {"model": "c", "max_tokens": 5, "system": SYSTEM, "messages": msgs},
            {"x-api-key": "ak", "anthropic-version": "2023-06-01"},
        )
        got.append(r.json()["usage"])
    assert got[0]["cache_read_input_tokens"] == 0
    assert got[1]["cache_read_input_tokens"] >= 1024
    assert got[1]["input_tokens"] < got[0]["input_tokens"]  # only the uncached rest

    gemini_fake = serve_fake(FakeGemini, prompt_cache=PromptCache())
    metas = []
    for msgs in turns:
        contents = [
            {
                "role": "model" if m["role"] == "assistant" else "user",
                "parts": [{"text": m["content"]}],
            }
            for m in msgs
        ]
        r = request(
            "POST",
            gemini_fake.url + "/v1beta/models/g:generateContent",
            {"systemInstruction": {"parts": [{"text": SYSTEM}]}, "contents": contents},
            {"x-goog-api-key": "gk"},
        )
        metas.append(r.json()["usageMetadata"])
    assert "cachedContentTokenCount" not in metas[0]
    assert metas[1]["cachedContentTokenCount"] >= 1024


def test_prompt_cache_needs_the_minimum_and_a_repeated_prefix() -> None:
    cache = PromptCache(min_tokens=10)
    assert cache.cached_tokens("k", ["a" * 100]) == 0
    assert cache.cached_tokens("k", ["a" * 100, "b"]) == 102 // 4
    assert cache.cached_tokens("k", ["c" * 100]) == 0
    assert PromptCache(min_tokens=1024).cached_tokens("k", ["a" * 100]) == 0
