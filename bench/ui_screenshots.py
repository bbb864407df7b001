"""Screenshots of every dashboard page for docs/dashboard.md, from a gateway with real traffic.

A gateway (in this process) over two mock upstreams (``truckllm.testing``; lognormal latency,
streams with a time to first token, the odd 500 and 429), three clients (one with budgets),
and real requests through it for ``--seconds``: a key throttled by its upstream (429 with
Retry-After: it cools), one disabled by the operator. The usage ledger also gets two days of
synthetic history (``bench/ui_load.py``'s rows) so the usage chart has more than one bucket.
Headless Chromium (the system ``chromium``) then signs in and saves each page.

Usage::

    .venv/bin/python bench/ui_screenshots.py [--out docs/ui] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import http.client
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import go, sign_in, start_browser, wait_text  # type: ignore[import-not-found]

from truckllm.api import App
from truckllm.config import load_config
from truckllm.stores.base import METRICS, Batch, RowKey
from truckllm.testing.behaviour import Dist
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock import KeyBehaviour, MockUpstream, Scripted

ADMIN_KEY = "adm-screens"
CLIENTS = {"web-app": "sk-client-web", "batch-jobs": "sk-client-batch", "ci": "sk-client-ci"}
PRICE = "pricing: {input_token_cost: 2.5, output_token_cost: 10, unit: per_1m_tokens}"


def config_yaml(main: str, backup: str) -> str:
    clients = "\n".join(
        f"    - {{id: {cid}, key: {key}"
        + (
            ", rpm: 3000, budget: {daily: 40, monthly: 600, total: 5000}"
            if cid == "web-app"
            else ""
        )
        + (", allowed_models: [fast], rpm: 3000" if cid == "ci" else "")
        + "}"
        for cid, key in CLIENTS.items()
    )
    return f"""
providers:
  - id: openai
    base_url: {main}
    models: [gpt-4o, gpt-4o-mini]
    keys:
      - {{id: openai-main, secret: sk-main, limits: {{rpm: 500, tpm: 200000}}, {PRICE}}}
      - {{id: openai-second, secret: sk-second, limits: {{rpm: 500}}, {PRICE}}}
      - {{id: openai-spare, secret: sk-spare, {PRICE}}}
  - id: backup
    type: openai
    base_url: {backup}
    models: [llama-3.1-70b]
    keys:
      - {{id: backup-1, secret: sk-b1, limits: {{rpm: 300}}}}
      - {{id: backup-2, secret: sk-b2}}
model_aliases:
  fast: openai:gpt-4o-mini
  smart: [openai:gpt-4o, backup:llama-3.1-70b]
server:
  admin_api_key: {ADMIN_KEY}
  api_keys:
{clients}
routing: {{strategy: adaptive}}
"""


def traffic(url: str, seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    parsed = url.split("//")[1]
    host, port = parsed.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        client = rng.choice(["web-app", "web-app", "batch-jobs", "ci"])
        models = ["fast", "smart", "gpt-4o", "llama-3.1-70b"]
        model = "fast" if client == "ci" else rng.choice(models)
        stream = rng.random() < 0.5
        body = b'{"model": "%s", "stream": %s, "messages": [{"role": "user", "content": "%s"}]}' % (
            model.encode(),
            b"true" if stream else b"false",
            b"hello " * rng.randint(5, 200),
        )
        headers = {"Authorization": f"Bearer {CLIENTS[client]}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", body, headers)
        conn.getresponse().read()
        n += 1
    conn.close()
    return n


def history(now: float) -> Batch:
    """Two days of synthetic ledger rows with this configuration's names, busier by day."""
    rng = random.Random(5)
    usage: dict[tuple[int, RowKey], list[int]] = {}
    routes = [
        ("openai", "openai-main", "gpt-4o", "smart"),
        ("openai", "openai-second", "gpt-4o-mini", "fast"),
        ("openai", "openai-spare", "gpt-4o", ""),
        ("backup", "backup-1", "llama-3.1-70b", "smart"),
        ("backup", "backup-2", "llama-3.1-70b", ""),
    ]
    last = int(now) // 60 * 60
    for m in range(2 * 1440, 0, -3):
        minute = last - m * 60
        busy = 1.5 + math.sin(minute / 86400 * 2 * math.pi)
        for client in CLIENTS:
            provider, key, model, alias = rng.choice(routes)
            n = max(0, round(rng.gauss(4 * busy, 1)))
            counts = [0] * len(METRICS)
            counts[0], counts[1] = n, int(rng.random() < 0.05)
            counts[3], counts[4] = n * 600, n * 150
            counts[-1] = 0 if provider == "backup" else n * (600 * 2500 + 150 * 10000)
            usage[(minute, (client, provider, key, model, alias, ""))] = counts
    return Batch("history", 1, now, usage)


