"""The gateway's request path in one process: its CPU per request when requests come back to
back, and when each one follows a loopback round trip.

The app (``truckllm.api.App`` with the benchmarks' configuration: two keys, metrics on,
a file request log) is called as an ASGI app, without the HTTP server. Its ``openai`` provider
answers at once with the body a real ``truckllm mock`` gave (usage read from it as the real
adapter does), so no socket is on the app's path. Three loops, alternated in rounds, each
``--requests`` long:

* ``app``: app calls back to back: the path's cost with the caches warm;
* ``round trip``: one POST to the mock and its answer read, through the gateway's own upstream
  client (``truckllm.http.client``), and nothing else: a wait for another process, as a
  gateway has between a request and the next;
* ``app + round trip``: both, alternately. The app's share is this loop's CPU less the round
  trip's.

Where waiting is cheap, the app's share after a round trip is close to its cost back to back.
On a VM whose idle vCPUs halt at once (``bench/overhead.py`` names the idle policy), every wait
ends in a wake-up through the hypervisor, and the code that runs next finds cold caches: the
same app path then costs a multiple of its warm cost.

Usage::

    .venv/bin/python bench/app_path.py [--requests 20000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from common import (
    HOST,
    Service,
    default_python,
    free_port,
    gateway_config,
    run_and_report,
    start,
)
from overhead import REQUEST_BODY, ROUTE, UPSTREAM_KEY, cpu_idle, halt_polling

from truckllm.api import App
from truckllm.config import load_config
from truckllm.config.schema import KeyConfig
from truckllm.http.client import HTTPClient, ParsedURL
from truckllm.http.server import DISCONNECT_EXTENSION
from truckllm.plugins import Registry
from truckllm.providers import ProviderContext, ProviderFactory
from truckllm.providers.base import Call, Reply
from truckllm.providers.openai import _usage_of_body

LOOPS = ("app", "round trip", "app + round trip")
_UPSTREAM_HEAD = (
    f"Authorization: Bearer {UPSTREAM_KEY}\r\nContent-Type: application/json\r\n"
).encode()


def _no_watch(callback: Any) -> None:
    """The disconnect extension of a harness whose client never leaves."""


def post_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI scope of a chat completion POST, with the disconnect extension the gateway's own
    server gives the app (without it, every request would arm a fallback timer to watch the
    client that the real path does not have)."""
    return {
        "type": "http",
        "method": "POST",
        "path": ROUTE,
        "headers": headers,
        "query_string": b"",
        "extensions": {DISCONNECT_EXTENSION: _no_watch},
    }


def canned_registry(body: bytes) -> Registry[ProviderFactory]:
    """A registry whose ``openai`` provider answers every call with ``body`` at once."""
    headers = {"content-type": "application/json", "content-length": str(len(body))}

    class CannedProvider:
        def __init__(self, ctx: ProviderContext) -> None:
            self.id = ctx.config.id

        async def send(self, call: Call, key: KeyConfig) -> Reply:
            usage, model = _usage_of_body(body)
            return Reply(200, "application/json", headers, body=body, usage=usage, model=model)

    registry: Registry[ProviderFactory] = Registry("provider", "truckllm.providers")
    registry.register("openai", CannedProvider)
    return registry


async def measure(args: argparse.Namespace, mock: Service, config: Path) -> dict[str, Any]:
    client = HTTPClient()
    target = ParsedURL.parse(mock.base + ROUTE)
    payload = REQUEST_BODY.encode()

    async def round_trip() -> bytes:
        resp = await client.post(
            target, _UPSTREAM_HEAD, payload, connect_timeout=5, read_timeout=30, total=30
        )
        return await resp.read()

    app = App(load_config(str(config)), registry=canned_registry(await round_trip()))
    await app.start()
    headers = [
        (b"host", HOST.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    request = {"type": "http.request", "body": payload, "more_body": False}
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def app_call() -> None:
        await app(post_scope(headers), receive, send)

    async def both() -> None:
        await app_call()
        await round_trip()

    loops: dict[str, Callable[[], Awaitable[Any]]] = {
        "app": app_call,
        "round trip": round_trip,
        "app + round trip": both,
    }
    cpu: dict[str, list[float]] = {name: [] for name in LOOPS}
    wall: dict[str, list[float]] = {name: [] for name in LOOPS}
    try:
        for step in loops.values():  # warm up: connections, caches, the router's figures
            for _ in range(min(args.requests, 2000)):
                await step()
        for rnd in range(args.rounds):
            order = list(LOOPS) if rnd % 2 == 0 else list(reversed(LOOPS))
            for name in order:
                step = loops[name]
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.requests):
                    await step()
                cpu[name].append((time.process_time() - c0) / args.requests * 1e6)
                wall[name].append((time.perf_counter() - t0) / args.requests * 1e6)
    finally:
        await app.close()
        await client.close()
    if set(status) != {200}:
        raise RuntimeError(f"the app answered {sorted(set(status))}, not only 200")
    med = {name: statistics.median(cpu[name]) for name in LOOPS}
    return {
        "requests": args.requests,
        "rounds": args.rounds,
        "cpu_us": cpu,
        "wall_us": wall,
        "app_us": med["app"],
        "round_trip_us": med["round trip"],
        "app_after_round_trip_us": med["app + round trip"] - med["round trip"],
        "cpu_idle": cpu_idle(),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="truckllm-app-path-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        python = default_python()
        mock = start(
            "mock", [python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{port}"], port, tmp
        )
        try:
            with halt_polling(args.halt_poll_ns):
                return _measured(args, mock, tmp)
        finally:
            mock.stop()


def _measured(args: argparse.Namespace, mock: Service, tmp: Path) -> dict[str, Any]:
    mock.wait_ready({"Content-Type": "application/json", "Authorization": f"Bearer {UPSTREAM_KEY}"})
    config = tmp / "gateway.yaml"
    config.write_text(gateway_config(mock.base + "/v1", tmp))
    return asyncio.run(measure(args, mock, config))


def report(r: dict[str, Any]) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    lines = [
        "The gateway's app (`truckllm.api.App`: two keys, metrics on, a file request log) called "
        "in-process, its provider answering at once; a round trip is one POST to `truckllm mock` "
        "through the gateway's upstream client. "
        f"{r['rounds']} rounds of {r['requests']:,} per loop, order alternating; µs per "
        f"iteration, median (range over rounds). CPU idle: {r['cpu_idle']}.",
        "",
        "| loop | CPU per iteration | wall per iteration |",
        "|---|---:|---:|",
        *(f"| {name} | {cell(r['cpu_us'][name])} | {cell(r['wall_us'][name])} |" for name in LOOPS),
        "",
        f"The app's share after a round trip: {r['app_after_round_trip_us']:.1f} µs of CPU per "
        f"request, {r['app_after_round_trip_us'] / r['app_us']:.1f} times its "
        f"{r['app_us']:.1f} µs back to back.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20000, help="iterations per loop and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--halt-poll-ns",
        type=int,
        metavar="NS",
        help="let idle vCPUs poll NS ns before they halt, for this run (as bench/overhead.py)",
    )
    return run_and_report(bench, report, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
