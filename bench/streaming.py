"""Many concurrent streams at a realistic token rate, direct to the mock and through the gateway.

Starts ``truckllm mock`` (first token after ``--ttft``, then ``--rate`` tokens a second, one token
per SSE event) and a fresh gateway process (metrics and a file request log on), then runs a load
generator in its own process: an asyncio aiohttp client that opens ``--streams`` streams at once
(spread over ``--ramp`` seconds) and timestamps every content chunk. Direct and gateway runs
alternate over ``--rounds``. Reported: completed streams, time to first token and the gaps between
chunks (p50, p99) for both, what the gateway adds, the gateway's CPU seconds and its peak RSS
(``VmHWM``: the process is fresh, so that is the peak of this benchmark).

    python bench/streaming.py [--streams 1000] [--rate 20] [--tokens 80] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    BenchError,
    cpu_seconds,
    default_python,
    free_port,
    gateway_config,
    pct,
    proc_status_kb,
    start,
    wait_http,
    write_json,
)

CONTENT = b'"delta":{"content":"'


# -- the load generator (its own process) ---------------------------------------------------------


async def load(url: str, streams: int, ramp: float, key: str) -> dict[str, Any]:
    import aiohttp

    body = json.dumps(
        {
            "model": "mock-model",
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a story."}],
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    ttft: list[float] = []
    gaps: list[float] = []
    chunks: list[int] = []
    errors: list[str] = []
    completed = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal completed
            await asyncio.sleep(ramp * i / streams)
            t0 = time.perf_counter()
            times: list[float] = []
            done = False
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                        return
                    # Whatever one read brings is timestamped once: cheap enough that the
                    # load generator does not become the bottleneck.
                    tail = b""  # a marker may straddle two reads
                    async for data in resp.content.iter_any():
                        now = time.perf_counter()
                        buf = tail + data
                        times.extend([now] * buf.count(CONTENT))
                        if b"data: [DONE]" in buf:
                            done = True
                        if b'"error"' in buf:
                            errors.append(buf[:200].decode(errors="replace"))
                        tail = buf[-len(CONTENT) + 1 :]
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(repr(exc))
            if times:
                ttft.append(times[0] - t0)
                gaps.extend(b - a for a, b in itertools.pairwise(times))
            chunks.append(len(times))
            if done:
                completed += 1

        await asyncio.gather(*(one(i) for i in range(streams)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "streams": streams,
        "completed": completed,
        "errors": len(errors),
        "error_samples": errors[:5],
        "chunks": sum(chunks),
        "min_chunks": min(chunks) if chunks else 0,
        "ttft_ms": [round(t * 1e3, 3) for t in ttft],
        "gaps_ms": [round(g * 1e3, 3) for g in gaps],
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def client_main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(load(args.url, args.streams, args.ramp, args.key))
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the benchmark --------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_client(
    python: str, url: str, streams: int, ramp: float, out: Path, timeout: float
) -> dict[str, Any]:
    cmd = [
        python,
        __file__,
        "client",
        "--url",
        url,
        "--streams",
        str(streams),
        "--ramp",
        str(ramp),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"load generator failed:\n{proc.stdout}{proc.stderr}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [t for r in runs for t in r["ttft_ms"]]
    gaps = [g for r in runs for g in r["gaps_ms"]]
    return {
        "streams": sum(r["streams"] for r in runs),
        "completed": sum(r["completed"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "error_samples": [e for r in runs for e in r["error_samples"]][:5],
        "chunks": sum(r["chunks"] for r in runs),
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "gap_p50": pct(gaps, 50),
        "gap_p99": pct(gaps, 99),
        "gap_p999": pct(gaps, 99.9),
        "gap_max": max(gaps, default=float("nan")),
        "client_cpu_s": sum(r["client_cpu_s"] for r in runs),
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    python = args.python
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-stream-"))
    mock_port, gw_port = free_port(), free_port()
    mock = start(
        "mock",
        [
            python,
            "-m",
            "truckllm",
            "mock",
            "--listen",
            f"{HOST}:{mock_port}",
            "--ttft",
            str(args.ttft),
            "--tokens-per-s",
            str(args.rate),
            "--reply-tokens",
            str(args.tokens),
        ],
        mock_port,
        tmp,
    )
    config = tmp / "gateway.yaml"
    config.write_text(gateway_config(f"{mock.base}/v1", tmp))
    gateway: Any = None
    try:
        wait_http(mock.base + "/v1/models")
        gateway = start(
            "gateway",
            [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{gw_port}"],
            gw_port,
            tmp,
        )
        wait_http(gateway.base + "/healthz")
        assert gateway.proc is not None
        gw_pid = gateway.proc.pid
        targets = {
            "direct": mock.base + "/v1/chat/completions",
            "gateway": gateway.base + "/v1/chat/completions",
        }
        timeout = args.ramp + args.ttft + args.tokens / args.rate + 120
        for name, url in targets.items():  # warm-up: connections, code paths
            run_client(python, url, 50, 0.2, tmp / f"warm-{name}.json", timeout)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        gateway_cpu = 0.0
        for rnd in range(args.rounds):
            order = ["direct", "gateway"] if rnd % 2 == 0 else ["gateway", "direct"]
            for name in order:
                print(f"round {rnd + 1}/{args.rounds}: {name}", file=sys.stderr)
                before = cpu_seconds(gw_pid)
                result = run_client(
                    python, targets[name], args.streams, args.ramp, tmp / f"{name}.json", timeout
                )
                if name == "gateway":
                    gateway_cpu += cpu_seconds(gw_pid) - before
                runs[name].append(result)
                print(
                    f"  completed {result['completed']}/{result['streams']}, "
                    f"errors {result['errors']}",
                    file=sys.stderr,
                )
                time.sleep(1)
        if gateway.proc.poll() is not None:
            raise BenchError(f"the gateway died:\n{gateway.log_tail()}")
        direct, through = summarise(runs["direct"]), summarise(runs["gateway"])
        return {
            "streams": args.streams,
            "rate": args.rate,
            "tokens": args.tokens,
            "ttft": args.ttft,
            "ramp": args.ramp,
            "rounds": args.rounds,
            "direct": direct,
            "gateway": through,
            "added_ttft_p50": through["ttft_p50"] - direct["ttft_p50"],
            "added_ttft_p99": through["ttft_p99"] - direct["ttft_p99"],
            "added_gap_p50": through["gap_p50"] - direct["gap_p50"],
            "added_gap_p99": through["gap_p99"] - direct["gap_p99"],
            "gateway_cpu_s": gateway_cpu,
            "gateway_cpu_per_1k_chunks_ms": 1e6 * gateway_cpu / max(through["chunks"], 1),
            "gateway_peak_rss_mb": proc_status_kb(gw_pid, "VmHWM") / 1024,
            "gateway_rss_after_mb": proc_status_kb(gw_pid, "VmRSS") / 1024,
            # For the plot: one round's samples of each.
            "samples": {
                name: {"ttft_ms": r[0]["ttft_ms"], "gaps_ms": r[0]["gaps_ms"][:200000]}
                for name, r in runs.items()
            },
        }
    finally:
        for svc in (gateway, mock):
            if svc is not None:
                svc.stop()


def report(r: dict[str, Any]) -> str:
    d, g = r["direct"], r["gateway"]
    lines = [
        f"{r['streams']:,} concurrent streams of {r['tokens']} tokens at {r['rate']:g} tokens/s "
        f"(first token after {r['ttft'] * 1000:.0f} ms; streams started over {r['ramp']:g} s), "
        f"{r['rounds']} round(s) per target. Times in ms.\n",
        "| | completed | errors | TTFT p50 | TTFT p99 | gap p50 | gap p99 | gap p99.9 | gap max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in (("direct -> mock", d), ("through the gateway", g)):
        lines.append(
            f"| {label} | {s['completed']:,}/{s['streams']:,} | {s['errors']} | "
            f"{s['ttft_p50']:.1f} | {s['ttft_p99']:.1f} | {s['gap_p50']:.2f} | "
            f"{s['gap_p99']:.2f} | {s['gap_p999']:.2f} | {s['gap_max']:.1f} |"
        )
    lines.append(
        f"| **added by the gateway** | | | **{r['added_ttft_p50']:+.1f}** | "
        f"**{r['added_ttft_p99']:+.1f}** | **{r['added_gap_p50']:+.2f}** | "
        f"**{r['added_gap_p99']:+.2f}** | | |"
    )
    lines.append(
        f"\nGateway: {r['gateway_cpu_s']:.1f} CPU seconds for {g['chunks']:,} chunks "
        f"({r['gateway_cpu_per_1k_chunks_ms']:.0f} ms per 1,000 chunks), peak RSS "
        f"{r['gateway_peak_rss_mb']:.0f} MB (VmHWM), {r['gateway_rss_after_mb']:.0f} MB after."
    )
    for label, s in (("direct", d), ("gateway", g)):
        if s["error_samples"]:
            lines.append(f"\n{label} errors, first ones: {s['error_samples']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("client", help="(internal) the load generator")
    c.add_argument("--url", required=True)
    c.add_argument("--streams", type=int, required=True)
    c.add_argument("--ramp", type=float, default=1.0)
    c.add_argument("--key", default="sk-bench-1")
    c.add_argument("--out", required=True)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    p.add_argument("--tokens", type=int, default=80, help="tokens per stream")
    p.add_argument("--ttft", type=float, default=0.1, help="the mock's time to first token")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams start")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.mode == "client":
        return client_main(args)
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
