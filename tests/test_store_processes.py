"""Real gateway processes: three replicas sharing one Redis and one key with ``rpm: 60`` under a
minute of heavy load, and a file store that survives ``kill -9``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import request, wait_serving, wait_until
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.stores.base import COST, UsageQuery
from truckllm.stores.redis import RedisStore
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import KeyBehaviour, MockUpstream
from truckllm.testing.serve import free_port

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
ADMIN = {"Authorization": "Bearer adm-1"}
PRICING = "{input_token_cost: 0.15, output_token_cost: 0.6, unit: per_1m_tokens}"


def config(upstream: str, storage: str, limits: str = "{}") -> str:
    return f"""
server: {{admin_api_key: adm-1, reload_interval: 0}}
providers:
  - id: p
    base_url: {upstream}
    models: [m]
    keys: [{{id: shared, secret: sk-shared, limits: {limits}, pricing: {PRICING}}}]
routing: {{max_wait: 0}}
retry: {{max_attempts: 1}}
storage: {{runtime: {storage}}}
"""


class Gateways:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def start(self) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "truckllm", "--config", str(self.path), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((proc, port))
        url = f"http://127.0.0.1:{port}"
        wait_serving(url + "/healthz", proc, timeout=20, status=200)
        return url

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[str], Gateways]]:
    made: list[Gateways] = []

    def make(text: str) -> Gateways:
        path = tmp_path / f"config{len(made)}.yaml"
        path.write_text(text)
        g = Gateways(path)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop_all()


Result = tuple[int, str | None, float]  # status, x-truckllm-cost-usd, when done (monotonic)


async def hammer(
    urls: list[str], per_url: int, until: Callable[[], bool], results: list[Result] | None = None
) -> list[Result]:
    """Requests as fast as the gateways answer until ``until()``; each result is appended to
    ``results`` (which another thread may watch) as it comes."""
    results = [] if results is None else results
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:

        async def worker(url: str) -> None:
            while not until():
                try:
                    async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
                        await resp.read()
                        results.append(
                            (resp.status, resp.headers.get("x-truckllm-cost-usd"), time.monotonic())
                        )
                except (aiohttp.ClientError, TimeoutError):
                    results.append((0, None, time.monotonic()))
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(u) for u in urls for _ in range(per_url)))
    return results


def max_in_any_window(times: list[float], span: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - span:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.slow
def test_three_gateways_sharing_redis_send_at_most_rpm_60_upstream_and_bill_exactly(
    redis_server: RedisServer,  # noqa: F811
    upstream_factory: Callable[..., MockUpstream],
    processes: Callable[[str], Gateways],
    loop_thread: LoopThread,
) -> None:
    upstream = upstream_factory(keys={"sk-shared": KeyBehaviour(rpm=60)})
    storage = f"{{type: redis, url: '{redis_server.url}', prefix: three}}"
    gws = processes(config(upstream.url, storage, "{rpm: 60}"))
    urls = [gws.start() for _ in range(3)]
    seconds = float(os.environ.get("TRUCKLLM_SHARED_TEST_SECONDS", "60"))
    t0 = time.monotonic()
    end = t0 + seconds
    results = loop_thread.run(
        hammer(urls, 8, lambda: time.monotonic() >= end), timeout=seconds + 60
    )
    gws.stop_all()  # graceful: every process flushes its ledger and gives back its leases
    arrived = [t for k, t in upstream.arrivals if k == "sk-shared"]
    statuses = Counter(s for s, _, _ in results)
    worst = max_in_any_window(arrived, 60.0)
    print(
        f"\nthree gateways, {seconds:.0f} s: {len(results)} requests "
        f"({len(results) / (time.monotonic() - t0):.0f}/s), statuses {dict(statuses)}, "
        f"{len(arrived)} reached the upstream, at most {worst} in any 60 s"
    )
    assert worst <= 60 and upstream.throttled == []
    assert statuses[200] == len(arrived)
    if seconds >= 60:
        assert len(arrived) >= 50  # the limit is used, not starved
    assert statuses[429] > 1000 and set(statuses) <= {200, 429}

    async def totals() -> list[int]:
        store = RedisStore(redis_server.url, prefix="three")
        try:
            return (await store.query(UsageQuery())).rows[0][2]
        finally:
            await store.close()

    counts = asyncio.run(totals())
    costs = sum(Decimal(c) for s, c, _ in results if s == 200 and c is not None)
    assert counts[0] == len(results) and counts[1] == statuses[429]
    assert Decimal(counts[COST]) / 10**9 == costs and costs > 0


def test_file_store_survives_kill_9_with_everything_acknowledged_before_the_last_flush(
    tmp_path: Path,
    upstream_factory: Callable[..., MockUpstream],
    processes: Callable[[str], Gateways],
    loop_thread: LoopThread,
) -> None:
    upstream = upstream_factory()
    flush = 0.2
    storage = f"{{type: file, path: '{tmp_path / 'usage.json'}', flush_interval: {flush}}}"
    gws = processes(config(upstream.url, storage))
    slack = 0.3  # for the flush itself
    url = gws.start()
    results: list[Result] = []
    killed = threading.Event()
    future = asyncio.run_coroutine_threadsafe(
        hammer([url], 8, killed.is_set, results), loop_thread.loop
    )

    def flushed_since() -> int:
        """Answers old enough that a flush must have stored them by now."""
        before = time.monotonic() - flush - slack
        return sum(1 for s, _, t in list(results) if s == 200 and t < before)

    wait_until(lambda: flushed_since() >= 60, 15, "60 answers a flush ago")
    proc, _ = gws.procs[0]
    killed_at = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
    killed.set()
    future.result(30)
    done = [(c, t) for s, c, t in results if s == 200]
    assert any(s == 0 for s, _, _ in results), "the process was not killed mid-load"
    url = gws.start()  # the same file, again
    usage = request("GET", url + "/admin/v1/usage", headers=ADMIN).json()["total"]
    safe = [Decimal(c) for c, t in done if t < killed_at - flush - slack and c is not None]
    everything = [Decimal(c) for c, _ in done if c is not None]
    print(
        f"\nkill -9 after {len(done)} answers: {usage['requests']} counted after the restart, "
        f"{len(safe)} answered before the last flush"
    )
    assert len(safe) >= 60
    assert len(safe) <= usage["requests"] <= len(everything) + 8  # + those in flight at the kill
    assert sum(safe) <= Decimal(usage["cost_usd"]) <= sum(everything) + 8 * max(everything)
