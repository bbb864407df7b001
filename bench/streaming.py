"""Many concurrent streams at a realistic token rate, direct to the mock and through the gateway.

Starts ``truckllm mock`` (first token after ``--ttft``, then ``--rate`` tokens a second, one token
per SSE event) and a fresh gateway process (metrics and a file request log on), then runs a load
generator in its own process that opens ``--streams`` streams at once (spread over ``--ramp``
seconds) and timestamps every content chunk. The load generator is a bare asyncio protocol per
stream (``--client raw``, the default): on a 2-core machine where it shares the CPUs with the
mock and the gateway, it costs about half the CPU per chunk of an aiohttp client (``--client
aiohttp``), which leaves that much more for the process under test. Direct and gateway runs
alternate over ``--rounds``. Reported: completed streams, time to first token and the gaps between
chunks (p50, p99) for both, what the gateway adds, the gateway's CPU seconds and its peak RSS
(``VmHWM``: the process is fresh, so that is the peak of this benchmark).

By default (``--pin``) the gateway runs on the last CPU and the mock and the load generator on the
others, in both runs. Left to share two cores, the three processes wait for each other: the mock
and the load generator are then slower in the gateway run than in the direct run, and the
difference, which a deployment (client, gateway and upstream on different machines) does not
have, is counted as added by the gateway. ``--no-pin`` measures that shared case.

    python bench/streaming.py [--streams 1000] [--rate 20] [--tokens 80] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

from accept_queue import AcceptQueue
from common import (
    HOST,
    BenchError,
    cpu_seconds,
    default_python,
    free_port,
    gateway_config,
    machine_cpu_seconds,
    pct,
    proc_status_kb,
    run_and_report,
    start,
    wait_http,
)

CONTENT = b'"delta":{"content":"'
STAMP = b'"mock_sent":'
BODY = json.dumps(
    {
        "model": "mock-model",
        "stream": True,
        "messages": [{"role": "user", "content": "Tell me a story."}],
    }
).encode()


# -- the load generator (its own process) ---------------------------------------------------------


class Tally:
    """What one stream's client saw: when each content event arrived (perf_counter), how long
    each took from the mock's write to here (the mock stamps ``mock_sent`` with the system-wide
    monotonic clock), whether ``[DONE]`` came, the first error event."""

    __slots__ = ("done", "end", "error", "rest", "t0", "times", "transits")

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.end = 0.0
        self.times: list[float] = []
        self.transits: list[float] = []
        self.rest = b""
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        now, mono = time.perf_counter(), time.monotonic()
        buf = self.rest + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.rest = buf
            return
        complete, self.rest = buf[:end], buf[end + 2 :]
        self.times.extend([now] * complete.count(CONTENT))
        at = complete.find(STAMP)
        while at >= 0:
            stop = at + len(STAMP)
            while complete[stop] not in b",}":
                stop += 1
            self.transits.append(mono - float(complete[at + len(STAMP) : stop]))
            at = complete.find(STAMP, stop)
        if b"data: [DONE]" in complete:
            self.done = True
        if self.error is None and b'"error"' in complete:
            self.error = complete[:200].decode(errors="replace")


def peak_concurrency(tallies: list[Tally]) -> int:
    edges = sorted([(t.t0, 1) for t in tallies] + [(t.end or t.t0, -1) for t in tallies])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def summary(tallies: list[Tally], errors: list[str], streams: int) -> dict[str, Any]:
    ttft: list[float] = []
    gaps: list[float] = []
    transits: list[float] = []
    for t in tallies:
        if t.error is not None:
            errors.append(t.error)
        if t.times:
            ttft.append(t.times[0] - t.t0)
            gaps.extend(b - a for a, b in itertools.pairwise(t.times))
        transits.extend(t.transits)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    counts = [len(t.times) for t in tallies]
    return {
        "streams": streams,
        "peak_concurrency": peak_concurrency(tallies),
        "completed": sum(1 for t in tallies if t.done and t.error is None),
        "errors": len(errors),
        "error_samples": errors[:5],
        "chunks": sum(counts),
        "min_chunks": min(counts, default=0),
        "ttft_ms": [round(t * 1e3, 3) for t in ttft],
        "gaps_ms": [round(g * 1e3, 3) for g in gaps],
        "transit_ms": [round(t * 1e3, 3) for t in transits],
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


async def load(url: str, streams: int, ramp: float, key: str) -> dict[str, Any]:
    """The aiohttp load generator."""
    import aiohttp

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    tallies: list[Tally] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            await asyncio.sleep(ramp * i / streams)
            tally = Tally()
            try:
                async with session.post(url, data=BODY, headers=headers) as resp:
                    if resp.status != 200:
                        errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                        return
                    async for data in resp.content.iter_any():
                        tally.feed(data)
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(repr(exc))
            tally.end = time.perf_counter()
            tallies.append(tally)

        await asyncio.gather(*(one(i) for i in range(streams)))
    return summary(tallies, errors, streams)


class _RawStream(asyncio.Protocol):
    """One stream over a bare HTTP/1.1 connection, for a load generator that costs about half
    the CPU of aiohttp's per chunk (``--client raw``)."""

    def __init__(self, request: bytes, finished: asyncio.Future[None]) -> None:
        self.request = request
        self.finished = finished
        self.tally = Tally()
        self.head = b""
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tally.t0 = time.perf_counter()
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data = self.head[end + 4 :]
        self.tally.feed(data)
        ended = (self.tally.done and data.endswith(b"0\r\n\r\n")) or self.status != 200
        if ended and not self.finished.done():
            self.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def load_raw(url: str, streams: int, ramp: float, key: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = asyncio.get_running_loop()
    tallies: list[Tally] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / streams)
        finished: asyncio.Future[None] = loop.create_future()
        proto = _RawStream(request, finished)
        try:
            transport, _ = await loop.create_connection(lambda: proto, host, port)
        except OSError as exc:
            errors.append(repr(exc))
            return
        try:
            await asyncio.wait_for(finished, 120)
        except TimeoutError:
            errors.append("timed out")
        proto.tally.end = time.perf_counter()
        transport.close()
        if proto.status != 200:
            errors.append(f"HTTP {proto.status}: {proto.head[:200]!r}")
        tallies.append(proto.tally)

    await asyncio.gather(*(one(i) for i in range(streams)))
    return summary(tallies, errors, streams)


