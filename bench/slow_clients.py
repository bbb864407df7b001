"""Slow clients: legitimate requests' latency while 500 connections trickle headers and bodies.

A mock upstream and a gateway run as processes on loopback. Legitimate clients (keep-alive
connections, non-streamed chat completions) are timed twice in the same run: on an idle gateway,
then while ``--slow`` connections trickle at it, half sending a request head one byte at a time
(cut by ``server.timeouts.headers``), half a complete, authenticated head and then a body one
byte at a time (cut by ``timeouts.body_total``). A slow connection the gateway closes is replaced,
so the flood stays at ``--slow`` connections for ``--seconds``; then the last ones are left to be
cut. Every slow connection's close is checked against its deadline plus one sweep of the
gateway's deadline checker (a quarter of the shortest timeout, clamped to 0.05..1 s).

    python bench/slow_clients.py [--slow 500] [--seconds 10] [--concurrency 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    BenchError,
    default_python,
    free_port,
    pct,
    run_and_report,
    start,
    wait_http,
)

CLIENT_KEY = "ck-bench"
MODEL = "mock-model"
BODY = b'{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}'
HEADERS_S, BODY_S, BODY_TOTAL_S = 2.0, 2.0, 4.0
TRICKLE_S = 0.5  # one byte this often: under every per-read deadline, so only the totals cut
SWEEP_S = min(1.0, max(0.05, min(HEADERS_S, BODY_S, BODY_TOTAL_S) / 4))
SLACK_S = 0.05  # scheduling of two busy processes on two cores, and the client noticing

GATEWAY_YAML = """\
server:
  api_keys: [{key}]
  timeouts: {{headers: {headers}, body: {body}, body_total: {body_total}, send: 2, keep_alive: 30}}
providers:
  - id: mock
    type: openai
    base_url: {upstream}
    models: [{model}]
    keys: [{{id: k1, secret: sk-bench-1}}]
metrics: {{enabled: true}}
"""


def request_bytes() -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    ) + BODY


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def legit(port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """Requests on ``concurrency`` keep-alive connections for ``seconds``; latencies in ms."""
    data = request_bytes()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(data)
                status, body = await read_response(reader)
                if status != 200:
                    errors += 1
                    if errors == 1:
                        print(f"first error: {status} {body[:300]!r}", file=sys.stderr)
                latencies.append((time.perf_counter() - t0) * 1e3)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": pct(latencies, 50),
        "p95_ms": pct(latencies, 95),
        "p99_ms": pct(latencies, 99),
    }


async def slow_connection(port: int, kind: str, lateness: list[float], refused: list[str]) -> None:
    """One trickling connection, until the gateway closes it; how late the close came after
    the deadline of its phase goes into ``lateness``."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        refused.append(str(exc))
        return
    if kind == "headers":
        first = b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        trickle = b"X-Slow: " + b"a" * 4000
        limit = HEADERS_S
    else:
        first = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer "
            + CLIENT_KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
        )
        trickle = b" " * 100_000
        limit = BODY_TOTAL_S
    writer.write(first)
    started = loop.time()
    sent = 0
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(4096), TRICKLE_S)
            except TimeoutError:
                writer.write(trickle[sent : sent + 1])
                sent += 1
                continue
            if not data:
                break  # closed (after a 408, read above, or at once)
    except ConnectionError:
        pass
    lateness.append(loop.time() - started - limit)
    writer.close()


async def flood(port: int, slow: int, seconds: float, lateness: list[float]) -> dict[str, Any]:
    """``slow`` trickling connections, each replaced when cut, for ``seconds``; then waits for
    the last ones to be cut."""
    refused: list[str] = []
    stop = time.perf_counter() + seconds
    opened = 0

    async def lane(i: int) -> None:
        nonlocal opened
        kind = "headers" if i % 2 == 0 else "body"
        while time.perf_counter() < stop:
            opened += 1
            await slow_connection(port, kind, lateness, refused)

    tasks = [asyncio.ensure_future(lane(i)) for i in range(slow)]
    await asyncio.sleep(min(HEADERS_S, BODY_TOTAL_S) / 2)  # the flood is at full strength
    return {"tasks": tasks, "opened": lambda: opened, "refused": refused}


