"""The mock upstream (``truckllm mock``): three wire formats on one port, latency, pacing, reply
length, usage, per-key limits with each service's real 429s, and injected faults. Real HTTP."""

from __future__ import annotations

import http.client
import itertools
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import Gateway, Response, request, sse_events, wait_serving, wait_until

from truckllm.providers.gemini.errors import parse_duration as parse_google_duration
from truckllm.routing.headers import parse_duration, parse_quota
from truckllm.testing.behaviour import Conditions, Dist, KeyBehaviour, UsageFigures
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock_server import MockServer, parse_settings
from truckllm.testing.serve import free_port
from truckllm.testing.wire import VIRTUAL_TIME, VirtualTime

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
TRUCKLLM = shutil.which("truckllm", path=os.path.dirname(sys.executable)) or "truckllm"


@pytest.fixture
def mock_factory(loop_thread: LoopThread) -> Iterator[Callable[..., MockServer]]:
    started: list[MockServer] = []

    def make(*args: Any, virtual_time: VirtualTime | None = None, **kwargs: Any) -> MockServer:
        kwargs.setdefault("record", True)
        server = MockServer(*args, **kwargs)
        if virtual_time is not None:
            server.app[VIRTUAL_TIME] = virtual_time
        loop_thread.run(server.start())
        started.append(server)
        return server

    yield make
    for server in started:
        loop_thread.run(server.stop())


def openai(mock: MockServer, key: str, body: Any = CHAT, **kw: Any) -> Response:
    return request(
        "POST",
        mock.url + "/v1/chat/completions",
        body,
        {"Authorization": f"Bearer {key}"},
        **kw,
    )


def anthropic(mock: MockServer, key: str, body: Any = CLAUDE) -> Response:
    return request(
        "POST",
        mock.url + "/v1/messages",
        body,
        {"x-api-key": key, "anthropic-version": "2023-06-01"},
    )


def gemini(
    mock: MockServer, key: str, method: str = "generateContent", q: str = "", body: Any = GEMINI
) -> Response:
    return request(
        "POST", f"{mock.url}/v1beta/models/gemini-x:{method}{q}", body, {"x-goog-api-key": key}
    )


# -- one port, three formats --------------------------------------------------------------------