def client_main(args: argparse.Namespace) -> int:
    run: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    fn = load_raw if args.client == "raw" else load
    # A full collection in the load generator stalls every stream it reads: for one short run,
    # only the young generations collect (the gateway and the mock collect fully on a timer).
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)
    result = run(fn(args.url, args.streams, args.ramp, args.key))
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the benchmark --------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_client(
    args: argparse.Namespace,
    prefix: list[str],
    url: str,
    out: Path,
    timeout: float,
    streams: int,
    ramp: float,
) -> dict[str, Any]:
    """One load generator run; ``prefix`` places it on its CPUs (``taskset``) or is empty."""
    cmd = [
        *prefix,
        args.python,
        __file__,
        "client",
        "--url",
        url,
        "--streams",
        str(streams),
        "--ramp",
        str(ramp),
        "--client",
        args.client,
        "--out",
        str(out),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"load generator failed:\n{proc.stdout}{proc.stderr}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["seconds"] = time.monotonic() - t0
    return data


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [t for r in runs for t in r["ttft_ms"]]
    gaps = [g for r in runs for g in r["gaps_ms"]]
    transit = [t for r in runs for t in r["transit_ms"]]
    return {
        "streams": sum(r["streams"] for r in runs),
        "peak_concurrency": max(r["peak_concurrency"] for r in runs),
        "completed": sum(r["completed"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "error_samples": [e for r in runs for e in r["error_samples"]][:5],
        "chunks": sum(r["chunks"] for r in runs),
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "gap_p50": pct(gaps, 50),
        "gap_p99": pct(gaps, 99),
        "gap_max": max(gaps, default=float("nan")),
        "transit_p50": pct(transit, 50),
        "transit_p99": pct(transit, 99),
        "transit_max": max(transit, default=float("nan")),
        "client_cpu_s": sum(r["client_cpu_s"] for r in runs),
        "seconds": sum(r["seconds"] for r in runs),
    }


def cpu_plan(pin: bool) -> tuple[list[str], list[str], str]:
    """Command prefixes for the gateway and for the mock and load generator, and a description.
    Pinned: the gateway alone on the last CPU this process may use, the others on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return [], [], "not pinned: the mock, the load generator and the gateway share the CPUs"
    if shutil.which("taskset") is None:
        raise BenchError("--pin needs taskset (util-linux); or run with --no-pin")
    rest = ",".join(str(c) for c in cpus[:-1])
    return (
        ["taskset", "-c", str(cpus[-1])],
        ["taskset", "-c", rest],
        f"the gateway pinned to CPU {cpus[-1]}, the mock and the load generator to CPU {rest}",
    )


def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    python = args.python
    gw_prefix, rest_prefix, placement = cpu_plan(args.pin)
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-stream-"))
    mock_port, gw_port = free_port(), free_port()
    mock_cmd = [python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{mock_port}", "--stamp"]
    mock_cmd += ["--ttft", str(args.ttft), "--tokens-per-s", str(args.rate)]
    mock_cmd += ["--reply-tokens", str(args.tokens), "--tokens-per-event", str(args.per_event)]
    mock = start("mock", [*rest_prefix, *mock_cmd], mock_port, tmp)
    config = tmp / "gateway.yaml"
    config.write_text(gateway_config(f"{mock.base}/v1", tmp))
    gateway: Any = None
    try:
        wait_http(mock.base + "/v1/models")
        gateway = start(
            "gateway",
            [
                *gw_prefix,
                *[python, "-m", "truckllm", "--config", str(config)],
                *["--listen", f"{HOST}:{gw_port}"],
            ],
            gw_port,
            tmp,
        )
        wait_http(gateway.base + "/healthz")
        assert gateway.proc is not None and mock.proc is not None
        pids = {"gateway": gateway.proc.pid, "mock": mock.proc.pid}
        targets = {
            "direct": mock.base + "/v1/chat/completions",
            "gateway": gateway.base + "/v1/chat/completions",
        }
        # Steady state: ``--streams`` open at once. A stream lasts ``duration``; twice as many
        # streams start evenly over twice that time, so from ``duration`` on as many start as
        # end (--streams / duration a second) and --streams are open.
        duration = args.ttft + args.tokens / args.rate
        total, ramp = 2 * args.streams, 2 * duration
        timeout = ramp + duration + 120
        # First a burst: --streams started within --burst seconds on a fresh gateway (every
        # upstream connection is opened then), reported apart. It also warms the pools.
        cold: dict[str, dict[str, Any]] = {}
        for name, url in targets.items() if args.burst > 0 else ():
            print(f"burst: {name}", file=sys.stderr)
            out = tmp / f"burst-{name}.json"
            cold[name] = summarise(
                [run_client(args, rest_prefix, url, out, timeout, args.streams, args.burst)]
            )
            time.sleep(1)
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
        cpu = {f"{t}/{p}": 0.0 for t in targets for p in (*pids, "machine")}
        accept_q: dict[str, list[int]] = {}  # --accept-queue: samples per target
        for rnd in range(args.rounds):
            order = ["direct", "gateway"] if rnd % 2 == 0 else ["gateway", "direct"]
            for name in order:
                print(f"round {rnd + 1}/{args.rounds}: {name}", file=sys.stderr)
                before = {p: cpu_seconds(pid) for p, pid in pids.items()}
                machine = machine_cpu_seconds()
                out = tmp / f"{name}.json"
                port = {"direct": mock_port, "gateway": gw_port}[name]
                with AcceptQueue({name: port}) if args.accept_queue else nullcontext() as aq:
                    result = run_client(args, rest_prefix, targets[name], out, timeout, total, ramp)
                if aq is not None:
                    accept_q.setdefault(name, []).extend(aq.samples[name])
                cpu[f"{name}/machine"] += machine_cpu_seconds() - machine
                for p, pid in pids.items():
                    cpu[f"{name}/{p}"] += cpu_seconds(pid) - before[p]
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
        gateway_cpu = cpu["gateway/gateway"]

        def busy(name: str, summary: dict[str, Any]) -> dict[str, float]:
            """Cores each process kept busy, on average, during the target's runs."""
            secs = max(summary["seconds"], 1e-9)
            return {
                "mock": cpu[f"{name}/mock"] / secs,
                "gateway": cpu[f"{name}/gateway"] / secs,
                "load generator": summary["client_cpu_s"] / secs,
            }

        def other(name: str, summary: dict[str, Any]) -> float:
            client: float = summary["client_cpu_s"]
            seconds: float = max(summary["seconds"], 1e-9)
            ours = cpu[f"{name}/mock"] + cpu[f"{name}/gateway"] + client
            return max(cpu[f"{name}/machine"] - ours, 0.0) / seconds

        return {
            "streams": args.streams,
            "rate": args.rate,
            "tokens": args.tokens,
            "per_event": args.per_event,
            "ttft": args.ttft,
            "total": total,
            "ramp": ramp,
            "burst": args.burst,
            "rounds": args.rounds,
            "client": args.client,
            "placement": placement,
            "direct": direct,
            "gateway": through,
            "cold": cold,
            "cores": {"direct": busy("direct", direct), "gateway": busy("gateway", through)},
            # Everything else the cores did meanwhile: other processes, the kernel's own threads
            # and interrupt work not charged to a process (part of it the runs' own loopback
            # traffic). A core taken by it is a core the three processes wait for.
            "other_cores": {
                "direct": other("direct", direct),
                "gateway": other("gateway", through),
            },
            "added_ttft_p50": through["ttft_p50"] - direct["ttft_p50"],
            "added_ttft_p99": through["ttft_p99"] - direct["ttft_p99"],
            "added_gap_p50": through["gap_p50"] - direct["gap_p50"],
            "added_gap_p99": through["gap_p99"] - direct["gap_p99"],
            "added_transit_p50": through["transit_p50"] - direct["transit_p50"],
            "added_transit_p99": through["transit_p99"] - direct["transit_p99"],
            "accept_queue": {n: AcceptQueue.summarise(v) for n, v in accept_q.items()},
            "gateway_cpu_s": gateway_cpu,
            "gateway_cpu_per_1k_chunks_ms": 1e6 * gateway_cpu / max(through["chunks"], 1),
            "gateway_peak_rss_mb": proc_status_kb(pids["gateway"], "VmHWM") / 1024,
            "gateway_rss_after_mb": proc_status_kb(pids["gateway"], "VmRSS") / 1024,
            # For the plot: one round's samples of each.
            "samples": {
                name: {
                    "ttft_ms": r[0]["ttft_ms"],
                    "gaps_ms": r[0]["gaps_ms"][:200000],
                    "transit_ms": r[0]["transit_ms"][:200000],
                }
                for name, r in runs.items()
            },
        }
    finally:
        for svc in (gateway, mock):
            if svc is not None:
                svc.stop()


def report(r: dict[str, Any]) -> str:
    d, g = r["direct"], r["gateway"]
    events = r["rate"] / r["per_event"]
    lines = [
        f"Streams of {r['tokens']} tokens at {r['rate']:g} tokens/s, {r['per_event']} token(s) "
        f"per event, first token after {r['ttft'] * 1000:.0f} ms. Steady state: {r['total']:,} "
        f"streams started evenly over {r['ramp']:g} s, so {r['streams']:,} are open at once "
        f"(peak measured: {d['peak_concurrency']:,} direct, {g['peak_concurrency']:,} through "
        f"the gateway), {r['streams'] * events:,.0f} events/s and "
        f"{r['streams'] / (r['ramp'] / 2):,.0f} new streams/s; {r['rounds']} round(s) per "
        "target. "
        + (
            f"Before that, a burst: {r['streams']:,} streams started within {r['burst']:g} s "
            "on a fresh gateway. "
            if r["cold"]
            else ""
        )
        + f"{r['client']} load generator in its own process; {r.get('placement', 'not pinned')}. "
        "*Transit*: from the mock's write of a chunk to the client's read of it (the "
        "mock stamps each chunk with the system-wide monotonic clock); *gap*: between two "
        "chunks of a stream at the client. Times in ms.\n",
        "| | completed | errors | TTFT p50 | TTFT p99 | transit p50 | transit p99 | "
        "gap p50 | gap p99 | gap max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, s: dict[str, Any]) -> str:
        return (
            f"| {label} | {s['completed']:,}/{s['streams']:,} | {s['errors']} | "
            f"{s['ttft_p50']:.1f} | {s['ttft_p99']:.1f} | {s['transit_p50']:.2f} | "
            f"{s['transit_p99']:.2f} | {s['gap_p50']:.2f} | {s['gap_p99']:.2f} | "
            f"{s['gap_max']:.1f} |"
        )

    lines.append(row("direct -> mock", d))
    lines.append(row("through the gateway", g))
    lines.append(
        f"| **added by the gateway** | | | **{r['added_ttft_p50']:+.1f}** | "
        f"**{r['added_ttft_p99']:+.1f}** | **{r['added_transit_p50']:+.2f}** | "
        f"**{r['added_transit_p99']:+.2f}** | {r['added_gap_p50']:+.2f} | "
        f"{r['added_gap_p99']:+.2f} | |"
    )
    if r["cold"]:
        lines.append(row("burst, direct", r["cold"]["direct"]))
        lines.append(row("burst, gateway opening every upstream connection", r["cold"]["gateway"]))
    cores = r["cores"]
    lines.append(
        f"\nGateway: {r['gateway_cpu_s']:.1f} CPU seconds for {g['chunks']:,} chunks "
        f"({r['gateway_cpu_per_1k_chunks_ms']:.0f} ms per 1,000 chunks), peak RSS "
        f"{r['gateway_peak_rss_mb']:.0f} MB (VmHWM), {r['gateway_rss_after_mb']:.0f} MB after. "
        "Cores kept busy on average (of 2): direct run "
        + ", ".join(f"{k} {v:.2f}" for k, v in cores["direct"].items())
        + "; gateway run "
        + ", ".join(f"{k} {v:.2f}" for k, v in cores["gateway"].items())
        + f" (total {sum(cores['gateway'].values()):.2f}). Everything else on the machine "
        f"(other processes, kernel threads, interrupt work) kept {r['other_cores']['direct']:.2f} "
        f"busy during the direct run and {r['other_cores']['gateway']:.2f} during the gateway run."
    )
    if r.get("accept_queue"):
        lines.append(
            "\nAccept queue (connections handshaken, not yet accepted; `--accept-queue`): "
            + "; ".join(
                f"{n} p50 {q['p50']}, p90 {q['p90']}, max {q['max']} ({q['samples']} samples)"
                for n, q in r["accept_queue"].items()
            )
        )
    for label, s in (("direct", d), ("gateway", g)):
        if s["error_samples"]:
            lines.append(f"\n{label} errors, first ones: {s['error_samples']}")
    return "\n".join(lines)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options this benchmark shares with ``stream_sweep.py``: how each run is made."""
    p.add_argument("--client", choices=("aiohttp", "raw"), default="raw")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--accept-queue",
        action="store_true",
        help="sample the listening sockets' accept queues with ss (bench/accept_queue.py)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway on a CPU of its own, the mock and the load generator on the others "
        "(default); --no-pin: all three share the CPUs",
    )
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode")
    c = sub.add_parser("client", help="(internal) the load generator")
    c.add_argument("--url", required=True)
    c.add_argument("--streams", type=int, required=True)
    c.add_argument("--ramp", type=float, default=1.0)
    c.add_argument("--key", default="sk-bench-1")
    c.add_argument("--out", required=True)
    c.add_argument("--client", choices=("aiohttp", "raw"), default="aiohttp")
    p.add_argument("--streams", type=int, default=1000, help="streams open at once")
    p.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    p.add_argument("--tokens", type=int, default=80, help="tokens per stream")
    p.add_argument("--ttft", type=float, default=0.1, help="the mock's time to first token")
    p.add_argument(
        "--burst",
        type=float,
        default=1.0,
        help="seconds over which the burst's streams start (0: no burst)",
    )
    p.add_argument("--per-event", type=int, default=1, help="tokens per SSE event")
    add_run_options(p)
    args = p.parse_args(argv)
    if args.mode == "client":
        return client_main(args)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
