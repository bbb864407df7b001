"""Measure the latency/throughput overhead of the TruckLLM gateway.

Starts three local processes on free loopback ports:

* the TruckLLM mock upstream (``truckllm mock``),
* a bare passthrough proxy (``bench/baseline_passthrough.py``), the
  reference for what a perfect Python gateway would cost,
* the TruckLLM gateway (``truckllm --config ...``) pointed at the mock,

then drives each target (direct-to-mock, through-baseline, through-gateway)
with ``wrk`` at 1 connection (latency) and 32 connections (throughput) and
prints a Markdown report.  The run is split into rounds whose target order
alternates (forward, reverse, ...) to cancel drift; each cell reports the
median over rounds for latency percentiles and total requests / total time
for requests/s.

Usage::

    python bench/overhead.py [--duration 10] [--out docs/benchmarks-overhead.md]

``--with-telemetry`` turns on what operators run in production: the gateway's config gets
``metrics`` on (and scraped once a second during the run, as Prometheus would) and a ``file``
request-log sink in the temp dir. Without it, metrics are off and there are no sinks (the core).

``--mock-cmd`` / ``--gateway-cmd`` take command templates (placeholders:
``{python} {listen} {host} {port} {config} {upstream}``), e.g. to benchmark
against a stand-in before the real gateway exists.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
HOST = "127.0.0.1"
MODEL = "mock-model"
ROUTE = "/v1/chat/completions"
UPSTREAM_KEY = "sk-bench-1"
REQUEST_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    separators=(",", ":"),
)
CONFIG_TEMPLATE = """\
providers:
  - id: mock
    type: openai
    base_url: {upstream}
    models: [{model}]
    keys:
      - id: k1
        secret: sk-bench-1
      - id: k2
        secret: sk-bench-2
"""
TELEMETRY_OFF = "metrics: {enabled: false}\n"
TELEMETRY_ON = """\
metrics: {{enabled: true, path: /metrics}}
logging:
  sinks:
    - {{type: file, path: {log}, max_bytes: 67108864, keep: 2}}
"""
STORE_FILE = "storage: {{runtime: {{type: file, path: {path}}}}}\n"
STORE_REDIS = "storage: {{runtime: {{type: redis, url: 'redis://{host}:{port}/0'}}}}\n"
DEFAULT_MOCK_CMD = "{python} -m truckllm mock --listen {listen}"
DEFAULT_GATEWAY_CMD = "{python} -m truckllm --config {config} --listen {listen}"
BASELINE_CMD = (
    "{python} "
    + shlex.quote(str(BENCH_DIR / "baseline_passthrough.py"))
    + " --listen {listen} --upstream {upstream} --api-key "
    + UPSTREAM_KEY
)
TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
PERCENTILES = ("50", "75", "90", "99")
READY_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """A harness-level failure (process did not start, wrk failed, ...)."""


# --------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    """Parsed summary of one wrk run (latencies in microseconds)."""

    connections: int
    requests: int
    duration_s: float
    rps: float
    latency_us: dict[str, float]
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def _to_us(value: str, unit: str) -> float:
    return float(value) * TIME_UNITS_US[unit]


def parse_wrk_output(text: str, connections: int) -> WrkResult:
    """Parse ``wrk --latency`` stdout.

    Handles the unit suffixes wrk uses for times (us/ms/s/m/h).
    """
    latency: dict[str, float] = {}
    for m in re.finditer(
        r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", text, re.MULTILINE
    ):
        pct = m.group(1).removesuffix(".000").removesuffix(".00")
        latency[pct] = _to_us(m.group(2), m.group(3))
    missing = [p for p in PERCENTILES if p not in latency]
    if missing:
        raise BenchError(f"wrk output lacks latency percentiles {missing}:\n{text}")

    m_req = re.search(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h)", text, re.MULTILINE)
    m_rps = re.search(r"^Requests/sec:\s+(\d+(?:\.\d+)?)", text, re.MULTILINE)
    if not m_req or not m_rps:
        raise BenchError(f"cannot parse wrk summary:\n{text}")
    m_non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    m_sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    socket_errors: dict[str, int] = {}
    if m_sock:
        for name, val in zip(("connect", "read", "write", "timeout"), m_sock.groups(), strict=True):
            if int(val):
                socket_errors[name] = int(val)
    return WrkResult(
        connections=connections,
        requests=int(m_req.group(1)),
        duration_s=_to_us(m_req.group(2), m_req.group(3)) / 1e6,
        rps=float(m_rps.group(1)),
        latency_us=latency,
        non_2xx=int(m_non2xx.group(1)) if m_non2xx else 0,
        socket_errors=socket_errors,
    )


def write_lua(path: Path, headers: dict[str, str]) -> None:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_str(REQUEST_BODY)}"]
    lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(
    wrk: str | Sequence[str], url: str, script: Path, connections: int, seconds: int
) -> WrkResult:
    """One wrk run; ``wrk`` is its path, or a command that ends with it (``taskset -c 1 wrk``)."""
    cmd = [
        *([wrk] if isinstance(wrk, str) else wrk),
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return parse_wrk_output(proc.stdout, connections)


# --------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    cmd: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_DIR,
                start_new_session=True,  # own process group -> killpg
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def wait_ready(self, headers: dict[str, str]) -> None:
        """Poll until TCP connects and one chat completion returns 200."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_err = "not tried"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} during startup:\n"
                    f"$ {shlex.join(self.cmd)}\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    pass
                status, body = post_chat(self.base + ROUTE, headers)
                if status == 200:
                    check_completion(self.name, body)
                    return
                last_err = f"HTTP {status}: {body[:300]!r}"
            except OSError as exc:
                last_err = repr(exc)
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} not ready after {READY_TIMEOUT_S:.0f}s (last: {last_err}):\n"
            f"$ {shlex.join(self.cmd)}\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


