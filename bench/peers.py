"""TruckLLM side by side with its peers, in one run, against one upstream: nginx answering a
fixed chat completion.

Targets, measured with ``wrk`` at 1 connection (added latency) and 32 (throughput), in rounds
whose order alternates:

* ``direct``: wrk to nginx;
* ``bare passthrough``: ``bench/baseline_passthrough.py`` (uvicorn + aiohttp, one route);
* TruckLLM, 1 process, every feature off (no client keys, no limits or pricing, metrics off, no
  request log);
* TruckLLM, 1 process, every feature on: a client key with rpm, tpm and a budget, both upstream
  keys with limits and pricing, metrics (scraped every second) and a file request log;
* the same with ``server.workers: 2``;
* TensorZero (its PyPI wheel's Rust gateway, observability off; ``bench/tensorzero_gateway.py``);
* LiteLLM's proxy, one worker and as many workers as cores.

The peers are not dependencies of the project: install them in a virtualenv of their own and
name its interpreter with ``--peers-python`` (or ``TRUCKLLM_PEERS_PYTHON``)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install tensorzero==2026.6.0 'litellm[proxy]==1.108.7'
    python bench/peers.py --peers-python /work/peers-venv/bin/python

A peer that is not installed there is skipped, and the report says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import HOST, BenchError, default_python, free_port, run_and_report, tree_pids
from features import CLIENT_KEY, FEATURES, config_text
from overhead import (
    PERCENTILES,
    Cell,
    Scraper,
    WrkResult,
    cpu_seconds,
    machine_info,
    minor_faults,
    parse_wrk_output,
)

BENCH = Path(__file__).resolve().parent
ROUTE = "/v1/chat/completions"
TZ_MODEL = "tensorzero::model_name::mock"
TZ_CONFIG = """\
[gateway]
observability.enabled = false

[models.mock]
routing = ["upstream"]

[models.mock.providers.upstream]
type = "openai"
model_name = "mock-model"
api_base = "{upstream}/"
api_key_location = "none"
"""
LITELLM_CONFIG = """\
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: {upstream}
      api_key: sk-bench-1
litellm_settings:
  telemetry: false
