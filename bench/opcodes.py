"""Python bytecodes the gateway executes per request and per relayed read, by function: a count,
not a time, so the neighbours on a shared machine do not move it.

The gateway runs in a process of its own under a tracer (``sys.settrace`` with opcode events,
which slows it down some thirtyfold: the counts are what matters) against two ``truckllm mock``
upstreams, one answering 10 tokens and one 90, streamed one token an event. The tracer's counts
are taken (``SIGUSR1``) after a warm-up and after each phase:

* ``requests``: N chat completions over 10 keep-alive connections, then 2N more: a request's
  bytecodes are the difference over N;
* ``streams``: N streams of 10 tokens, then N of 90, each on a new connection: a relayed read's
  bytecodes are the difference over the reads it added (counted at the client, as chunks of the
  chunked answer), and a stream's start is the rest of a short stream's count.

A count shows where the Python work is, not what it costs: a change that trades bytecodes for
calls into C (``map``, ``join``) can be slower, as a response head built that way was (2.0 us
against 1.1 us for the loop it replaced). Time a change too before keeping it.

Usage::

    .venv/bin/python bench/opcodes.py [--requests 200] [--streams 50] [--top 25] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    REPO_DIR,
    BenchError,
    default_python,
    free_port,
    run_and_report,
    start,
    wait_http,
)

# Runs the gateway under an opcode counter; SIGUSR1 writes the counts so far to DUMP.N.
TRACED = """
import collections, os, pickle, runpy, signal, sys, threading
counts = collections.Counter()
def local(frame, event, arg):
    if event == "opcode":
        co = frame.f_code
        counts[(co.co_filename, co.co_firstlineno, co.co_name)] += 1
    return local
def tracer(frame, event, arg):
    if event == "call":
        frame.f_trace_opcodes = True
        return local
    return None
dumps = [0]
def dump(sig, frame):
    dumps[0] += 1
    with open(f"{os.environ['TRUCKLLM_OPCODES']}.{dumps[0]}", "wb") as f:
        pickle.dump(dict(counts), f)
    counts.clear()
signal.signal(signal.SIGUSR1, dump)
sys.settrace(tracer)
threading.settrace(tracer)
sys.argv = ["truckllm", *sys.argv[1:]]
runpy.run_module("truckllm", run_name="__main__")
"""

SHORT, LONG = 10, 90  # tokens of the two mocks' answers
CHAT = b'{"model":"%s","stream":%s,"messages":[{"role":"user","content":"hi"}]}'


def request_bytes(port: int, model: str, stream: bool) -> bytes:
    body = CHAT % (model.encode(), b"true" if stream else b"false")
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (HOST.encode(), port, len(body), body)
    )


async def keep_alive(port: int, model: str, n: int) -> None:
    """``n`` requests one after another on one connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    req = request_bytes(port, model, False)
    for _ in range(n):
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head[:16]:
            raise BenchError(f"gateway answered {head[:200]!r}")
        found = re.search(rb"content-length: (\d+)", head, re.I)
        await reader.readexactly(int(found.group(1)) if found else 0)
    writer.close()


