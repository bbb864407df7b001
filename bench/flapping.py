"""Flapping provider: an alias ``[flaky-provider, healthy-provider]`` whose first provider's two
keys fail half their requests (500, 503, connection reset), with the gateway's default settings.

The mock (in this process, so the flaky keys can be healed mid-run) serves both providers. A
client sends requests at a steady rate through a gateway process while a watcher reads the
flaky provider's state from the admin API. After ``--heal-after`` seconds the flaky keys turn
healthy. Reported: client-visible success, attempts per request before and after the ejection,
the time from the first request to the ejection, and the time from healing to the provider's
return (probes included).

    python bench/flapping.py [--requests 400] [--rate 20] [--heal-after 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    BenchError,
    default_python,
    pct,
    run_and_report,
    start_gateway,
)

from truckllm.testing.behaviour import Dist, KeyBehaviour
from truckllm.testing.loop import LoopThread
from truckllm.testing.mock_server import MockServer

ADMIN = "bench-admin"
FLAKY_KEYS = ("flaky-1", "flaky-2")
FAULTS = {"500": 0.2, "503": 0.2, "reset": 0.1}  # half the requests


def gateway_yaml(url: str) -> str:
    flaky = ", ".join(f"{{id: {k}, secret: {k}}}" for k in FLAKY_KEYS)
    return (
        "providers:\n"
        f"  - {{id: flaky-provider, base_url: '{url}/v1', keys: [{flaky}]}}\n"
        f"  - {{id: healthy-provider, base_url: '{url}/v1', keys: [{{id: healthy-1, secret: "
        "healthy-1}, {id: healthy-2, secret: healthy-2}]}\n"
        "model_aliases: {flapping: [flaky-provider:m, healthy-provider:m]}\n"
        f"server: {{admin_api_key: {ADMIN}}}\n"
    )


async def drive(base: str, n: int, rate: float, concurrency: int) -> list[dict[str, Any]]:
    import aiohttp

    results: list[dict[str, Any]] = []
    body = {"model": "flapping", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    limit = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:

        async def one(i: int) -> None:
            await asyncio.sleep(max(t0 + i / rate - time.monotonic(), 0))
            async with limit:
                sent = time.monotonic()
                try:
                    async with session.post(base + "/v1/chat/completions", json=body) as resp:
                        await resp.read()
                        status = resp.status
                        attempts = int(resp.headers.get("x-truckllm-attempts", "0"))
                        provider = resp.headers.get("x-truckllm-provider", "")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, attempts, provider = 0, 0, repr(exc)
                done = time.monotonic()
            results.append(
                {
                    "sent": sent,
                    "ok": status == 200,
                    "status": status,
                    "attempts": attempts,
                    "provider": provider,
                    "seconds": done - sent,
                }
            )

        await asyncio.gather(*(one(i) for i in range(n)))
    return results


async def watch(base: str, stop: asyncio.Event, changes: list[tuple[float, str]]) -> None:
    """The flaky provider's outlier state, read every 20 ms: (time, state) at each change."""
    import aiohttp

    headers = {"Authorization": f"Bearer {ADMIN}"}
    last = ""
    async with aiohttp.ClientSession(headers=headers) as session:
        while not stop.is_set():
            async with session.get(base + "/admin/v1/providers") as resp:
                data = await resp.json()
            state = next(
                p.get("outlier", "unknown") for p in data["data"] if p["id"] == "flaky-provider"
            )
            if state != last:
                changes.append((time.monotonic(), state))
                last = state
            await asyncio.sleep(0.02)


def heal(loop: LoopThread, mock: MockServer, after: float, t0: float) -> asyncio.TimerHandle:
    async def schedule() -> asyncio.TimerHandle:
        def make_healthy() -> None:
            for k in FLAKY_KEYS:
                mock.conditions.set(k, KeyBehaviour())

        return asyncio.get_running_loop().call_later(
            max(t0 + after - time.monotonic(), 0), make_healthy
        )

    return loop.run(schedule())


async def cancel(timer: asyncio.TimerHandle) -> None:
    timer.cancel()


async def run_clients(base: str, args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    changes: list[tuple[float, str]] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(base, stop, changes))
    try:
        results = await drive(base, args.requests, args.rate, args.concurrency)
    finally:
        stop.set()
        await watcher
    return results, changes


