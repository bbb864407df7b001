"""Run every benchmark and write one Markdown report (and a plot, when matplotlib is there).

    python bench/run_all.py --out docs/benchmarks.md            # quick: a few minutes
    python bench/run_all.py --out docs/benchmarks.md --full     # longer runs, more rounds
    python bench/run_all.py --only overhead,streaming           # a subset

Each benchmark is its own script (``overhead.py``, ``streaming.py``, ``chaos.py``,
``memory.py``, ``workers.py``) run as a child process with ``--json``; this script collects their
results, checks them against the performance targets and renders the report. Raw results are kept
in ``--results`` (default ``bench/results/``, ignored by git).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from overhead import HALT_POLL, default_python, halt_poll_ns, machine_info  # noqa: E402

QUICK: dict[str, list[str]] = {
    "overhead": [
        "--duration", "6", "--rounds", "2", "--warmup", "1", "--also-connections", "128",
        "--with-telemetry", "--key-rpm", "100000000",
    ],
    "streaming": ["--streams", "1000", "--rate", "20", "--tokens", "80", "--rounds", "2"],
    "streaming-shared": [
        "--streams", "1000", "--rate", "20", "--tokens", "80", "--rounds", "2", "--burst", "0",
        "--no-pin",
    ],
    "streaming-grouped": [
        "--streams", "1000", "--rate", "20", "--tokens", "80", "--per-event", "5", "--rounds", "1",
    ],
    "stream_sweep": ["--streams", "1000", "--rates", "5,10,15,20"],
    "app_path": ["--requests", "10000", "--rounds", "3"],
    "chaos": ["--requests", "4000"],
    "memory": ["--runs", "5", "--duration", "5"],
    "workers": ["--duration", "6", "--rounds", "2", "--warmup", "1", "--pin-wrk", "1"],
    "otel": ["--duration", "6", "--rounds", "2", "--warmup", "1"],
    "features": ["--requests", "5000", "--rounds", "5"],
    "peers": ["--duration", "5", "--rounds", "2", "--warmup", "1"],
}  # fmt: skip
FULL: dict[str, list[str]] = {
    "overhead": [
        "--duration", "20", "--rounds", "4", "--warmup", "2", "--also-connections", "128",
        "--with-telemetry", "--key-rpm", "100000000",
    ],
    "streaming": ["--streams", "1000", "--rate", "20", "--tokens", "100", "--rounds", "3"],
    "streaming-shared": [
        "--streams", "1000", "--rate", "20", "--tokens", "100", "--rounds", "3", "--burst", "0",
        "--no-pin",
    ],
    "streaming-grouped": [
        "--streams", "1000", "--rate", "20", "--tokens", "100", "--per-event", "5", "--rounds", "2",
    ],
    "stream_sweep": ["--streams", "1000", "--rates", "5,10,15,20", "--seconds", "5"],
    "app_path": ["--requests", "20000", "--rounds", "5"],
    "chaos": ["--requests", "20000"],
    "memory": ["--runs", "10", "--duration", "20"],
    "workers": ["--duration", "20", "--rounds", "4", "--warmup", "2", "--pin-wrk", "1"],
    "otel": ["--duration", "24", "--rounds", "4", "--warmup", "2"],
    "features": ["--requests", "10000", "--rounds", "7"],
    "peers": ["--duration", "5", "--rounds", "4", "--warmup", "1"],
}  # fmt: skip


def _with_halt_polling(plan: dict[str, list[str]]) -> dict[str, list[str]]:
    """``plan`` with ``overhead-haltpoll`` right after ``overhead``: the overhead run's own
    settings once more, with Linux's default halt polling (200 µs) and without the extra
    connection counts (its row reads one connection)."""
    args = list(plan["overhead"])
    at = args.index("--also-connections")
    del args[at : at + 2]
    out: dict[str, list[str]] = {}
    for name, value in plan.items():
        out[name] = value
        if name == "overhead":
            out["overhead-haltpoll"] = [*args, "--halt-poll-ns", "200000"]
    return out


QUICK = _with_halt_polling(QUICK)
FULL = _with_halt_polling(FULL)
TITLES = {
    "peers": "Peers: TruckLLM beside TensorZero and LiteLLM, nginx upstream",
    "features": "What each feature costs per request (in-process)",
    "overhead": "Overhead: direct, bare passthrough, gateway",
    "overhead-haltpoll": "Overhead: the same, idle vCPUs polling 200 µs before they halt "
    "(`--halt-poll-ns`)",
    "streaming": "Streaming: 1,000 concurrent streams, one token per event",
    "streaming-shared": "Streaming: the same, the three processes sharing both cores (`--no-pin`)",
    "streaming-grouped": "Streaming: 1,000 concurrent streams, five tokens per event",
    "stream_sweep": "Streaming: added delay against the event rate (sweep)",
    "app_path": "The app path in one process: warm, and after a loopback round trip",
    "chaos": "Chaos: throttling and failing keys",
    "memory": "Memory and start-up",
    "workers": "Multi-process: `server.workers`",
    "otel": "Tracing",
}


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time that was busy over the next ``seconds``."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(limit: float, patience: float) -> float:
    """Wait (up to ``patience`` seconds) until less than ``limit`` of the CPU is busy with other
    work; the busy share last seen."""
    deadline = time.monotonic() + patience
    while True:
        busy = cpu_busy()
        if busy < limit or time.monotonic() > deadline:
            return busy
        print(f"   the machine is {busy:.0%} busy; waiting for it to calm down", file=sys.stderr)


def run(name: str, args: list[str], python: str, results: Path, patience: float) -> dict[str, Any]:
    out = results / f"{name}.json"
    out.unlink(missing_ok=True)
    script = name.split("-")[0]
    cmd = [python, str(BENCH / f"{script}.py"), *args, "--json", str(out)]
    shown = shlex.join(["python", f"bench/{script}.py", *args])
    print(f"== {shown}", file=sys.stderr)
    busy = wait_quiet(0.15, patience) if patience > 0 else cpu_busy()
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=False)
    result: dict[str, Any] = {
        "command": shown,
        "markdown": proc.stdout,
        "ok": proc.returncode == 0 and out.exists(),
        "seconds": time.monotonic() - t0,
        "load": (load_before, os.getloadavg()[0]),
        "busy_before": busy,
    }
    if result["ok"]:
        result["data"] = json.loads(out.read_text())
    else:
        print(f"{name} failed (exit {proc.returncode})", file=sys.stderr)
    (results / f"{name}.md").write_text(proc.stdout)
    return result


Row = tuple[str, str, str, bool | None]  # target, measured, limit, met (None: not a target)


def informational(what: str, measured: str, limit: str = "-") -> Row:
    """A row that is reported beside the targets, not judged: ``what`` says why."""
    return (what, measured, limit, None)


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    """(target, measured, limit, met) for every target whose benchmark ran."""
    out: list[Row] = peer_targets(res)
    o = res.get("overhead", {}).get("data")
    if o:
        added = o["gateway"]["1"]["p50"] - o["direct"]["1"]["p50"]
        out.append(("1 connection: added p50", f"{added:.3f} ms", "<= 0.25 ms", added <= 0.25))
        rps = o["gateway"]["32"]["rps"]
        ratio = rps / o["baseline"]["32"]["rps"]
        out.append(("32 connections: requests/s", f"{rps:,.0f}", ">= 4,000", rps >= 4000))
        out.append(
            (
                "32 connections: share of the bare passthrough",
                f"{ratio:.2f}",
                ">= 0.75",
                ratio >= 0.75,
            )
        )
    h = res.get("overhead-haltpoll", {}).get("data")
    if h:
        added = h["gateway"]["1"]["p50"] - h["direct"]["1"]["p50"]
        bare = h["baseline"]["1"]["p50"] - h["direct"]["1"]["p50"]
        out.append(
            informational(
                "1 connection: added p50 (bare passthrough's in brackets), idle vCPUs polling "
                "200 µs before they halt, the Linux default; these machines boot with 0 (not how "
                "they run: not the target's row)",
                f"{added:.3f} ms ({bare:.3f} ms)",
                "<= 0.25 ms",
            )
        )
    for name in ("streaming", "streaming-grouped"):
        s = res.get(name, {}).get("data")
        if not s:
            continue
        g = s["gateway"]
        what = f"1,000 streams, {s['per_event']} token(s) per event"
        out.append(
            (
                f"{what}: all complete",
                f"{g['completed']:,}/{g['streams']:,}",
                "all",
                g["completed"] == g["streams"],
            )
        )
        out.append(
            (
                f"{what}: added delay between chunks (gap), p99",
                f"{s['added_gap_p99']:+.2f} ms",
                "<= 5 ms",
                s["added_gap_p99"] <= 5,
            )
        )
        out.append(
            informational(
                f"{what}: added transit per chunk (mock write to client read), p50 / p99; "
                "stricter, not a target",
                f"{s['added_transit_p50']:+.2f} / {s['added_transit_p99']:+.2f} ms",
            )
        )
        peak = s["gateway_peak_rss_mb"]
        out.append((f"{what}: gateway peak RSS", f"{peak:.0f} MB", "<= 150 MB", peak <= 150))
        cold = s.get("cold") or {}
        if "direct" in cold and "gateway" in cold:
            d, gw = cold["direct"], cold["gateway"]
            for key, label in (("ttft_p99", "time to first token"), ("gap_p99", "gap")):
                added = gw[key] - d[key]
                out.append(
                    (
                        f"{what}, 1,000 started within a second on a fresh gateway: added "
                        f"{label}, p99 ({gw[key]:.1f} against {d[key]:.1f} ms direct)",
                        f"{added:+.2f} ms",
                        "<= 5 ms",
                        added <= 5,
                    )
                )
    w = res.get("workers", {}).get("data")
    if w and "1 process" in w["targets"] and "2 workers" in w["targets"]:
        one, two = w["targets"]["1 process"], w["targets"]["2 workers"]
        for n in ("32", "128"):
            ratio = two[n]["rps"] / one[n]["rps"]
            out.append(
                (
                    f"{n} connections: `server.workers: 2` over one process, requests/s (wrk "
                    "pinned to a core of its own)",
                    f"{ratio:.2f}",
                    "> 1.00",
                    ratio > 1.0,
                )
            )
        local = w["targets"].get("2 workers, the same limits counted per worker")
        shared = w["targets"].get("2 workers, limits shared in Redis")
        if local and shared:
            worst = min(shared[n]["rps"] / local[n]["rps"] for n in ("32", "128"))
            out.append(
                (
                    "2 workers: limits shared in Redis over the same limits per worker, "
                    "requests/s (the lower of 32 and 128 connections)",
                    f"{worst:.2f}",
                    ">= 0.90",
                    worst >= 0.90,
                )
            )
    sh = res.get("streaming-shared", {}).get("data")
    if sh:
        out.append(
            informational(
                "1,000 streams, 1 token per event, the mock, the load generator and the gateway "
                "sharing both cores (`--no-pin`): added gap p99 (not a target of its own)",
                f"{sh['added_gap_p99']:+.2f} ms",
                "<= 5 ms",
            )
        )
    sw = res.get("stream_sweep", {}).get("data")
    if sw:
        rows = sw["rows"]
        out.append(
            informational(
                "1,000 streams, 1 token per event, sweep: added gap p99 at "
                + " / ".join(f"{r['events_per_s']:,.0f}" for r in rows)
                + " events/s (one run each; not a target of its own)",
                " / ".join(f"{r['added_gap_p99']:+.2f}" for r in rows) + " ms",
                "<= 5 ms",
            )
        )
    a = res.get("app_path", {}).get("data")
    if a:
        out.append(
            informational(
                "the app path's CPU per request (no sockets on it): back to back / after a "
                "loopback round trip (not a target of its own)",
                f"{a['app_us']:.0f} / {a['app_after_round_trip_us']:.0f} µs",
            )
        )
    c = res.get("chaos", {}).get("data")
    if c:
        v = c["cooling_violations"]
        out.append(("chaos: requests that reached a cooling key", str(v), "0", v == 0))
    m = res.get("memory", {}).get("data")
    if m:
        out.append(("idle RSS", f"{m['idle_rss_mb']:.1f} MB", "<= 60 MB", m["idle_rss_mb"] <= 60))
        st = m["startup_median_ms"]
        out.append(("start-up to the first 200 (median)", f"{st:.0f} ms", "< 1,000 ms", st < 1000))
    return out


def peer_targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    """Issue 21's targets: ratios against TensorZero and against everything off."""
    out: list[Row] = []
    p = res.get("peers", {}).get("data")
    if p:
        t = p["targets"]
        hi = str(p["conns"][-1])
        best = max(("on", "on-w2"), key=lambda k: t[k][hi]["rps"] if k in t else 0.0)
        tz = t.get("tensorzero")
        direct = t["direct"]["1"]["p50"]
        if tz:
            ratio = t[best][hi]["rps"] / tz[hi]["rps"]
            out.append(
                (
                    f"{hi} connections, everything on: TruckLLM ({p['labels'][best]}) "
                    "requests/s over TensorZero's",
                    f"{ratio:.2f} ({t[best][hi]['rps']:,.0f} / {tz[hi]['rps']:,.0f})",
                    ">= 1.00",
                    ratio >= 1.0,
                )
            )
            ours, theirs = t["on"]["1"]["p50"] - direct, tz["1"]["p50"] - direct
            out.append(
                (
                    "1 connection, everything on: added p50, TruckLLM / TensorZero",
                    f"{ours:.3f} / {theirs:.3f} ms",  # the results hold ms
                    "<= TensorZero's",
                    ours <= theirs,
                )
            )
        share = t["on"][hi]["rps"] / t["off"][hi]["rps"]
        ratios = [x["on_rps"] / x["off_rps"] for x in p.get("pairs") or []]
        if ratios:  # the pairs taken back to back are the figure; the rounds' ratio beside it
            paired = statistics.median(ratios)
            out.append(
                (
                    f"{hi} connections, 1 process: everything on over everything off, "
                    f"requests/s, median of {len(ratios)} back-to-back pairs (the rounds' ratio "
                    "in brackets)",
                    f"{paired:.2f} ({share:.2f})",
                    ">= 0.90",
                    paired >= 0.9,
                )
            )
        else:
            out.append(
                (
                    f"{hi} connections, 1 process: everything on over everything off, requests/s",
                    f"{share:.2f}",
                    ">= 0.90",
                    share >= 0.9,
                )
            )
    f = res.get("features", {}).get("data")
    if f and f.get("on_over_off"):
        out.append(
            informational(
                "the app path in-process: everything on over everything off, CPU per request "
                "(not a target of its own)",
                f"{f['on_over_off']:.2f} ({f['best_us']['on']:.1f} / {f['best_us']['off']:.1f} µs)",
            )
        )
    return out