async def one_stream(port: int, model: str) -> int:
    """One stream on a new connection; the chunks of its chunked answer (one per upstream read
    the gateway relayed, the end included)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request_bytes(port, model, True))
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = await reader.read(65536)
        if not chunk:
            raise BenchError("the gateway closed a stream early")
        data += chunk
    writer.close()
    if b"[DONE]" not in data:
        raise BenchError(f"a stream without [DONE]: {data[:300]!r}")
    return data.count(b"\n\n\r\n")


async def streams(port: int, model: str, n: int, at_once: int = 10) -> int:
    gate = asyncio.Semaphore(at_once)
    reads = 0

    async def run() -> None:
        nonlocal reads
        async with gate:
            got = await one_stream(port, model)
        reads += got

    await asyncio.gather(*(run() for _ in range(n)))
    return reads


def counts_after(pid: int, dump: Path, number: int) -> dict[Any, int]:
    os.kill(pid, signal.SIGUSR1)
    path = Path(f"{dump}.{number}")
    deadline = time.monotonic() + 30
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise BenchError("the traced gateway wrote no counts")
        time.sleep(0.05)
    time.sleep(0.2)  # the write completes
    with path.open("rb") as f:
        counts: dict[Any, int] = pickle.load(f)
    return counts


def name(key: tuple[str, int, str]) -> str:
    path = key[0]
    src = str(REPO_DIR / "src" / "truckllm") + "/"
    path = path.replace(src, "") if path.startswith(src) else Path(path).name
    return f"{path}:{key[1]} {key[2]}"


def per_unit(a: dict[Any, int], b: dict[Any, int], units: int) -> list[tuple[float, str]]:
    keys = set(a) | set(b)
    rows = [((b.get(k, 0) - a.get(k, 0)) / units, name(k)) for k in keys]
    return sorted(rows, reverse=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-opcodes-"))
    py = args.python
    mocks = {}
    for model, tokens in (("short", SHORT), ("long", LONG)):
        port = free_port()
        cmd = [py, "-m", "truckllm", "mock", "--listen", f"{HOST}:{port}", "--ttft", "0"]
        cmd += ["--tokens-per-s", "20", "--reply-tokens", str(tokens)]
        mocks[model] = start(model, cmd, port, tmp)
    gateway = None
    try:
        for mock in mocks.values():
            wait_http(mock.base + "/v1/models")
        config = "providers:\n" + "".join(
            f"  - id: {m}\n    type: openai\n    base_url: {s.base}/v1\n    models: [{m}]\n"
            f"    keys: [{{id: {m}-key, secret: sk-{m}}}]\n"
            for m, s in mocks.items()
        )
        (tmp / "gateway.yaml").write_text(config + "server: {timeouts: {read: 600}}\n")
        port, dump = free_port(), tmp / "counts"
        os.environ["TRUCKLLM_OPCODES"] = str(dump)
        (tmp / "traced.py").write_text(TRACED)
        cmd = [py, str(tmp / "traced.py"), "--config", str(tmp / "gateway.yaml"), "--listen"]
        gateway = start("gateway", [*cmd, f"{HOST}:{port}"], port, tmp)
        wait_http(gateway.base + "/healthz", 120)
        assert gateway.proc is not None
        pid, n, s = gateway.proc.pid, args.requests, args.streams

        async def drive() -> tuple[list[dict[Any, int]], int, int]:
            await asyncio.gather(*(keep_alive(port, "short", 10) for _ in range(10)))
            await streams(port, "short", 10)
            await streams(port, "long", 10)
            snaps = [counts_after(pid, dump, 1)]
            await asyncio.gather(*(keep_alive(port, "short", n // 10) for _ in range(10)))
            snaps.append(counts_after(pid, dump, 2))
            await asyncio.gather(*(keep_alive(port, "short", 2 * n // 10) for _ in range(10)))
            snaps.append(counts_after(pid, dump, 3))
            short_reads = await streams(port, "short", s)
            snaps.append(counts_after(pid, dump, 4))
            long_reads = await streams(port, "long", s)
            snaps.append(counts_after(pid, dump, 5))
            return snaps, short_reads, long_reads

        snaps, short_reads, long_reads = asyncio.run(drive())
    finally:
        if gateway is not None:
            gateway.stop()
        for mock in mocks.values():
            mock.stop()
    _, req_a, req_b, short, long = snaps
    reads = long_reads - short_reads
    per_read = per_unit(short, long, reads)
    read_total = sum(v for v, _ in per_read)
    stream_total = sum(short.values()) / s - short_reads / s * read_total
    per_request = per_unit(req_a, req_b, n)
    start_rows = [
        (v_short / s - short_reads / s * v_read, k)
        for (v_read, k), v_short in (
            (row, sum(c for key, c in short.items() if name(key) == row[1])) for row in per_read
        )
    ]
    return {
        "requests": n,
        "streams": s,
        "reads": reads,
        "per_request": sum(v for v, _ in per_request),
        "per_read": read_total,
        "per_stream_start": stream_total,
        "top_request": per_request[: args.top],
        "top_read": per_read[: args.top],
        "top_stream_start": sorted(start_rows, reverse=True)[: args.top],
        "command": " ".join(sys.argv),
    }


def report(r: dict[str, Any]) -> str:
    out = [
        f"`{r['command']}`: Python bytecodes the gateway executed (a count: the machine's load "
        "does not move it).",
        "",
        "| | bytecodes |",
        "|---|---:|",
        f"| a chat completion (keep-alive, {r['requests']} measured) | {r['per_request']:,.0f} |",
        f"| a relayed read of a stream ({r['reads']:,} measured) | {r['per_read']:,.0f} |",
        f"| a stream's start and end, its reads apart (new connection) | "
        f"{r['per_stream_start']:,.0f} |",
    ]
    for title, key in (
        ("a chat completion", "top_request"),
        ("a relayed read", "top_read"),
        ("a stream's start and end", "top_stream_start"),
    ):
        out += ["", f"Per {title}, by function:", "", "| bytecodes | function |", "|---:|---|"]
        out += [f"| {v:,.1f} | `{k}` |" for v, k in r[key]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=200, help="a multiple of 10")
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    return run_and_report(measure, report, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
