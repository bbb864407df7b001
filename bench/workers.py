"""Multi-process: ``server.workers: 2`` against one process, on one port, in the same run.

Starts an upstream (nginx answering a fixed chat completion, as ``peers.py`` does, so that one
gateway process is what limits; ``--upstream mock`` for ``truckllm mock``) and gateways with
``server.workers`` 1 and 2 (and, with ``--redis`` or
when ``redis-server`` is installed, 2 workers with an rpm limit per key high enough never to
bind, counted by each worker on its own and then shared through Redis:
``storage.runtime.type: redis``, so every request spends a shared lease; the two differ only in
where the limit is counted, which is the cost of sharing it), then drives each with ``wrk`` at
32 and 128 connections, the target order alternating per round. Reported: requests/s, latency
percentiles, the ratio to one process, and how the CPU time and memory split over the worker
processes.

    python bench/workers.py [--duration 10] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    HOST,
    Service,
    cpu_seconds,
    default_python,
    free_port,
    gateway_config,
    proc_status_kb,
    run_and_report,
    start,
    start_mock,
    tree_pids,
    wait_http,
)
from overhead import ROUTE, Cell, run_wrk, start_redis, write_lua
from peers import nginx

SHARED_RPM = 10_000_000


def target_config(
    upstream: str, tmp: Path, workers: int, limits: bool, redis_port: int | None
) -> str:
    # No file request log: every worker would append to (and rotate) the same file.
    text = gateway_config(upstream, tmp, workers=workers, telemetry=False)
    if limits:
        text = text.replace(
            "secret: sk-bench-1}", f"secret: sk-bench-1, limits: {{rpm: {SHARED_RPM}}}}}"
        ).replace("secret: sk-bench-2}", f"secret: sk-bench-2, limits: {{rpm: {SHARED_RPM}}}}}")
    if redis_port is not None:
        text += f"storage: {{runtime: {{type: redis, url: 'redis://{HOST}:{redis_port}/0'}}}}\n"
    return text


LOCAL = "2 workers, the same limits counted per worker"
SHARED = "2 workers, limits shared in Redis"


def bench(args: argparse.Namespace) -> dict[str, Any]:
    python = args.python
    wrk: list[str] = [shutil.which("wrk") or "wrk"]
    if args.pin_wrk:
        wrk = ["taskset", "-c", args.pin_wrk, *wrk]
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-workers-"))
    upstreams = contextlib.ExitStack()
    if args.upstream == "nginx":
        # A fixed answer from nginx: one gateway process is the ceiling, as in peers.py; the
        # mock, a Python process of its own, takes a core's share that the workers would use.
        upstream = upstreams.enter_context(nginx(tmp)).rsplit("/chat/completions", 1)[0]
    else:
        mock = start_mock(python, tmp)
        upstreams.callback(mock.stop)
        upstream = f"{mock.base}/v1"
    redis = None
    use_redis = args.redis if args.redis is not None else shutil.which("redis-server") is not None
    targets: dict[str, Service] = {}
    try:
        if args.upstream == "mock":
            wait_http(upstream + "/models")
        redis_port = free_port() if use_redis else None
        if redis_port is not None:
            redis = start_redis(redis_port, tmp / "redis.log")
        specs: list[tuple[str, int, bool, int | None]] = [
            ("1 process", 1, False, None),
            ("2 workers", 2, False, None),
        ]
        if redis_port is not None:
            specs.append((LOCAL, 2, True, None))
            specs.append((SHARED, 2, True, redis_port))
        for label, workers, limits, rport in specs:
            config = tmp / f"gateway-{len(targets)}.yaml"
            config.write_text(target_config(upstream, tmp, workers, limits, rport))
            port = free_port()
            cmd = [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"]
            targets[label] = start(f"gateway-{len(targets)}", cmd, port, tmp)
        for svc in targets.values():
            wait_http(svc.base + "/healthz")
            svc.wait_ready({"Content-Type": "application/json"})
        script = tmp / "proxy.lua"
        write_lua(script, {"Content-Type": "application/json"})
        conns = (32, 128)
        cells = {(label, n): Cell() for label in targets for n in conns}
        cpu = {label: [0.0] * len(tree_pids(_pid(svc))) for label, svc in targets.items()}
        seconds = max(1, round(args.duration / args.rounds))
        labels = list(targets)
        for rnd in range(args.rounds):
            for label in labels if rnd % 2 == 0 else reversed(labels):
                svc = targets[label]
                print(f"round {rnd + 1}/{args.rounds}: {label}", file=sys.stderr)
                run_wrk(wrk, svc.base + ROUTE, script, 32, args.warmup)
                pids = tree_pids(_pid(svc))
                before = [cpu_seconds(p) for p in pids]
                for n in conns:
                    res = run_wrk(wrk, svc.base + ROUTE, script, n, seconds)
                    cells[(label, n)].runs.append(res)
                    print(f"  c={n:<3} {res.rps:>9,.0f} req/s errors={res.errors}", file=sys.stderr)
                used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
                cpu[label] = [a + b for a, b in zip(cpu[label], used, strict=False)]
        out: dict[str, Any] = {
            "upstream": args.upstream,
            "duration": args.duration,
            "rounds": args.rounds,
            "pin_wrk": args.pin_wrk,
            "targets": {},
        }
        one = labels[0]
        for label, svc in targets.items():
            pids = tree_pids(_pid(svc))
            out["targets"][label] = {
                "processes": len(pids),
                "rss_mb": sum(proc_status_kb(p, "VmRSS") for p in pids) / 1024,
                "cpu_s": cpu[label],
                "cpu_ms_per_1k": 1e6
                * sum(cpu[label])
                / max(sum(r.requests for n in conns for r in cells[(label, n)].runs), 1),
                **{
                    str(n): {
                        "rps": cells[(label, n)].rps,
                        "p50": cells[(label, n)].pct("50") / 1e3,
                        "p99": cells[(label, n)].pct("99") / 1e3,
                        "errors": cells[(label, n)].errors,
                        "vs_one": cells[(label, n)].rps / cells[(one, n)].rps,
                    }
                    for n in conns
                },
            }
        return out
    finally:
        for svc in targets.values():
            svc.stop()
        upstreams.close()
        if redis is not None:
            redis.kill()
            redis.wait(5)


def _pid(svc: Service) -> int:
    assert svc.proc is not None
    return svc.proc.pid


def report(r: dict[str, Any]) -> str:
    lines = [
        "| gateway | 32 conns req/s | vs 1 process | p50 / p99 ms | 128 conns req/s | "
        "vs 1 process | p50 / p99 ms | CPU s per process (supervisor first) | "
        "CPU per 1,000 requests | RSS, all processes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, t in r["targets"].items():
        a, b = t["32"], t["128"]
        lines.append(
            f"| {label} | {a['rps']:,.0f} | {a['vs_one']:.2f} | {a['p50']:.2f} / {a['p99']:.2f} | "
            f"{b['rps']:,.0f} | {b['vs_one']:.2f} | {b['p50']:.2f} / {b['p99']:.2f} | "
            f"{' / '.join(f'{c:.1f}' for c in t['cpu_s'])} | {t['cpu_ms_per_1k']:.0f} ms | "
            f"{t['rss_mb']:.0f} MB |"
        )
    lines.append(
        "\nLimits, cooldowns and usage are shared between the workers only in the Redis row "
        "(`storage.runtime.type: redis`); in the others each worker counts on its own. Upstream: "
        + (
            "nginx answering a fixed chat completion"
            if r.get("upstream") == "nginx"
            else "truckllm mock"
        )
        + ". wrk: "
        + (f"pinned to CPU {r['pin_wrk']} (`taskset`)." if r.get("pin_wrk") else "not pinned.")
    )
    local, shared = r["targets"].get(LOCAL), r["targets"].get(SHARED)
    if local and shared:
        lines.append(
            "\nThe cost of sharing the limits (Redis row against the row with the same limits "
            f"counted per worker): {shared['32']['rps'] / local['32']['rps']:.2f}x the requests/s "
            f"at 32 connections, {shared['128']['rps'] / local['128']['rps']:.2f}x at 128."
        )
    errors = {k: (t["32"]["errors"], t["128"]["errors"]) for k, t in r["targets"].items()}
    if any(sum(e) for e in errors.values()):
        lines.append(f"\nErrors (32, 128 connections): {errors}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10, help="measured seconds per cell")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--redis",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also 2 workers sharing limits through Redis (default: if redis-server exists)",
    )
    p.add_argument(
        "--pin-wrk",
        metavar="CPUS",
        help="run the load generator under taskset -c CPUS (its own core; the gateways and the "
        "mock are not pinned)",
    )
    p.add_argument("--python", default=default_python())
    p.add_argument(
        "--upstream",
        choices=["nginx", "mock"],
        default="nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "mock",
        help="what answers the gateways: nginx's fixed completion (default where installed, as "
        "in peers.py) or truckllm mock",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    return run_and_report(bench, report, args)


if __name__ == "__main__":
    sys.exit(main())
