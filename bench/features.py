"""What each feature costs per request: the gateway's app called in-process, its provider
answering at once with a fixed chat completion, with every feature off, each one alone, and all
of them on.

The features are the ones operators turn on: client rules and a budget (``server.api_keys`` with
``rpm``, ``tpm`` and ``budget``), key limits and pricing (``limits`` and ``pricing`` on both
keys), Prometheus metrics, and a file request log. No socket is on the path, so the figure is
the app's own CPU per request (``time.process_time``), alternated over rounds; the lowest
round is the one least disturbed by other work on the machine.

Usage::

    .venv/bin/python bench/features.py [--requests 5000] [--rounds 5] [--json FILE]
    .venv/bin/python bench/features.py --profile on      # cProfile of one configuration
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import statistics
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from app_path import canned_registry, post_scope
from common import HOST, run_and_report
from overhead import REQUEST_BODY

from truckllm.api import App
from truckllm.config import load_config

CLIENT_KEY = "sk-client-bench"
# The answer nginx gives in bench/nginx.conf, and the canned provider here.
FIXED_COMPLETION = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"mock-model","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
PROVIDER = """\
providers:
  - id: mock
    type: openai
    base_url: {upstream}
    models: [mock-model]
    keys:
      - {{id: k1, secret: sk-bench-1{key_extra}}}
      - {{id: k2, secret: sk-bench-2{key_extra}}}
"""
LIMITS = ", limits: {rpm: 100000000, tpm: 10000000000}"
PRICING = ", pricing: {input_token_cost: 2.5, output_token_cost: 10, unit: per_1m_tokens}"
CLIENTS = f"""\
server:
  api_keys:
    - {{id: bench, key: {CLIENT_KEY}, rpm: 100000000, tpm: 10000000000,
       budget: {{daily: 1000000000, monthly: 1000000000}}}}
"""
METRICS_ON = "metrics: {enabled: true, path: /metrics}\n"
METRICS_OFF = "metrics: {enabled: false}\n"
REQUEST_LOG = """\
logging:
  sinks:
    - {{type: file, path: {log}, max_bytes: 67108864, keep: 1}}
"""
FEATURES = ("clients", "limits", "pricing", "metrics", "log")
CONFIGS: dict[str, frozenset[str]] = {
    "off": frozenset(),
    **{f"{f} only": frozenset({f}) for f in FEATURES},
    "on": frozenset(FEATURES),
}


def config_text(upstream: str, tmp: Path, features: frozenset[str]) -> str:
    """The gateway's configuration with ``features`` on (the names in ``FEATURES``)."""
    extra = (LIMITS if "limits" in features else "") + (PRICING if "pricing" in features else "")
    text = PROVIDER.format(upstream=upstream, key_extra=extra)
    if "clients" in features:
        text += CLIENTS
    text += METRICS_ON if "metrics" in features else METRICS_OFF
    if "log" in features:
        text += REQUEST_LOG.format(log=tmp / "requests.jsonl")
    return text


