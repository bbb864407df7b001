"""Memory and start-up of the gateway process.

Start-up: spawn ``truckllm --config ...`` and time it until the first chat completion answers
200 (polled every few milliseconds), ``--runs`` times, with Python's bytecode cache in a fresh
directory (``PYTHONPYCACHEPREFIX``): the first start compiles every module (a cold start), the
later ones find them compiled, as after ``pip install``. For context, the bare interpreter and the
imports alone, and the CPU the process used until its first answer. Memory: resident set (``VmRSS``) of a fresh gateway when idle, after ``wrk`` at 32
connections for ``--duration`` seconds, and its peak (``VmHWM``). The gateway runs with metrics
and a file request log on, against ``truckllm mock``.

    python bench/memory.py [--runs 5] [--duration 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    HOST,
    BenchError,
    Service,
    cpu_seconds,
    default_python,
    free_port,
    gateway_config,
    proc_status_kb,
    run_and_report,
    start,
    start_mock,
    wait_http,
)
from overhead import REQUEST_BODY, ROUTE, run_wrk, write_lua


def first_200(gw: Service, deadline: float) -> float:
    """Poll until a chat completion answers 200; the time it did (perf_counter)."""
    body = REQUEST_BODY.encode()
    port = gw.port
    while time.perf_counter() < deadline:
        if gw.proc is not None and gw.proc.poll() is not None:
            raise BenchError(f"the gateway exited during start-up:\n{gw.log_tail()}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("POST", ROUTE, body=body, headers={"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return time.perf_counter()
        except OSError:
            time.sleep(0.003)
        finally:
            conn.close()
    raise BenchError(f"the gateway did not answer within the deadline:\n{gw.log_tail()}")


def timed(cmd: list[str], runs: int) -> float:
    """Median seconds ``cmd`` takes to run."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    python = args.python
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-memory-"))
    mock = start_mock(python, tmp)
    config = tmp / "gateway.yaml"
    config.write_text(gateway_config(f"{mock.base}/v1", tmp))
    # The gateways compile into (then read from) a bytecode cache of their own, whatever the
    # environment says (PYTHONDONTWRITEBYTECODE would make every start compile everything).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    startups: list[float] = []
    startup_cpu: list[float] = []
    idle_rss: list[int] = []
    try:
        wait_http(mock.base + "/v1/models")
        for i in range(args.runs + 1):  # the first one is the cold start
            port = free_port()
            cmd = [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"]
            t0 = time.perf_counter()
            gw = start(f"gateway-{i}", cmd, port, tmp)
            try:
                startups.append(first_200(gw, t0 + 30) - t0)
                assert gw.proc is not None
                startup_cpu.append(cpu_seconds(gw.proc.pid))
                time.sleep(args.idle)
                idle_rss.append(proc_status_kb(gw.proc.pid, "VmRSS"))
            finally:
                gw.stop()
        interpreter = timed([python, "-c", "pass"], args.runs)
        imports = timed(
            [python, "-c", "import truckllm.cli, truckllm.api, truckllm.runner"], args.runs
        )
        # Under load: a fresh process, wrk at 32 connections.
        port = free_port()
        gw = start(
            "gateway-load",
            [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"],
            port,
            tmp,
        )
        try:
            wait_http(gw.base + "/healthz")
            assert gw.proc is not None
            pid = gw.proc.pid
            script = tmp / "proxy.lua"
            write_lua(script, {"Content-Type": "application/json"})
            wrk = shutil.which("wrk") or "wrk"
            result = run_wrk(wrk, gw.base + ROUTE, script, 32, args.duration)
            loaded_rss = proc_status_kb(pid, "VmRSS")
            peak = proc_status_kb(pid, "VmHWM")
            time.sleep(args.idle)
            after_rss = proc_status_kb(pid, "VmRSS")
        finally:
            gw.stop()
    finally:
        mock.stop()
    cold, warm = startups[0], startups[1:]
    return {
        "runs": args.runs,
        "startup_ms": [1e3 * s for s in warm],
        "startup_median_ms": 1e3 * statistics.median(warm),
        "startup_max_ms": 1e3 * max(warm),
        "startup_cpu_ms": 1e3 * statistics.median(startup_cpu[1:]),
        "cold_startup_ms": 1e3 * cold,
        "cold_startup_cpu_ms": 1e3 * startup_cpu[0],
        "interpreter_ms": 1e3 * interpreter,
        "imports_ms": 1e3 * imports,
        "idle_rss_mb": statistics.median(idle_rss) / 1024,
        "load_requests": result.requests,
        "load_rps": result.rps,
        "load_seconds": args.duration,
        "loaded_rss_mb": loaded_rss / 1024,
        "peak_rss_mb": peak / 1024,
        "after_load_rss_mb": after_rss / 1024,
    }


def report(r: dict[str, Any]) -> str:
    ok_start = "met" if r["startup_max_ms"] < 1000 else "**missed**"
    ok_idle = "met" if r["idle_rss_mb"] <= 60 else "**missed**"
    return "\n".join(
        [
            "| | measured | target |",
            "|---|---:|---|",
            f"| start-up to the first 200 (median of {r['runs']}, bytecode cached) | "
            f"{r['startup_median_ms']:.0f} ms (max {r['startup_max_ms']:.0f} ms; "
            f"{r['startup_cpu_ms']:.0f} ms of CPU) | < 1,000 ms: {ok_start} |",
            f"| the first start of all (compiles every module) | {r['cold_startup_ms']:.0f} ms "
            f"({r['cold_startup_cpu_ms']:.0f} ms of CPU) | |",
            f"| of which: bare interpreter | {r['interpreter_ms']:.0f} ms | |",
            f"| of which: interpreter + imports | {r['imports_ms']:.0f} ms | |",
            f"| idle RSS after start-up | {r['idle_rss_mb']:.1f} MB | <= 60 MB: {ok_idle} |",
            f"| RSS after {r['load_requests']:,} requests ({r['load_seconds']} s of wrk, "
            f"32 connections, {r['load_rps']:,.0f} req/s) | {r['loaded_rss_mb']:.1f} MB | |",
            f"| peak RSS (VmHWM) during that load | {r['peak_rss_mb']:.1f} MB | |",
            f"| RSS idle again after the load | {r['after_load_rss_mb']:.1f} MB | |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds of load")
    p.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS")
    p.add_argument("--python", default=default_python())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