"""
LITELLM_ENV = {
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
}


@dataclass
class Peer:
    key: str
    label: str
    cmd: list[str]
    url: str = ""  # the chat completions URL; from the log when ``url_pattern`` is set
    model: str = "mock-model"
    env: dict[str, str] = field(default_factory=dict)
    url_pattern: str = ""
    metrics: str = ""  # a metrics page to scrape during the run
    proc: subprocess.Popen[bytes] | None = None
    log: Path = Path()

    def start(self, tmp: Path) -> None:
        self.log = tmp / f"{self.key}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    def body(self) -> str:
        return json.dumps(
            {"model": self.model, "messages": [{"role": "user", "content": "hi"}]},
            separators=(",", ":"),
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = "not tried"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited during start-up:\n{self.tail()}")
            if self.url_pattern and not self.url:
                m = re.search(self.url_pattern, self.log.read_text(errors="replace"))
                if m is None:
                    time.sleep(0.2)
                    continue
                self.url = m.group(1).rstrip("/") + "/chat/completions"
            req = urllib.request.Request(
                self.url, data=self.body().encode(), headers=HEADERS, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if json.loads(resp.read())["choices"][0]["message"]:
                        return
            except (OSError, ValueError, KeyError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise BenchError(f"{self.label} not ready after {timeout:.0f} s ({last}):\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return ""

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in tree_pids(self.proc.pid)) if self.proc else 0.0

    def faults(self) -> int:
        """Minor page faults of the target's processes: the kernel's work, which the CPU per
        request includes and an instruction count does not."""
        return sum(minor_faults(p) for p in tree_pids(self.proc.pid)) if self.proc else 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (15, 9):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
                return


HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}


def lua(path: Path, body: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in HEADERS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def has_module(python: str | None, module: str) -> bool:
    if not python or not Path(python).exists():
        return False
    probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", probe], check=False).returncode == 0


def peers(args: argparse.Namespace, tmp: Path, upstream: str) -> tuple[list[Peer], list[str]]:
    """Every target of the run, and a line per peer skipped."""
    py = args.python
    base = [py, "-m", "truckllm", "--listen"]
    out: list[Peer] = []
    skipped: list[str] = []
    p = free_port()
    out.append(
        Peer(
            "baseline",
            "bare passthrough (uvicorn + aiohttp)",
            [py, str(BENCH / "baseline_passthrough.py"), "--listen", f"{HOST}:{p}",
             "--upstream", upstream, "--api-key", "sk-bench-1"],
            url=f"http://{HOST}:{p}{ROUTE}",
        )
    )  # fmt: skip
    for key, label, features, workers in (
        ("off", "TruckLLM, 1 process, everything off", frozenset(), 1),
        ("on", "TruckLLM, 1 process, everything on", frozenset(FEATURES), 1),
        ("on-w2", "TruckLLM, `server.workers: 2`, everything on", frozenset(FEATURES), 2),
    ):
        d = tmp / key
        d.mkdir()
        text = config_text(upstream, d, features)
        if workers > 1:
            if "server:\n" in text:
                text = text.replace("server:\n", f"server:\n  workers: {workers}\n", 1)
            else:
                text += f"server: {{workers: {workers}}}\n"
        (d / "gateway.yaml").write_text(text)
        p = free_port()
        out.append(
            Peer(
                key,
                label,
                [*base, f"{HOST}:{p}", "--config", str(d / "gateway.yaml")],
                url=f"http://{HOST}:{p}{ROUTE}",
                metrics=f"http://{HOST}:{p}/metrics" if "metrics" in features else "",
            )
        )
    pp = args.peers_python
    if has_module(pp, "tensorzero"):
        (tmp / "tensorzero.toml").write_text(TZ_CONFIG.format(upstream=upstream))
        out.append(
            Peer(
                "tensorzero",
                f"TensorZero {peer_version(pp, 'tensorzero')} (Rust, observability off)",
                [pp, str(BENCH / "tensorzero_gateway.py"), str(tmp / "tensorzero.toml")],
                model=TZ_MODEL,
                url_pattern=r"TENSORZERO_URL (\S+)",
            )
        )
    else:
        skipped.append(f"TensorZero: no `tensorzero` module for --peers-python {pp}")
    if has_module(pp, "litellm"):
        (tmp / "litellm.yaml").write_text(LITELLM_CONFIG.format(upstream=upstream))
        version = peer_version(pp, "litellm")
        litellm = str(Path(pp).parent / "litellm")
        for n in sorted({1, os.cpu_count() or 1}):
            p = free_port()
            out.append(
                Peer(
                    f"litellm-{n}",
                    f"LiteLLM {version}, {n} worker{'s' if n > 1 else ''}",
                    [litellm, "--config", str(tmp / "litellm.yaml"), "--host", HOST,
                     "--port", str(p), "--num_workers", str(n),
                     # uvicorn's supervisor kills a worker still importing after 5 s (a
                     # busy machine): give them time
                     *(["--timeout_worker_healthcheck", "120"] if n > 1 else [])],
                    url=f"http://{HOST}:{p}{ROUTE}",
                    env=LITELLM_ENV,
                )
            )  # fmt: skip
    else:
        skipped.append(f"LiteLLM: no `litellm` module for --peers-python {pp}")
    return out, skipped


def peer_version(python: str, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return r.stdout.strip() or "?"


@contextlib.contextmanager
def nginx(tmp: Path) -> Iterator[str]:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else ""
    )
    if not binary:
        raise BenchError("nginx not found: apt-get install -y nginx-light")
    port = free_port()
    prefix = tmp / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    conf = (BENCH / "nginx.conf").read_text().replace("@PORT@", str(port))
    (prefix / "nginx.conf").write_text(conf.replace("@PREFIX@", str(prefix)))
    direct = Peer("direct", "direct -> nginx", [binary, "-p", str(prefix), "-c", "nginx.conf"])
    direct.url = f"http://{HOST}:{port}{ROUTE}"
    direct.start(tmp)
    try:
        direct.wait_ready(10)
        yield direct.url
    finally:
        direct.stop()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="truckllm-peers-") as d:
        tmp = Path(d)
        with nginx(tmp) as direct_url:
            upstream = direct_url.rsplit("/chat/completions", 1)[0]
            targets, skipped = peers(args, tmp, upstream)
            left_out = set(args.skip)
            targets = [t for t in targets if t.key.split("-")[0] not in left_out
                       and t.key not in left_out]  # fmt: skip
            direct = Peer("direct", "direct -> nginx", [], url=direct_url)
            return run_targets(args, tmp, [direct, *targets], skipped)


def run_targets(
    args: argparse.Namespace, tmp: Path, targets: list[Peer], skipped: list[str]
) -> dict[str, Any]:
    conns = (1, *args.connections)
    cells = {(t.key, n): Cell() for t in targets for n in conns}
    faults = {(t.key, n): 0 for t in targets for n in conns}
    wrk = ["taskset", "-c", args.pin_wrk, "wrk"] if args.pin_wrk else ["wrk"]

    def run_wrk(url: str, script: Path, n: int, seconds: int) -> WrkResult:
        cmd = [*wrk, "-t1", f"-c{n}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
        cmd += ["-s", str(script), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        if proc.returncode != 0:
            raise BenchError(f"{cmd} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        return parse_wrk_output(proc.stdout, n)

    scrapers: list[Scraper] = []
    pairs: list[dict[str, float]] = []
    try:
        for t in targets[1:]:
            print(f"starting {t.label}", file=sys.stderr)
            t.start(tmp)
        for t in list(targets[1:]):
            try:
                t.wait_ready(300 if t.key.startswith("litellm") else 120)
            except BenchError as exc:
                if t.key in ("baseline", "off", "on", "on-w2"):
                    raise
                print(exc, file=sys.stderr)  # a peer that does not come up is left out
                skipped.append(f"{t.label}: did not come up ({str(exc).splitlines()[0]})")
                targets.remove(t)
                t.stop()
                continue
            if t.metrics:
                scrapers.append(Scraper(t.metrics))
        scripts = {t.key: lua(tmp / f"{t.key}.lua", t.body()) for t in targets}
        for rnd in range(args.rounds):
            for t in targets if rnd % 2 == 0 else list(reversed(targets)):
                run_wrk(t.url, scripts[t.key], max(conns), args.warmup)
                for n in conns:
                    c0, f0 = (t.cpu(), t.faults()) if t.proc else (0.0, 0)
                    res = run_wrk(t.url, scripts[t.key], n, args.duration)
                    if t.proc:
                        cells[(t.key, n)].cpu_s += t.cpu() - c0
                        faults[(t.key, n)] += t.faults() - f0
                    cells[(t.key, n)].runs.append(res)
                    print(
                        f"round {rnd + 1} {t.label} c={n}: {res.rps:,.0f} req/s "
                        f"p50={res.latency_us['50'] / 1e3:.3f} ms errors={res.errors}",
                        file=sys.stderr,
                    )
        pairs = on_off_pairs(args, {t.key: t for t in targets}, scripts, run_wrk, max(conns))
    finally:
        for s in scrapers:
            s.stop()
        for t in targets:
            t.stop()
    return {
        "conns": list(conns),
        "labels": {t.key: t.label for t in targets},
        "skipped": skipped,
        "pin_wrk": args.pin_wrk,
        "duration": args.duration,
        "rounds": args.rounds,
        "pairs": pairs,
        "pair_duration": args.pair_duration,
        "machine": machine_info(args.python, "wrk"),
        "targets": {
            t.key: {
                str(n): {
                    "rps": cells[(t.key, n)].rps,
                    "errors": cells[(t.key, n)].errors,
                    "cpu_us": cells[(t.key, n)].cpu_us if t.proc else None,
                    "faults": (
                        faults[(t.key, n)] / max(sum(r.requests for r in cells[(t.key, n)].runs), 1)
                        if t.proc
                        else None
                    ),
                    **{f"p{p}": cells[(t.key, n)].pct(p) / 1e3 for p in PERCENTILES},
                }
                for n in conns
            }
            for t in targets
        },
    }


def on_off_pairs(
    args: argparse.Namespace,
    by_key: dict[str, Peer],
    scripts: dict[str, Path],
    run_wrk: Callable[[str, Path, int, int], WrkResult],
    n: int,
) -> list[dict[str, float]]:
    """Everything on against everything off in pairs of short runs taken back to back, the
    order alternating: a pair's ratio sees the same state of the machine, where the rounds
    above put every other target between the two (on these shared VMs the figures drift by
    a fifth within minutes)."""
    off, on = by_key.get("off"), by_key.get("on")
    if off is None or on is None or not args.pairs:
        return []
    out: list[dict[str, float]] = []
    for i in range(args.pairs):
        got: dict[str, tuple[float, float]] = {}
        for t in (off, on) if i % 2 == 0 else (on, off):
            run_wrk(t.url, scripts[t.key], n, 1)
            c0 = t.cpu()
            res = run_wrk(t.url, scripts[t.key], n, args.pair_duration)
            got[t.key] = (res.rps, (t.cpu() - c0) * 1e6 / max(res.requests, 1))
        out.append(
            {
                "off_rps": got["off"][0],
                "on_rps": got["on"][0],
                "off_cpu_us": got["off"][1],
                "on_cpu_us": got["on"][1],
            }
        )
        print(
            f"pair {i + 1}: on/off {got['on'][0] / got['off'][0]:.2f} "
            f"({got['on'][0]:,.0f} / {got['off'][0]:,.0f} req/s)",
            file=sys.stderr,
        )
    return out


def pair_ratios(r: dict[str, Any]) -> list[float]:
    """Each pair's everything-on requests/s over everything-off's."""
    return [p["on_rps"] / p["off_rps"] for p in r.get("pairs") or []]


def report(r: dict[str, Any]) -> str:
    conns: list[int] = r["conns"]
    res: dict[str, dict[str, dict[str, Any]]] = r["targets"]
    hi = str(conns[1]) if len(conns) > 1 else "1"
    tz = res.get("tensorzero")
    out = [
        f"nginx answers a fixed chat completion; wrk -t1 ({'pinned to CPU ' + r['pin_wrk'] if r['pin_wrk'] else 'sharing the CPUs'}), "
        f"{r['rounds']} rounds of {r['duration']} s per point, order alternating. Added p50: "
        "the target's p50 less direct's. CPU/request and page faults/request (minor faults): the "
        "target's processes (all workers).",
        "",
        f"| target | 1 conn p50 | 1 conn added p50 | {hi} conns req/s | vs TensorZero | vs bare "
        f"passthrough | {hi} conns p99 | CPU/request ({hi} conns) | page faults/request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct = res["direct"]
    base = res.get("baseline")
    for key, cell in res.items():
        one, many = cell["1"], cell[hi]
        added = "-" if key == "direct" else f"{(one['p50'] - direct['1']['p50']) * 1e3:+.0f} µs"
        vs_tz = f"{many['rps'] / tz[hi]['rps']:.2f}x" if tz and key != "direct" else "-"
        vs_base = (
            f"{many['rps'] / base[hi]['rps']:.2f}x"
            if base and key not in ("direct", "baseline")
            else "-"
        )
        cpu = f"{many['cpu_us']:.0f} µs" if many["cpu_us"] else "-"
        faults = f"{many['faults']:.2f}" if many.get("faults") is not None else "-"
        errs = sum(cell[str(n)]["errors"] for n in conns)
        label = r["labels"][key] + (f" ({errs} errors)" if errs else "")
        out.append(
            f"| {label} | {one['p50']:.3f} ms | {added} | {many['rps']:,.0f} | {vs_tz} | "
            f"{vs_base} | {many['p99']:.3f} ms | {cpu} | {faults} |"
        )
    on, off = res.get("on"), res.get("off")
    if on and off:
        out += [
            "",
            f"Everything on against everything off, one process: {on[hi]['rps'] / off[hi]['rps']:.2f}x "
            f"the requests/s at {hi} connections, {on[hi]['cpu_us'] / off[hi]['cpu_us']:.2f}x the CPU "
            "per request.",
        ]
    ratios = pair_ratios(r)
    if ratios:
        cpu_ratios = [p["on_cpu_us"] / p["off_cpu_us"] for p in r["pairs"]]
        out += [
            "",
            f"The same in {len(ratios)} pairs of {r['pair_duration']} s runs taken back to back "
            f"(order alternating, {hi} connections): median {statistics.median(ratios):.2f}x the "
            f"requests/s (pairs: {', '.join(f'{x:.2f}' for x in ratios)}), median "
            f"{statistics.median(cpu_ratios):.2f}x the CPU per request.",
        ]
    out += [f"- skipped: {s}" for s in r["skipped"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=int, default=5, help="seconds per point and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per target and round")
    p.add_argument("--connections", type=int, nargs="*", default=[32], help="besides 1")
    p.add_argument("--pin-wrk", metavar="CPUS", help="run wrk under taskset -c CPUS")
    p.add_argument("--python", default=default_python(), help="the interpreter for TruckLLM")
    p.add_argument(
        "--peers-python",
        default=os.environ.get("TRUCKLLM_PEERS_PYTHON", "/work/peers-venv/bin/python"),
        help="the interpreter of the virtualenv with tensorzero and litellm "
        "(env TRUCKLLM_PEERS_PYTHON)",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["baseline", "off", "on-w2", "tensorzero", "litellm"],
        help="leave these targets out (a quicker run)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=6,
        help="pairs of back-to-back runs of everything off and on (0: none)",
    )
    p.add_argument("--pair-duration", type=int, default=3, help="seconds per run of a pair")
    p.add_argument("--json", type=Path)
    return run_and_report(measure, report, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