def test_one_port_serves_openai_anthropic_and_gemini(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory()
    chat = openai(mock, "k")
    assert chat.status == 200 and chat.json()["object"] == "chat.completion"
    emb = request("POST", mock.url + "/v1/embeddings", {"model": "e", "input": ["a", "b"]})
    assert emb.status == 200 and len(emb.json()["data"]) == 2
    assert request("GET", mock.url + "/v1/models").json()["object"] == "list"
    msg = anthropic(mock, "k")
    assert msg.status == 200 and msg.json()["type"] == "message"
    assert msg.headers["anthropic-ratelimit-requests-limit"]
    gen = gemini(mock, "k")
    assert gen.status == 200 and gen.json()["candidates"][0]["content"]["role"] == "model"
    stream = gemini(mock, "k", "streamGenerateContent", "?alt=sse")
    assert len(sse_events(stream.body.replace(b"\r\n", b"\n"))) == 8
    embed = gemini(mock, "k", "embedContent", body={"content": {"parts": [{"text": "hi"}]}})
    assert len(embed.json()["embedding"]["values"]) == 8
    assert [k for k, _ in mock.arrivals] == ["k", "", "k", "k", "k", "k"]  # /v1/models: free


# -- rate limits, each format's real 429 --------------------------------------------------------


def test_openai_requests_limit_answers_real_429s_and_the_window_slides(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(keys={"sk-a": KeyBehaviour(rpm=2, window_s=0.5)})
    now = 1000.0
    mock.conditions.clock = lambda: now  # the window slides when the test moves time
    first, second = openai(mock, "sk-a"), openai(mock, "sk-a")
    assert first.status == second.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < parse_duration(second.headers["x-ratelimit-reset-requests"]) <= 0.5  # type: ignore[operator]
    third = openai(mock, "sk-a")
    assert third.status == 429
    err = third.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert third.headers["retry-after"] == "1"
    retry_ms = int(third.headers["retry-after-ms"])
    assert 0 < retry_ms <= 500
    assert mock.throttled[-1][0] == "sk-a"
    assert openai(mock, "sk-other").status == 200  # limits are per key
    now += retry_ms / 1000 - 0.001
    assert openai(mock, "sk-a").status == 429  # not before the retry-after
    now += 0.002
    assert openai(mock, "sk-a").status == 200


def test_openai_tokens_limit_counts_prompt_and_reply(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(keys={"sk-t": KeyBehaviour(tpm=40, reply_tokens=10)})
    ok = openai(mock, "sk-t")
    assert ok.status == 200
    used = 40 - int(ok.headers["x-ratelimit-remaining-tokens"])
    assert used >= 10 and ok.headers["x-ratelimit-limit-tokens"] == "40"
    statuses = [openai(mock, "sk-t").status for _ in range(4)]
    assert 429 in statuses
    throttled = openai(mock, "sk-t")
    assert throttled.status == 429
    assert throttled.json()["error"]["type"] == "tokens"
    assert "tokens per min (TPM)" in throttled.json()["error"]["message"]
    quota = parse_quota({k.lower(): v for k, v in throttled.headers.items()})
    assert quota.limit_tokens == 40 and quota.remaining_tokens is not None


def test_anthropic_limit_answers_rate_limit_error_with_its_headers(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(keys={"sk-c": KeyBehaviour(rpm=1, tpm=100_000)})
    ok = anthropic(mock, "sk-c")
    assert ok.status == 200
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "100000"
    limited = anthropic(mock, "sk-c")
    assert limited.status == 429
    body = limited.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert 59 <= int(limited.headers["retry-after"]) <= 60
    quota = parse_quota({k.lower(): v for k, v in limited.headers.items()})
    assert quota.remaining_requests == 0 and 58 <= (quota.reset_requests_s or 0) <= 61
    # The key's window is shared by every format the mock speaks.
    assert openai(mock, "sk-c").status == 429


def test_gemini_limit_answers_resource_exhausted_with_retry_info(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(keys={"sk-g": KeyBehaviour(rpm=1, window_s=2)})
    assert gemini(mock, "sk-g").status == 200
    limited = gemini(mock, "sk-g")
    assert limited.status == 429
    err = limited.json()["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED" and err["code"] == 429
    kinds = {d["@type"].rsplit(".", 1)[-1]: d for d in err["details"]}
    assert "PerMinute" in kinds["QuotaFailure"]["violations"][0]["quotaId"]
    delay = parse_google_duration(kinds["RetryInfo"]["retryDelay"])
    assert delay is not None and 1.5 < delay <= 2.0
    assert not any(k.startswith("x-ratelimit") for k in limited.headers)


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type", "gemini_status"),
    [
        (500, "server_error", "api_error", "INTERNAL"),
        (503, "server_error", "api_error", "UNAVAILABLE"),
        (529, "server_error", "overloaded_error", "UNAVAILABLE"),
    ],
)
def test_injected_server_errors_speak_each_format(
    mock_factory: Callable[..., MockServer],
    status: int,
    openai_type: str,
    anthropic_type: str,
    gemini_status: str,
) -> None:
    mock = mock_factory(KeyBehaviour(faults={str(status): 1.0}))
    a = openai(mock, "k")
    assert a.status == status and a.json()["error"]["type"] == openai_type
    b = anthropic(mock, "k")
    assert b.status == status and b.json()["error"]["type"] == anthropic_type
    c = gemini(mock, "k")
    assert c.status == status and c.json()["error"]["status"] == gemini_status


def test_fault_rates_hit_about_their_share(mock_factory: Callable[..., MockServer]) -> None:
    mock = mock_factory(keys={"sk-f": KeyBehaviour(faults={"500": 0.2, "503": 0.1})}, seed=3)
    statuses = [openai(mock, "sk-f").status for _ in range(300)]
    assert 35 <= statuses.count(500) <= 85
    assert 12 <= statuses.count(503) <= 50
    assert statuses.count(200) == 300 - statuses.count(500) - statuses.count(503)


def test_reset_closes_the_connection_without_an_answer(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(KeyBehaviour(faults={"reset": 1.0}))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        openai(mock, "k")
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        anthropic(mock, "k")


def open_stream(
    mock: MockServer, path: str, body: Any, headers: dict[str, str], timeout: float = 10
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = mock.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(
        "POST",
        path,
        body=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
    )
    return conn, conn.getresponse()


def read_events(
    resp: http.client.HTTPResponse,
) -> tuple[list[tuple[float, bytes]], Exception | None]:
    """(arrival time, line) of every data line until the stream ends or breaks."""
    out: list[tuple[float, bytes]] = []
    try:
        while line := resp.readline():
            if line.startswith(b"data: "):
                out.append((time.monotonic(), line.strip()))
    except (http.client.HTTPException, OSError) as exc:
        return out, exc
    return out, None


def test_a_cut_stream_ends_in_the_middle_without_its_end(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(KeyBehaviour(faults={"cut": 1.0}, reply_tokens=10))
    conn, resp = open_stream(
        mock, "/v1/chat/completions", {**CHAT, "stream": True}, {"Authorization": "Bearer k"}
    )
    events, _ = read_events(resp)
    conn.close()
    assert 2 <= len(events) <= 8 and events[-1][1] != b"data: [DONE]"
    conn, resp = open_stream(
        mock,
        "/v1/messages",
        {**CLAUDE, "stream": True},
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    events, _ = read_events(resp)
    conn.close()
    assert events and not any(b"message_stop" in line for _, line in events)


def test_a_stalled_stream_goes_silent_and_ends_when_the_client_leaves(
    mock_factory: Callable[..., MockServer],
) -> None:
    mock = mock_factory(KeyBehaviour(faults={"stall": 1.0}, reply_tokens=10))
    conn, resp = open_stream(
        mock,
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        {"Authorization": "Bearer k"},
        timeout=0.5,
    )
    events, error = read_events(resp)
    assert isinstance(error, TimeoutError)
    assert 2 <= len(events) <= 8
    conn.close()
    wait_until(lambda: mock.openai.cancelled, what="the stalled handler ending with its client")


def test_a_non_streamed_answer_can_be_cut_too(mock_factory: Callable[..., MockServer]) -> None:
    mock = mock_factory(KeyBehaviour(faults={"cut": 1.0}))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        openai(mock, "k")


# -- latency, pacing, length, usage -------------------------------------------------------------


def test_latency_ttft_and_token_rate_shape_a_stream(
    mock_factory: Callable[..., MockServer],
) -> None:
    clock = VirtualTime()
    mock = mock_factory(
        KeyBehaviour(latency=0.1, ttft=0.2, tokens_per_s=20, reply_tokens=6), virtual_time=clock
    )
    conn, resp = open_stream(
        mock, "/v1/chat/completions", {**CHAT, "stream": True}, {"Authorization": "Bearer k"}
    )
    events, error = read_events(resp)
    conn.close()
    assert error is None and events[-1][1] == b"data: [DONE]"
    assert [line for _, line in events] == [e.strip() for _, e in clock.events]
    assert clock.headers == [pytest.approx(0.1)]  # the latency
    sent = [t for t, _ in clock.events]
    # The role chunk comes with the first token, after latency + ttft; then one token per
    # 1/20 s; the finish chunk and [DONE] with the last token.
    assert sent == pytest.approx([0.3, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.55, 0.55])
    assert b'"role":"assistant"' in clock.events[0][1]
    assert [b'"content":"' in e for _, e in clock.events[1:7]] == [True] * 6
    # A non-streamed answer takes as long as its tokens would take to stream.
    start = clock.now
    assert openai(mock, "k").status == 200
    assert clock.bodies == [pytest.approx(start + 0.1 + 0.2 + 6 * 0.05)]


def test_a_real_stream_is_never_faster_than_its_shaping(
    mock_factory: Callable[..., MockServer],
) -> None:
    # Real time, through the pacer's timers: only lower bounds, which no load can break (the
    # client can only read an event after the mock sent it).
    mock = mock_factory(KeyBehaviour(latency=0.05, ttft=0.1, tokens_per_s=20, reply_tokens=4))
    started = time.monotonic()
    conn, resp = open_stream(
        mock, "/v1/chat/completions", {**CHAT, "stream": True}, {"Authorization": "Bearer k"}
    )
    headers_at = time.monotonic() - started
    events, error = read_events(resp)
    conn.close()
    assert error is None and events[-1][1] == b"data: [DONE]"
    content = [t for t, line in events if b'"content":"' in line and b'"content":""' not in line]
    assert len(content) == 4
    early = 0.01  # uvloop's clock counts whole milliseconds: a timer may fire one early
    assert headers_at >= 0.05 - early
    assert content[0] - started >= 0.05 + 0.1 - early
    assert content[-1] - started >= 0.05 + 0.1 + 3 * 0.05 - early


def test_anthropic_and_gemini_streams_are_paced_too(
    mock_factory: Callable[..., MockServer],
) -> None:
    clock = VirtualTime()
    mock = mock_factory(KeyBehaviour(ttft=0.1, tokens_per_s=25, reply_tokens=5), virtual_time=clock)
    conn, resp = open_stream(
        mock,
        "/v1/messages",
        {**CLAUDE, "stream": True},
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    events, _ = read_events(resp)
    conn.close()
    assert len(events) == len(clock.events) and b"message_stop" in events[-1][1]
    # Everything up to the first delta after ttft, then one delta per 1/25 s, the end with the
    # last one.
    deltas = [i for i, (_, e) in enumerate(clock.events) if b"text_delta" in e]
    assert len(deltas) == 5
    sent = [t for t, _ in clock.events]
    assert sent[: deltas[0] + 1] == pytest.approx([0.1] * (deltas[0] + 1))
    assert [sent[i] for i in deltas] == pytest.approx([0.1, 0.14, 0.18, 0.22, 0.26])
    assert sent[deltas[-1] :] == pytest.approx([0.26] * (len(sent) - deltas[-1]))

    start, before = clock.now, len(clock.events)
    conn, resp = open_stream(
        mock,
        "/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
        GEMINI,
        {"x-goog-api-key": "k"},
    )
    events, _ = read_events(resp)
    conn.close()
    assert len(events) == 5
    sent = [t - start for t, _ in clock.events[before:]]
    assert sent == pytest.approx([0.1, 0.14, 0.18, 0.22, 0.26])


def test_reply_length_and_usage_figures_in_every_format(
    mock_factory: Callable[..., MockServer],
) -> None:
    figures = UsageFigures(prompt_tokens=111, completion_tokens=22, cached_tokens=7)
    mock = mock_factory(keys={"sk-u": KeyBehaviour(reply_tokens=3, usage=figures)})
    chat = openai(mock, "sk-u").json()
    assert chat["choices"][0]["message"]["content"] == "Hello from the"
    assert chat["usage"]["prompt_tokens"] == 111 and chat["usage"]["completion_tokens"] == 22
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 7
    msg = anthropic(mock, "sk-u").json()
    assert msg["content"][0]["text"] == "Hello from the"
    assert msg["usage"]["input_tokens"] == 111 and msg["usage"]["output_tokens"] == 22
    assert msg["usage"]["cache_read_input_tokens"] == 7
    gen = gemini(mock, "sk-u").json()
    assert gen["candidates"][0]["content"]["parts"][0]["text"] == "Hello from the"
    meta = gen["usageMetadata"]
    assert meta["promptTokenCount"] == 111 and meta["candidatesTokenCount"] == 22
    assert meta["cachedContentTokenCount"] == 7
    other = openai(mock, "sk-plain").json()  # other keys keep the defaults
    assert len(other["choices"][0]["message"]["content"].split()) == 8


def test_distributions_have_the_percentiles_they_were_given() -> None:
    rng = random.Random(5)
    samples = sorted(Dist.lognormal(0.2, 1.0).sample(rng) for _ in range(20000))
    assert 0.19 <= statistics.median(samples) <= 0.21
    assert 0.9 <= samples[int(0.99 * len(samples))] <= 1.1
    uniform = [Dist.uniform(1, 2).sample(rng) for _ in range(1000)]
    assert min(uniform) >= 1 and max(uniform) <= 2
    assert Dist.parse(0.5, "x") == Dist.fixed(0.5)


def test_a_fake_clock_drives_the_windows() -> None:
    now = [100.0]
    cond = Conditions(keys={"k": KeyBehaviour(rpm=2, window_s=10)}, clock=lambda: now[0])
    assert cond.admit("k").throttle is None
    now[0] += 4
    assert cond.admit("k").throttle is None
    throttle = cond.admit("k").throttle
    assert throttle is not None and throttle.retry_after == pytest.approx(6)
    now[0] += 6.001
    decision = cond.admit("k")
    assert decision.throttle is None and decision.quota is not None
    assert decision.quota.remaining_requests == 0  # the request at 104 is still in the window
    assert cond.throttled == [("k", 104.0, pytest.approx(6))]


# -- settings -----------------------------------------------------------------------------------


def test_settings_from_yaml_and_every_problem_named() -> None:
    s = parse_settings(
        {
            "listen": "127.0.0.1:9100",
            "seed": 4,
            "defaults": {"latency": {"p50": 0.2, "p99": 1.0}, "tokens_per_s": 40},
            "keys": {"sk-a": {"rpm": 5, "faults": {500: 0.1, "cut": 0.05}}},
        }
    )
    assert s.defaults.latency == Dist.lognormal(0.2, 1.0)
    assert s.keys["sk-a"].faults == {"500": 0.1, "cut": 0.05}
    with pytest.raises(ValueError) as exc:
        parse_settings(
            {
                "defaults": {"latency": {"p50": 2, "p99": 1}, "speed": 3},
                "keys": {"sk-b": {"rpm": 0, "faults": {"418": 0.1}, "usage": {"x": 1}}},
                "port": 1,
            },
            "mock.yaml",
        )
    problems = str(exc.value).splitlines()
    assert "mock.yaml: defaults.latency: need 0 < p50 <= p99" in problems
    assert any(p.startswith("mock.yaml: defaults.speed: unknown key") for p in problems)
    assert "mock.yaml: keys.sk-b.rpm: must be a whole number of at least 1" in problems
    assert any(p.startswith("mock.yaml: keys.sk-b.faults.418: unknown fault") for p in problems)
    assert any(p.startswith("mock.yaml: keys.sk-b.usage.x: unknown key") for p in problems)
    assert any(p.startswith("mock.yaml: port: unknown key") for p in problems)
    with pytest.raises(ValueError, match="add up to more than 1"):
        parse_settings({"defaults": {"faults": {"500": 0.7, "503": 0.6}}})


def test_the_command_reads_a_config_file_and_flags(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "mock.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\ndefaults: {{reply_tokens: 3}}\nkeys:\n  sk-lim: {{rpm: 1}}\n"
    )
    proc = subprocess.Popen(
        [TRUCKLLM, "mock", "--config", str(cfg), "--key", "sk-down={faults: {503: 1}}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        first = wait_serving(
            base + "/v1/chat/completions",
            proc,
            method="POST",
            body=CHAT,
            headers={"Authorization": "Bearer sk-lim"},
        )
        assert first.status == 200
        assert first.json()["choices"][0]["message"]["content"] == "Hello from the"
        second = request(
            "POST",
            base + "/v1/messages",
            CLAUDE,
            {"x-api-key": "sk-lim", "anthropic-version": "2023-06-01"},
        )
        assert second.status == 429 and "retry-after" in second.headers
        down = request(
            "POST", base + "/v1beta/models/g:generateContent", GEMINI, {"x-goog-api-key": "sk-down"}
        )
        assert down.status == 503
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"OpenAI base_url {base}/v1" in out
    bad = subprocess.run(
        [TRUCKLLM, "mock", "--latency", "{p50: 1}"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "latency" in bad.stderr


# -- through the gateway ------------------------------------------------------------------------


def test_the_gateway_cools_throttled_keys_of_every_format_and_never_calls_them_early(
    mock_factory: Callable[..., MockServer], gateway_factory: Callable[..., Gateway]
) -> None:
    limited = KeyBehaviour(rpm=3, window_s=1.0)
    mock = mock_factory(
        keys={"oa-1": limited, "an-1": limited, "ge-1": limited},
        defaults=KeyBehaviour(latency=0.002),
    )
    gw = gateway_factory(f"""
        providers:
          - {{id: oa, type: openai, base_url: "{mock.url}/v1", keys: [{{id: oa-1, secret: oa-1}}, {{id: oa-2, secret: oa-2}}]}}
          - {{id: an, type: anthropic, base_url: "{mock.url}", keys: [{{id: an-1, secret: an-1}}, {{id: an-2, secret: an-2}}]}}
          - {{id: ge, type: gemini, base_url: "{mock.url}", keys: [{{id: ge-1, secret: ge-1}}, {{id: ge-2, secret: ge-2}}]}}
        routing: {{strategy: round_robin}}
        retry: {{budget_burst: 1000}}
        """)
    models = itertools.cycle(["oa:m", "an:claude-x", "ge:gemini-x"])
    statuses = [
        gw.post("/v1/chat/completions", {**CHAT, "model": next(models)}).status for _ in range(60)
    ]
    assert statuses.count(200) == 60
    assert {k for k, _ in mock.arrivals} >= {"oa-1", "an-1", "ge-1", "oa-2", "an-2", "ge-2"}
    for key, sent, retry_after in mock.throttled:
        early = [t for k, t in mock.arrivals if k == key and sent < t < sent + retry_after - 0.001]
        assert early == [], f"{key} was called {len(early)} times while cooling"


def test_several_tokens_per_event_in_every_format(mock_factory: Callable[..., MockServer]) -> None:
    mock = mock_factory(KeyBehaviour(reply_tokens=7, tokens_per_event=3, tokens_per_s=100))
    conn, resp = open_stream(
        mock, "/v1/chat/completions", {**CHAT, "stream": True}, {"Authorization": "Bearer k"}
    )
    events, _ = read_events(resp)
    conn.close()
    texts = [
        orjson.loads(line[6:])["choices"][0]["delta"].get("content")
        for _, line in events
        if line != b"data: [DONE]"
    ]
    assert [t for t in texts if t] == ["Hello from the", " TruckLLM mock upstream", " model"]
    assert events[-2][0] - events[1][0] >= 2 * 0.03 - 0.005  # 3 tokens at 100/s per event
    conn, resp = open_stream(
        mock,
        "/v1/messages",
        {**CLAUDE, "stream": True},
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    events, _ = read_events(resp)
    conn.close()
    deltas = [orjson.loads(line[6:]) for _, line in events if b"text_delta" in line]
    assert [d["delta"]["text"] for d in deltas] == [
        "Hello from the",
        " TruckLLM fake Anthropic",
        " upstream",
    ]
    conn, resp = open_stream(
        mock,
        "/v1beta/models/gemini-x:streamGenerateContent?alt=sse",
        GEMINI,
        {"x-goog-api-key": "k"},
    )
    events, _ = read_events(resp)
    conn.close()
    assert len(events) == 3


def test_stamped_chunks_carry_the_time_they_were_sent(loop_thread: LoopThread) -> None:
    mock = MockServer(KeyBehaviour(reply_tokens=3), stamp=True)
    loop_thread.run(mock.start())
    try:
        before = time.monotonic()
        conn, resp = open_stream(
            mock, "/v1/chat/completions", {**CHAT, "stream": True}, {"Authorization": "Bearer k"}
        )
        events, _ = read_events(resp)
        conn.close()
    finally:
        loop_thread.run(mock.stop())
    stamps = [orjson.loads(line[6:])["mock_sent"] for _, line in events if b"mock_sent" in line]
    assert len(stamps) == 5  # the role chunk, three words, the finish chunk
    assert before <= stamps[0] <= stamps[-1] <= time.monotonic()