class Harness:
    """One App on one configuration, called as an ASGI app."""

    def __init__(self, config: Path) -> None:
        self.app = App(load_config(str(config)), registry=canned_registry(FIXED_COMPLETION))
        payload = REQUEST_BODY.encode()
        self.headers = [
            (b"host", HOST.encode()),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {CLIENT_KEY}".encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        self.request = {"type": "http.request", "body": payload, "more_body": False}
        self.status: set[int] = set()

    async def receive(self) -> dict[str, Any]:
        return self.request

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status.add(message["status"])

    async def call(self) -> None:
        await self.app(post_scope(self.headers), self.receive, self.send)

    async def drained(self) -> None:
        """Until the request-log sinks hold nothing (a batch waits up to a second to fill)."""
        for _ in range(500):
            if not any(s.depth for s in self.app.telemetry.sinks):
                return
            await asyncio.sleep(0.02)

    async def loop(self, n: int) -> tuple[float, float]:
        """CPU µs and minor page faults per request over ``n`` requests. A page fault is the
        kernel's CPU, counted in ``process_time`` but not by an instruction counter such as
        callgrind: the faults say where the allocator keeps asking for fresh memory."""
        c0, f0 = time.process_time(), _faults()
        for i in range(n):
            await self.call()
            if not i % 8:  # let the background tasks run (the request log's writer)
                await asyncio.sleep(0)
        await self.drained()  # the log writer's work counts too
        return (time.process_time() - c0) / n * 1e6, (_faults() - f0) / n


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    harnesses: dict[str, Harness] = {}
    configs = {n: f for n, f in CONFIGS.items() if not args.only or n in args.only}
    for name, features in configs.items():
        config = tmp / f"{name.replace(' ', '-')}.yaml"
        sub = tmp / name.replace(" ", "-")
        sub.mkdir()
        config.write_text(config_text("http://127.0.0.1:9/v1", sub, features))
        harnesses[name] = Harness(config)
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    faults: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for h in harnesses.values():
            await h.app.start()
            await h.loop(min(args.requests, args.warmup))
        for rnd in range(args.rounds):
            order = list(configs) if rnd % 2 == 0 else list(reversed(configs))
            for name in order:
                us, f = await harnesses[name].loop(args.requests)
                cpu[name].append(us)
                faults[name].append(f)
    finally:
        for h in harnesses.values():
            await h.app.close()
    for name, h in harnesses.items():
        if h.status != {200}:
            raise RuntimeError(f"{name}: the app answered {sorted(h.status)}, not only 200")
    best = {name: min(v) for name, v in cpu.items()}
    return {
        "requests": args.requests,
        "rounds": args.rounds,
        "cpu_us": cpu,
        "best_us": best,
        "faults": {name: statistics.median(v) for name, v in faults.items()},
        "on_over_off": best["on"] / best["off"] if "on" in best and "off" in best else None,
    }


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    config = tmp / "gateway.yaml"
    config.write_text(config_text("http://127.0.0.1:9/v1", tmp, CONFIGS[args.profile]))
    h = Harness(config)
    await h.app.start()
    try:
        await h.loop(2000)
        prof = cProfile.Profile()
        prof.enable()
        await h.loop(args.requests)
        prof.disable()
    finally:
        await h.app.close()
    stats = pstats.Stats(prof)
    stats.sort_stats(args.sort).print_stats(args.top)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="truckllm-features-") as tmpdir:
        return asyncio.run(measure(args, Path(tmpdir)))


def report(r: dict[str, Any]) -> str:
    off = r["best_us"].get("off")
    lines = [
        "The gateway's app called in-process (no sockets), its provider answering at once with a "
        f"fixed chat completion; {r['rounds']} rounds of {r['requests']:,} requests per "
        "configuration, order alternating; CPU µs per request, lowest round (median); minor "
        "page faults per request, median round.",
        "",
        "| configuration | CPU per request | added to off | page faults per request |",
        "|---|---:|---:|---:|",
    ]
    for name, values in r["cpu_us"].items():
        best = r["best_us"][name]
        added = (
            "-" if name == "off" or off is None else f"{best - off:+.1f} µs ({best / off - 1:+.0%})"
        )
        faults = r.get("faults", {}).get(name)
        f = "-" if faults is None else f"{faults:.2f}"
        lines.append(f"| {name} | {best:.1f} ({statistics.median(values):.1f}) | {added} | {f} |")
    if r["on_over_off"]:
        lines += ["", f"Everything on costs {r['on_over_off']:.2f}x everything off."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=5000, help="requests per round and config")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), help="these configurations only")
    p.add_argument("--warmup", type=int, default=2000, help="requests before the first round")
    p.add_argument("--profile", choices=list(CONFIGS), help="cProfile this configuration only")
    p.add_argument("--sort", default="tottime", help="pstats sort key for --profile")
    p.add_argument("--top", type=int, default=30, help="rows of --profile")
    args = p.parse_args(argv)
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="truckllm-features-") as tmpdir:
            asyncio.run(profile(args, Path(tmpdir)))
        return 0
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    raise SystemExit(main())
