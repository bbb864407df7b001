"""Tracing's cost: the gateway with ``tracing`` off and on, in the same run.

Starts ``truckllm mock``, an OTLP/HTTP collector on loopback (in this process: it decodes every
``ExportTraceServiceRequest`` and counts the spans), and gateways that differ only in their
``tracing`` section: off; on with every request traced (``sample_ratio: 1``, the worst case: two
spans a request exported); on at ``sample_ratio: 0.1``. Each is driven with ``wrk`` at 1
connection (latency) and 32 (throughput), the target order alternating per round. Reported per
gateway: requests/s at 32 connections, p50 at 1 connection and the difference to tracing off,
the gateway's CPU per request (all its threads; the export runs on its event loop), and the
spans the collector received.

On a machine shared with other work those figures move by more than tracing costs, so the same
three configurations also run in this process (``--app-requests``, as ``bench/app_path.py``: the
app called as an ASGI app, its provider answering at once), and the event loop thread's CPU is
measured per request, the export of every span included (each round waits for the queue to
empty).

    python bench/otel.py [--duration 10] [--rounds 2] [--app-requests 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import orjson
from app_path import canned_registry
from common import (
    HOST,
    Service,
    cpu_seconds,
    default_python,
    free_port,
    gateway_config,
    run_and_report,
    start,
    start_mock,
    wait_http,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from overhead import CLK_TCK, REQUEST_BODY, ROUTE, Cell, run_wrk, write_lua

from truckllm.api import App
from truckllm.config import parse_config
from truckllm.telemetry.otel import OtlpExporter

CONNS = (1, 32)
VARIANTS = {
    "tracing off": "",
    "tracing on, every request": "sample_ratio: 1.0",
    "tracing on, 10% sampled": "sample_ratio: 0.1",
}


class Collector:
    """Counts the spans of every OTLP/HTTP export it receives."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(data)
                n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                with lock:
                    collector.spans += n
                    collector.exports += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


CANNED = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "mock-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
    }
)