def post_chat(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=REQUEST_BODY.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def check_completion(name: str, body: bytes) -> None:
    try:
        data = json.loads(body)
        data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"{name}: response is not a chat completion: {body[:300]!r}") from exc


@contextlib.contextmanager
def services_running(services: Sequence[Service]) -> Iterator[None]:
    try:
        yield
    finally:
        for svc in reversed(services):
            svc.stop()


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class Scraper:
    """Fetches the metrics page once a second in a thread, as a Prometheus server would."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url = url
        self.interval_s = interval_s
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    resp.read()
                    self.count += 1
            except OSError as exc:
                print(f"metrics scrape failed: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# --------------------------------------------------------------------------
# report


@dataclass
class Target:
    key: str
    label: str
    url: str
    script: Path
    server: Service  # the process that answers wrk: the mock for direct, else the proxy


@dataclass
class Cell:
    runs: list[WrkResult] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU time (user + system) of the target's server during the runs

    @property
    def cpu_us(self) -> float:
        """The server's CPU per request, in µs."""
        requests = sum(r.requests for r in self.runs)
        return self.cpu_s * 1e6 / requests if requests else math.nan

    def pct(self, p: str) -> float:
        return statistics.median(r.latency_us[p] for r in self.runs)

    @property
    def rps(self) -> float:
        return sum(r.requests for r in self.runs) / sum(r.duration_s for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used, all its threads (``/proc/<pid>/stat``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def minor_faults(pid: int) -> int:
    """Minor page faults of the process so far, all its threads (``/proc/<pid>/stat``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(text.rsplit(")", 1)[1].split()[7])  # minflt


def fmt_ms(us: float) -> str:
    return f"{us / 1e3:.3f}"


def fmt_delta_ms(us: float) -> str:
    return f"{us / 1e3:+.3f}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


CPUIDLE_DRIVER = Path("/sys/devices/system/cpu/cpuidle/current_driver")
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def halt_poll_ns() -> int | None:
    """How long an idle vCPU polls before it halts (KVM's ``haltpoll`` idle driver), or None."""
    try:
        if CPUIDLE_DRIVER.read_text().strip() != "haltpoll":
            return None
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


def cpu_idle() -> str:
    """How an idle CPU waits, for the report's machine lines. Under a hypervisor it decides what
    a wake-up costs: a vCPU that halts leaves the guest, and waking it goes through the host."""
    try:
        driver = CPUIDLE_DRIVER.read_text().strip()
    except OSError:
        return "unknown (no cpuidle driver)"
    ns = halt_poll_ns()
    if ns is None:
        return f"cpuidle driver {driver}"
    if ns == 0:
        return (
            "cpuidle driver haltpoll with guest_halt_poll_ns=0: an idle vCPU halts at once, and "
            "every wake-up of a waiting process goes through the hypervisor"
        )
    return f"cpuidle driver haltpoll: an idle vCPU polls up to {ns / 1000:g} µs before it halts"


@contextlib.contextmanager
def halt_polling(ns: int | None) -> Iterator[None]:
    """Set the guest's halt polling to ``ns`` for the block, and put the old value back after.
    ``None``: leave the machine as it is."""
    if ns is None:
        yield
        return
    if halt_poll_ns() is None:
        raise BenchError(f"--halt-poll-ns: {HALT_POLL} is not in use (not a KVM guest on haltpoll)")
    old = HALT_POLL.read_text().strip()
    try:
        HALT_POLL.write_text(str(ns))
    except OSError as exc:
        raise BenchError(
            f"--halt-poll-ns: cannot write {HALT_POLL} ({exc}); it needs root"
        ) from None
    try:
        yield
    finally:
        HALT_POLL.write_text(old)


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no commits yet?)"
    return rev + (" (src/ dirty)" if dirty else "")


def tool_version(python: str, dist: str) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        f"try: print(m.version({dist!r}))\n"
        "except m.PackageNotFoundError: print('not installed')"
    )
    try:
        return subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "unknown"


# Prints the version, the real executable and whether the interpreter runs from a shared
# libpython (pyenv's default build) or is statically linked (Debian's /usr/bin/python3.11): the
# gateway's cost per request is Python code, so the report names the build that ran it.
_INTERPRETER_CODE = """
import os, sys
with open("/proc/self/maps") as f:
    shared = any("libpython" in line for line in f)
print(sys.version.split()[0], os.path.realpath(sys.executable), int(shared))
"""


def interpreter(python: str) -> str:
    """``python``'s version and build, for the report's machine lines."""
    out = subprocess.run(
        [python, "-c", _INTERPRETER_CODE], capture_output=True, text=True, check=False
    ).stdout.split()
    if len(out) != 3:
        return f"unknown ({python})"
    version, real, shared = out
    build = "libpython as a shared library" if shared == "1" else "statically linked"
    via = f", via {python}" if os.path.realpath(python) != real else ""
    return f"{version} ({real}, {build}{via})"


def machine_info(python: str, wrk: str) -> list[tuple[str, str]]:
    return [
        ("CPU", f"{os.cpu_count()} x {cpu_model()} (nproc={len(os.sched_getaffinity(0))})"),
        ("OS", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("CPU idle", cpu_idle()),
        ("Python", interpreter(python)),
        ("truckllm", f"{tool_version(python, 'truckllm')}, git {git_rev()}"),
        (
            "aiohttp / uvicorn (the bare passthrough's; the gateway uses neither)",
            f"{tool_version(python, 'aiohttp')} / {tool_version(python, 'uvicorn')}",
        ),
        ("Load generator", f"{wrk_version(wrk)}, -t1, shares the CPUs with all servers"),
    ]


def render_report(
    targets: Sequence[Target],
    cells: dict[tuple[str, int], Cell],
    conns: tuple[int, ...],
    info: list[tuple[str, str]],
    command: str,
    rounds: int,
    run_seconds: int,
    warmup: int,
) -> str:
    lo = conns[0]
    direct_lo = cells[("direct", lo)]
    out: list[str] = []
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out.append("# TruckLLM gateway overhead\n")
    out.append(f"Generated {now} by:\n\n```\n{command}\n```\n")
    out += [f"- **{k}**: {v}" for k, v in info]
    out.append(
        f"- **Method**: `POST {ROUTE}` `{REQUEST_BODY}`; mock upstream answers "
        f"immediately. {rounds} round(s) x {run_seconds}s per cell, target order "
        f"alternating per round, {warmup}s warm-up (32 conns) per target per round. "
        "Latency = median of the per-round wrk percentiles; req/s = total requests "
        "/ total time. Times in ms. CPU/request: CPU time (user + system) of the process that "
        "answers wrk (the mock for direct, the proxy itself otherwise) over its requests.\n"
    )

    out.append(f"## {lo} connection (sequential latency)\n")
    out.append("| Target | p50 | p90 | p99 | added p50 | added p99 | req/s | CPU/request |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        c = cells[(t.key, lo)]
        added50 = fmt_delta_ms(c.pct("50") - direct_lo.pct("50")) if t.key != "direct" else "-"
        added99 = fmt_delta_ms(c.pct("99") - direct_lo.pct("99")) if t.key != "direct" else "-"
        out.append(
            f"| {t.label} | {fmt_ms(c.pct('50'))} | {fmt_ms(c.pct('90'))} | "
            f"{fmt_ms(c.pct('99'))} | {added50} | {added99} | {c.rps:,.0f} | "
            f"{c.cpu_us:.0f} µs |"
        )

    for hi in conns[1:]:
        direct_hi, bare_hi = cells[("direct", hi)], cells.get(("baseline", hi))
        out.append(f"\n## {hi} connections (throughput)\n")
        out.append(
            "| Target | req/s | vs direct | vs bare passthrough | p50 | p99 | added p50 | added p99 "
            "| CPU/request |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            c = cells[(t.key, hi)]
            is_direct = t.key == "direct"
            vs_bare = (
                f"{c.rps / bare_hi.rps:.2f}"
                if bare_hi and t.key not in ("direct", "baseline")
                else "-"
            )
            out.append(
                f"| {t.label} | {c.rps:,.0f} | "
                f"{'-' if is_direct else f'{100 * c.rps / direct_hi.rps:.0f}%'} | {vs_bare} | "
                f"{fmt_ms(c.pct('50'))} | {fmt_ms(c.pct('99'))} | "
                f"{'-' if is_direct else fmt_delta_ms(c.pct('50') - direct_hi.pct('50'))} | "
                f"{'-' if is_direct else fmt_delta_ms(c.pct('99') - direct_hi.pct('99'))} | "
                f"{c.cpu_us:.0f} µs |"
            )

    bad = [
        (t.label, n, cells[(t.key, n)]) for t in targets for n in conns if cells[(t.key, n)].errors
    ]
    if bad:
        out.append("\n**Errors** (results for these cells are suspect):\n")
        for label, n, c in bad:
            non2xx = sum(r.non_2xx for r in c.runs)
            sock: dict[str, int] = {}
            for r in c.runs:
                for k, v in r.socket_errors.items():
                    sock[k] = sock.get(k, 0) + v
            out.append(f"- {label} @ {n} conns: non-2xx={non2xx}, socket errors={sock}")

    out.append("\n<details><summary>Raw wrk runs</summary>\n")
    out.append("| Target | conns | round | requests | req/s | p50 | p75 | p90 | p99 | errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        for n in conns:
            for i, r in enumerate(cells[(t.key, n)].runs, 1):
                lat = " | ".join(fmt_ms(r.latency_us[p]) for p in PERCENTILES)
                out.append(
                    f"| {t.label} | {n} | {i} | {r.requests} | {r.rps:,.0f} | {lat} | {r.errors} |"
                )
    out.append("\n</details>\n")
    return "\n".join(out)


def results_json(
    targets: Sequence[Target], cells: dict[tuple[str, int], Cell], conns: tuple[int, ...]
) -> dict[str, dict[str, dict[str, float]]]:
    """target -> connections -> req/s, latency percentiles (ms) and errors."""
    return {
        t.key: {
            str(n): {
                "rps": cells[(t.key, n)].rps,
                "errors": cells[(t.key, n)].errors,
                "cpu_us": cells[(t.key, n)].cpu_us,
                **{f"p{p}": cells[(t.key, n)].pct(p) / 1e3 for p in PERCENTILES},
            }
            for n in conns
        }
        for t in targets
    }


# --------------------------------------------------------------------------
# main


def default_python() -> str:
    if importlib.util.find_spec("truckllm") is not None:
        return sys.executable
    venv_py = REPO_DIR / ".venv" / "bin" / "python"
    return str(venv_py) if venv_py.exists() else sys.executable


def build_cmd(template: str, **values: str) -> list[str]:
    quoted = {k: shlex.quote(v) for k, v in values.items()}
    return shlex.split(template.format(**quoted))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark TruckLLM gateway overhead vs direct and a bare proxy."
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="measured seconds per (target, concurrency) cell (default 10)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="split each cell into N rounds, alternating target order",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="warm-up seconds per target per round (default 2)"
    )
    p.add_argument(
        "--connections",
        type=int,
        default=32,
        help="connections for the throughput run (default 32)",
    )
    p.add_argument(
        "--also-connections",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="more throughput runs at these connection counts (e.g. 128)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", type=Path, help="also write the results as JSON here (run_all.py)")
    p.add_argument(
        "--python", default=default_python(), help="interpreter for the mock, baseline and gateway"
    )
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--mock-cmd", default=DEFAULT_MOCK_CMD, help="command template")
    p.add_argument("--gateway-cmd", default=DEFAULT_GATEWAY_CMD, help="command template")
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temp dir with process logs and config"
    )
    p.add_argument(
        "--with-telemetry",
        action="store_true",
        help="gateway with metrics on (scraped every second) and a file request-log sink",
    )
    p.add_argument(
        "--store",
        choices=("memory", "file", "redis"),
        default="memory",
        help="the gateway's storage.runtime.type (redis: a redis-server is started on a free port)",
    )
    p.add_argument(
        "--key-rpm",
        type=int,
        help="give both keys limits: {rpm: N} (with --store redis they are shared: leased)",
    )
    p.add_argument(
        "--halt-poll-ns",
        type=int,
        metavar="NS",
        help="on a KVM guest with the haltpoll idle driver, let an idle vCPU poll NS ns before "
        "it halts, for this run only (needs root; the old value is put back). The kernel's "
        "default is 200000; these machines boot with 0",
    )
    return p.parse_args(argv)


def store_config(args: argparse.Namespace, tmp: Path, redis_port: int) -> str:
    if args.store == "file":
        return STORE_FILE.format(path=tmp / "usage.json")
    if args.store == "redis":
        return STORE_REDIS.format(host=HOST, port=redis_port)
    return ""


def start_redis(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found: apt-get install -y redis-server")
    cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise BenchError("redis-server did not start")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which(args.wrk) is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    rounds = max(1, args.rounds)
    run_seconds = max(1, math.ceil(args.duration / rounds))
    conns = (1, args.connections, *args.also_connections)

    tmp = Path(tempfile.mkdtemp(prefix="truckllm-bench-"))
    keep_logs = args.keep_logs
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        redis_port = free_port()
        mock = Service("mock", [], free_port(), tmp / "mock.log")
        upstream = f"{mock.base}/v1"
        config = tmp / "gateway.yaml"
        request_log = tmp / "requests.jsonl"
        config.write_text(
            CONFIG_TEMPLATE.format(upstream=upstream, model=MODEL)
            + (TELEMETRY_ON.format(log=request_log) if args.with_telemetry else TELEMETRY_OFF)
            + store_config(args, tmp, redis_port)
        )
        if args.key_rpm:
            text = config.read_text()
            for key in ("sk-bench-1", "sk-bench-2"):
                text = text.replace(
                    f"secret: {key}\n", f"secret: {key}\n        limits: {{rpm: {args.key_rpm}}}\n"
                )
            config.write_text(text)
        if args.store == "redis":
            redis_proc = start_redis(redis_port, tmp / "redis.log")
        baseline = Service("baseline", [], free_port(), tmp / "baseline.log")
        gateway = Service("gateway", [], free_port(), tmp / "gateway.log")
        for svc, template in (
            (mock, args.mock_cmd),
            (baseline, BASELINE_CMD),
            (gateway, args.gateway_cmd),
        ):
            svc.cmd = build_cmd(
                template,
                python=args.python,
                listen=f"{HOST}:{svc.port}",
                host=HOST,
                port=str(svc.port),
                config=str(config),
                upstream=upstream,
            )

        direct_headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {UPSTREAM_KEY}",
        }
        proxy_headers = {"Content-Type": "application/json"}
        targets = [
            Target("direct", "direct -> mock", mock.base + ROUTE, tmp / "direct.lua", mock),
            Target(
                "baseline", "bare passthrough", baseline.base + ROUTE, tmp / "proxy.lua", baseline
            ),
            Target("gateway", "TruckLLM gateway", gateway.base + ROUTE, tmp / "proxy.lua", gateway),
        ]
        write_lua(tmp / "direct.lua", direct_headers)
        write_lua(tmp / "proxy.lua", proxy_headers)

        services = [mock, baseline, gateway]
        machine = machine_info(args.python, args.wrk)
        with halt_polling(args.halt_poll_ns), services_running(services):
            if args.halt_poll_ns is not None:
                machine.append(("CPU idle during this run", f"{cpu_idle()} (--halt-poll-ns)"))
            for svc in services:
                print(f"starting {svc.name}: {shlex.join(svc.cmd)}", file=sys.stderr)
                svc.start()
            mock.wait_ready(direct_headers)
            baseline.wait_ready(proxy_headers)
            gateway.wait_ready(proxy_headers)

            cells: dict[tuple[str, int], Cell] = {
                (t.key, n): Cell() for t in targets for n in conns
            }
            scraper = Scraper(gateway.base + "/metrics") if args.with_telemetry else None
            for rnd in range(rounds):
                order = targets if rnd % 2 == 0 else list(reversed(targets))
                for t in order:
                    print(f"round {rnd + 1}/{rounds}: {t.label}", file=sys.stderr)
                    run_wrk(args.wrk, t.url, t.script, args.connections, args.warmup)
                    for n in conns:
                        pid = t.server.proc.pid if t.server.proc else 0
                        cpu0 = cpu_seconds(pid)
                        res = run_wrk(args.wrk, t.url, t.script, n, run_seconds)
                        cells[(t.key, n)].cpu_s += cpu_seconds(pid) - cpu0
                        cells[(t.key, n)].runs.append(res)
                        print(
                            f"  c={n:<3} {res.rps:>9,.0f} req/s  "
                            f"p50={fmt_ms(res.latency_us['50'])}ms "
                            f"p99={fmt_ms(res.latency_us['99'])}ms "
                            f"errors={res.errors}",
                            file=sys.stderr,
                        )
                for svc in services:
                    if svc.proc is not None and svc.proc.poll() is not None:
                        raise BenchError(f"{svc.name} died during the run:\n{svc.log_tail()}")
            if scraper is not None:
                scraper.stop()
        if args.with_telemetry:
            # The gateway flushed its sink on SIGTERM: count what it wrote.
            logged = sum(p.read_bytes().count(b"\n") for p in tmp.glob("requests.jsonl*"))
            print(
                f"telemetry: {logged:,} request records written"
                f" (retention may have dropped older files), {scraper.count if scraper else 0}"
                " metrics scrapes",
                file=sys.stderr,
            )

        report = render_report(
            targets,
            cells,
            conns,
            [
                *machine,
                (
                    "Gateway telemetry",
                    "metrics on (scraped every 1 s) + file request-log sink"
                    if args.with_telemetry
                    else "off (metrics disabled, no request-log sinks)",
                ),
            ],
            command,
            rounds,
            run_seconds,
            args.warmup,
        )
        print(report)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(report)
            print(f"wrote {args.out}", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps(results_json(targets, cells, conns), indent=1))
        return 0
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        keep_logs = True
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(5)
        if keep_logs:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
