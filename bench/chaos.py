"""Chaos: keys that throttle and keys that fail, in all three wire formats, through the gateway.

The mock (in this process, so its records can be read) serves an OpenAI, an Anthropic and a
Gemini provider with four keys each: two fast ones with a low rate limit the gateway is not told
about (it learns from the 429s and rate-limit headers), one that fails at set rates (500, 503,
529, connection resets, answers cut in the middle, stalls), and a healthy but slow one. A client sends requests (a
quarter of them streamed) spread over the three providers through a gateway process. Reported:
the client-visible success rate, attempts per request, and the requests that reached a key while
it was cooling down after a 429 (must be zero; the mock compares every arrival with its own 429
windows, as ``tests/test_balancer.py`` does).

    python bench/chaos.py [--requests 4000] [--concurrency 16] [--json out.json]
    python bench/chaos.py --affinity [--conversations 64]   # prompt-cache affinity on
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
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

FORMATS = {"oa": ("openai", "m"), "an": ("anthropic", "claude-x"), "ge": ("gemini", "gemini-x")}
GRACE_S = 0.2  # a request already on the wire when the 429 went out may still land


KEYS = ("lim1", "lim2", "flaky", "slow")


def behaviours(
    rpm: int, window: float, fail: dict[str, float]
) -> tuple[KeyBehaviour, dict[str, KeyBehaviour]]:
    keys: dict[str, KeyBehaviour] = {}
    for p in FORMATS:
        for k in ("lim1", "lim2"):
            keys[f"{p}-{k}"] = KeyBehaviour(rpm=rpm, window_s=window)
        faults = dict(fail)
        if p != "an":  # 529 is Anthropic's "overloaded"; others answer 503
            faults["503"] = faults.get("503", 0) + faults.pop("529", 0)
        keys[f"{p}-flaky"] = KeyBehaviour(faults=faults)
        keys[f"{p}-slow"] = KeyBehaviour(latency=Dist.lognormal(0.08, 0.3))
    return KeyBehaviour(latency=Dist.lognormal(0.01, 0.06)), keys


def gateway_yaml(url: str, read_timeout: float, affinity: bool = False) -> str:
    lines = ["providers:"]
    for p, (kind, _) in FORMATS.items():
        base = f"{url}/v1" if kind == "openai" else url
        keys = ", ".join(f"{{id: {p}-{k}, secret: {p}-{k}}}" for k in KEYS)
        lines.append(f"  - {{id: {p}, type: {kind}, base_url: '{base}', keys: [{keys}]}}")
    lines.append(f"server: {{timeouts: {{read: {read_timeout}}}}}")
    lines.append("metrics: {enabled: true}")
    if affinity:  # prompt-cache affinity: the balancer's rules must still decide
        lines.append("routing: {affinity: {enabled: true}}")
    return "\n".join(lines) + "\n"


async def drive(
    url: str, n: int, concurrency: int, stream_share: float, seed: int, conversations: int = 0
) -> list[Any]:
    import aiohttp

    rng = random.Random(seed)
    models = itertools.cycle([f"{p}:{m}" for p, (_, m) in FORMATS.items()])
    jobs = iter(range(n))
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:

        async def worker() -> None:
            for job in jobs:
                model = next(models)
                stream = rng.random() < stream_share
                text = f"conversation {job % conversations}" if conversations else "hi"
                body = {
                    "model": model,
                    "stream": stream,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": text}],
                }
                t0 = time.perf_counter()
                try:
                    async with session.post(url, json=body) as resp:
                        data = await resp.read()
                        status = resp.status
                        attempts = int(resp.headers.get("x-truckllm-attempts", "0"))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    results.append({"format": model[:2], "ok": False, "status": repr(exc)})
                    continue
                broken = (
                    stream
                    and status == 200
                    and (not data.rstrip().endswith(b"data: [DONE]") or b'"error"' in data)
                )
                results.append(
                    {
                        "format": model[:2],
                        "stream": stream,
                        "ok": status == 200 and not broken,
                        "status": "broken mid-stream" if broken else str(status),
                        "attempts": attempts,
                        "seconds": time.perf_counter() - t0,
                    }
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def early_arrivals(mock: MockServer) -> list[float]:
    """For every request that reached a key after a 429 and before its retry time: how long
    after the 429 it arrived (seconds)."""
    by_key: dict[str, list[float]] = {}
    for key, t in mock.arrivals:
        by_key.setdefault(key, []).append(t)
    return [
        t - sent
        for key, sent, retry_after in mock.throttled
        for t in by_key.get(key, ())
        if sent < t < sent + retry_after
    ]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    fail = {"500": 0.1, "503": 0.05, "529": 0.05, "reset": 0.05, "cut": 0.04, "stall": 0.01}
    defaults, keys = behaviours(args.rpm, args.window, fail)
    loop = LoopThread("chaos-mock")
    mock = MockServer(defaults, keys, seed=args.seed, record=True)
    for fake in (mock.openai, mock.anthropic, mock.gemini):
        fake.record = False  # keep arrivals and 429s, not every body
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-chaos-"))
    gateway = None
    try:
        url = loop.run(mock.start())
        config = tmp / "gateway.yaml"
        config.write_text(gateway_yaml(url, args.read_timeout, args.affinity))
        gateway = start_gateway(args.python, config, tmp)
        t0 = time.monotonic()
        results = asyncio.run(
            drive(
                gateway.base + "/v1/chat/completions",
                args.requests,
                args.concurrency,
                args.stream_share,
                args.seed,
                args.conversations,
            )
        )
        elapsed = time.monotonic() - t0
        assert gateway.proc is not None
        if gateway.proc.poll() is not None:
            raise BenchError(f"the gateway died:\n{gateway.log_tail()}")
        arrivals = Counter(k for k, _ in mock.arrivals)
        throttled = Counter(k for k, _, _ in mock.throttled)
        early = early_arrivals(mock)
        violations = sum(1 for lag in early if lag > GRACE_S)
        in_flight = [lag for lag in early if lag <= GRACE_S]
    finally:
        if gateway is not None:
            gateway.stop()
        loop.run(mock.stop())
        loop.stop()
    attempts = [r["attempts"] for r in results if r.get("attempts")]
    per_format = {}
    for p, (kind, _) in FORMATS.items():
        mine = [r for r in results if r["format"] == p]
        per_format[kind] = {
            "requests": len(mine),
            "success": sum(r["ok"] for r in mine) / max(len(mine), 1),
            "statuses": dict(Counter(r["status"] for r in mine if not r["ok"])),
            "attempts_mean": sum(r.get("attempts", 0) for r in mine) / max(len(mine), 1),
            "upstream_calls": sum(v for k, v in arrivals.items() if k.startswith(p + "-")),
            "upstream_429s": sum(v for k, v in throttled.items() if k.startswith(p + "-")),
        }
    failures = Counter(r["status"] for r in results if not r["ok"])
    return {
        "requests": len(results),
        "concurrency": args.concurrency,
        "stream_share": args.stream_share,
        "seconds": elapsed,
        "success": sum(r["ok"] for r in results) / max(len(results), 1),
        "failures": dict(failures),
        "attempts_mean": sum(attempts) / max(len(attempts), 1),
        "attempts_p99": pct(attempts, 99),
        "attempts_max": max(attempts, default=0),
        "upstream_calls": sum(arrivals.values()),
        "upstream_429s": sum(throttled.values()),
        "cooling_violations": violations,
        "in_flight_at_429": len(in_flight),
        "in_flight_max_lag_ms": 1e3 * max(in_flight, default=0.0),
        "per_format": per_format,
        "per_key": {k: {"calls": arrivals[k], "429s": throttled[k]} for k in sorted(arrivals)},
        "setup": {
            "throttled": f"{args.rpm} requests per {args.window:g} s window",
            "flaky": fail,
            "latency": "lognormal p50 10 ms, p99 60 ms (slow key: p50 80 ms, p99 300 ms)",
            "read_timeout": args.read_timeout,
            "affinity": args.affinity,
            "conversations": args.conversations,
        },
    }


def report(r: dict[str, Any]) -> str:
    s = r["setup"]
    flaky = ", ".join(f"{k} {v:.0%}" for k, v in s["flaky"].items())
    lines = [
        f"{r['requests']:,} requests, {r['concurrency']} in flight, "
        f"{r['stream_share']:.0%} streamed, in {r['seconds']:.1f} s. Per provider: two fast keys "
        f"limited to {s['throttled']} (not configured in the gateway), one flaky "
        f"({flaky}; 529 only on Anthropic, 503 elsewhere), one healthy but slow; upstream "
        f"latency {s['latency']}; gateway read timeout {s['read_timeout']:g} s (stalls). "
        f"Prompt-cache affinity {'on' if s.get('affinity') else 'off'}; "
        f"distinct prompts: {s.get('conversations') or 1}.\n",
        "| | requests | client-visible success | attempts per request | upstream calls "
        "| upstream 429s | failures seen by clients |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, f in r["per_format"].items():
        lines.append(
            f"| {kind} | {f['requests']:,} | {f['success']:.2%} | {f['attempts_mean']:.2f} | "
            f"{f['upstream_calls']:,} | {f['upstream_429s']:,} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(f['statuses'].items())) or '-'} |"
        )
    lines.append(
        f"| **all** | {r['requests']:,} | **{r['success']:.2%}** | {r['attempts_mean']:.2f} "
        f"(p99 {r['attempts_p99']}, max {r['attempts_max']}) | {r['upstream_calls']:,} | "
        f"{r['upstream_429s']:,} | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(r['failures'].items())) or '-'} |"
    )
    lines.append(
        f"\nRequests that reached a key while it was cooling down: "
        f"**{r['cooling_violations']}** (arrivals later than {GRACE_S:g} s after a 429 and "
        f"before its retry time; {r['in_flight_at_429']} more arrived at most "
        f"{r['in_flight_max_lag_ms']:.1f} ms after a 429: sent before it reached the gateway)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--stream-share", type=float, default=0.25)
    p.add_argument("--rpm", type=int, default=20, help="requests per window of limited keys")
    p.add_argument("--window", type=float, default=1.0, help="seconds of their window")
    p.add_argument("--read-timeout", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--affinity", action="store_true", help="routing.affinity on (prompt-cache affinity)"
    )
    p.add_argument(
        "--conversations",
        type=int,
        default=0,
        help="requests spread over this many distinct prompts (0: all the same)",
    )
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