def shoot(driver: Any, out: Path, name: str) -> None:
    time.sleep(0.3)  # the charts' last frame; a screenshot, not a test
    driver.save_screenshot(str(out / f"{name}.png"))
    print("wrote", out / f"{name}.png")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="docs/ui")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    loop = LoopThread("ui-screens-mock")
    behaviour = KeyBehaviour(
        latency=Dist.parse({"p50": 0.15, "p99": 0.9}, "latency"),
        ttft=Dist.parse({"p50": 0.2, "p99": 0.8}, "ttft"),
        tokens_per_s=400.0,
        reply_tokens=Dist.parse({"min": 20, "max": 200}, "reply"),
        rpm=5000,
        tpm=2_000_000,
        window_s=60.0,
    )
    main_up = MockUpstream(
        keys={"sk-main": behaviour, "sk-second": behaviour, "sk-spare": behaviour}
    )
    flaky = dataclasses.replace(behaviour, faults={"500": 0.05})
    backup_up = MockUpstream(keys={"sk-b1": behaviour, "sk-b2": flaky})
    for m in (main_up, backup_up):
        loop.run(m.start())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml(main_up.url, backup_up.url))
        app = App(load_config(path, env={}), config_path=str(path))
        from truckllm.testing.serve import ServerThread

        server = ServerThread(app).start()
        try:
            assert server.loop is not None and app.coordinator.store is not None
            fill = history(time.time())
            asyncio.run_coroutine_threadsafe(app.coordinator.store.sync(fill), server.loop).result(
                60
            )
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                done = sum(pool.map(lambda s: traffic(server.url, args.seconds, s), range(6)))
            print(f"{done} requests")
            app.runtime.router.states()["openai-spare"].disabled_by_operator = True
            main_up.script.append(Scripted(status=429, headers={"retry-after": "600"}, body=b"{}"))
            traffic(server.url, 1.0, 99)
            capture(server.url, out)
        finally:
            server.stop()
            for m in (main_up, backup_up):
                loop.run(m.stop())
            loop.stop()


# page, then what shows its data is drawn: (CSS selector, a check of its text)
PAGES: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("keys", "tr.st-cooling .status", bool),
    ("usage", "#page tbody tr", bool),
    ("requests", "#page tbody tr", bool),
    ("budgets", 'tr[data-client="web-app"]', bool),
    ("config", "#config-json", lambda t: "providers" in t),
)


def capture(url: str, out: Path) -> None:
    driver = start_browser(1280, 1000)
    try:
        driver.get(url + "/ui/")
        shoot(driver, out, "login")
        sign_in(driver, url, ADMIN_KEY, refresh_ms=60000)
        wait_text(driver, "#ov-requests", lambda t: t[:1].isdigit() and t != "0")
        shoot(driver, out, "overview")
        for page, css, check in PAGES:
            go(driver, page)
            wait_text(driver, css, check)
            shoot(driver, out, page)
        driver.set_window_size(390, 844)
        go(driver, "overview")
        wait_text(driver, "#ov-requests", bool)
        shoot(driver, out, "phone-overview")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