async def app_cost(args: argparse.Namespace, collector: Collector, tmp: Path) -> dict[str, float]:
    """µs of the event loop thread's CPU per request, by configuration, in this process."""
    logging.getLogger("truckllm.api").setLevel(logging.ERROR)  # no client keys: it would say so
    apps: dict[str, App] = {}
    for label, tracing in VARIANTS.items():
        text = gateway_config("http://127.0.0.1:9/v1", tmp, telemetry=False)
        if tracing:
            text += f"tracing: {{endpoint: '{collector.url}', max_queue: 1000000, {tracing}}}\n"
        apps[label] = App(parse_config(text, label), registry=canned_registry(CANNED))
    payload = REQUEST_BODY.encode()
    headers = [(b"host", b"x"), (b"content-type", b"application/json")]
    request = {"type": "http.request", "body": payload, "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async def run(app: App, n: int) -> float:
        scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": headers}
        t0 = time.thread_time()
        for i in range(n):
            await app({**scope, "query_string": b"", "extensions": {}}, receive, send)
            if i % 64 == 0:
                await asyncio.sleep(0)  # the exporter's turn, as between real requests
        tracer = app.telemetry.tracer
        for _ in range(1200):  # until the exporter has sent everything (a minute at most)
            if tracer is None or not cast(OtlpExporter, tracer.exporter).queued:
                break
            await asyncio.sleep(0.05)  # (a shorter poll would cost CPU of its own)
        return (time.thread_time() - t0) / n * 1e6

    cpu: dict[str, list[float]] = {label: [] for label in apps}
    for app in apps.values():
        await app.start()
    try:
        for app in apps.values():
            await run(app, min(args.app_requests, 2000))  # warm up
        labels = list(apps)
        for rnd in range(args.rounds):
            for label in labels if rnd % 2 == 0 else reversed(labels):
                cpu[label].append(await run(apps[label], args.app_requests))
    finally:
        for app in apps.values():
            await app.close()
    return {label: statistics.median(values) for label, values in cpu.items()}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    python = args.python
    wrk = shutil.which("wrk") or "wrk"
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-otel-"))
    collector = Collector()
    mock = start_mock(python, tmp)
    targets: dict[str, Service] = {}
    try:
        wait_http(mock.base + "/v1/models")
        for i, (label, tracing) in enumerate(VARIANTS.items()):
            text = gateway_config(f"{mock.base}/v1", tmp, telemetry=False)
            if tracing:
                text += f"tracing: {{endpoint: '{collector.url}', {tracing}}}\n"
            config = tmp / f"gateway-{i}.yaml"
            config.write_text(text)
            port = free_port()
            cmd = [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"]
            targets[label] = start(f"gateway-{i}", cmd, port, tmp)
        for svc in targets.values():
            wait_http(svc.base + "/healthz")
            svc.wait_ready({"Content-Type": "application/json"})
        script = tmp / "proxy.lua"
        write_lua(script, {"Content-Type": "application/json"})
        out = _drive(args, wrk, script, targets, collector)
        for svc in targets.values():
            svc.stop()
        if args.app_requests:
            print("in-process: the app path's CPU per request", file=sys.stderr)
            out["app_cpu_us"] = asyncio.run(app_cost(args, collector, tmp))
        return out
    finally:
        for svc in targets.values():
            svc.stop()
        mock.stop()
        collector.close()


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process's main thread (the event loop) and of all its other threads
    (the loop's helpers: DNS, the garbage collector's...)."""
    main = other = 0.0
    for tid in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (tid / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if int(tid.name) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


def _drive(
    args: argparse.Namespace,
    wrk: str,
    script: Path,
    targets: dict[str, Service],
    collector: Collector,
) -> dict[str, Any]:
    cells = {(label, n): Cell() for label in targets for n in CONNS}
    threads = {label: [0.0, 0.0] for label in targets}
    seconds = max(1, round(args.duration / args.rounds))
    labels = list(targets)
    spans: dict[str, int] = dict.fromkeys(labels, 0)
    for rnd in range(args.rounds):
        for label in labels if rnd % 2 == 0 else reversed(labels):
            svc = targets[label]
            print(f"round {rnd + 1}/{args.rounds}: {label}", file=sys.stderr)
            run_wrk(wrk, svc.base + ROUTE, script, 32, args.warmup)
            for n in CONNS:
                pid = _pid(svc)
                before, spans_before = cpu_seconds(pid), collector.spans
                main, other = thread_cpu(pid)
                res = run_wrk(wrk, svc.base + ROUTE, script, n, seconds)
                cells[(label, n)].runs.append(res)
                cells[(label, n)].cpu_s += cpu_seconds(pid) - before
                main_after, other_after = thread_cpu(pid)
                threads[label][0] += main_after - main
                threads[label][1] += other_after - other
                spans[label] += collector.spans - spans_before
                print(f"  c={n:<3} {res.rps:>9,.0f} req/s errors={res.errors}", file=sys.stderr)
    off = labels[0]
    out: dict[str, Any] = {
        "duration": args.duration,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "targets": {},
    }
    for label in labels:
        one, many = cells[(label, 1)], cells[(label, 32)]
        requests = sum(r.requests for c in (one, many) for r in c.runs)
        out["targets"][label] = {
            "rps_32": many.rps,
            "rps_32_vs_off": many.rps / cells[(off, 32)].rps,
            "p50_1_ms": one.pct("50") / 1e3,
            "p50_1_added_ms": (one.pct("50") - cells[(off, 1)].pct("50")) / 1e3,
            "p99_1_ms": one.pct("99") / 1e3,
            "cpu_us_per_request": 1e6 * (one.cpu_s + many.cpu_s) / max(requests, 1),
            "loop_cpu_us_per_request": 1e6 * threads[label][0] / max(requests, 1),
            "other_threads_cpu_us_per_request": 1e6 * threads[label][1] / max(requests, 1),
            "requests": requests,
            "spans_received": spans[label],
            "errors": one.errors + many.errors,
        }
    return out


def _pid(svc: Service) -> int:
    assert svc.proc is not None
    return svc.proc.pid


def report(r: dict[str, Any]) -> str:
    lines = [
        "| gateway | 32 conns req/s | vs off | 1 conn p50 ms | added p50 ms | 1 conn p99 ms | "
        "CPU µs per request: all / event loop / other threads | "
        "spans received / requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, t in r["targets"].items():
        lines.append(
            f"| {label} | {t['rps_32']:,.0f} | {t['rps_32_vs_off']:.2f} | {t['p50_1_ms']:.3f} | "
            f"{t['p50_1_added_ms']:+.3f} | {t['p99_1_ms']:.3f} | {t['cpu_us_per_request']:.0f} / "
            f"{t['loop_cpu_us_per_request']:.0f} / {t['other_threads_cpu_us_per_request']:.0f} | "
            f"{t['spans_received']:,} / {t['requests']:,} |"
        )
    lines.append(
        f"\nLoad average of the machine at the end: {', '.join(f'{x:.1f}' for x in r['load_average'])}."
        "\nSpans still queued in a gateway when its cell ends are counted in the next one; "
        "every traced request exports two spans (the request and its one attempt)."
    )
    app = r.get("app_cpu_us")
    if app:
        off = next(iter(app.values()))
        lines += [
            "",
            "In this process, the app called back to back (its provider answering at once), the "
            "event loop thread's CPU per request, spans built, encoded and sent included:",
            "",
            "| gateway | CPU µs per request | added by tracing |",
            "|---|---:|---:|",
            *(f"| {k} | {v:.1f} | {v - off:+.1f} |" for k, v in app.items()),
        ]
    errors = {k: t["errors"] for k, t in r["targets"].items() if t["errors"]}
    if errors:
        lines.append(f"\nErrors: {errors}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10, help="measured seconds per cell")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--app-requests", type=int, default=20000, help="per round in-process (0: skip)")
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