def bench(args: argparse.Namespace) -> dict[str, Any]:
    loop = LoopThread("flapping-mock")
    keys = {k: KeyBehaviour(faults=dict(FAULTS)) for k in FLAKY_KEYS}
    mock = MockServer(KeyBehaviour(latency=Dist.lognormal(0.01, 0.06)), keys, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-flapping-"))
    gateway = None
    try:
        url = loop.run(mock.start())
        config = tmp / "gateway.yaml"
        config.write_text(gateway_yaml(url))
        gateway = start_gateway(args.python, config, tmp)
        t0 = time.monotonic()
        timer = heal(loop, mock, args.heal_after, t0) if args.heal_after > 0 else None
        results, changes = asyncio.run(run_clients(gateway.base, args))
        if timer is not None:
            loop.run(cancel(timer))
        assert gateway.proc is not None
        if gateway.proc.poll() is not None:
            raise BenchError(f"the gateway died:\n{gateway.log_tail()}")
    finally:
        if gateway is not None:
            gateway.stop()
        loop.run(mock.stop())
        loop.stop()
    return summarise(results, changes, t0, args)


def summarise(
    results: list[dict[str, Any]],
    changes: list[tuple[float, str]],
    t0: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    ejected_at = next((t for t, s in changes if s == "ejected"), None)
    healed_at = t0 + args.heal_after if args.heal_after > 0 else None
    back_at = None
    if healed_at is not None:
        back_at = next((t for t, s in changes if s == "in_service" and t > healed_at), None)

    def attempts(rs: list[dict[str, Any]]) -> float:
        return float(sum(r["attempts"] for r in rs)) / max(len(rs), 1)

    before = [r for r in results if ejected_at is None or r["sent"] < ejected_at]
    after = [r for r in results if ejected_at is not None and r["sent"] >= ejected_at]
    return {
        "requests": len(results),
        "rate": args.rate,
        "seconds": max(r["sent"] + r["seconds"] for r in results) - t0,
        "success": sum(r["ok"] for r in results) / max(len(results), 1),
        "failures": dict(Counter(str(r["status"]) for r in results if not r["ok"])),
        "attempts_mean": attempts(results),
        "attempts_before_ejection": attempts(before),
        "requests_before_ejection": len(before),
        "attempts_after_ejection": attempts(after),
        "latency_p50_ms": 1e3 * pct([r["seconds"] for r in results], 50),
        "latency_p99_ms": 1e3 * pct([r["seconds"] for r in results], 99),
        "served_by": dict(Counter(r["provider"] for r in results if r["ok"])),
        "time_to_eject_s": None if ejected_at is None else ejected_at - t0,
        "heal_after_s": args.heal_after,
        "time_to_bring_back_s": None if back_at is None else back_at - (healed_at or 0.0),
        "states": [(round(t - t0, 3), s) for t, s in changes],
        "setup": {"faults": FAULTS, "keys": list(FLAKY_KEYS), "settings": "defaults"},
    }


def report(r: dict[str, Any]) -> str:
    def secs(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s"

    faults = ", ".join(f"{k} {v:.0%}" for k, v in r["setup"]["faults"].items())
    lines = [
        f"{r['requests']} requests at {r['rate']:g}/s to the alias [flaky-provider, "
        f"healthy-provider], default settings; the flaky provider's two keys fail {faults} of "
        f"their requests"
        + (f" until they heal at {r['heal_after_s']:g} s.\n" if r["heal_after_s"] > 0 else ".\n"),
        "| client success | failures | attempts/request (all) | before ejection "
        "| after ejection | p50 | p99 | time to eject | time to bring back |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| **{r['success']:.2%}** | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(r['failures'].items())) or '-'} | "
        f"{r['attempts_mean']:.3f} | {r['attempts_before_ejection']:.2f} "
        f"({r['requests_before_ejection']} requests) | "
        + (
            f"**{r['attempts_after_ejection']:.3f}** | "
            if r["time_to_eject_s"] is not None
            else "- | "
        )
        + f"{r['latency_p50_ms']:.1f} ms | {r['latency_p99_ms']:.1f} ms | "
        f"{secs(r['time_to_eject_s'])} | "
        + (
            f"{secs(r['time_to_bring_back_s'])} after healing |"
            if r["heal_after_s"] > 0
            else "- (never healed) |"
        ),
        f"\nServed by: {r['served_by']}. Flaky provider's states (s from the first request): "
        + ", ".join(f"{t:g} {s}" for t, s in r["states"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--rate", type=float, default=20.0, help="requests a second")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--heal-after", type=float, default=8.0, help="seconds; 0: never")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
