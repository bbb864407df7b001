"""The benchmarks' picture: latency at one connection and throughput bars (overhead, workers), and
the streaming distributions.

    python bench/plot.py bench/results/all.json docs/benchmarks.png

Needs matplotlib (``pip install matplotlib``; not a dependency of truckllm). Exits 2 without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def cdf(ax: Any, values: list[float], label: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    if n:
        ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)


def sweep(ax: Any, d: dict[str, Any]) -> None:
    """Added gap p99 against the aggregate event rate, with the cores the three processes kept
    busy on a second axis."""
    rows = d["rows"]
    rates = [r["events_per_s"] for r in rows]
    ax.plot(rates, [r["added_gap_p99"] for r in rows], "o-", label="added gap p99 (ms)")
    ax.axhline(5.0, color="grey", linestyle="--", linewidth=1, label="target: 5 ms")
    ax.set_xlabel("events/s through the gateway (1,000 streams, 1 token/event)")
    ax.set_ylabel("ms")
    ax.set_title("Added gap p99 against the event rate (one run each)")
    cores = ax.twinx()
    cores.plot(
        rates,
        [sum(r["cores_gateway"].values()) for r in rows],
        "s:",
        color="tab:red",
        label="cores busy: mock + load gen. + gateway",
    )
    cores.set_ylim(0, 2.2)
    cores.set_ylabel("cores busy (of 2)")
    lines = ax.get_legend_handles_labels()
    more = cores.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")


_TARGETS = {"direct": "direct -> mock", "baseline": "bare passthrough", "gateway": "gateway"}


def one_connection(ax: Any, data: dict[str, Any]) -> None:
    """p50 at one connection, as the machine boots and (when run) with halt polling, and the
    target's line: the direct call's p50 + 0.25 ms."""
    runs = [("as booted", data["overhead"]["data"])]
    if data.get("overhead-haltpoll", {}).get("ok"):
        runs.append(("idle vCPUs polling 200 µs", data["overhead-haltpoll"]["data"]))
    width = 0.8 / len(_TARGETS)
    for i, (key, label) in enumerate(_TARGETS.items()):
        xs = [j + i * width for j in range(len(runs))]
        bars = ax.bar(xs, [o[key]["1"]["p50"] for _, o in runs], width, label=label)
        ax.bar_label(bars, fmt="{:.3f}", fontsize=7)
    for j, (_, o) in enumerate(runs):
        limit = o["direct"]["1"]["p50"] + 0.25
        ax.hlines(limit, j - width / 2, j + 2.5 * width, colors="grey", linestyles="--")
    ax.plot([], [], "--", color="grey", label="target: direct + 0.25 ms")
    ax.set_xticks([j + width for j in range(len(runs))], [name for name, _ in runs])
    top = max(o[key]["1"]["p50"] for _, o in runs for key in _TARGETS)
    ax.set_ylim(0, top * 1.4)  # room for the legend
    ax.set_ylabel("p50, ms")
    ax.set_title("1 connection: latency (wrk -c1)")
    ax.legend(fontsize=7, loc="upper right")


def main(argv: list[str]) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: pip install matplotlib", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    panels = []
    if data.get("overhead", {}).get("ok"):
        panels += ["latency", "overhead"]
    streams = [k for k in ("streaming", "streaming-grouped") if data.get(k, {}).get("ok")]
    if streams:
        panels += ["transit", "ttft"]
    if data.get("stream_sweep", {}).get("ok"):
        panels.append("sweep")
    if data.get("workers", {}).get("ok"):
        panels.append("workers")
    if not panels:
        print("no results to plot", file=sys.stderr)
        return 1
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(flat, panels, strict=False):
        if panel == "latency":
            one_connection(ax, data)
        elif panel == "overhead":
            o = data["overhead"]["data"]
            conns = [c for c in o["direct"] if c != "1"]
            width = 0.8 / len(_TARGETS)
            for i, (key, label) in enumerate(_TARGETS.items()):
                xs = [j + i * width for j in range(len(conns))]
                bars = ax.bar(xs, [o[key][c]["rps"] for c in conns], width, label=label)
                ax.bar_label(bars, fmt="{:,.0f}", fontsize=7)
            ax.set_xticks([j + width for j in range(len(conns))], [f"{c} conns" for c in conns])
            ax.set_ylabel("requests/s")
            ax.set_title("Non-streamed throughput")
            ax.legend(fontsize=8)
        elif panel == "transit":
            for key in streams:
                s = data[key]["data"]
                for name in ("direct", "gateway"):
                    label = f"{name}, {s['per_event']} token/event"
                    cdf(ax, s["samples"][name]["transit_ms"], label)
            ax.set_xscale("log")
            ax.set_xlabel("mock write -> client read, ms (log)")
            ax.set_ylabel("share of chunks")
            ax.set_title("1,000 streams at 20 tokens/s: chunk transit")
            ax.legend(fontsize=7)
        elif panel == "ttft":
            for key in streams:
                s = data[key]["data"]
                for name in ("direct", "gateway"):
                    cdf(ax, s["samples"][name]["ttft_ms"], f"{name}, {s['per_event']} token/event")
            ax.set_xlabel("time to first token, ms")
            ax.set_ylabel("share of streams")
            ax.set_title("Time to first token")
            ax.legend(fontsize=8)
        elif panel == "sweep":
            sweep(ax, data["stream_sweep"]["data"])
        else:
            w = data["workers"]["data"]["targets"]
            names = list(w)
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                xs = [j + i * width for j in range(2)]
                bars = ax.bar(xs, [w[name]["32"]["rps"], w[name]["128"]["rps"]], width, label=name)
                ax.bar_label(bars, fmt="{:,.0f}", fontsize=7)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(2)], ["32", "128"])
            ax.set_xlabel("connections")
            ax.set_ylabel("requests/s")
            ax.set_title("server.workers")
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
