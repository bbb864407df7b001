"""The dashboard's load time at scale: 1,000 upstream keys and 1,000,000 usage-ledger rows.

A gateway (in this process, on loopback) with ``--keys`` keys over 10 providers, its memory
store filled with ``--rows`` ledger rows (one per minute and (client, key, model), spread over
the last two days: what the ledger's minute table holds at most) plus some real traffic through
a mock upstream. Measured:

* the admin endpoints the pages read: the median and worst of ``--runs`` calls each;
* each page in headless Chromium (the system ``chromium`` through ``chromium-driver``): from
  navigation start to the page's data drawn (the ``truckllm:rendered:<page>`` performance mark
  the page sets after its first refresh is on screen), cold (first load, empty cache) and warm.

Usage::

    .venv/bin/python bench/ui_load.py [--keys 1000] [--rows 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import start_browser  # type: ignore[import-not-found]  # tests/browser.py

from truckllm.api import App
from truckllm.collector import Collector
from truckllm.config import load_config
from truckllm.stores.base import METRICS, Batch, RowKey
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread

ADMIN_KEY = "adm-bench"
PROVIDERS = 10
MODELS = [f"model-{i}" for i in range(10)]
CLIENTS = [f"client-{i}" for i in range(20)]
PAGES = ("overview", "keys", "usage")


def config_yaml(url: str, keys: int) -> str:
    per = keys // PROVIDERS
    lines = ["providers:"]
    for p in range(PROVIDERS):
        lines += [
            f"  - id: p{p}",
            "    type: openai",
            f"    base_url: {url}",
            f"    models: [{', '.join(MODELS)}]",
            "    keys:",
        ]
        lines += [
            f"      - {{id: p{p}-k{k}, secret: sk-{p}-{k}, limits: {{rpm: 600, tpm: 100000}}}}"
            for k in range(per)
        ]
    lines += [f"server: {{admin_api_key: {ADMIN_KEY}}}", "routing: {strategy: round_robin}"]
    return "\n".join(lines) + "\n"


def ledger_batch(rows: int, keys: int, now: float) -> Batch:
    """``rows`` distinct (minute, row) entries over the last two days."""
    rng = random.Random(1)
    per = keys // PROVIDERS
    minutes = 2 * 1440
    last = int(now) // 60 * 60
    usage: dict[tuple[int, RowKey], list[int]] = {}
    while len(usage) < rows:
        minute = last - rng.randrange(minutes) * 60
        p, k = rng.randrange(PROVIDERS), rng.randrange(per)
        row: RowKey = (rng.choice(CLIENTS), f"p{p}", f"p{p}-k{k}", rng.choice(MODELS), "", "")
        n = rng.randint(1, 5)
        counts = [0] * len(METRICS)
        counts[0], counts[3], counts[4] = n, n * 800, n * 200
        counts[-1] = n * 4_000_000  # nano-dollars
        usage[(minute, row)] = counts
    return Batch("bench-fill", 1, now, usage)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (path, resp.status, body[:200])
    return (time.perf_counter() - t0) * 1000, len(body)


def endpoint_times(port: int, runs: int) -> list[tuple[str, float, float, int]]:
    now = int(time.time())
    day = (now - 86400) // 3600 * 3600
    paths = [
        "/admin/v1/overview?window=3600",
        "/admin/v1/keys",
        f"/admin/v1/usage?group_by=model&from={day}&bucket=hour&top=8",
        f"/admin/v1/usage?group_by=model&from={day}",
        f"/admin/v1/usage?group_by=key&from={day}&bucket=hour&top=8",
        f"/admin/v1/usage?group_by=key&from={day}",
        "/admin/v1/requests?limit=100",
    ]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for path in paths:
        times = []
        size = 0
        for _ in range(runs):
            ms, size = get(conn, path)
            times.append(ms)
        out.append((path, statistics.median(times), max(times), size))
    conn.close()
    return out


def page_times(url: str, runs: int) -> list[tuple[str, float, float]]:
    driver = start_browser()
    try:
        driver.get(url + "/ui/")
        driver.execute_script(
            "sessionStorage.setItem('truckllm.admin_key', arguments[0])", ADMIN_KEY
        )
        out = []
        for page in PAGES:
            times = []
            for _ in range(runs):
                driver.get("about:blank")
                driver.get(f"{url}/ui/?refresh=600000#{page}")
                times.append(rendered_at(driver, page))
            out.append((page, times[0], statistics.median(times[1:] or times)))
        return out
    finally:
        driver.quit()


def rendered_at(driver: Any, page: str) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    def mark(d: Any) -> float | None:
        value: float | None = d.execute_script(
            "const e = performance.getEntriesByName(arguments[0]); return e.length ? e[0].startTime : null;",
            f"truckllm:rendered:{page}",
        )
        return value

    result = WebDriverWait(driver, 30, poll_frequency=0.02).until(mark)
    assert result is not None
    return float(result)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--traffic", type=int, default=300, help="real requests through the mock")
    args = ap.parse_args()

    loop = LoopThread("ui-bench-mock")
    mock = MockUpstream()
    loop.run(mock.start())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml(mock.url, args.keys))
        app = App(load_config(path, env={}), config_path=str(path))
        server = ServerThread(app).start()
        try:
            run(app, server, args)
        finally:
            server.stop()
            loop.run(mock.stop())
            loop.stop()


def run(app: App, server: ServerThread, args: argparse.Namespace) -> None:
    async def serving_gc() -> None:  # the garbage-collection policy of `truckllm` serving
        Collector().start()

    assert server.loop is not None
    asyncio.run_coroutine_threadsafe(serving_gc(), server.loop).result(10)
    t0 = time.perf_counter()
    batch = ledger_batch(args.rows, args.keys, time.time())
    store = app.coordinator.store
    assert store is not None and server.loop is not None
    asyncio.run_coroutine_threadsafe(store.sync(batch), server.loop).result(600)
    tables = getattr(store, "tables", None)
    sizes = {g: sum(len(r) for r in t.values()) for g, t in tables.usage.items()} if tables else {}
    print(
        f"ledger: {len(batch.usage):,} rows in {time.perf_counter() - t0:.1f} s; table rows {sizes}"
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for i in range(args.traffic):
        body = b'{"model": "model-%d", "messages": [{"role": "user", "content": "hi"}]}' % (i % 10)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
    conn.close()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.keys:,} keys, {args.rows:,} ledger rows, {args.traffic} requests served")
    print(f"{os.cpu_count()} CPUs, load average {load} (1/5/15 min)\n")
    print("| admin endpoint | median ms | worst ms | bytes |\n|---|---:|---:|---:|")
    for path, med, worst, size in endpoint_times(server.port, args.runs):
        print(
            f"| `{path.split('?')[0][10:]}?{path.split('?')[1] if '?' in path else ''}` | {med:.1f} | {worst:.1f} | {size:,} |"
        )
    print("\n| page | cold: navigation to data drawn, ms | warm, median ms |\n|---|---:|---:|")
    for page, cold, warm in page_times(server.url, args.runs):
        print(f"| {page} | {cold:.0f} | {warm:.0f} |")


if __name__ == "__main__":
    main()