async def run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    await legit(port, 1.0, args.concurrency)  # warm-up
    idle = await legit(port, args.seconds, args.concurrency)
    lateness: list[float] = []
    started = await flood(port, args.slow, args.seconds + 1.0, lateness)
    loaded = await legit(port, args.seconds, args.concurrency)
    bound = max(HEADERS_S, BODY_TOTAL_S) + SWEEP_S + 5.0  # the whole run is bounded in time
    _, pending = await asyncio.wait(started["tasks"], timeout=args.seconds + bound)
    for task in pending:
        task.cancel()
    return {
        "idle": idle,
        "flood": loaded,
        "slow_connections": started["opened"](),
        "slow_refused": len(started["refused"]),
        "slow_not_closed": len(pending),
        "lateness_max_ms": 1e3 * max(lateness, default=0.0),
        "lateness_p99_ms": 1e3 * pct(lateness, 99),
        "late_beyond_sweep": sum(1 for x in lateness if x > SWEEP_S + SLACK_S),
        "early": sum(1 for x in lateness if x < -SLACK_S),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-slow-"))
    mock = gateway = None
    try:
        mock_port = free_port()
        mock = start(
            "mock",
            [args.python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{mock_port}"],
            mock_port,
            tmp,
        )
        wait_http(mock.base + "/v1/models")
        config = tmp / "gateway.yaml"
        config.write_text(
            GATEWAY_YAML.format(
                key=CLIENT_KEY,
                headers=HEADERS_S,
                body=BODY_S,
                body_total=BODY_TOTAL_S,
                upstream=f"http://{HOST}:{mock_port}/v1",
                model=MODEL,
            )
        )
        port = free_port()
        gateway = start(
            "gateway",
            [args.python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"],
            port,
            tmp,
        )
        wait_http(gateway.base + "/healthz")
        result = asyncio.run(run(port, args))
        assert gateway.proc is not None
        if gateway.proc.poll() is not None:
            raise BenchError(f"the gateway died:\n{gateway.log_tail()}")
    finally:
        for svc in (gateway, mock):
            if svc is not None:
                svc.stop()
    result["setup"] = {
        "slow": args.slow,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "timeouts": {"headers": HEADERS_S, "body": BODY_S, "body_total": BODY_TOTAL_S},
        "sweep_s": SWEEP_S,
        "trickle_s": TRICKLE_S,
    }
    return result


def report(r: dict[str, Any]) -> str:
    s, idle, fl = r["setup"], r["idle"], r["flood"]
    ratio = fl["p95_ms"] / idle["p95_ms"] if idle["p95_ms"] else float("nan")
    lines = [
        f"{s['concurrency']} legitimate keep-alive clients for {s['seconds']:g} s on an idle "
        f"gateway, then for {s['seconds']:g} s beside {s['slow']} slow connections (half "
        f"trickling a head, half an authenticated body, a byte every {s['trickle_s']:g} s; "
        f"`timeouts: {{headers: {s['timeouts']['headers']:g}, body_total: "
        f"{s['timeouts']['body_total']:g}}}`, sweep every {s['sweep_s']:g} s).\n",
        "| legitimate requests | requests | errors | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, x in (("idle gateway", idle), (f"{s['slow']} slow connections", fl)):
        lines.append(
            f"| {name} | {x['requests']:,} | {x['errors']} | {x['p50_ms']:.2f} | "
            f"{x['p95_ms']:.2f} | {x['p99_ms']:.2f} |"
        )
    lines.append(
        f"\np95 under the flood: **{ratio:.2f}x** idle (target: at most 2x). Slow connections "
        f"opened: {r['slow_connections']:,}; refused at connect: {r['slow_refused']}; never "
        f"closed: {r['slow_not_closed']}; closed later than deadline + one sweep "
        f"(+{SLACK_S * 1e3:.0f} ms slack): **{r['late_beyond_sweep']}**, before the deadline: "
        f"{r['early']}; lateness after the deadline: p99 {r['lateness_p99_ms']:.0f} ms, "
        f"max {r['lateness_max_ms']:.0f} ms."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
