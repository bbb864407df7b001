"""Operations: the admin API, hot reload (admin call, file change, SIGHUP), readiness, and
graceful shutdown of a real process."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import Gateway, Response, request, sse_events, wait_serving, wait_until

from truckllm.api import App
from truckllm.config import load_config
from truckllm.testing.mock import MockUpstream, Scripted
from truckllm.testing.serve import ServerThread, free_port

ADMIN = {"Authorization": "Bearer adm-TOPSECRET"}
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def config_text(url: str, alias_target: str = "openai:gpt-4-0613", extra: str = "") -> str:
    return f"""
providers:
  - id: openai
    base_url: {url}
    models: [gpt-4o-mini]
    headers: {{X-Upstream-Token: hdr-TOPSECRET}}
    keys:
      - {{id: k1, secret: sk-up-TOPSECRET-1, limits: {{rpm: 1000}}}}
      - {{id: k2, secret: sk-up-TOPSECRET-2}}
model_aliases:
  gpt-4: {alias_target}
server:
  admin_api_key: adm-TOPSECRET
  api_keys: [{{id: team, key: client-TOPSECRET}}]
  reload_interval: 0.2
routing: {{strategy: round_robin}}
{extra}
"""


CLIENT = {"Authorization": "Bearer client-TOPSECRET"}


@pytest.fixture
def config_file(tmp_path: Path, upstream: MockUpstream) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(upstream.url))
    return path


@pytest.fixture
def gw(config_file: Path) -> Iterator[Gateway]:
    app = App(load_config(config_file, env={}), config_path=str(config_file))
    server = ServerThread(app).start()
    yield Gateway(app, server)
    server.stop()


def admin(
    gw: Gateway,
    method: str,
    path: str,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return gw.request(
        method, "/admin/v1/" + path, raw=raw, headers=headers if headers is not None else ADMIN
    )


def chat(gw: Gateway, **kw: Any) -> Response:
    return gw.post("/v1/chat/completions", {**CHAT, **kw}, headers=CLIENT)


def test_admin_needs_its_own_key(
    gw: Gateway, upstream: MockUpstream, gateway_factory: Callable[..., Gateway]
) -> None:
    assert admin(gw, "GET", "keys", headers={}).status == 401
    assert (
        admin(gw, "GET", "keys", headers=CLIENT).status == 401
    )  # a client key is not an admin key
    assert admin(gw, "GET", "keys").status == 200
    assert admin(gw, "GET", "nothing").json()["error"]["code"] == "unknown_url"
    assert admin(gw, "DELETE", "keys").status == 405
    off = gateway_factory(f"providers: [{{id: p, base_url: '{upstream.url}'}}]")
    resp = off.request("GET", "/admin/v1/keys", headers=ADMIN)
    assert resp.status == 404 and resp.json()["error"]["code"] == "admin_disabled"


def test_keys_show_state_limits_usage_and_reasons(gw: Gateway, upstream: MockUpstream) -> None:
    for _ in range(4):
        assert chat(gw).status == 200
    upstream.script.append(
        Scripted(
            status=429,
            headers={"retry-after": "30"},
            body={
                "error": {
                    "message": "slow",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
        )
    )
    assert chat(gw).status == 200  # k1 throttled, k2 served
    keys = {k["id"]: k for k in admin(gw, "GET", "keys").json()["data"]}
    k1, k2 = keys["k1"], keys["k2"]
    assert k1["status"] == "cooling" and k1["reason"] == "rate limited"
    assert 25 < k1["until"] - time.time() <= 31
    assert k1["limits"] == {"rpm": 1000} and k1["used"]["rpm"] == 3
    assert (
        k2["status"] == "active"
        and k2["usage"]["requests"] == 3
        and k2["usage"]["completion_tokens"] == 24
    )
    assert k1["outcomes"] == {"success": 2, "rate_limited": 1}
    assert k2["latency_ms"] > 0 and k2["in_flight"] == 0


def test_operators_disable_and_enable_keys(gw: Gateway, upstream: MockUpstream) -> None:
    resp = admin(gw, "POST", "keys/k1/disable")
    assert resp.status == 200 and resp.json()["status"] == "disabled"
    assert {chat(gw).headers["x-truckllm-key-id"] for _ in range(4)} == {"k2"}
    assert admin(gw, "POST", "keys/k1/enable").json()["status"] == "active"
    assert {chat(gw).headers["x-truckllm-key-id"] for _ in range(4)} == {"k1", "k2"}
    assert admin(gw, "POST", "keys/nope/disable").json()["error"]["code"] == "key_not_found"


def test_providers_stats_and_redacted_config(gw: Gateway, upstream: MockUpstream) -> None:
    chat(gw)
    gw.post("/v1/chat/completions", {**CHAT, "model": "nope"}, headers=CLIENT)
    (provider,) = admin(gw, "GET", "providers").json()["data"]
    assert (
        provider["id"] == "openai"
        and provider["keys"] == ["k1", "k2"]
        and provider["active_keys"] == 2
    )
    stats = admin(gw, "GET", "stats").json()
    assert (
        stats["requests"] >= 2 and stats["by_status"]["200"] >= 1 and stats["by_status"]["404"] == 1
    )
    assert stats["reload"]["last_ok"] is True
    config = admin(gw, "GET", "config")
    assert b"TOPSECRET" not in config.body
    body = config.json()["config"]
    assert body["providers"][0]["keys"][0]["secret"] == "********"
    assert body["providers"][0]["headers"]["X-Upstream-Token"] == "********"
    assert body["server"]["admin_api_key"] == "********"


def test_config_validate_applies_nothing(gw: Gateway, upstream: MockUpstream) -> None:
    ok = admin(
        gw, "POST", "config/validate", raw=config_text(upstream.url, "openai:other").encode()
    )
    assert ok.json() == {"valid": True, "errors": []}
    bad = admin(
        gw,
        "POST",
        "config/validate",
        raw=b"providers: [{id: openai, keys: [{secret: s, limits: {rpm: 0}}]}]",
    )
    assert bad.json()["valid"] is False
    assert bad.json()["errors"] == [
        "<request>: providers[0].keys[0].limits.rpm: must be at least 1"
    ]
    assert chat(gw).status == 200 and upstream.received[-1].body["model"] == "gpt-4-0613"


def test_reload_by_admin_call_keeps_key_state_and_refuses_bad_files(
    gw: Gateway, upstream: MockUpstream, config_file: Path
) -> None:
    for _ in range(4):
        chat(gw)
    k1 = gw.states()["k1"]
    config_file.write_text(config_text(upstream.url, "openai:gpt-4-turbo"))
    resp = admin(gw, "POST", "reload")
    assert resp.status == 200 and resp.json()["reloaded"] is True
    assert chat(gw).status == 200 and upstream.received[-1].body["model"] == "gpt-4-turbo"
    assert gw.states()["k1"] is k1 and k1.requests >= 2  # counters survive
    config_file.write_text("providers: [{id: openai, bogus: 1}]")
    resp = admin(gw, "POST", "reload")
    assert resp.status == 422 and resp.json()["reloaded"] is False
    assert any("providers[0].bogus: unknown key" in e for e in resp.json()["errors"])
    assert (
        chat(gw).status == 200 and upstream.received[-1].body["model"] == "gpt-4-turbo"
    )  # nothing changed
    stats = admin(gw, "GET", "stats").json()["reload"]
    assert stats["last_ok"] is False and stats["failed"] == 1


def test_a_client_key_removed_by_a_reload_is_refused_though_it_was_used_before(
    gw: Gateway, upstream: MockUpstream, config_file: Path
) -> None:
    assert chat(gw).status == 200 and chat(gw).status == 200  # the key is remembered
    config_file.write_text(
        config_text(upstream.url).replace("key: client-TOPSECRET", "key: client-OTHER")
    )
    assert admin(gw, "POST", "reload").json()["reloaded"] is True
    resp = chat(gw)
    assert resp.status == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    other = gw.post("/v1/chat/completions", CHAT, headers={"Authorization": "Bearer client-OTHER"})
    assert other.status == 200


def test_a_changed_file_is_reloaded_by_itself(
    gw: Gateway, upstream: MockUpstream, config_file: Path
) -> None:
    config_file.write_text(config_text(upstream.url, "openai:watched-model"))

    def watched() -> bool:
        chat(gw)
        return bool(upstream.received[-1].body["model"] == "watched-model")

    wait_until(watched, what="the changed file reloaded", interval=0.05)


def test_twenty_reloads_under_steady_traffic_fail_no_request(
    gw: Gateway, upstream: MockUpstream, config_file: Path
) -> None:
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(chat(gw, stream=len(statuses) % 3 == 0).status)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(traffic) for _ in range(4)]
        wait_until(lambda: len(statuses) >= 8, what="traffic under way")
        before = {k: s.requests for k, s in gw.states().items()}
        states = gw.states()
        for i in range(20):
            config_file.write_text(config_text(upstream.url, f"openai:model-{i}"))
            assert admin(gw, "POST", "reload").json()["reloaded"] is True
            served = len(statuses)
            wait_until(lambda n=served: len(statuses) >= n + 4, what="traffic after the reload")  # type: ignore[misc]
        stop.set()
        for f in futures:
            f.result()
    assert len(statuses) > 40 and set(statuses) == {200}
    after = gw.states()
    assert all(after[k] is states[k] and after[k].requests >= before[k] for k in before)
    assert sum(s.in_flight for s in after.values()) == 0


def test_readyz_reports_degraded_dependencies(gw: Gateway) -> None:
    assert gw.request("GET", "/readyz").json()["status"] == "ready"
    gw.app.readiness.checks["store"] = lambda: (False, "redis unreachable")
    body = gw.request("GET", "/readyz").json()
    assert body["status"] == "degraded" and body["problems"] == {"store": "redis unreachable"}


# -- real processes: signals ------------------------------------------------------------------

TRUCKLLM = [sys.executable, "-m", "truckllm"]


def wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    wait_serving(f"http://127.0.0.1:{port}/readyz", proc, status=200)


def test_sighup_reloads_and_sigterm_drains_in_flight_streams(
    upstream_factory: Callable[..., MockUpstream], tmp_path: Path
) -> None:
    upstream = upstream_factory(event_delay=0.15, reply_words=10)  # a stream lasts about 1.5 s
    path = tmp_path / "config.yaml"
    path.write_text(
        config_text(upstream.url, extra="").replace("reload_interval: 0.2", "reload_interval: 0")
    )
    port = free_port()
    proc = subprocess.Popen(
        [*TRUCKLLM, "-config", str(path), "-listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(port, proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        path.write_text(
            config_text(upstream.url, "openai:after-sighup").replace(
                "reload_interval: 0.2", "reload_interval: 0"
            )
        )
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            request("POST", url, CHAT, headers=CLIENT)
            return bool(upstream.received[-1].body["model"] == "after-sighup")

        wait_until(reloaded, what="SIGHUP reloading", interval=0.05)
        before = len(upstream.received)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(request, "POST", url, {**CHAT, "stream": True}, CLIENT)
            wait_until(lambda: len(upstream.received) > before, what="the stream under way")
            proc.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    request("GET", f"http://127.0.0.1:{port}/healthz", timeout=1)
                except OSError:
                    return True
                return False

            wait_until(refused, what="no longer accepting after SIGTERM")
            assert not streaming.done()  # refused while the stream (1.5 s) still drains
            resp = streaming.result(timeout=10)
        assert resp.status == 200 and sse_events(resp.body)[-1] == b"[DONE]"  # finished, not cut
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "TOPSECRET" not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_ends_streams_that_outlive_the_deadline_with_an_error_event(
    upstream_factory: Callable[..., MockUpstream], tmp_path: Path
) -> None:
    upstream = upstream_factory()
    upstream.script.append(
        Scripted(
            events=[
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
                }
            ]
            * 3,
            stall_after=1,
        )
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        config_text(upstream.url, extra="").replace(
            "reload_interval: 0.2", "reload_interval: 0\n  shutdown_timeout: 1"
        )
    )
    port = free_port()
    env = {**os.environ}
    proc = subprocess.Popen(
        [*TRUCKLLM, "--config", str(path), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_ready(port, proc)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(
                request,
                "POST",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {**CHAT, "stream": True},
                CLIENT,
            )
            wait_until(lambda: not upstream.script, what="the stream under way")
            proc.send_signal(signal.SIGTERM)
            # The stream stalls for ever: only the cut at shutdown_timeout (1 s) ends the process.
            out, _ = proc.communicate(timeout=15)
            resp = stalled.result(timeout=5)
        # Ended at the drain deadline with an error event the SDKs raise: not a truncated body.
        events = sse_events(resp.body)
        assert resp.status == 200 and b"[DONE]" not in events, events
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "server_shutting_down", error
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
