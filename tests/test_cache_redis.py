"""The Redis-backed response cache: two real gateway processes share answers through one Redis,
and a Redis that is down, or stops answering, makes misses, never errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Gateway, request, wait_serving
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import free_port

CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}
AUTH = {"Authorization": "Bearer client-a"}


def config(upstream: str, storage: str, cache: str) -> str:
    return f"""
server: {{api_keys: [{{key: client-a, id: a}}], reload_interval: 0}}
providers:
  - id: p
    base_url: {upstream}
    models: [m]
    keys: [{{id: k1, secret: sk-1}}]
storage: {{runtime: {storage}}}
cache: {cache}
"""


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(text: str) -> str:
        path = tmp_path / f"config{len(procs)}.yaml"
        path.write_text(text)
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "truckllm",
                "--config",
                str(path),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_serving(url + "/healthz", proc, timeout=20, status=200)
        return url

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def chat_calls(upstream: MockUpstream) -> int:
    return sum(1 for r in upstream.received if r.path == "/v1/chat/completions")


def test_two_gateway_processes_share_the_cache_through_the_state_stores_redis(
    redis_server: RedisServer,  # noqa: F811
    upstream: MockUpstream,
    gateway_process: Callable[[str], str],
) -> None:
    # The cache has no url of its own: it uses the state store's Redis.
    text = config(
        upstream.url, f"{{type: redis, url: '{redis_server.url}'}}", "{enabled: true, type: redis}"
    )
    one, two = gateway_process(text), gateway_process(text)
    first = request("POST", one + "/v1/chat/completions", CHAT, AUTH)
    assert first.status == 200 and first.headers["x-truckllm-cache"] == "miss"
    hit = request("POST", two + "/v1/chat/completions", CHAT, AUTH)
    assert hit.headers["x-truckllm-cache"] == "hit" and hit.body == first.body
    streamed = request("POST", two + "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert streamed.headers["x-truckllm-cache"] == "hit"
    assert streamed.body.endswith(b"data: [DONE]\n\n")
    assert chat_calls(upstream) == 1


def test_a_redis_outage_makes_misses_never_errors(
    redis_server: RedisServer,  # noqa: F811
    upstream: MockUpstream,
    gateway_factory: Callable[..., Gateway],
) -> None:
    cache = f"{{enabled: true, type: redis, url: '{redis_server.url}', timeout: 0.05}}"
    gw = gateway_factory(config(upstream.url, "{type: memory}", cache))
    post = lambda: gw.post("/v1/chat/completions", CHAT, headers=AUTH)  # noqa: E731
    assert post().headers["x-truckllm-cache"] == "miss"
    assert post().headers["x-truckllm-cache"] == "hit"
    redis_server.pause()  # unreachable: calls time out
    try:
        for _ in range(3):
            r = post()
            assert r.status == 200 and r.headers["x-truckllm-cache"] == "miss"
    finally:
        redis_server.resume()
    redis_server.stop()  # gone: connections refused
    for _ in range(3):
        r = post()
        assert r.status == 200 and r.headers["x-truckllm-cache"] == "miss"
    assert chat_calls(upstream) == 7
    metrics = gw.request("GET", "/metrics").body.decode()
    assert "truckllm_cache_backend_errors_total" in metrics
    errors = next(
        line for line in metrics.splitlines() if line.startswith("truckllm_cache_backend_errors")
    )
    assert float(errors.split()[-1]) >= 1
