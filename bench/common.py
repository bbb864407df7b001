"""Helpers the benchmarks share: process figures from /proc, percentiles, the gateway config
they start from, and starting the mock and gateway processes (via ``overhead.Service``)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from overhead import (
    CLK_TCK,
    HOST,
    REPO_DIR,
    BenchError,
    Service,
    cpu_seconds,
    default_python,
    free_port,
)

__all__ = [
    "HOST",
    "REPO_DIR",
    "BenchError",
    "Service",
    "cpu_seconds",
    "default_python",
    "free_port",
    "gateway_config",
    "machine_cpu_seconds",
    "pct",
    "proc_status_kb",
    "start",
    "start_mock",
    "tree_pids",
    "write_json",
]


GATEWAY_CONFIG = """\
providers:
  - id: mock
    type: openai
    base_url: {upstream}
    models: [mock-model]
    keys:
      - {{id: k1, secret: sk-bench-1}}
      - {{id: k2, secret: sk-bench-2}}
server:
  workers: {workers}
  shutdown_timeout: 5
  timeouts: {{read: 30}}
"""
TELEMETRY = """\
metrics: {{enabled: true, path: /metrics}}
logging:
  sinks:
    - {{type: file, path: {log}, max_bytes: 67108864, keep: 1}}
"""


def gateway_config(upstream: str, tmp: Path, workers: int = 1, telemetry: bool = True) -> str:
    """The benchmarks' gateway: two keys on the mock, metrics and a file request log on (what
    operators run), ``workers`` processes."""
    text = GATEWAY_CONFIG.format(upstream=upstream, workers=workers)
    if telemetry:
        text += TELEMETRY.format(log=tmp / "requests.jsonl")
    else:
        text += "metrics: {enabled: false}\n"
    return text


def start(name: str, cmd: list[str], port: int, tmp: Path) -> Service:
    svc = Service(name, cmd, port, tmp / f"{name}.log")
    print(f"starting {name}: {shlex.join(cmd)}", file=sys.stderr)
    svc.start()
    return svc


def start_mock(python: str, tmp: Path) -> Service:
    """``truckllm mock`` with its defaults, in a process of its own, on a free port."""
    port = free_port()
    return start(
        "mock", [python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{port}"], port, tmp
    )


def start_gateway(python: str, config: Path, tmp: Path, name: str = "gateway") -> Service:
    """The gateway on ``config`` in a process of its own, on a free port, answering /healthz."""
    port = free_port()
    cmd = [python, "-m", "truckllm", "--config", str(config), "--listen", f"{HOST}:{port}"]
    gateway = start(name, cmd, port, tmp)
    wait_http(gateway.base + "/healthz")
    return gateway


def proc_status_kb(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``); 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy, all cores (``/proc/stat``: everything but
    idle and iowait; guest time is inside user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its children (the gateway's workers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(tree_pids(int(child)))
    return out


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers at all."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if hasattr(exc, "code"):
                return  # an HTTP error status: it is up
            if time.monotonic() > deadline:
                raise BenchError(f"{url} did not come up: {exc}") from exc
            time.sleep(0.02)


__all__ += ["wait_http"]


def run_and_report(
    bench: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    args: argparse.Namespace,
) -> int:
    """Run one benchmark, print its Markdown report, save its JSON (``--json``); exit status."""
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    write_json(args.json, result)
    return 0