def render(
    res: dict[str, dict[str, Any]],
    info: list[tuple[str, str]],
    command: str,
    plot: str | None,
    now: str,
) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Generated {now} by `{command}` (see `bench/README.md`). Every number in a table was "
        "measured side by side in the same run, on one machine where the load generator, the "
        "mock upstream and the gateway share the CPUs (the streaming runs keep the gateway on "
        "one of them: each section says): compare ratios, not absolute numbers across machines.",
        "",
        *[f"- **{k}**: {v}" for k, v in info],
        "",
        "## Targets",
        "",
        "| target | measured | limit | |",
        "|---|---:|---:|---|",
    ]
    for name, measured, limit, met in targets(res):
        mark = "-" if met is None else ("met" if met else "**missed**")
        out.append(f"| {name} | {measured} | {limit} | {mark} |")
    out += [
        "",
        "Where a target is missed, `bench/README.md` (*What profiling changed*) says what the "
        "profiles show. The streaming runs give the cores each process kept busy: past about "
        "1.5 of the 2, the numbers measure contention for the CPU as much as the gateway.",
    ]
    if plot:
        out += ["", f"![Benchmarks]({plot})"]
    for name, title in TITLES.items():
        r = res.get(name)
        if r is None:
            continue
        out += ["", f"## {title}", "", f"`{r['command']}` ({r['seconds']:.0f} s; other work "
                f"used {r['busy_before']:.0%} of the CPUs just before; load average "
                f"{r['load'][0]:.2f} before, {r['load'][1]:.2f} after)", ""]  # fmt: skip
        if not r["ok"]:
            out.append("**This benchmark failed**; its output:\n\n```\n" + r["markdown"] + "\n```")
            continue
        md = r["markdown"].strip()
        if name.startswith("overhead"):  # its header and machine lines are in this report
            md = md.split("\n## ", 1)[1] if "\n## " in md else md
            md = "### " + md.replace("\n## ", "\n### ")
        out.append(md)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--full", action="store_true", help="longer runs and more rounds")
    p.add_argument("--only", help="comma-separated: " + ",".join(QUICK))
    p.add_argument("--results", type=Path, default=BENCH / "results")
    p.add_argument(
        "--plot", type=Path, help="PNG (needs matplotlib); default: --out's path ending in .png"
    )
    p.add_argument(
        "--patience",
        type=float,
        default=300,
        help="seconds to wait, before each benchmark, for other work on the machine to calm "
        "down (0: do not wait)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: render the report (and plot) again from the results in --results",
    )
    p.add_argument("--python", default=default_python(), help="the interpreter for every process")
    args = p.parse_args(argv)
    if args.render_only:
        return render_again(args)
    plan = FULL if args.full else QUICK
    names = [n.strip() for n in args.only.split(",")] if args.only else list(plan)
    unknown = set(names) - set(plan)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if "overhead-haltpoll" in names and (
        halt_poll_ns() is None or not os.access(HALT_POLL, os.W_OK)
    ):
        names.remove("overhead-haltpoll")
        print(
            f"skipping overhead-haltpoll: {HALT_POLL} is not in use or not writable",
            file=sys.stderr,
        )
    args.results.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        ["python", "bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]
    )
    load_at_start = os.getloadavg()
    res = {name: run(name, plan[name], args.python, args.results, args.patience) for name in names}
    (args.results / "all.json").write_text(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "markdown"} for k, v in res.items()}
        )
    )
    info = machine_info(args.python, "wrk")
    info.append(
        (
            "Load average",
            f"{load_at_start[0]:.2f} (1 min) at the start, {os.getloadavg()[0]:.2f} at the end; "
            "other work on the machine shows up here",
        )
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    (args.results / "meta.json").write_text(
        json.dumps({"command": command, "info": info, "generated": now})
    )
    write_report(args, res, info, command, now)
    failed = [n for n, r in res.items() if not r["ok"]]
    return 1 if failed else 0


def write_report(
    args: argparse.Namespace,
    res: dict[str, dict[str, Any]],
    info: list[tuple[str, str]],
    command: str,
    now: str,
) -> None:
    plot_rel: str | None = None
    if args.plot is None:  # beside the report: a report written elsewhere leaves docs/ alone
        args.plot = args.out.with_suffix(".png")
    plot = subprocess.run(
        [args.python, str(BENCH / "plot.py"), str(args.results / "all.json"), str(args.plot)],
        check=False,
        capture_output=True,
        text=True,
    )
    if plot.returncode == 0:
        plot_rel = os.path.relpath(args.plot, args.out.parent)
    else:
        print(f"no plot: {plot.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    report = render(res, info, command, plot_rel, now)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"wrote {args.out}", file=sys.stderr)


def render_again(args: argparse.Namespace) -> int:
    """The report of the last run, from ``--results`` (after a change to the rendering)."""
    res: dict[str, dict[str, Any]] = json.loads((args.results / "all.json").read_text())
    meta = json.loads((args.results / "meta.json").read_text())
    for name, r in res.items():
        r["markdown"] = (args.results / f"{name}.md").read_text()
    info = [(k, v) for k, v in meta["info"]]
    write_report(args, res, info, meta["command"], meta["generated"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
