"""Load and scenario helpers shared by the test suite and ``bench/``: fire requests at a gateway
with bounded concurrency, and the slow-key/failing-key scenario that compares strategies."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from truckllm.api import App
from truckllm.config import parse_config
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import KeyBehaviour, MockUpstream
from truckllm.testing.serve import ServerThread

CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 16,
}


@dataclass(frozen=True)
class Result:
    status: int
    headers: dict[str, str]
    seconds: float


async def fire(url: str, n: int, concurrency: int, body: dict[str, Any] = CHAT) -> list[Result]:
    """``n`` chat requests to the gateway at ``url`` with ``concurrency`` in flight."""
    results: list[Result] = []
    queue = iter(range(n))
    data = orjson.dumps(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                async with session.post(
                    url + "/v1/chat/completions",
                    data=data,
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    results.append(
                        Result(resp.status, dict(resp.headers), time.perf_counter() - t0)
                    )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


SCENARIO_KEYS = {
    "sk-fast": KeyBehaviour(latency=0.005),
    "sk-slow": KeyBehaviour(latency=0.15),
    "sk-flaky": KeyBehaviour(latency=0.005, error_rate=0.3),
}


def slow_and_flaky(
    strategy: str,
    loop: LoopThread,
    n: int = 300,
    concurrency: int = 6,
    seed: int = 11,
    outlier: bool = False,
) -> dict[str, float]:
    """One healthy key, one slow key (150 ms), one failing key (30% 500s); the same load under
    ``strategy``. Returns successes, client p50/p99 and the failed upstream attempts. Outlier
    ejection is off unless ``outlier``: it would take the failing key out under any strategy,
    and this compares the strategies' own choices."""
    upstream = MockUpstream(seed=seed, keys=dict(SCENARIO_KEYS))
    loop.run(upstream.start())
    cfg = parse_config(
        f"""
providers:
  - id: p
    base_url: {upstream.url}
    models: [m]
    keys: [{{id: fast, secret: sk-fast}}, {{id: slow, secret: sk-slow}}, {{id: flaky, secret: sk-flaky}}]
routing: {{strategy: {strategy}, outlier: {{enabled: {str(outlier).lower()}}}}}
retry: {{budget_burst: 1000, backoff_base: 0.001}}
""",
        "<scenario>",
        {},
    )
    server = ServerThread(App(cfg)).start()
    try:
        results = loop.run(fire(server.url, n, concurrency), timeout=300)
    finally:
        server.stop()
        loop.run(upstream.stop())
    latencies = sorted(r.seconds for r in results)
    attempts = sum(int(r.headers["x-truckllm-attempts"]) for r in results)
    served = [r.headers.get("x-truckllm-key-id", "") for r in results]
    return {
        "ok": sum(1 for r in results if r.status == 200),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000,
        "failed_attempts": attempts - n,
        "share_fast": served.count("fast") / n,
        "share_slow": served.count("slow") / n,
    }
